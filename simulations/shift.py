"""Per-site acquisition shift for real images: each virtual hospital's "camera" (optical blur, colour response,
sensor noise), layered on any partition.

The built-in synthetic data renders its own shift (``fgssl.data.synthetic.generate(..., site=, site_shift=)``);
this module is for decoded real data sets (uint8 ``(N, 3, H, W)`` arrays such as a dataset cache).

A site's camera is a pure function of ``(seed, site)``; ``strength`` scales every effect (0 = identity, 1 = a
visible but plausible difference between dermatoscopes). The sensor noise is drawn from a generator seeded by
``(seed, site)`` in array order, so the same input array always gives the same output; shifting a different
selection of images gives those images different noise (the blur and colour response are per image regardless).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_PARAMS_STREAM = 0x51735
_NOISE_STREAM = 0x9015E


@dataclass(frozen=True)
class SiteCamera:
    """One site's acquisition parameters (intensities in [0, 1])."""

    blur_sigma: float              # Gaussian optical blur, pixels
    gamma: float                   # tone curve x ** gamma
    gain: tuple[float, float, float]    # per-channel colour response (R, G, B)
    offset: tuple[float, float, float]  # per-channel colour cast
    noise_std: float               # additive Gaussian sensor noise


def _entropy(seed: int, site: int, stream: int) -> list[int]:
    return [int(seed) % 2**64, int(site) % 2**64, stream]


def site_camera(site: int, strength: float, seed: int) -> SiteCamera:
    """The acquisition parameters of `site` at `strength` (deterministic per (seed, site); linear in strength
    on a log scale for gain/gamma, so strength 0 gives the identity camera)."""
    s = _check_strength(strength)
    rng = np.random.default_rng(_entropy(seed, site, _PARAMS_STREAM))
    z_gain = np.clip(rng.standard_normal(3), -2.0, 2.0)
    z_off = np.clip(rng.standard_normal(3), -2.0, 2.0)
    z_gamma = float(np.clip(rng.standard_normal(), -2.0, 2.0))
    blur = float(rng.uniform(0.4, 1.4))
    noise = float(rng.uniform(2.0, 6.0))
    return SiteCamera(
        blur_sigma=s * blur,
        gamma=math.exp(0.2 * s * z_gamma),
        gain=tuple(float(g) for g in np.exp(0.12 * s * z_gain)),
        offset=tuple(float(o) for o in 0.04 * s * z_off),
        noise_std=s * noise / 255.0,
    )


def _check_strength(strength: float) -> float:
    s = float(strength)
    if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"site shift strength must be a finite number >= 0, got {strength!r}")
    return s


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3.0 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / np.float32(sigma)) ** 2)
    return k / k.sum()


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes of (n, 3, H, W), reflecting at the borders."""
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    h, w = x.shape[-2:]
    xp = np.pad(x, ((0, 0), (0, 0), (r, r), (0, 0)), mode="reflect" if r < h else "symmetric")
    y = sum(k[i] * xp[:, :, i:i + h, :] for i in range(len(k)))
    yp = np.pad(y, ((0, 0), (0, 0), (0, 0), (r, r)), mode="reflect" if r < w else "symmetric")
    return sum(k[i] * yp[:, :, :, i:i + w] for i in range(len(k)))


def apply_site_shift(images: np.ndarray, site: int, strength: float, seed: int, chunk: int = 64) -> np.ndarray:
    """`images` (uint8, (N, 3, H, W)) as acquired by `site`'s camera: blur, then tone and colour response, then
    sensor noise. Returns a new uint8 array of the same shape; strength 0 returns an unchanged copy."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 of shape (N, 3, H, W), got {images.dtype} {images.shape}")
    cam = site_camera(site, strength, seed)
    if float(strength) == 0.0 or images.shape[0] == 0:
        return images.copy()
    gain = np.asarray(cam.gain, dtype=np.float32).reshape(1, 3, 1, 1)
    offset = np.asarray(cam.offset, dtype=np.float32).reshape(1, 3, 1, 1)
    noise_rng = np.random.default_rng(_entropy(seed, site, _NOISE_STREAM))
    out = np.empty_like(images)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].astype(np.float32) / np.float32(255.0)
        if cam.blur_sigma > 0.05:
            x = _blur(x, cam.blur_sigma)
        x = np.power(np.clip(x, 0.0, 1.0), np.float32(cam.gamma)) * gain + offset
        x += noise_rng.standard_normal(x.shape, dtype=np.float32) * np.float32(cam.noise_std)
        out[start:start + chunk] = np.clip(np.rint(x * np.float32(255.0)), 0, 255).astype(np.uint8)
    return out
