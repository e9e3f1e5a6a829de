"""Batched n x n jigsaw shuffling with one random permutation per image.

PMG's generator draws one permutation per batch and loops over tiles in Python. Here the whole batch moves in
one indexing op (contiguous tile rows when the size divides, a per-pixel gather otherwise), with no Python loop
over images or tiles.
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
    b, c, h, w = x.shape
    if perm.shape != (b, n * n):
        raise ValueError(f"permutation must have shape ({b}, {n * n}), got {tuple(perm.shape)}")
    perm = perm.to(x.device)
    if n * th == h and n * tw == w:
        return _select_tile_rows(x, perm, n)
    return _gather_pixels(x, perm, n)


def _select_tile_rows(x: Tensor, perm: Tensor, n: int) -> Tensor:
    """Divisible sizes: every image row splits into n contiguous tile rows of width w/n, so one index_select
    over (B*C*H*n, w/n) rows moves the whole batch, with an index n·H·B·C long (not one per pixel)."""
    b, c, h, w = x.shape
    th, tw = h // n, w // n
    dev = x.device
    src_i = (perm // n).view(b, 1, n, 1, n)  # dims: image, channel, grid row, row within tile, grid column
    src_j = (perm % n).view(b, 1, n, 1, n)
    r = torch.arange(th, device=dev).view(1, 1, 1, th, 1)
    plane = torch.arange(b * c, device=dev).view(b, c, 1, 1, 1)
    rows = ((plane * h + src_i * th + r) * n + src_j).reshape(-1)
    return x.contiguous().view(b * c * h * n, tw).index_select(0, rows).view(b, c, h, w)


def _gather_pixels(x: Tensor, perm: Tensor, n: int) -> Tensor:
    """Any size: one source index per output pixel and a single gather; the leftover border maps to itself."""
    b, c, h, w = x.shape
    th, tw = h // n, w // n
    dev = x.device
    rows = (perm // n).view(b, n, n, 1, 1) * th + torch.arange(th, device=dev).view(1, 1, 1, th, 1)
    cols = (perm % n).view(b, n, n, 1, 1) * tw + torch.arange(tw, device=dev).view(1, 1, 1, 1, tw)
    # (b, grid_row, grid_col, r, s) -> (b, grid_row, r, grid_col, s): raster order of the output core
    core = (rows * w + cols).permute(0, 1, 3, 2, 4).reshape(b, n * th, n * tw)
    full = torch.arange(h * w, device=dev).view(1, h, w).repeat(b, 1, 1)
    full[:, : n * th, : n * tw] = core
    src = full.view(b, 1, h * w)
    return x.reshape(b, c, h * w).gather(2, src.expand(b, c, h * w)).view(b, c, h, w)


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
