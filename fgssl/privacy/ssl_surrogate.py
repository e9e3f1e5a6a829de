"""A Barlow Twins objective whose per-sample gradients are truly per-sample (docs/privacy.md).

The Barlow Twins loss standardises every embedding dimension over the batch and builds C from all samples at once, so
the "per-sample gradient" Opacus computes for it depends on every other sample of the batch and DP-SGD's analysis does
not apply. This module replaces it, for one sampled batch, by two releases:

1. Per-sample normalisation: each embedding vector is centred and scaled on its own (ẑ = (z − mean(z)) / std(z), over
   its D entries), so ‖ẑ‖ ≤ √D and nothing couples two samples.
2. The statistic S = Σ_i ẑ'_i ẑ''_iᵀ (D × D) goes through its own Gaussian mechanism. One sample adds or removes one
   outer product, of Frobenius norm ‖ẑ'_i‖·‖ẑ''_i‖ ≤ D, so the L2 sensitivity is D and the noise is N(0, (σ_s·D)²)
   per entry. C̃ = S̃ / (expected batch size) estimates C.
3. G = ∂F/∂C at C̃, where F is the Barlow Twins objective as a function of C. G is a function of a DP release only.
4. The decomposable surrogate Σ_i ⟨G, ẑ'_i ẑ''_iᵀ⟩ / (expected batch size): sample i's term depends on sample i and G
   alone, so its gradient is per-sample and DP-SGD (clip, add σ_g·C noise) applies. At C̃ = C (no noise) its gradient
   is exactly ∇_θ F(C(θ)), the gradient of the per-sample-normalised Barlow Twins loss.

Everything here is plain torch; dp_train.py wires it to Opacus' per-sample gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..losses import loss_from_correlation

NORMALIZE_EPS = 1e-5


def per_sample_normalize(z: Tensor, eps: float = NORMALIZE_EPS) -> Tensor:
    """Centre and scale each row of z (N, D) over its own D entries: ‖ẑ_i‖ = √D·√(v_i/(v_i+eps)) ≤ √D.

    Unlike the batch standardisation of the Barlow Twins loss, row i of the result depends on row i of z only.
    """
    if z.dim() != 2:
        raise ValueError(f"embeddings must be (N, D); got shape {tuple(z.shape)}")
    mean = z.mean(dim=1, keepdim=True)
    var = z.var(dim=1, unbiased=False, keepdim=True)
    zn = (z - mean) / torch.sqrt(var + eps)
    # In exact arithmetic ‖ẑ_i‖ ≤ √D; in float32 rounding can overshoot by ~1e-7 relative, and the statistic's
    # sensitivity D must hold for every computed row. Rows are pulled just inside the bound (a per-row factor, so
    # row i still depends on z_i only; for all practical rows the factor is 1 - 1e-6 or 1).
    limit = math.sqrt(z.shape[1]) * (1.0 - 1e-6)
    norms = zn.norm(dim=1, keepdim=True)
    return zn * torch.clamp(limit / norms.clamp(min=1e-30), max=1.0)


def correlation_statistic(z1n: Tensor, z2n: Tensor) -> Tensor:
    """S = Σ_i ẑ'_i ẑ''_iᵀ (D, D): the sum of per-sample outer products (an empty batch gives zeros)."""
    if z1n.shape != z2n.shape or z1n.dim() != 2:
        raise ValueError(f"embeddings must both be (N, D); got {tuple(z1n.shape)} and {tuple(z2n.shape)}")
    return z1n.transpose(0, 1) @ z2n


def statistic_sensitivity(dim: int) -> float:
    """L2 (Frobenius) sensitivity of S under adding/removing one sample whose ẑ', ẑ'' have norm ≤ √D: D."""
    return float(dim)


def release_statistic(s: Tensor, noise_multiplier: float, generator: torch.Generator | None = None) -> Tensor:
    """S + N(0, (σ_s·D)²) on every entry: the Gaussian mechanism for S with sensitivity D."""
    if s.dim() != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"the statistic must be a square (D, D) matrix; got shape {tuple(s.shape)}")
    std = noise_multiplier * statistic_sensitivity(s.shape[0])
    if std == 0:
        return s.clone()
    noise = torch.normal(0.0, std, size=tuple(s.shape), generator=generator, device=s.device, dtype=s.dtype)
    return s + noise


def objective_gradient(c: Tensor, lam: float = 5e-3, variant: str = "standard", weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """(G, F) with F = weight · BT(C) (losses.loss_from_correlation) and G = ∂F/∂C at `c`; both detached.

    Standard form: G_kk = 2·w·(C_kk − 1), G_kl = 2·w·λ·C_kl (k ≠ l).
    """
    c = c.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        f = weight * loss_from_correlation(c, lam, variant)
        (g,) = torch.autograd.grad(f, c)
    return g.detach(), f.detach()


def surrogate_per_sample(z1n: Tensor, z2n: Tensor, g: Tensor) -> Tensor:
    """ℓ_i = ⟨G, ẑ'_i ẑ''_iᵀ⟩ = ẑ'_iᵀ G ẑ''_i, shape (N,). ℓ_i depends on sample i and the fixed G only."""
    return torch.einsum("nk,kl,nl->n", z1n, g, z2n)


def per_sample_normalized_bt_loss(z1: Tensor, z2: Tensor, lam: float = 5e-3, variant: str = "standard",
                                  divisor: float | None = None, weight: float = 1.0) -> Tensor:
    """weight · F(C) with C = Σ_i ẑ'_i ẑ''_iᵀ / divisor (default: the batch size): the non-private objective that
    the surrogate's gradient equals when the statistic carries no noise."""
    z1n, z2n = per_sample_normalize(z1), per_sample_normalize(z2)
    d = float(z1.shape[0]) if divisor is None else float(divisor)
    return weight * loss_from_correlation(correlation_statistic(z1n, z2n) / d, lam, variant)


def noise_bias(dim: int, entry_std: float, lam: float = 5e-3, variant: str = "standard") -> float:
    """E[F(C + E)] − F(C) when E has independent N(0, s²) entries (s = `entry_std`): F is quadratic in C, so the
    noise only adds a constant. Subtracting it from F(C̃) gives an unbiased estimate of F(C)."""
    s2 = float(entry_std) ** 2
    if variant == "standard":
        return dim * s2 + lam * dim * (dim - 1) * s2
    if variant == "authors":
        return lam**2 * dim * dim * s2
    raise ValueError(f"unknown Barlow Twins variant '{variant}'; choose 'standard' or 'authors'")


@dataclass
class StatisticRelease:
    """What one sampled batch releases through the statistic mechanism, and what is derived from it."""

    noisy_statistic: Tensor   # S̃ = S + N(0, (σ_s D)²)
    correlation: Tensor       # C̃ = S̃ / expected batch size
    direction: Tensor         # G = ∂F/∂C at C̃
    objective: float          # F(C̃): a function of the release only, so safe to report
    objective_debiased: float  # F(C̃) − E[noise contribution]: unbiased for F(S / expected batch size)


def release_direction(z1n: Tensor, z2n: Tensor, *, noise_multiplier: float, expected_batch_size: float,
                      lam: float = 5e-3, variant: str = "standard", weight: float = 1.0,
                      generator: torch.Generator | None = None) -> StatisticRelease:
    """Release S through the Gaussian mechanism and derive C̃, G and F(C̃) from it (no gradient flows through)."""
    if expected_batch_size <= 0:
        raise ValueError(f"expected_batch_size must be > 0, got {expected_batch_size}")
    s = correlation_statistic(z1n.detach(), z2n.detach())
    s_noisy = release_statistic(s, noise_multiplier, generator)
    c = s_noisy / expected_batch_size
    g, f = objective_gradient(c, lam, variant, weight)
    entry_std = noise_multiplier * statistic_sensitivity(s.shape[0]) / expected_batch_size
    bias = weight * noise_bias(s.shape[0], entry_std, lam, variant)
    return StatisticRelease(s_noisy, c, g, float(f), float(f) - bias)
