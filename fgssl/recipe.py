"""The progressive recipe, defined once for the plain loop (fgssl.train) and the DP loop (fgssl.privacy.dp_train).

Per batch: one optimizer step per branch, coarse-to-fine as configured: branch b trains on J_{n_b}(x) with weight 1,
then the concat branch on the unshuffled x with weight `loss.concat_weight`. The learning rate follows one schedule
over the whole run (a federated round covers a slice of it), and a local call runs a fixed number of batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Generator, Tensor
from torch.optim import Optimizer

from .config import Config
from .jigsaw import jigsaw
from .model import BRANCHES, CONCAT, PLAIN

LOSS_NAMES = ("loss_block1", "loss_block2", "loss_block3", "loss_concat")
STEPS_PER_BATCH = len(BRANCHES)  # of the method; the DP loop and its accounting know only this one


@dataclass(frozen=True)
class Step:
    """One optimizer step of a progressive batch: which branch, on which jigsaw granularity (None: unshuffled)."""

    branch: int
    granularity: int | None
    weight: float

    def view(self, x: Tensor, generator: Generator | None) -> Tensor:
        """The input this step trains on: x cut into n×n tiles and shuffled per image, or x itself."""
        if self.granularity is None or x.shape[0] == 0:
            return x
        return jigsaw(x, self.granularity, generator)[0]


def progressive_steps(cfg: Config) -> tuple[Step, ...]:
    """The steps of one batch, in order: the jigsaw branches, then the concat branch (the plain baseline: one
    unshuffled step)."""
    if cfg.model.architecture == "plain":
        return (Step(PLAIN, None, 1.0),)
    steps = [Step(b, n, 1.0) for b, n in enumerate(cfg.model.granularities)]
    return (*steps, Step(CONCAT, None, cfg.loss.concat_weight))


def loss_names(cfg: Config) -> tuple[str, ...]:
    """The names of a batch's step losses, in step order."""
    return ("loss_plain",) if cfg.model.architecture == "plain" else LOSS_NAMES


def lr_factor(progress: float, schedule: str) -> float:
    """Multiplier of the base learning rate at `progress` in [0, 1] of the whole schedule."""
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def set_learning_rate(optimizer: Optimizer, cfg: Config, progress: tuple[float, float], done: int,
                      total: int) -> None:
    """Before batch `done` of `total`: the rate at that point of the run-wide schedule slice `progress`."""
    p = progress[0] + (progress[1] - progress[0]) * done / total
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * lr_factor(p, cfg.optim.schedule)


def planned_batches(per_epoch: int, epochs: int, max_batches: int | None) -> int:
    """Batches of one local call: `epochs` passes of `per_epoch` batches, capped at `max_batches`."""
    return per_epoch * epochs if max_batches is None else min(max_batches, per_epoch * max(epochs, 1))


def check_finite(losses: list[float | None], phase: str, batch: int, hint: str = "lower the learning rate") -> None:
    for v in losses:
        if v is not None and not math.isfinite(v):
            raise FloatingPointError(f"{phase} loss became {v} at batch {batch}; {hint}")
