"""From rendered line integrals to a stored image: bone contrast, transmission, blur, Poisson noise.

The physical order: line integrals L (bone contrast is linear in μ_bone, see :mod:`.renderer`) →
transmitted fraction I = exp(−L) → detector blur (Gaussian, on the intensity) → Poisson counts of
``photons · I`` → the output, I (``"transmission"``) or −log I (``"attenuation"``; counts below one
photon read as one). Without blur and noise an attenuation image is L itself (no exp/log round trip).
Labelmap channels go through the same steps each on its own.

:func:`finish` is the reference (NumPy, float64, one image at a time: its bits depend on nothing but
the image and its sample); :func:`finish_torch` does the same on a device for on-the-fly training
batches (same distribution, not the same bits).
"""

from __future__ import annotations

import numpy as np

from .sampling import NOISE_STREAM, Sample, generator
from .spec import DatasetSpec

#: The blur kernel reaches this many sigmas (as ``scipy.ndimage.gaussian_filter``'s default).
TRUNCATE = 3.0


def gaussian_weights(sigma: float) -> np.ndarray:
    """Normalised Gaussian taps ``[2r + 1]``, r = int(TRUNCATE · sigma + ½)."""
    r = int(TRUNCATE * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``[..., H, W]`` float64 (edges mirrored, the edge pixel repeated)."""
    if sigma <= 0:
        return image
    w = gaussian_weights(sigma)
    r = len(w) // 2
    for axis in (-2, -1):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (r, r)
        padded = np.pad(image, pad, mode="symmetric")
        n = image.shape[axis]
        out = np.zeros_like(image)
        for k, wk in enumerate(w):  # a fixed order of exact IEEE products and sums
            out += wk * np.take(padded, range(k, k + n), axis=axis)
        image = out
    return image


def needs_intensity(spec: DatasetSpec, sample: Sample) -> bool:
    aug = spec.augment
    return aug.output == "transmission" or aug.photons is not None or sample.blur > 0


def finish(lines: np.ndarray, sample: Sample, spec: DatasetSpec) -> np.ndarray:
    """The stored image ``[C, H, W]`` (``spec.dtype``) of one sample from its line integrals (float64)."""
    aug = spec.augment
    if not needs_intensity(spec, sample):
        out = lines
    else:
        intensity = blur(np.exp(-lines), sample.blur)
        if aug.photons is not None:
            counts = generator(spec.seed, sample.index, NOISE_STREAM).poisson(aug.photons * intensity)
            intensity = counts / aug.photons
            floor = 1.0 / aug.photons
        else:
            floor = np.finfo(np.float64).tiny
        out = intensity if aug.output == "transmission" else -np.log(np.maximum(intensity, floor))
    return out.astype(spec.dtype)


def finish_torch(lines, samples: list[Sample], spec: DatasetSpec, seed_offset: int = 0):
    """:func:`finish` for a batch ``[B, C, H, W]`` on its device (torch; float32 output of ``spec.dtype``)."""
    import torch

    aug = spec.augment
    out = lines.double()
    if any(needs_intensity(spec, s) for s in samples):
        out = torch.exp(-out)
        for b, s in enumerate(samples):
            if s.blur > 0:
                out[b] = _blur_torch(out[b], s.blur)
        if aug.photons is not None:
            g = torch.Generator(device=out.device)
            g.manual_seed((spec.seed * 1_000_003 + samples[0].index + seed_offset) % 2**63)
            out = torch.poisson(aug.photons * out, generator=g) / aug.photons
            floor = 1.0 / aug.photons
        else:
            floor = float(np.finfo(np.float64).tiny)
        if aug.output == "attenuation":
            out = -torch.log(out.clamp_min(floor))
    return out.to(getattr(torch, spec.dtype))


def _blur_torch(image, sigma: float):
    import torch

    w = torch.as_tensor(gaussian_weights(sigma), dtype=image.dtype, device=image.device)
    r = len(w) // 2
    x = image[:, None]  # [C, 1, H, W]
    x = torch.cat([x[..., :r, :].flip(-2), x, x[..., -r:, :].flip(-2)], dim=-2) if r else x
    x = torch.nn.functional.conv2d(x, w.view(1, 1, -1, 1))
    x = torch.cat([x[..., :r].flip(-1), x, x[..., -r:].flip(-1)], dim=-1) if r else x
    x = torch.nn.functional.conv2d(x, w.view(1, 1, 1, -1))
    return x[:, 0]


def max_blur_radius(spec: DatasetSpec) -> int:
    """Pixels the widest blur reaches (its taps must fit in the image for the mirrored edges)."""
    return 0 if spec.augment.blur is None else int(TRUNCATE * spec.augment.blur[1] + 0.5)


__all__ = ["blur", "finish", "finish_torch", "gaussian_weights", "max_blur_radius"]
