"""The numba CPU kernels, from the bottom up.

- :mod:`.intrinsics`: unchecked and packed loads, stack buffers, bit scans, fast-math flags.
- :mod:`.sampling`: where a ray is inside, checked and interior samplers, and the interior loops
  generated from one sampler by lanes / reader / plane axis.
- :mod:`.labels`: labelmap runs (nearest labels, run scans, the labelmap interior loops).
- :mod:`.march`: the contract op (``raymarch``: start/delta/step rays, forward and backward).
- :mod:`.camera`: the ray march from camera rays, geometry fused in (forward and pose gradient).
- :mod:`.joseph`: Joseph's method from camera rays (forward, labelmaps and pose gradient).
"""

from .intrinsics import IMPORT_ERROR, is_available

__all__ = ["IMPORT_ERROR", "is_available"]
