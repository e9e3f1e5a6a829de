"""Barlow Twins loss (standard form and the FG-SSL authors' variant)."""

from __future__ import annotations

import torch
from torch import Tensor


def standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero-mean, unit-variance per embedding dimension over the batch (BatchNorm1d without affine)."""
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation(z1: Tensor, z2: Tensor) -> Tensor:
    """C = Z1ᵀ Z2 / N for batch-standardised embeddings: (D, D)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"embeddings must both be (N, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError("the Barlow Twins loss needs at least 2 samples per batch")
    return standardize(z1).T @ standardize(z2) / z1.shape[0]


def loss_from_correlation(c: Tensor, lam: float = 5e-3, variant: str = "standard") -> Tensor:
    """'standard': Σ_k (1 − C_kk)² + λ Σ_{k≠l} C_kl².  'authors': λ² ‖C − I‖²_F, as in the FG-SSL code."""
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    if variant == "standard":
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = (c * (1 - eye)).pow(2).sum()
        return on_diag + lam * off_diag
    if variant == "authors":
        return lam**2 * (c - eye).pow(2).sum()
    raise ValueError(f"unknown Barlow Twins variant '{variant}'; choose 'standard' or 'authors'")


def barlow_twins_loss(z1: Tensor, z2: Tensor, lam: float = 5e-3, variant: str = "standard") -> Tensor:
    return loss_from_correlation(cross_correlation(z1, z2), lam, variant)
