"""NanoDRR engine: fast, differentiable digitally reconstructed radiographs in PyTorch.

Drop-in for ``nanodrr`` 0.1.7's public API (same conventions and numbers), with fused CPU/GPU
kernels, chunked memory use and input validation. Conventions: ``docs/geometry.md``.

The public names are imported on first use (PEP 562), so that ``nanodrr_engine.names`` and the other
torch-free modules can be imported where torch is not installed yet (Slicer installs it on demand).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.2.0"

#: public name → the submodule that defines it
_EXPORTS = {
    "DRR": ".drr",
    "HU_BONE": ".data",
    "MU_BONE": ".data",
    "MU_WATER": ".data",
    "Registration": ".registration",
    "Subject": ".data",
    "available_backends": ".drr",
    "carm_to_rt_inv": ".camera",
    "hu_to_mu": ".data",
    "invert_rt_inv": ".camera",
    "make_k_inv": ".camera",
    "make_rt_inv": ".camera",
    "render": ".drr",
    "rt_inv_to_carm": ".camera",
}

__all__ = [
    "DRR",
    "HU_BONE",
    "MU_BONE",
    "MU_WATER",
    "Registration",
    "Subject",
    "available_backends",
    "carm_to_rt_inv",
    "hu_to_mu",
    "invert_rt_inv",
    "make_k_inv",
    "make_rt_inv",
    "render",
    "rt_inv_to_carm",
]
assert sorted(__all__) == sorted(_EXPORTS)

if TYPE_CHECKING:
    from .camera import carm_to_rt_inv, invert_rt_inv, make_k_inv, make_rt_inv, rt_inv_to_carm
    from .data import HU_BONE, MU_BONE, MU_WATER, Subject, hu_to_mu
    from .drr import DRR, available_backends, render
    from .registration import Registration


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
