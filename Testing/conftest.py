"""Shared test fixtures: repository paths and the chest CT from ../shared (skipped when absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CHEST_CT = SHARED / "data" / "chest_ct"

# NanoDRRLib is a plain package inside the module folder, as Slicer puts it on sys.path.
sys.path.insert(0, str(REPO / "NanoDRRSlicer"))


@pytest.fixture(scope="session")
def chest_ct_dir() -> Path:
    if not (CHEST_CT / "ct.nii.gz").exists():
        pytest.skip(f"chest CT not found at {CHEST_CT} (clone the project next to its ../shared folder)")
    return CHEST_CT
