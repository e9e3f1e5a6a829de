"""Sample-level DP-SGD for both local phases (docs/privacy.md: the SSL surrogate and its proof sketch).

Per-sample gradients come from Opacus (`GradSampleHooks` for grad_sample_mode "hooks"/"functorch", the ExpandedWeights
wrapper for "ew"); clipping, noise and the step are done here rather than by Opacus' DPOptimizer, because every
progressive step trains only one branch's parameters (DPOptimizer insists on a per-sample gradient for every parameter
it holds) and because the SSL phase has a second mechanism on the same batch. No PrivacyEngine and no Opacus
accountant are involved: Opacus counts every `optimizer.step()` as an independent subsampled step, which is wrong
when several steps share a batch. What was run is returned as one `Mechanism` (fgssl.privacy.accounting) instead.

Per optimizer step, on its Poisson batch B (rate q, expected size b = q·n, fixed in advance):
  finetune:  g = (Σ_{i∈B} clip_C(∇ CE_i) + N(0, (σ·C)² I)) / b
  ssl:       S̃ = Σ_{i∈B} ẑ'_i ẑ''_iᵀ + N(0, (σ_s·D)² I);  G = ∂F/∂C at S̃/b;
             g = (Σ_{i∈B} clip_C(∇ ⟨G, ẑ'_i ẑ''_iᵀ⟩) + N(0, (σ·C)² I)) / b
The four progressive steps of a batch (three jigsaw branches, then concat) either each draw their own Poisson batch
(batch_reuse "fresh", the default: 4 independent subsampled steps per batch, σ each) or share one
(batch_reuse "shared": one subsampled mechanism per batch with σ/√4).

Randomness: batch membership and noise must be secret (a public seed would let anyone subtract the noise or know who
was in a batch, and the guarantee would be void). `generator=None` therefore seeds a fresh generator from the
operating system's entropy; pass a seeded generator only for tests and reproducible research.
"""

from __future__ import annotations

import secrets
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import random_view
from ..config import BatchReuse, Config, GradSampleMode, PrivacyConfig
from ..data.images import ImageSet, to_float
from ..model import FGSSLNet
from ..phases import check_phase
from ..recipe import LOSS_NAMES, STEPS_PER_BATCH, check_finite, planned_batches, progressive_steps, set_learning_rate
from ..train import BatchCallback, LocalResult, make_optimizer, prior_adjustment, train_mode
from .accounting import Mechanism, compose_same_batch, same_batch_steps_sigma
from .ssl_surrogate import per_sample_normalize, release_direction, surrogate_per_sample

GRAD_SAMPLE_MODES = get_args(GradSampleMode)


# ---------------------------------------------------------------------------------------------------------------
# Settings and accounting
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DPSettings:
    """The resolved DP-SGD settings of one node's round: the validated `privacy:` section with σ fixed.

    Built once per round by `DPSettings.of(cfg.privacy, sigma)` (σ is configured or solved from the target ε for the
    node's n) and passed down to the loop and the stepper; it has no validation of its own (PrivacyConfig has it).

    noise_multiplier            σ (fine-tune) and σ_g (SSL surrogate gradient): noise std / max_grad_norm.
    max_grad_norm               C, the per-sample L2 clipping bound.
    statistic_noise_multiplier  σ_s of the SSL cross-correlation statistic: noise std / D (D = embedding size).
    expected_batch_size         b = q·n (None: train.batch_size); q = b / n for the node's n.
    grad_sample_mode            Opacus per-sample gradient engine: hooks | functorch | ew.
    batch_reuse                 fresh: every progressive step draws its own Poisson batch; shared: the four steps
                                of a batch use one Poisson batch (accounted as one mechanism with σ/2).
    """

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    statistic_noise_multiplier: float = 2.0
    expected_batch_size: int | None = None
    grad_sample_mode: GradSampleMode = "hooks"
    batch_reuse: BatchReuse = "fresh"

    @classmethod
    def of(cls, privacy: PrivacyConfig, noise_multiplier: float) -> "DPSettings":
        return cls(noise_multiplier=noise_multiplier, max_grad_norm=privacy.max_grad_norm,
                   statistic_noise_multiplier=privacy.statistic_noise_multiplier,
                   expected_batch_size=privacy.expected_batch_size, grad_sample_mode=privacy.grad_sample_mode,
                   batch_reuse=privacy.batch_reuse)

    def resolve_sample_rate(self, num_examples: int, default_batch_size: int) -> float:
        """q for a node with `num_examples` training examples (public: fixed before any data is touched)."""
        if num_examples < 1:
            raise ValueError("DP training needs at least one training example")
        b = self.expected_batch_size if self.expected_batch_size is not None else default_batch_size
        return min(1.0, b / num_examples)

    def step_noise_multiplier(self, phase: str) -> float:
        """Effective σ of ONE progressive step on its batch: σ (finetune) or (σ_s⁻² + σ_g⁻²)^(-1/2) (ssl)."""
        if phase == "ssl":
            return compose_same_batch(self.statistic_noise_multiplier, self.noise_multiplier)
        check_phase(phase)
        return float(self.noise_multiplier)

    def mechanism(self, phase: str, sample_rate: float, batches: int) -> Mechanism:
        """The accounted mechanism of `batches` progressive batches (four optimizer steps each) of `phase`."""
        sigma = self.step_noise_multiplier(phase)
        what = ("ssl surrogate: statistic σ_s=%g + gradient σ_g=%g per step, composed σ=%.6g"
                % (self.statistic_noise_multiplier, self.noise_multiplier, sigma)
                if phase == "ssl" else "finetune dp-sgd: σ=%g per step" % sigma)
        if self.batch_reuse == "fresh":
            label = (f"{what}; each of the {STEPS_PER_BATCH} progressive steps on its own Poisson batch: "
                     f"{STEPS_PER_BATCH}×{batches} independent subsampled steps")
            return Mechanism(sample_rate=sample_rate, noise_multiplier=sigma, steps=STEPS_PER_BATCH * batches,
                             label=label)
        eff = same_batch_steps_sigma(sigma, STEPS_PER_BATCH)
        label = (f"{what}; {STEPS_PER_BATCH} progressive steps on one Poisson batch, accounted as one subsampled "
                 f"mechanism per batch with σ/√{STEPS_PER_BATCH}={eff:.6g}: {batches} steps")
        return Mechanism(sample_rate=sample_rate, noise_multiplier=eff, steps=batches, label=label)


def batches_per_epoch(sample_rate: float) -> int:
    """Poisson batches in one 'epoch' (the expected number of passes over the data is then ≈ 1): ⌊1/q⌋, at least 1."""
    return max(1, int(1.0 / sample_rate + 1e-9))


def dp_plan(num_examples: int, cfg: Config, dp: DPSettings, *, epochs: int = 1,
            max_batches: int | None = None) -> tuple[float, int]:
    """(q, progressive batches) of one local DP call: the same batch plan as the plain loop, ⌊1/q⌋ per epoch."""
    q = dp.resolve_sample_rate(num_examples, cfg.train.batch_size)
    return q, planned_batches(batches_per_epoch(q), epochs, max_batches)


def plan_mechanism(num_examples: int, phase: str, cfg: Config, dp: DPSettings, *, epochs: int = 1,
                   max_batches: int | None = None) -> Mechanism:
    """The mechanism `dp_train_local` with the same arguments will run, known before training (for the ledger)."""
    q, batches = dp_plan(num_examples, cfg, dp, epochs=epochs, max_batches=max_batches)
    return dp.mechanism(phase, q, batches)


# ---------------------------------------------------------------------------------------------------------------
# Model checks, Opacus attachment, clipping and noise
# ---------------------------------------------------------------------------------------------------------------

def check_dp_model(model: nn.Module) -> None:
    """Refuse models whose per-sample gradients would not be per-sample (BatchNorm) or that break Opacus' hooks.

    A frozen module in eval mode (no trainable parameters of its own) is a fixed function: its BatchNorm uses stored,
    public statistics and couples no samples, so it is allowed.
    """
    for name, m in model.named_modules():
        if not m.training and not any(p.requires_grad for p in m.parameters(recurse=False)):
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"DP training refuses this model: '{name}' is a {type(m).__name__} layer. BatchNorm normalises over "
                "the batch, so one sample's gradient depends on all others and the DP guarantee would not hold. "
                "Build the model with GroupNorm (config: model.norm: group).")
        if getattr(m, "inplace", False):
            raise ValueError(f"DP training refuses this model: '{name}' ({type(m).__name__}) works in place, "
                             "which breaks Opacus' per-sample gradient hooks")
        if any(True for _ in m.buffers(recurse=False)):
            raise ValueError(f"DP training refuses this model: '{name}' ({type(m).__name__}) holds buffers, "
                             "i.e. state computed from data that DP-SGD does not protect")


@contextmanager
def _quiet_backward_hooks() -> Iterator[None]:
    # The input images do not require grad, so torch warns that full backward hooks fire on module outputs only:
    # that is exactly what Opacus needs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


class PerSampleGradients:
    """Opacus' per-sample gradient engine on a model, left unwrapped for hooks/functorch (state_dict keys unchanged).

    After a backward of Σ_i loss_i, each trainable parameter p used in the forward carries p.grad_sample of shape
    (N, *p.shape) with row i = ∂loss_i/∂p. A module called k times in one forward (the SSL phase calls it on both
    views) gets the rows of its k calls ADDED per sample (Opacus' create_or_accumulate_grad_sample), so row i
    covers both views of sample i.
    """

    def __init__(self, model: nn.Module, mode: str = "hooks") -> None:
        if mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"unknown grad_sample_mode '{mode}'; choose from: {', '.join(GRAD_SAMPLE_MODES)}")
        check_dp_model(model)
        self.model, self.mode = model, mode
        if mode == "ew":
            from opacus.grad_sample import GradSampleModuleExpandedWeights
            self._engine = GradSampleModuleExpandedWeights(model, loss_reduction="sum")
            self._call = self._engine
        else:
            from opacus.grad_sample import GradSampleHooks
            self._engine = GradSampleHooks(model, loss_reduction="sum", strict=True,
                                           force_functorch=(mode == "functorch"))
            self._call = model

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def backward(self, loss: Tensor) -> None:
        with _quiet_backward_hooks():
            loss.backward()

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the plain model (no activations captured, no per-sample gradients)."""
        if self.mode == "ew":
            yield
            return
        self._engine.disable_hooks()
        try:
            yield
        finally:
            self._engine.enable_hooks()

    def clear(self) -> None:
        for p in self.model.parameters():
            p.grad_sample = None
            p.grad = None

    def close(self) -> None:
        """Remove hooks and every attribute Opacus added, leaving the plain model."""
        self._engine.cleanup()
        for m in self.model.modules():
            for attr in ("activations", "max_batch_len", "ft_compute_sample_grad"):
                if attr in m.__dict__:
                    delattr(m, attr)


def clip_and_sum(grad_samples: list[Tensor], max_grad_norm: float,
                 keep_clipped: bool = False) -> tuple[list[Tensor], Tensor, list[Tensor] | None]:
    """Clip every sample's gradient (over all given parameters jointly) to L2 norm ≤ C and sum over samples.

    Same rule as Opacus' DPOptimizer: factor_i = min(1, C / (‖g_i‖ + 1e-6)). Returns (sums, per-sample norms
    before clipping, the clipped per-sample gradients if `keep_clipped`).
    """
    n = grad_samples[0].shape[0] if grad_samples else 0
    if n == 0:
        return [g.new_zeros(g.shape[1:]) for g in grad_samples], torch.zeros(0), ([] if keep_clipped else None)
    norms = torch.stack([g.reshape(n, -1).norm(2, dim=1) for g in grad_samples], dim=1).norm(2, dim=1)
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    sums, kept = [], [] if keep_clipped else None
    for g in grad_samples:
        clipped = g * factor.to(g.dtype).view(-1, *([1] * (g.dim() - 1)))
        sums.append(clipped.sum(dim=0))
        if kept is not None:
            kept.append(clipped)
    return sums, norms.detach(), kept


@dataclass
class StepRecord:
    """What one DP step did; given to an observer (tests, debugging). Holds private data: never send it anywhere."""

    phase: str
    branch: int
    batch_size: int
    param_names: list[str]
    per_sample_norms: Tensor                 # before clipping
    clipped: list[Tensor] | None             # clipped per-sample gradients, one (N, *p.shape) per parameter
    noise_std: float                         # of the summed gradient: σ·C
    expected_batch_size: float
    indices: Tensor | None = None            # the Poisson batch (indices into the node's data), when known


Observer = Callable[[StepRecord], None]


def private_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from the operating system's entropy (secret batch membership and noise)."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


class DPStepper:
    """Progressive DP steps on one GroupNorm FGSSLNet: one branch per optimizer step, as in fgssl.train.

    Noise goes to the parameters the step's branch trains (those on the branch's forward path, found once per branch
    by a probe with a dummy input, independent of data); others get no gradient, as in the non-private loop.
    Noise multipliers may be 0 here (tests); `dp_train_local` insists on > 0.
    """

    def __init__(self, model: FGSSLNet, optimizer: torch.optim.Optimizer, dp: DPSettings, *, phase: str,
                 expected_batch_size: float, generator: torch.Generator | None = None,
                 observer: Observer | None = None) -> None:
        check_phase(phase)
        if expected_batch_size <= 0:
            raise ValueError(f"expected_batch_size must be > 0, got {expected_batch_size}")
        self.model, self.optimizer, self.phase = model, optimizer, phase
        self.C, self.sigma = float(dp.max_grad_norm), float(dp.noise_multiplier)
        self.sigma_s = float(dp.statistic_noise_multiplier)
        self.expected_batch_size = float(expected_batch_size)
        self.observer = observer
        device = next(model.parameters()).device
        self.generator = generator if generator is not None else private_generator(device)
        self._opt_params = [p for g in optimizer.param_groups for p in g["params"]]
        self._names = {id(p): n for n, p in model.named_parameters()}
        self._branch_params: dict[int, list[nn.Parameter]] = {}
        self.grads = PerSampleGradients(model, dp.grad_sample_mode)
        self.embed_dim = model.classifiers[0].in_features

    def close(self) -> None:
        self.grads.clear()
        self.grads.close()

    def __enter__(self) -> "DPStepper":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def branch_parameters(self, branch: int, image_shape: tuple[int, ...]) -> list[nn.Parameter]:
        """The optimizer's parameters on `branch`'s forward path in this phase (data-independent)."""
        if branch not in self._branch_params:
            probe = torch.zeros((2, *image_shape[1:]), device=next(self.model.parameters()).device)
            with self.grads.disabled(), torch.enable_grad(), _quiet_backward_hooks():
                out = self.model(probe, (branch,), with_logits=self.phase == "finetune")
                y = out.logits[branch] if self.phase == "finetune" else out.embeddings[branch]
                trainable = [p for p in self._opt_params if p.requires_grad]
                grads = torch.autograd.grad(y.sum(), trainable, allow_unused=True)
            self._branch_params[branch] = [p for p, g in zip(trainable, grads) if g is not None]
            self.grads.clear()
        return self._branch_params[branch]

    def _noisy_update(self, branch: int, batch_size: int, image_shape: tuple[int, ...],
                      indices: Tensor | None) -> None:
        params = self.branch_parameters(branch, image_shape)
        if batch_size > 0:
            missing = [self._names.get(id(p), "?") for p in params if getattr(p, "grad_sample", None) is None]
            if missing:
                raise RuntimeError(f"Opacus computed no per-sample gradient for {', '.join(missing[:5])}")
            samples = [p.grad_sample if isinstance(p.grad_sample, Tensor) else torch.cat(p.grad_sample)
                       for p in params]
        else:
            samples = [p.new_zeros((0, *p.shape)) for p in params]
        sums, norms, clipped = clip_and_sum(samples, self.C, keep_clipped=self.observer is not None)
        del samples
        std = self.sigma * self.C
        for p in self._opt_params:
            p.grad = None
        for p, s in zip(params, sums):
            if std > 0:
                s = s + torch.normal(0.0, std, size=tuple(s.shape), generator=self.generator, device=s.device,
                                     dtype=s.dtype)
            p.grad = (s / self.expected_batch_size).view_as(p)
        for p in self.model.parameters():
            p.grad_sample = None
        if self.observer is not None:
            self.observer(StepRecord(self.phase, branch, batch_size, [self._names.get(id(p), "?") for p in params],
                                     norms, clipped, std, self.expected_batch_size, indices))
        self.optimizer.step()
        for p in self._opt_params:
            p.grad = None

    def finetune_step(self, branch: int, x: Tensor, y: Tensor, weight: float = 1.0,
                      indices: Tensor | None = None, logit_offset: Tensor | None = None) -> float | None:
        """One DP-SGD step on Σ_i weight·CE(cls_branch(x_i) + logit_offset, y_i); the offset must be public (it is
        the same for every sample, so each sample's loss still depends on that sample alone). Returns the batch's
        mean CE times weight, or None for an empty batch. That loss is NOT private (computed on the raw batch): log
        it locally, do not send it."""
        if self.phase != "finetune":
            raise RuntimeError("this stepper was built for the 'ssl' phase")
        self.branch_parameters(branch, tuple(x.shape))
        self.grads.clear()
        loss_value = None
        n = x.shape[0]
        if n > 0:
            logits = self.grads(x, (branch,)).logits[branch]
            if logit_offset is not None:
                logits = logits + logit_offset
            per_sample = weight * F.cross_entropy(logits, y, reduction="none")
            self.grads.backward(per_sample.sum())
            loss_value = float(per_sample.detach().mean())
        self._noisy_update(branch, n, tuple(x.shape), indices)
        return loss_value

    def ssl_step(self, branch: int, v1: Tensor, v2: Tensor, *, lam: float = 5e-3, variant: str = "standard",
                 weight: float = 1.0, indices: Tensor | None = None) -> float:
        """One DP step of the SSL surrogate on views v1 (row i: sample i's first, e.g. jigsawed, view) and v2.

        Releases S through its own Gaussian mechanism (σ_s·D), then DP-SGD (σ·C) on Σ_i ⟨G, ẑ'_i ẑ''_iᵀ⟩. Returns
        F(C̃) minus the noise's known expected contribution (an unbiased estimate of F(C), may be negative): a
        function of the released statistic only, hence private to report.
        """
        if self.phase != "ssl":
            raise RuntimeError("this stepper was built for the 'finetune' phase")
        if v1.shape != v2.shape:
            raise ValueError(f"the two views must have the same shape; got {tuple(v1.shape)} and {tuple(v2.shape)}")
        self.branch_parameters(branch, tuple(v1.shape))
        self.grads.clear()
        n = v1.shape[0]
        if n > 0:
            # Two calls on the same modules: Opacus adds the per-sample rows of both calls, so row i is the
            # gradient through both of sample i's views.
            z1n = per_sample_normalize(self.grads(v1, (branch,), with_logits=False).embeddings[branch])
            z2n = per_sample_normalize(self.grads(v2, (branch,), with_logits=False).embeddings[branch])
        else:
            z1n = z2n = torch.zeros(0, self.embed_dim, device=v1.device)
        release = release_direction(z1n, z2n, noise_multiplier=self.sigma_s,
                                    expected_batch_size=self.expected_batch_size, lam=lam, variant=variant,
                                    weight=weight, generator=self.generator)
        if n > 0:
            self.grads.backward(surrogate_per_sample(z1n, z2n, release.direction).sum())
        self._noisy_update(branch, n, tuple(v1.shape), indices)
        return release.objective_debiased


# ---------------------------------------------------------------------------------------------------------------
# The local training loop
# ---------------------------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class DPLocalResult(LocalResult):
    """LocalResult plus the mechanism that was actually run (what the ledger must record)."""

    mechanism: Mechanism
    sample_rate: float
    expected_batch_size: float
    empty_batches: int = 0
    # finetune losses are computed on raw private batches (not covered by ε); SSL losses are F(C̃), post-processing.
    losses_are_private: bool = False
    details: dict = field(default_factory=dict)

    def metrics(self) -> dict[str, float | int | str]:
        out = super().metrics()
        if not self.losses_are_private:
            for k in (*LOSS_NAMES, "loss"):
                out.pop(k, None)
        out.update({"dp_sample_rate": self.mechanism.sample_rate,
                    "dp_noise_multiplier": self.mechanism.noise_multiplier,
                    "dp_accounted_steps": self.mechanism.steps})
        return out


def poisson_indices(n: int, q: float, generator: torch.Generator) -> Tensor:
    """Each of n examples independently with probability q (Opacus' UniformWithReplacementSampler rule)."""
    keep = torch.rand(n, generator=generator, device=generator.device) < q
    return torch.nonzero(keep).flatten().cpu()


def dp_train_local(model: FGSSLNet, data: ImageSet, phase: str, cfg: Config, dp: DPSettings, *, epochs: int = 1,
                   max_batches: int | None = None, progress: tuple[float, float] = (0.0, 1.0),
                   generator: torch.Generator | None = None, device: torch.device | None = None,
                   on_batch: BatchCallback | None = None, observer: Observer | None = None,
                   public_count: int | None = None) -> DPLocalResult:
    """DP version of fgssl.train.train_local: `epochs`·⌊1/q⌋ progressive batches (or `max_batches`), each four
    DP steps (branches 1..3 on their jigsaw granularity, then concat with weight loss.concat_weight).

    `generator` drives batch sampling, augmentation, jigsaw and noise; it must live on the model's device and must be
    secret (None: seeded from OS entropy). Returns a DPLocalResult whose `.mechanism` is what to account.

    Batches are always Poisson samples and `train.class_balance` is not applied from the site's own labels:
    class-balanced draws, loss weights and logit adjustment by the site's counts all depend on private class counts,
    and the draws are not the sampling the accountant assumes. The one exception is logit adjustment by a declared
    public prior (`train.class_prior`), which depends on no image; details["class_balance"] says which applied.
    """
    check_phase(phase)
    if dp.noise_multiplier <= 0 or (phase == "ssl" and dp.statistic_noise_multiplier <= 0):
        raise ValueError("DP training needs noise multipliers > 0 (0 is for the stepper's own tests)")
    device = device or next(model.parameters()).device
    gen = generator if generator is not None else private_generator(device)
    n = len(data)
    # The plan and the gradient's scale 1/b_exp use the released count, never the private n (public_count=None: n,
    # for callers that account n as public themselves).
    counted = n if public_count is None else public_count
    q, total = dp_plan(counted, cfg, dp, epochs=epochs, max_batches=max_batches)
    b_exp = q * counted
    if total < 1:
        raise ValueError(f"nothing to train: epochs={epochs}, max_batches={max_batches}")
    optimizer = make_optimizer(model, cfg, phase)
    train_mode(model, cfg)
    check_dp_model(model)  # after freezing: frozen parts in eval mode are fixed functions
    lam, variant = cfg.loss.bt_lambda, cfg.loss.bt_variant
    sums, counts = np.zeros(STEPS_PER_BATCH), np.zeros(STEPS_PER_BATCH)
    empty = 0
    shape = (0, *data.images.shape[1:])

    def draw() -> tuple[Tensor, Tensor, Tensor]:
        nonlocal empty
        idx = poisson_indices(n, q, gen)
        if len(idx) == 0:
            empty += 1
            return idx, torch.zeros(shape, device=device), torch.zeros(0, dtype=torch.long, device=device)
        return idx, to_float(data.images[idx], device), data.labels[idx].to(device)

    stepper = DPStepper(model, optimizer, dp, phase=phase, expected_batch_size=b_exp, generator=gen,
                        observer=observer)
    t = cfg.train
    public_prior = phase == "finetune" and t.class_balance == "logit_adjust" and bool(t.class_prior)
    offset = prior_adjustment(t.class_prior, data.num_classes, t.class_weight_power).to(device) if public_prior \
        else None
    done = 0
    c = cfg.train.colour_jitter
    try:
        while done < total:
            set_learning_rate(optimizer, cfg, progress, done, total)
            batch = draw()
            losses: list[float | None] = []
            for i, step in enumerate(progressive_steps(cfg)):
                if dp.batch_reuse == "fresh" and i > 0:
                    batch = draw()
                idx, x, y = batch
                nonempty = x.shape[0] > 0
                if phase == "ssl":
                    v1, v2 = (random_view(x, gen, colour=c), random_view(x, gen, colour=c)) if nonempty else (x, x)
                    loss = stepper.ssl_step(step.branch, step.view(v1, gen), v2, lam=lam, variant=variant,
                                            weight=step.weight, indices=idx)
                else:
                    view = random_view(x, gen, colour=c) if nonempty else x
                    loss = stepper.finetune_step(step.branch, step.view(view, gen), y, weight=step.weight,
                                                 indices=idx, logit_offset=offset)
                losses.append(loss)
            check_finite(losses, phase, done + 1, "lower the learning rate or max_grad_norm")
            for i, v in enumerate(losses):
                if v is not None:
                    sums[i] += v
                    counts[i] += 1
            done += 1
            if on_batch is not None:
                on_batch(done, total, {k: (float("nan") if v is None else v) for k, v in zip(LOSS_NAMES, losses)})
    finally:
        stepper.close()
    for prm in model.parameters():
        if not torch.isfinite(prm).all():
            raise FloatingPointError(f"DP {phase} training produced non-finite weights; lower the learning rate")
    means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    result = {k: float(v) for k, v in zip(LOSS_NAMES, means)}
    result["loss"] = float(means.sum())
    mech = dp.mechanism(phase, q, done)
    return DPLocalResult(phase, done, done * STEPS_PER_BATCH, counted, result, mechanism=mech, sample_rate=q,
                         expected_batch_size=b_exp, empty_batches=empty, losses_are_private=phase == "ssl",
                         details={"class_balance": ("logit adjustment by the public prior train.class_prior"
                                                    if public_prior else "not applied under DP (Poisson sampling)"),
                                  "batch_reuse": dp.batch_reuse, "grad_sample_mode": dp.grad_sample_mode,
                                  "noise_multiplier": dp.noise_multiplier, "max_grad_norm": dp.max_grad_norm,
                                  "statistic_noise_multiplier": dp.statistic_noise_multiplier if phase == "ssl" else None,
                                  "step_noise_multiplier": dp.step_noise_multiplier(phase)})
