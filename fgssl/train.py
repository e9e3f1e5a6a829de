"""Progressive training loops: the FG-SSL stage (Barlow Twins on jigsaw views) and PMG fine-tuning.

Both run "E epochs (or S batches) from the model's current weights", so a Flower client calls them for its local
work and `fgssl train` calls them centrally. The steps of a batch, the learning-rate schedule and the batch count
are fgssl.recipe's, shared with the DP loop.
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
from .config import Config, ConfigError
from .data.images import ImageSet, to_float
from .losses import barlow_twins_loss
from .metrics import classification_metrics
from .model import FGSSLNet
from .phases import trained_prefixes
from .recipe import check_finite, loss_names, planned_batches, progressive_steps, set_learning_rate

BatchCallback = Callable[[int, int, dict[str, float]], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The dtype of the forward passes under autocast, or None for plain float32 (train.precision)."""
    if cfg.train.precision == "bfloat16":
        return torch.bfloat16
    if cfg.train.precision == "auto" and device.type == "cuda" and cfg.privacy.mode != "sample":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return None


def _autocast(cfg: Config, device: torch.device) -> torch.autocast:
    dtype = autocast_dtype(cfg, device)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def make_optimizer(model: FGSSLNet, cfg: Config, phase: str) -> torch.optim.Optimizer:
    """`optim.optimizer` with the backbone at `lr_backbone` and new layers at `lr_new`; the SSL stage leaves
    classifiers alone."""
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
    scale = o.ssl_scale if phase == "ssl" else 1.0
    groups = [{"params": backbone, "lr": o.lr_backbone * scale, "base_lr": o.lr_backbone * scale},
              {"params": new, "lr": o.lr_new * scale, "base_lr": o.lr_new * scale}]
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr_new * scale, betas=(o.momentum, 0.999), weight_decay=o.decay)
    return torch.optim.SGD(groups, lr=o.lr_new * scale, momentum=o.momentum, weight_decay=o.decay)


def train_mode(model: FGSSLNet, cfg: Config) -> None:
    """Training mode, except frozen parts, whose BatchNorm statistics must not drift either."""
    model.train()
    for part in cfg.train.frozen:
        getattr(model, part).eval()


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
    """One step per progressive step: weight·BT(e_b(step view of v1), e_b(v2)) (jigsaw branches, then concat)."""
    lam, variant = cfg.loss.bt_lambda, cfg.loss.bt_variant
    losses = []
    for step in progressive_steps(cfg):
        with _autocast(cfg, v1.device):
            z1 = model(step.view(v1, generator), (step.branch,), with_logits=False).embeddings[step.branch]
            z2 = model(v2, (step.branch,), with_logits=False).embeddings[step.branch]
        # the cross-correlation in float32: bfloat16's 8-bit significand would blur its off-diagonal terms
        losses.append(_step(optimizer, step.weight * barlow_twins_loss(z1.float(), z2.float(), lam, variant)))
    return losses


def finetune_batch(model: FGSSLNet, view: Tensor, y: Tensor, cfg: Config, optimizer: torch.optim.Optimizer,
                   generator: torch.Generator | None, class_weights: Tensor | None = None,
                   logit_offset: Tensor | None = None) -> list[float]:
    """One step per progressive step: weight·CE(cls_b(step view of x) + logit_offset, y) (jigsaw branches, then
    concat)."""
    losses = []
    for step in progressive_steps(cfg):
        with _autocast(cfg, view.device):
            logits = model(step.view(view, generator), (step.branch,)).logits[step.branch]
        logits = logits.float() if logit_offset is None else logits.float() + logit_offset
        losses.append(_step(optimizer, step.weight * F.cross_entropy(logits, y, weight=class_weights)))
    return losses


def class_weights(labels: Tensor, num_classes: int, power: float) -> Tensor:
    """Per-class CE weights ∝ (1 / n_k)^power, scaled so that the mean weight over `labels` is 1."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    w = torch.where(counts > 0, counts.clamp(min=1).pow(-power), torch.zeros_like(counts))
    return w / w[labels].mean()


def logit_adjustment(labels: Tensor, num_classes: int, tau: float) -> Tensor:
    """tau·log(p_k), p_k the share of class k in `labels`. A class absent there gets -inf: its softmax share is 0, so
    its classifier row gets exactly no gradient (a tiny one would be blown up to a full step by Adam's scaling), and
    a site does not push down what only other sites can teach (as in FedRS's restricted softmax)."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    return torch.where(counts > 0, tau * torch.log(counts / counts.sum()), torch.full_like(counts, -math.inf))


def prior_adjustment(prior: tuple[float, ...], num_classes: int, tau: float) -> Tensor:
    """tau·log(π_k) for the declared public prior `train.class_prior` (normalised here)."""
    if len(prior) != num_classes:
        raise ConfigError("train.class_prior", f"has {len(prior)} shares for {num_classes} classes")
    p = torch.tensor(prior, dtype=torch.float32)
    return tau * torch.log(p / p.sum())


def logit_offset(cfg: Config, labels: Tensor, num_classes: int) -> Tensor | None:
    """The fine-tuning logits' offset of `train.class_balance: logit_adjust`: from the public prior when one is
    declared, else from the site's own labels; None for the other class-balance modes."""
    t = cfg.train
    if t.class_balance != "logit_adjust":
        return None
    if t.class_prior:
        return prior_adjustment(t.class_prior, num_classes, t.class_weight_power)
    return logit_adjustment(labels, num_classes, t.class_weight_power)


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
    total = planned_batches(data.num_batches(bs, drop_last), epochs, max_batches)
    if total == 0 or len(data) < 2:
        raise ValueError(f"{len(data)} training examples is too few for one batch of the '{phase}' phase")
    optimizer = make_optimizer(model, cfg, phase)
    train_mode(model, cfg)
    gpu = device.type == "cuda"
    # NHWC convolutions are cuDNN's fast path, and oneDNN's on the CPU (a fine-tuning batch of the default model
    # 0.86-0.91x the time on 2 CPU cores); the values are the same up to summation order.
    model.to(memory_format=torch.channels_last)
    weights = offset = None
    if phase == "finetune" and cfg.train.class_balance == "loss":
        weights = class_weights(data.labels, data.num_classes, cfg.train.class_weight_power).to(device)
    if phase == "finetune" and (adjust := logit_offset(cfg, data.labels, data.num_classes)) is not None:
        offset = adjust.to(device)
    names = loss_names(cfg)
    sums = np.zeros(len(names))
    done = 0
    while done < total:
        balanced = phase == "finetune" and cfg.train.class_balance == "sampler"
        order = data.balanced_order(generator, cfg.train.class_weight_power) if balanced else None
        for xb, yb in data.batches(bs, shuffle=True, generator=generator, drop_last=drop_last, order=order):
            if done == total:
                break
            if xb.shape[0] < 2:
                continue
            set_learning_rate(optimizer, cfg, progress, done, total)
            x = to_float(xb.pin_memory() if gpu else xb, device)  # pinned: the copy overlaps the last step
            x = x.contiguous(memory_format=torch.channels_last)
            if phase == "ssl":
                c = cfg.train.colour_jitter
                losses = ssl_batch(model, random_view(x, generator, colour=c), random_view(x, generator, colour=c),
                                   cfg, optimizer, generator)
            else:
                losses = finetune_batch(model, random_view(x, generator, colour=cfg.train.colour_jitter),
                                        yb.to(device), cfg, optimizer, generator, weights, offset)
            check_finite(losses, phase, done + 1)
            sums += losses
            done += 1
            if on_batch is not None:
                on_batch(done, total, dict(zip(names, losses)))
    means = sums / max(done, 1)
    result = {k: float(v) for k, v in zip(names, means)}
    result["loss"] = float(means.sum())
    return LocalResult(phase, done, done * len(names), len(data), result)


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
