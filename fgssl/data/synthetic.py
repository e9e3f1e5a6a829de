"""Built-in synthetic dermoscopy-like data: deterministic, vectorised, no download.

Every image is a skin-coloured field with one irregular pigmented lesion. Size, shape, position,
orientation and colour of the lesion are drawn from the *same* distributions for every class; the
class only decides the fine texture inside the lesion (pigment network, globules, streaks, ...),
with periods of a few pixels. A model therefore has to look at small local structure to classify,
which is what FG-SSL's jigsaw granularities are meant to exploit.

Randomness is counter-based: every random number is a splitmix64 hash of (seed, index, draw
number[, pixel]). Image ``i`` is thus the same whether it is generated alone, in a batch or inside
any range, and a batch is rendered with array operations only (no per-image Python loop and no
per-image ``numpy.random.Generator``).

Optionally a per-site acquisition shift (optical blur, colour response, sensor noise) imitates
different hospitals' cameras; its parameters are a hash of (seed, site).

Bit-exactness holds on one machine/numpy build; another libm may round a transcendental
differently and move a pixel by one grey level.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "CLASS_NAMES_7",
    "ISIC2018_FREQUENCIES",
    "MAX_CLASSES",
    "MIN_CLASSES",
    "TEXTURE_FAMILIES",
    "class_frequencies",
    "class_names",
    "generate",
    "labels_for",
    "texture_families",
]

CLASS_NAMES_7: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")

_ISIC2018_COUNTS = (1113, 6705, 514, 327, 1099, 115, 142)
ISIC2018_FREQUENCIES: tuple[float, ...] = tuple(c / sum(_ISIC2018_COUNTS) for c in _ISIC2018_COUNTS)

# One texture family per class, in class order. The first seven loosely echo a dermoscopic
# structure of the ISIC class with the same index (illustrative, not clinically faithful).
TEXTURE_FAMILIES: tuple[str, ...] = (
    "radial streaks",  # MEL: streaks/pseudopods at the periphery, blotchy centre
    "pigment network",  # NV: regular reticular network
    "globules",  # BCC: nests of dots/globules
    "fine speckle",  # AKIEC: scale/speckle
    "parallel stripes",  # BKL: fingerprint-like ridges
    "concentric rings",  # DF: ring-like pattern
    "structureless",  # VASC: homogeneous, only coarse mottling
    "honeycomb",
    "wavy stripes",
    "labyrinth",
)

MIN_CLASSES = 2
MAX_CLASSES = len(TEXTURE_FAMILIES)

# Images rendered per vectorised pass: big enough to amortise numpy's per-call overhead, small
# enough that a (chunk, H, W) float32 field stays in cache at 64 px.
_CHUNK = 128


# --------------------------------------------------------------------------------------------
# Counter-based hashing
# --------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_U64 = (1 << 64) - 1

# Distinct salts keep the independent streams (images, pixels, site) from ever colliding.
_SALT_IMAGE = 0x5EED_1A6E_0000_0001
_SALT_SITE = 0x5EED_517E_0000_0002
_SALT_PIXEL_BASE = 0x0B5E_12A7_0000_0003
_SALT_TEXTURE_PIX = 0x7E87_0000_0000_0004
_SALT_CELL = 0xCE11_0000_0000_0005
_SALT_SITE_NOISE = 0x5E45_0000_0000_0006


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrap-around multiplication is intended)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


def _u64(value: int) -> np.ndarray:
    # Ints of any sign or size map onto 64 bits, so negative or huge seeds are still valid keys.
    return np.array([int(value) & _U64], dtype=np.uint64)


def _keys(indices: np.ndarray, seed: int, salt: int = _SALT_IMAGE) -> np.ndarray:
    """One 64-bit key per index; everything about image ``i`` is derived from its key."""
    base = _mix(_u64(seed) ^ np.uint64(salt))
    with np.errstate(over="ignore"):
        return _mix(base + indices.astype(np.uint64) * _GOLDEN)


def _uniform(keys: np.ndarray, draw: int) -> np.ndarray:
    """Uniform float64 in [0, 1) for draw number ``draw`` of each key (splitmix64 stream)."""
    with np.errstate(over="ignore"):
        h = _mix(keys + np.uint64(draw + 1) * _GOLDEN)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _pixel_uniforms(keys: np.ndarray, salt: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Two independent float32 uniform fields of ``shape`` per key, hashed from (key, pixel)."""
    npix = math.prod(shape)
    stream = _mix(keys ^ np.uint64(salt))
    with np.errstate(over="ignore"):
        h = _mix(stream[:, None] + np.arange(npix, dtype=np.uint64)[None, :] * _GOLDEN)
    # 24 bits each are exact in float32; one hash gives two numbers, halving the cost.
    scale = np.float32(1.0 / (1 << 24))
    hi = (h >> np.uint64(40)).astype(np.float32) * scale
    lo = (h & np.uint64(0xFFFFFF)).astype(np.float32) * scale
    return hi.reshape(keys.shape + shape), lo.reshape(keys.shape + shape)


# Draw numbers. Append new names at the end: reordering would change every image.
_DRAWS = (
    "label",
    "skin_tone", "skin_r", "skin_g", "skin_b",
    "shade_amp", "shade_angle", "shade_len", "shade_phase",
    "vignette",
    "cx", "cy", "radius", "aspect", "orient", "border", "opacity",
    "h2a", "h2p", "h3a", "h3p", "h4a", "h4p", "h5a", "h5p", "h6a", "h6p",
    "warp_a1", "warp_l1", "warp_p1", "warp_a2", "warp_l2", "warp_p2",
    "pig_bright", "pig_r", "pig_g", "pig_b", "pig_veil", "pig_grad",
    "tex_contrast", "tex_period", "tex_angle", "tex_phase1", "tex_phase2", "tex_aniso",
    "tex_e1", "tex_e2", "tex_e3", "tex_e4", "tex_e5", "tex_e6", "tex_e7", "tex_e8",
    "tex_e9", "tex_e10", "tex_e11", "tex_e12",
    *(f"hair{h}_{q}" for h in range(3) for q in ("on", "angle", "offset", "curve", "width", "dark")),
)
_D = {name: i for i, name in enumerate(_DRAWS)}
_SITE_DRAWS = ("gain_r", "gain_g", "gain_b", "off_r", "off_g", "off_b", "gamma", "blur", "noise")
_SD = {name: i for i, name in enumerate(_SITE_DRAWS)}


# --------------------------------------------------------------------------------------------
# Classes and labels
# --------------------------------------------------------------------------------------------


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
    k = int(num_classes)
    if not MIN_CLASSES <= k <= MAX_CLASSES:
        raise ValueError(
            f"synthetic data supports {MIN_CLASSES}..{MAX_CLASSES} classes (one texture family each), "
            f"got num_classes={k}"
        )
    return k


def class_names(num_classes: int) -> tuple[str, ...]:
    """Class names: ISIC 2018's seven for ``num_classes == 7``, else ``class_0``, ``class_1``, ..."""
    k = _check_num_classes(num_classes)
    if k == 7:
        return CLASS_NAMES_7
    return tuple(f"class_{i}" for i in range(k))


def texture_families(num_classes: int) -> tuple[str, ...]:
    """The texture family that defines each class, in class order."""
    return TEXTURE_FAMILIES[: _check_num_classes(num_classes)]


def class_frequencies(num_classes: int) -> np.ndarray:
    """Class prior (sums to 1): ISIC 2018's for 7 classes, otherwise a Zipf-like skew.

    For K != 7 class ``k`` gets weight ``(k + 1) ** -1.5``: class 0 is the majority class and the
    largest/smallest ratio grows with K (2.8 for K=2, 32 for K=10), in the range of ISIC 2017,
    APTOS 2019 and ISIC 2018.
    """
    k = _check_num_classes(num_classes)
    if k == 7:
        p = np.asarray(ISIC2018_FREQUENCIES, dtype=np.float64)
    else:
        p = np.arange(1, k + 1, dtype=np.float64) ** -1.5
    return p / p.sum()


def _as_indices(indices: np.ndarray | range | list[int]) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be one-dimensional, got shape {idx.shape}")
    if idx.size == 0:
        return idx.astype(np.int64)
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    if idx.min() < 0:
        raise ValueError("indices must be non-negative")
    return idx.astype(np.int64)


def _labels_from_keys(keys: np.ndarray, num_classes: int) -> np.ndarray:
    cdf = np.cumsum(class_frequencies(num_classes))
    u = _uniform(keys, _D["label"])
    return np.minimum(np.searchsorted(cdf, u, side="right"), num_classes - 1).astype(np.int64)


def labels_for(indices: np.ndarray | range, seed: int, num_classes: int = 7) -> np.ndarray:
    """Labels (int64) of images ``indices`` without rendering them; equal to ``generate``'s."""
    k = _check_num_classes(num_classes)
    idx = _as_indices(indices)
    return _labels_from_keys(_keys(idx, seed), k)


# --------------------------------------------------------------------------------------------
# Textures: each returns a field T of shape (n, H, W) with mean ~0 and variance ~1 over the
# lesion, positive = more pigment. Equal moments are what keep the image's colour statistics
# from betraying the class; only the spatial arrangement differs.
# --------------------------------------------------------------------------------------------


def _binom_moment(k: int) -> float:
    # E[((1 + cos a) / 2) ** k] for a uniform phase a.
    return math.comb(2 * k, k) / 4**k


def _ridge(phase: np.ndarray, k: int) -> np.ndarray:
    """Thin periodic ridges: ((1 + cos) / 2) ** k, peaks at phase = 2*pi*m."""
    r = 0.5 + 0.5 * np.cos(phase)
    out = r
    for _ in range(k - 1):
        out = out * r
    return out


def _ridge_std(phase: np.ndarray, k: int) -> np.ndarray:
    mu, mu2 = _binom_moment(k), _binom_moment(2 * k)
    return (_ridge(phase, k) - np.float32(mu)) * np.float32(1.0 / math.sqrt(mu2 - mu * mu))


def _network_moments(k: int) -> tuple[float, float]:
    # Mean/std of max(ridge(a), ridge(b)) over independent uniform phases: no closed form handy,
    # so integrate numerically once on a fine phase grid (exact to ~1e-6 for periodic integrands).
    a = np.linspace(0, 2 * np.pi, 512, endpoint=False)
    ra = (0.5 + 0.5 * np.cos(a)) ** k
    m = np.maximum(ra[:, None], ra[None, :])
    return float(m.mean()), float(m.std())


_NET_K = 5
_NET_MU, _NET_SD = _network_moments(_NET_K)
_TWO_PI = np.float32(2 * np.pi)


class _Ctx:
    """Per-chunk inputs that a texture needs (coordinates relative to the lesion centre)."""

    def __init__(self, tx: np.ndarray, ty: np.ndarray, keys: np.ndarray, radius: np.ndarray, ts: float):
        self.tx, self.ty, self.keys, self.radius, self.ts = tx, ty, keys, radius, ts

    def u(self, name: str, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
        v = lo + (hi - lo) * _uniform(self.keys, _D[name])
        return v.astype(np.float32)[:, None, None]

    def rotated(self) -> tuple[np.ndarray, np.ndarray]:
        ang = self.u("tex_angle", 0.0, np.pi)
        c, s = np.cos(ang), np.sin(ang)
        return self.tx * c + self.ty * s, self.ty * c - self.tx * s

    def period(self, lo: float, hi: float) -> np.ndarray:
        return self.u("tex_period", lo, hi) * np.float32(self.ts)


def _cos_sum(ctx: _Ctx, period: np.ndarray, angles: list[np.ndarray], phases: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(ctx.tx.shape, np.float32)
    f = _TWO_PI / period
    for ang, ph in zip(angles, phases):
        out += np.cos((ctx.tx * np.cos(ang) + ctx.ty * np.sin(ang)) * f + ph)
    # Plane waves in different directions are uncorrelated over the plane: variance = m / 2.
    return out * np.float32(math.sqrt(2.0 / len(angles)))


def _tex_mottle(ctx: _Ctx) -> np.ndarray:
    # Coarse blotches (periods 14-24 px): "structureless" at the scale that defines the classes.
    period = ctx.u("tex_e9", 14.0, 24.0) * np.float32(ctx.ts)
    angles = [ctx.u(n, 0, np.pi) for n in ("tex_e10", "tex_e11", "tex_e12")]
    angles = [angles[0], angles[0] + np.float32(np.pi / 3) + angles[1] * np.float32(0.3),
              angles[0] + np.float32(2 * np.pi / 3) + angles[2] * np.float32(0.3)]
    phases = [ctx.u(n, 0, 2 * np.pi) for n in ("tex_e6", "tex_e7", "tex_e8")]
    return _cos_sum(ctx, period, angles, phases)


def _tex_radial(ctx: _Ctx) -> np.ndarray:
    rho = np.sqrt(ctx.tx * ctx.tx + ctx.ty * ctx.ty)
    theta = np.arctan2(ctx.ty, ctx.tx)
    # Number of streaks chosen so that their spacing at the rim is 4-6 px.
    n = np.round(_TWO_PI * ctx.radius / ctx.period(4.0, 6.0))
    twist = ctx.u("tex_e1", -1.2, 1.2) / ctx.radius  # slight spiral, so streaks are not ruler-straight
    streak = _ridge_std(n * theta + twist * rho + ctx.u("tex_phase1", 0, 2 * np.pi), 3)
    # Streaks fade in towards the rim (they would alias near the centre); the centre gets
    # blotches instead, mixed so that the variance stays 1 everywhere.
    t = np.clip((rho / ctx.radius - np.float32(0.35)) * np.float32(1 / 0.3), 0.0, 1.0)
    w = t * t * (3 - 2 * t)
    return w * streak + np.sqrt(1 - w * w) * _tex_mottle(ctx)


def _tex_network(ctx: _Ctx) -> np.ndarray:
    u, v = ctx.rotated()
    p = ctx.period(5.0, 7.0)
    pv = p * ctx.u("tex_aniso", 0.85, 1.15)
    a = _ridge(u * (_TWO_PI / p) + ctx.u("tex_phase1", 0, 2 * np.pi), _NET_K)
    b = _ridge(v * (_TWO_PI / pv) + ctx.u("tex_phase2", 0, 2 * np.pi), _NET_K)
    return (np.maximum(a, b) - np.float32(_NET_MU)) * np.float32(1 / _NET_SD)


def _tex_globules(ctx: _Ctx) -> np.ndarray:
    u, v = ctx.rotated()
    p = ctx.period(4.5, 6.5)
    pa = u * (_TWO_PI / p) + ctx.u("tex_phase1", 0, 2 * np.pi)
    pb = v * (_TWO_PI / (p * ctx.u("tex_aniso", 0.85, 1.15))) + ctx.u("tex_phase2", 0, 2 * np.pi)
    k = 2
    dots = _ridge(pa, k) * _ridge(pb, k)
    # Each lattice cell keeps its globule with probability q (hash of the cell), so the lattice
    # looks like scattered nests rather than a perfect grid.
    q = 0.7
    m = np.round(pa / _TWO_PI).astype(np.int64) & 0xFFFF
    nn = np.round(pb / _TWO_PI).astype(np.int64) & 0xFFFF
    cell = (m | (nn << 16)).astype(np.uint64)
    ckey = _mix(ctx.keys ^ np.uint64(_SALT_CELL))[:, None, None]
    with np.errstate(over="ignore"):
        h = _mix(ckey + cell * _GOLDEN)
    keep = ((h >> np.uint64(40)).astype(np.float32) < np.float32(q * (1 << 24))).astype(np.float32)
    mu, mu2 = _binom_moment(k), _binom_moment(2 * k)
    mean = q * mu * mu
    var = q * mu2 * mu2 - mean * mean
    return (dots * keep - np.float32(mean)) * np.float32(1 / math.sqrt(var))


def _tex_speckle(ctx: _Ctx) -> np.ndarray:
    h, w = ctx.tx.shape[1:]
    # One grain per 64-px pixel: above 64 px the grains become ts x ts blocks, so the speckle has
    # the same size relative to the lesion at every resolution.
    rows = (np.arange(h) / ctx.ts).astype(np.int64)
    cols = (np.arange(w) / ctx.ts).astype(np.int64)
    u1, u2 = _pixel_uniforms(ctx.keys, _SALT_TEXTURE_PIX, (int(rows[-1]) + 1, int(cols[-1]) + 1))
    grain = u1 + u2 - np.float32(1.0)  # triangular: less harsh than uniform, variance 1/6
    if ctx.ts > 1:
        grain = grain[:, rows[:, None], cols[None, :]]
    return grain * np.float32(math.sqrt(6.0))


def _tex_stripes(ctx: _Ctx) -> np.ndarray:
    u, _ = ctx.rotated()
    p = ctx.period(4.0, 7.0)
    return _ridge_std(u * (_TWO_PI / p) + ctx.u("tex_phase1", 0, 2 * np.pi), 3)


def _tex_rings(ctx: _Ctx) -> np.ndarray:
    # Slightly elliptical rings around the lesion centre.
    u, v = ctx.rotated()
    rho = np.sqrt(u * u + (v * ctx.u("tex_aniso", 0.8, 1.0)) ** 2)
    p = ctx.period(4.0, 7.0)
    return _ridge_std(rho * (_TWO_PI / p) + ctx.u("tex_phase1", 0, 2 * np.pi), 3)


def _tex_honeycomb(ctx: _Ctx) -> np.ndarray:
    a0 = ctx.u("tex_angle", 0.0, np.pi)
    angles = [a0, a0 + np.float32(np.pi / 3), a0 + np.float32(2 * np.pi / 3)]
    p1, p2 = ctx.u("tex_phase1", 0, 2 * np.pi), ctx.u("tex_phase2", 0, 2 * np.pi)
    # Phases summing to zero make the three waves interlock into a hexagonal lattice; the minus
    # sign turns the lattice's bright spots into dark cell walls.
    return -_cos_sum(ctx, ctx.period(5.0, 7.0) * np.float32(1.15), angles, [p1, p2, -(p1 + p2)])


def _tex_wavy(ctx: _Ctx) -> np.ndarray:
    u, v = ctx.rotated()
    p = ctx.period(4.0, 6.0)
    amp = ctx.u("tex_e1", 1.0, 2.0) * np.float32(ctx.ts)
    lam = ctx.u("tex_e2", 10.0, 16.0) * np.float32(ctx.ts)
    uu = u + amp * np.sin(v * (_TWO_PI / lam) + ctx.u("tex_e3", 0, 2 * np.pi))
    return _ridge_std(uu * (_TWO_PI / p) + ctx.u("tex_phase1", 0, 2 * np.pi), 3)


def _tex_labyrinth(ctx: _Ctx) -> np.ndarray:
    # Six waves of one period in random directions: an isotropic, maze-like band-pass pattern.
    names = ("tex_e1", "tex_e2", "tex_e3", "tex_e4", "tex_e5", "tex_e6")
    angles = [ctx.u(n, 0, np.pi) for n in names]
    phases = [ctx.u(n, 0, 2 * np.pi) for n in ("tex_e7", "tex_e8", "tex_e9", "tex_e10", "tex_e11", "tex_e12")]
    return _cos_sum(ctx, ctx.period(5.0, 7.0), angles, phases)


_TEXTURES: tuple[Callable[[_Ctx], np.ndarray], ...] = (
    _tex_radial,
    _tex_network,
    _tex_globules,
    _tex_speckle,
    _tex_stripes,
    _tex_rings,
    _tex_mottle,
    _tex_honeycomb,
    _tex_wavy,
    _tex_labyrinth,
)
assert len(_TEXTURES) == len(TEXTURE_FAMILIES)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """3t^2 - 2t^3 on t clipped to [0, 1] (a soft, C1 ramp). Overwrites ``t``."""
    np.clip(t, 0.0, 1.0, out=t)
    return t * t * (3 - 2 * t)


class _SiteParams:
    """Acquisition shift of one site, scaled by ``strength``; a pure function of (seed, site)."""

    def __init__(self, seed: int, site: int, strength: float):
        key = _keys(np.array([site], dtype=np.int64), seed, salt=_SALT_SITE)

        def u(name: str, lo: float = -1.0, hi: float = 1.0) -> float:
            return float(lo + (hi - lo) * _uniform(key, _SD[name])[0])

        s = float(strength)
        self.site = site
        self.noise_key = int(key[0])
        self.gain = np.array([1 + 0.22 * s * u(f"gain_{c}") for c in "rgb"], np.float32)
        self.offset = np.array([0.06 * s * u(f"off_{c}") for c in "rgb"], np.float32)
        self.gamma = float(np.exp(0.25 * s * u("gamma")))
        # Optics: Gaussian blur sigma in px at 64 px. Up to 0.75 px at strength 1: that takes about
        # half the contrast of a 4-px texture but leaves it visible.
        self.sigma = s * u("blur", 0.2, 0.75)
        # Sensor noise std on the [0, 1] scale.
        self.noise = s * u("noise", 0.008, 0.035)


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes, edge-padded (per image, no batch mixing)."""
    if sigma < 0.05:
        return img
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    h, w = img.shape[-2:]
    pad = np.pad(img, [(0, 0)] * (img.ndim - 2) + [(r, r), (0, 0)], mode="edge")
    out = sum(k[i] * pad[..., i : i + h, :] for i in range(2 * r + 1))
    pad = np.pad(out, [(0, 0)] * (img.ndim - 2) + [(0, 0), (r, r)], mode="edge")
    return sum(k[i] * pad[..., :, i : i + w] for i in range(2 * r + 1))


_HAIR_PROB = (0.3, 0.15, 0.07)  # chance of a first, second and third hair
_SKIN_LIGHT = np.array([0.94, 0.80, 0.71], np.float32)
_SKIN_DARK = np.array([0.74, 0.53, 0.42], np.float32)
_PIGMENT = np.array([0.44, 0.26, 0.16], np.float32)
_VEIL = np.array([0.42, 0.42, 0.50], np.float32)  # blue-grey tint some lesions show


def _render(keys: np.ndarray, labels: np.ndarray, size: int, site: _SiteParams | None) -> np.ndarray:
    n = keys.size
    f32 = np.float32

    def u(name: str, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
        return (lo + (hi - lo) * _uniform(keys, _D[name])).astype(f32)[:, None, None]

    half = (size - 1) / 2
    x = (np.arange(size, dtype=f32) - f32(half))[None, None, :]
    y = (np.arange(size, dtype=f32) - f32(half))[None, :, None]
    ts = max(1.0, size / 64)  # texture periods are in 64-px pixels; never finer than that

    # Skin: tone between light and dark, per-channel jitter, a slow brightness wave, and the dark
    # corners of a dermoscope's circular field of view.
    tone = u("skin_tone")[:, None]
    skin = _SKIN_LIGHT[None, :, None, None] * (1 - tone) + _SKIN_DARK[None, :, None, None] * tone
    skin = skin + np.concatenate([u(f"skin_{c}", -0.03, 0.03)[:, None] for c in "rgb"], axis=1)
    sa = u("shade_angle", 0, 2 * np.pi)
    shade = 1 + u("shade_amp", 0.0, 0.08) * np.cos(
        (x * np.cos(sa) + y * np.sin(sa)) * (_TWO_PI / (u("shade_len", 1.0, 2.5) * f32(size)))
        + u("shade_phase", 0, 2 * np.pi)
    )
    rr = np.sqrt(x * x + y * y) * f32(1 / (size / 2))
    vignette = 1 - u("vignette", 0.0, 0.85) * _smoothstep((rr - f32(0.95)) * f32(1 / 0.45))

    # Lesion outline: an ellipse whose radius is modulated by harmonics 2..6 of the polar angle.
    cx = u("cx", -0.12, 0.12) * f32(size)
    cy = u("cy", -0.12, 0.12) * f32(size)
    radius = u("radius", 0.19, 0.35) * f32(size)
    aspect = u("aspect", 0.65, 1.0)
    psi = u("orient", 0, np.pi)
    cp, sp = np.cos(psi), np.sin(psi)
    dx, dy = x - cx, y - cy
    xr = dx * cp + dy * sp
    yr = (dy * cp - dx * sp) / aspect
    d = np.sqrt(xr * xr + yr * yr) + f32(1e-6)
    c1, s1 = xr / d, yr / d
    ck, sk = c1, s1
    rad = np.ones_like(d)
    for k in range(2, 7):
        # cos/sin(k*theta) by complex multiplication: no per-pixel arctan2 or cos needed.
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        amp = u(f"h{k}a", 0.0, 0.22 / (k - 1) ** 0.7)
        ph = u(f"h{k}p", 0, 2 * np.pi)
        rad += amp * (np.cos(ph) * ck + np.sin(ph) * sk)
    edge = radius * np.maximum(rad, f32(0.35))
    border = u("border", 0.6, 3.0) * f32(ts)
    mask = _smoothstep((edge - d) / (2 * border) + f32(0.5)) * u("opacity", 0.8, 1.0)

    # Texture coordinates: relative to the lesion centre and gently warped (shared by all
    # classes) so that periodic patterns wobble like real tissue instead of being ruler-straight.
    def wave(coord: np.ndarray, i: int) -> np.ndarray:  # a 1-D field: broadcasting keeps it cheap
        freq = _TWO_PI / (u(f"warp_l{i}", 14, 28) * f32(ts))
        return u(f"warp_a{i}", 0.3, 1.6) * f32(ts) * np.sin(coord * freq + u(f"warp_p{i}", 0, 2 * np.pi))

    tx = (x - cx) + wave(y, 1)
    ty = (y - cy) + wave(x, 2)

    tex = np.empty((n, size, size), f32)
    for cls in np.unique(labels):
        sel = np.flatnonzero(labels == cls)
        ctx = _Ctx(
            np.broadcast_to(tx, (n, size, size))[sel],
            np.broadcast_to(ty, (n, size, size))[sel],
            keys[sel],
            radius[sel],
            ts,
        )
        tex[sel] = _TEXTURES[int(cls)](ctx)

    # Pigment: brown of random darkness, optional blue-grey veil, darker towards the centre, and
    # modulated by the class texture. Same distributions for every class.
    veil = u("pig_veil", 0.0, 0.35)[:, None]
    bright = u("pig_bright", 0.55, 1.2)[:, None]
    pig = _PIGMENT[None, :, None, None] * bright
    pig = pig + np.concatenate([u(f"pig_{c}", -0.035, 0.035)[:, None] for c in "rgb"], axis=1)
    pig = pig * (1 - veil) + _VEIL[None, :, None, None] * veil * bright

    # Per-pixel work stays on one-channel fields; colour enters only in the final products
    # img = skin * skin_w + pig * lesion_w, which saves two thirds of the arithmetic.
    np.clip(tex, f32(-3.0), f32(3.0), out=tex)
    tex *= -u("tex_contrast", 0.3, 0.6)
    tex += f32(1.0)
    centre = np.minimum(d / edge, f32(1.0))
    centre -= f32(1.0)
    centre *= u("pig_grad", 0.0, 0.3)
    centre += f32(1.0)
    lesion_w = tex
    lesion_w *= centre
    lesion_w *= mask
    skin_w = shade * vignette
    skin_w = skin_w * (1 - mask)

    # Occasional hairs (class-independent): thin, slightly curved dark lines over everything.
    # They are a real nuisance in dermoscopy and keep "any thin dark line" from meaning a class.
    # Only images that have a given hair pay for drawing it.
    for h, prob in enumerate(_HAIR_PROB):
        hs = np.flatnonzero(_uniform(keys, _D[f"hair{h}_on"]) < prob)
        if hs.size == 0:
            continue

        def hu(name: str, lo: float, hi: float) -> np.ndarray:
            return (lo + (hi - lo) * _uniform(keys[hs], _D[f"hair{h}_{name}"])).astype(f32)[:, None, None]

        ang = hu("angle", 0, np.pi)
        ca, sa_ = np.cos(ang), np.sin(ang)
        along = x * ca + y * sa_
        across = y * ca - x * sa_ - hu("offset", -0.45, 0.45) * f32(size)
        across = across - hu("curve", -1.0, 1.0) * f32(0.4 / size) * along * along  # bow <= 10% of size
        line = _smoothstep(f32(1.0) - np.abs(across) / (hu("width", 0.7, 1.2) * f32(ts)))
        factor = 1 - hu("dark", 0.5, 0.85) * line
        skin_w[hs] *= factor
        lesion_w[hs] *= factor

    # A whisper of luminance noise so flat regions are not perfectly flat.
    n1, n2 = _pixel_uniforms(keys, _SALT_PIXEL_BASE, (size, size))
    noise = n1
    noise += n2
    noise -= f32(1.0)
    noise *= f32(0.006)

    if site is None:
        # Fold the 8-bit scale and rounding offset into the per-image colours and the noise field.
        noise *= f32(255)
        noise += f32(0.5)
        img = (skin * f32(255)) * skin_w[:, None]
        img += (pig * f32(255)) * lesion_w[:, None]
        img += noise[:, None]
    else:
        img = skin * skin_w[:, None]
        img += pig * lesion_w[:, None]
        img += noise[:, None]
        img = _apply_site(img, keys, site, ts)
        img *= f32(255)
        img += f32(0.5)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def _apply_site(img: np.ndarray, keys: np.ndarray, site: _SiteParams, ts: float) -> np.ndarray:
    f32 = np.float32
    img = _gaussian_blur(img, site.sigma * ts)
    img = np.clip(img, 0.0, 1.0) ** f32(site.gamma)
    img = img * site.gain[None, :, None, None] + site.offset[None, :, None, None]
    # Sensor noise is per (image, site, pixel, channel): the same image seen at another site gets
    # other noise, like a second camera would.
    size = img.shape[-1]
    with np.errstate(over="ignore"):
        nkeys = _mix(keys ^ np.uint64(site.noise_key))
    n1, n2 = _pixel_uniforms(nkeys, _SALT_SITE_NOISE, (3, size, size))
    return img + (n1 + n2 - f32(1.0)) * f32(site.noise * math.sqrt(6.0))


def generate(
    indices: np.ndarray | range,
    seed: int,
    image_size: int = 64,
    num_classes: int = 7,
    site: int | None = None,
    site_shift: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Render images ``indices`` of the synthetic data set ``seed``.

    Returns ``(images, labels)``: uint8 ``(N, 3, image_size, image_size)`` and int64 ``(N,)``.
    Image ``i`` depends only on ``(seed, i, image_size, num_classes)`` and, when
    ``site is not None and site_shift > 0``, on ``(site, site_shift)`` through an acquisition
    shift (blur, colour response, sensor noise) whose strength scales with ``site_shift``
    (1.0 = clearly visible, like different hospitals' cameras).
    """
    k = _check_num_classes(num_classes)
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    size = int(image_size)
    shift = float(site_shift)
    if not math.isfinite(shift) or shift < 0:
        raise ValueError(f"site_shift must be a finite number >= 0, got {site_shift!r}")
    if site is not None and (isinstance(site, bool) or not isinstance(site, (int, np.integer)) or site < 0):
        raise ValueError(f"site must be None or an integer >= 0, got {site!r}")
    idx = _as_indices(indices)

    keys = _keys(idx, seed)
    labels = _labels_from_keys(keys, k)
    params = _SiteParams(seed, int(site), shift) if site is not None and shift > 0 else None
    images = np.empty((idx.size, 3, size, size), np.uint8)
    # Chunking only bounds memory; every operation is per image, so chunk boundaries cannot
    # change any pixel.
    for start in range(0, idx.size, _CHUNK):
        sl = slice(start, start + _CHUNK)
        images[sl] = _render(keys[sl], labels[sl], size, params)
    return images, labels
