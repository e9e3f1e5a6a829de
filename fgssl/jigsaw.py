"""Batched n x n jigsaw shuffling with one random permutation per image.

PMG's generator draws one permutation per batch and loops over tiles in Python. Here the tiles of the whole batch
are gathered in one indexing op, so cost does not grow with the batch size or the number of tiles in Python.
When the image size is not a multiple of n, the n*floor(H/n) x n*floor(W/n) top-left region is shuffled and the
leftover border rows/columns stay where they are, so the output keeps the input's shape.
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_permutations(batch: int, n: int, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> Tensor:
    """(batch, n*n) int64: an independent uniform permutation of the n*n tiles for every image."""
    keys = torch.rand(batch, n * n, generator=generator, device=device)
    return keys.argsort(dim=1)


def _tile_geometry(x: Tensor, n: int) -> tuple[int, int]:
    if x.dim() != 4:
        raise ValueError(f"jigsaw expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if n < 1:
        raise ValueError(f"jigsaw granularity must be >= 1, got {n}")
    h, w = x.shape[-2:]
    if h < n or w < n:
        raise ValueError(f"image of {h}x{w} px is smaller than a {n}x{n} jigsaw grid")
    return h // n, w // n


def apply_permutation(x: Tensor, perm: Tensor, n: int) -> Tensor:
    """Place tile perm[b, j] of image b at grid position j (row-major). Returns a new tensor."""
    th, tw = _tile_geometry(x, n)
    b, c = x.shape[:2]
    if perm.shape != (b, n * n):
        raise ValueError(f"permutation must have shape ({b}, {n * n}), got {tuple(perm.shape)}")
    core = x[:, :, : n * th, : n * tw]
    # (B, C, n, th, n, tw) -> (B, n*n, C, th, tw): one row per tile, row-major over the grid.
    tiles = core.reshape(b, c, n, th, n, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, n * n, c, th, tw)
    rows = torch.arange(b, device=x.device).unsqueeze(1)
    shuffled = tiles[rows, perm.to(x.device)]
    shuffled = shuffled.reshape(b, n, n, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, n * th, n * tw)
    if n * th == x.shape[-2] and n * tw == x.shape[-1]:
        return shuffled
    out = x.clone()
    out[:, :, : n * th, : n * tw] = shuffled
    return out


def jigsaw(x: Tensor, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Shuffle each image's n x n tiles with its own permutation. Returns (shuffled, permutations).

    n = 1 returns the input unchanged (identity permutation). `generator` must live on x's device.
    """
    _tile_geometry(x, n)
    if n == 1:
        return x, torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)
    perm = random_permutations(x.shape[0], n, generator=generator, device=x.device)
    return apply_permutation(x, perm, n), perm


def unjigsaw(x: Tensor, perm: Tensor, n: int) -> Tensor:
    """Inverse of `jigsaw` for the permutations it returned."""
    if n == 1:
        return x
    return apply_permutation(x, perm.argsort(dim=1), n)
