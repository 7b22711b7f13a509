"""2D/3D registration: :class:`Registration` (nanodrr 0.1.7's module, rendered by our kernels) and
:func:`register`, the whole pipeline (coarse to fine, multi-start, biplane)."""

from .pipeline import RegistrationResult, register, similarity
from .registration import Registration

__all__ = ["Registration", "RegistrationResult", "register", "similarity"]
