"""Fixtures for the headless Slicer logic tests (helpers live in ``slicer_testutils``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "NanoDRRSlicer"))

import slicer
from NanoDRRLib import CArmGeometry, NanoDRRLogic
from slicer_testutils import addVolume, affine, phantomCT, rotation


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    yield s
    s.Clear(1)


@pytest.fixture
def logic():
    return NanoDRRLogic()


@pytest.fixture
def geometry():
    """Non-square detector, unequal spacings and an off-centre principal point (catches axis mix-ups)."""
    return CArmGeometry(sdd=1020.0, height=40, width=48, delx=3.0, dely=3.5, x0=6.0, y0=-4.0)


@pytest.fixture
def ctArray():
    return phantomCT()


@pytest.fixture
def ctAffine():
    """Oblique, anisotropic IJK → RAS."""
    return affine((4.0, 3.0, 5.0), (-30.0, 12.0, 40.0), rotation(10.0, -5.0, 20.0))


@pytest.fixture
def ct(scene, ctArray, ctAffine):
    return addVolume(scene, ctArray, ctAffine)
