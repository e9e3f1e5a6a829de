"""Batched random augmentations (one affine warp + colour jitter per image, no Python loop over images)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .data.images import MEAN, STD


def random_view(x: Tensor, generator: torch.Generator | None = None, min_scale: float = 0.75,
                max_shift: float = 0.1, jitter: float = 0.2, colour: float = 0.0) -> Tensor:
    """A random rotation/flip/zoom/shift and brightness/contrast change of every image in x (B,C,H,W float,
    normalised by fgssl.data.images.to_float); with `colour` > 0 also each channel's intensity times U(1 - colour,
    1 + colour), drawn per image.

    Lesions have no canonical orientation, so any rotation is a valid view. Hospitals' cameras differ in colour
    response: without the per-channel gain a model can tell a site by its colour cast, and with label skew between
    sites the cast becomes a cue for the class.
    """
    b, dev = x.shape[0], x.device

    def u(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    angle = u(b) * 2 * math.pi
    scale = min_scale + (1 - min_scale) * u(b)
    flip = torch.where(u(b) < 0.5, -1.0, 1.0)
    shift = (u(b, 2) * 2 - 1) * max_shift
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if colour > 0:  # a gain on the raw intensities, in the normalised space: x' = g·x + (g - 1)·mean/std
        gain = (1 + (u(b, x.shape[1]) * 2 - 1) * colour).view(b, -1, 1, 1)
        mean, std = MEAN.to(dev), STD.to(dev)
        out = out * gain + (gain - 1) * mean / std
    if jitter > 0:
        brightness = ((u(b) * 2 - 1) * jitter).view(b, 1, 1, 1)
        contrast = (1 + (u(b) * 2 - 1) * jitter).view(b, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * contrast + mean + brightness
    return out
