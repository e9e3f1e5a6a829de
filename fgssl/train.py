"""Progressive training loops: the FG-SSL stage (Barlow Twins on jigsaw views) and PMG fine-tuning.

Both run "E epochs (or S batches) from the model's current weights", so a Flower client calls them for its local
work and `fgssl train` calls them centrally. Each batch makes four optimizer steps, one per branch, coarse to fine
jigsaw granularity first, then the unshuffled concat branch with weight `loss.concat_weight`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .augment import random_view
from .config import Config
from .data.images import ImageSet, to_float
from .jigsaw import jigsaw
from .losses import barlow_twins_loss
from .metrics import classification_metrics
from .model import BRANCHES, CONCAT, FGSSLNet

PHASES = ("ssl", "finetune")
BatchCallback = Callable[[int, int, dict[str, float]], None]
LOSS_NAMES = ("loss_block1", "loss_block2", "loss_block3", "loss_concat")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(progress: float, schedule: str) -> float:
    """Multiplier of the base learning rate at `progress` in [0, 1] of the whole schedule."""
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def make_optimizer(model: FGSSLNet, cfg: Config, phase: str) -> torch.optim.SGD:
    """SGD with the backbone at `lr_backbone` and new layers at `lr_new`; the SSL stage leaves classifiers alone."""
    backbone, new = model.parameter_groups()
    frozen = set()
    for part in cfg.train.frozen:
        for prm in getattr(model, part).parameters():
            prm.requires_grad_(False)  # no gradient, no per-sample hooks, no backward through it
            frozen.add(id(prm))
    backbone = [p for p in backbone if id(p) not in frozen]
    new = [p for p in new if id(p) not in frozen]
    if phase == "ssl":
        skip = {id(p) for p in model.classifiers.parameters()}
        new = [p for p in new if id(p) not in skip]
    o = cfg.optim
    scale = o.ssl_lr_scale if phase == "ssl" else 1.0
    groups = [{"params": backbone, "lr": o.lr_backbone * scale, "base_lr": o.lr_backbone * scale},
              {"params": new, "lr": o.lr_new * scale, "base_lr": o.lr_new * scale}]
    return torch.optim.SGD(groups, lr=o.lr_new * scale, momentum=o.momentum, weight_decay=o.weight_decay)


def train_mode(model: FGSSLNet, cfg: Config) -> None:
    """Training mode, except frozen parts, whose BatchNorm statistics must not drift either."""
    model.train()
    for part in cfg.train.frozen:
        getattr(model, part).eval()


def trained_prefixes(phase: str, frozen: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Parameter-name prefixes a phase changes (the federation aggregates only these)."""
    if phase == "ssl":
        prefixes: tuple[str, ...] = ("backbone.", "blocks.", "heads.")
    elif phase == "finetune":
        prefixes = ("backbone.", "blocks.", "heads.", "classifiers.")
    else:
        raise ValueError(f"unknown phase '{phase}'; choose from {', '.join(PHASES)}")
    return tuple(p for p in prefixes if p[:-1] not in frozen)


@dataclass
class LocalResult:
    phase: str
    batches: int
    optimizer_steps: int
    num_examples: int
    losses: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float | int | str]:
        return {"phase": self.phase, "batches": self.batches, "optimizer_steps": self.optimizer_steps,
                "num_examples": self.num_examples, **self.losses}


def _step(optimizer: torch.optim.Optimizer, loss: Tensor) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def ssl_batch(model: FGSSLNet, v1: Tensor, v2: Tensor, cfg: Config, optimizer: torch.optim.Optimizer,
              generator: torch.Generator | None) -> list[float]:
    """Four optimizer steps on two views of a batch: BT(e_b(J_nb(v1)), e_b(v2)) for b = 1..3, then w·BT(e_cat(v1), e_cat(v2))."""
    lam, variant = cfg.loss.bt_lambda, cfg.loss.bt_variant
    losses = []
    for branch, n in enumerate(cfg.model.granularities):
        shuffled, _ = jigsaw(v1, n, generator)
        z1 = model(shuffled, (branch,), with_logits=False).embeddings[branch]
        z2 = model(v2, (branch,), with_logits=False).embeddings[branch]
        losses.append(_step(optimizer, barlow_twins_loss(z1, z2, lam, variant)))
    z1 = model(v1, (CONCAT,), with_logits=False).embeddings[CONCAT]
    z2 = model(v2, (CONCAT,), with_logits=False).embeddings[CONCAT]
    losses.append(_step(optimizer, cfg.loss.concat_weight * barlow_twins_loss(z1, z2, lam, variant)))
    return losses


def finetune_batch(model: FGSSLNet, view: Tensor, y: Tensor, cfg: Config, optimizer: torch.optim.Optimizer,
                   generator: torch.Generator | None) -> list[float]:
    """Four optimizer steps on one batch: CE(cls_b(J_nb(x)), y) for b = 1..3, then w·CE(cls_cat(x), y)."""
    losses = []
    for branch, n in enumerate(cfg.model.granularities):
        shuffled, _ = jigsaw(view, n, generator)
        logits = model(shuffled, (branch,)).logits[branch]
        losses.append(_step(optimizer, F.cross_entropy(logits, y)))
    logits = model(view, (CONCAT,)).logits[CONCAT]
    losses.append(_step(optimizer, cfg.loss.concat_weight * F.cross_entropy(logits, y)))
    return losses


def train_local(model: FGSSLNet, data: ImageSet, phase: str, cfg: Config, *, epochs: int = 1,
                max_batches: int | None = None, progress: tuple[float, float] = (0.0, 1.0),
                generator: torch.Generator | None = None, device: torch.device | None = None,
                on_batch: BatchCallback | None = None) -> LocalResult:
    """Train `model` in place for `epochs` passes over `data` (or at most `max_batches` batches).

    `progress` is the slice of the whole run's learning-rate schedule that this call covers, so that a federated
    round r of R continues the global cosine schedule instead of restarting it.
    """
    trained_prefixes(phase)
    device = device or next(model.parameters()).device
    bs = cfg.train.batch_size
    # BT standardises over the batch: a batch of 1 would be undefined, so drop the ragged tail in SSL.
    drop_last = phase == "ssl"
    per_epoch = data.num_batches(bs, drop_last)
    total = per_epoch * epochs if max_batches is None else min(max_batches, per_epoch * max(epochs, 1))
    if total == 0 or len(data) < 2:
        raise ValueError(f"{len(data)} training examples is too few for one batch of the '{phase}' phase")
    optimizer = make_optimizer(model, cfg, phase)
    train_mode(model, cfg)
    sums = np.zeros(4)
    done = 0
    while done < total:
        balanced = phase == "finetune" and cfg.train.class_balance == "sampler"
        order = data.balanced_order(generator) if balanced else None
        for xb, yb in data.batches(bs, shuffle=True, generator=generator, drop_last=drop_last, order=order):
            if done == total:
                break
            if xb.shape[0] < 2:
                continue
            p = progress[0] + (progress[1] - progress[0]) * done / total
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_factor(p, cfg.optim.schedule)
            x = to_float(xb, device)
            if phase == "ssl":
                losses = ssl_batch(model, random_view(x, generator), random_view(x, generator), cfg, optimizer,
                                   generator)
            else:
                losses = finetune_batch(model, random_view(x, generator), yb.to(device), cfg, optimizer, generator)
            for v in losses:
                if not math.isfinite(v):
                    raise FloatingPointError(f"{phase} loss became {v} at batch {done + 1}; lower the learning rate")
            sums += losses
            done += 1
            if on_batch is not None:
                on_batch(done, total, dict(zip(LOSS_NAMES, losses)))
    means = sums / max(done, 1)
    result = {k: float(v) for k, v in zip(LOSS_NAMES, means)}
    result["loss"] = float(means.sum())
    return LocalResult(phase, done, done * len(BRANCHES), len(data), result)


@torch.no_grad()
def predict(model: FGSSLNet, data: ImageSet, batch_size: int = 256,
            device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, combined logits) over `data`, in order."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    for xb, _ in data.batches(batch_size):
        scores.append(model(to_float(xb, device)).combined_logits().float().cpu())
    model.train(was_training)
    return data.labels.numpy(), torch.cat(scores).numpy()


def evaluate(model: FGSSLNet, data: ImageSet, batch_size: int = 256,
             device: torch.device | None = None) -> dict:
    """Full metric set of the summed-logit prediction, plus the cross-entropy of that prediction."""
    labels, scores = predict(model, data, batch_size, device)
    out = classification_metrics(labels, scores, data.class_names)
    out["loss"] = float(F.cross_entropy(torch.from_numpy(scores), torch.from_numpy(labels)))
    return out
