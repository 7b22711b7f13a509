"""Names of the sampling methods and the ray-march backends, importable without torch.

The Slicer module validates its users' choices with these before torch is installed (Slicer installs it
on first use); the engine's registry (:mod:`nanodrr_engine.drr.backends`) is built from the same names.
"""

#: Sampling methods: the reference ray march, and Joseph's one sample per voxel plane.
METHODS = ("raymarch", "joseph")
#: Ray-march backends, in order of preference for ``backend="auto"``.
BACKEND_NAMES = ("triton", "numba", "torch")
#: What a ``backend=`` argument accepts.
BACKEND_CHOICES = ("auto", *BACKEND_NAMES)

__all__ = ["BACKEND_CHOICES", "BACKEND_NAMES", "METHODS"]
