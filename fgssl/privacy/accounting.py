"""Honest (ε, δ) accounting for sample-level DP-SGD, on top of Opacus' accountants.

A local DP training run is described as one `Mechanism`: a Poisson-subsampled Gaussian mechanism with sample
rate q and an EFFECTIVE noise multiplier σ per sampled batch, applied `steps` times (one per sampled batch).
Everything that happens to one sampled batch (several optimizer steps, a released statistic plus a gradient)
is folded into that one σ first, with the helpers below, so that nothing is counted as an independent
subsampled step when it is not (docs/privacy.md, "Accounting").

Opacus is imported lazily (only when ε is computed), so the ledger can be opened without importing torch.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

if TYPE_CHECKING:
    import numpy as np

Accountant = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")
# "unprotected": the data left the node without a DP guarantee (a round trained with privacy.mode none or client);
# any history holding one has ε = ∞, and its q, σ and steps are placeholders.
MECHANISM_KINDS: tuple[str, ...] = ("subsampled_gaussian", "unprotected")

# RDP orders: Opacus' RDPAccountant.DEFAULT_ALPHAS (1.1 ... 10.9, 12 ... 63) extended to larger orders. Any set of
# orders gives a valid bound (ε is the minimum over them), so a superset can only tighten the figure; the larger
# orders matter for small ε (large σ), where Opacus' default set puts the optimum at its largest order and warns.
RDP_ORDERS: tuple[float, ...] = (
    tuple(1 + x / 10.0 for x in range(1, 100)) + tuple(float(a) for a in range(12, 64))
    + (64.0, 80.0, 96.0, 128.0, 160.0, 192.0, 256.0)
)
# PRV accountant: the additive error allowed in ε (Opacus' default). We report PRV's upper bound, not its estimate.
PRV_EPS_ERROR = 0.01


class PrivacyParameterError(ValueError):
    """A privacy parameter is out of range. `name` is the parameter that is wrong."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(f"{name}: {message}")


class AccountingError(RuntimeError):
    """The accountant could not produce a usable ε (never silently treated as 'no spending')."""


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PrivacyParameterError(name, f"must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise PrivacyParameterError(name, f"must be finite, got {value!r}")
    return v


def _check_positive(name: str, value: object, what: str = "") -> float:
    v = _check_real(name, value)
    if v <= 0:
        raise PrivacyParameterError(name, f"must be > 0{what}, got {value!r}")
    return v


def check_sigma(sigma: object, name: str = "noise_multiplier") -> float:
    """A noise multiplier (noise std / L2 sensitivity): finite and > 0. σ = 0 would mean no privacy at all."""
    return _check_positive(name, sigma, " (noise std / L2 sensitivity)")


def check_sample_rate(q: object, name: str = "sample_rate") -> float:
    """A Poisson sampling rate: in (0, 1]."""
    v = _check_real(name, q)
    if not 0.0 < v <= 1.0:
        raise PrivacyParameterError(name, f"must be in (0, 1] (Poisson sampling probability), got {q!r}")
    return v


def check_delta(delta: object, name: str = "delta") -> float:
    """δ: in the open interval (0, 1)."""
    v = _check_real(name, delta)
    if not 0.0 < v < 1.0:
        raise PrivacyParameterError(name, f"must be in (0, 1), got {delta!r}")
    return v


def check_epsilon(eps: object, name: str = "max_epsilon") -> float:
    """An ε bound or target: finite and > 0."""
    return _check_positive(name, eps)


def check_count(n: object, name: str) -> int:
    """A count of steps, batches or samples: an integer >= 1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PrivacyParameterError(name, f"must be an integer >= 1, got {n!r}")
    return int(n)


def check_accountant(accountant: object) -> str:
    if accountant not in ACCOUNTANTS:
        raise PrivacyParameterError("accountant", f"unknown accountant {accountant!r}; choose from: {', '.join(ACCOUNTANTS)}")
    return str(accountant)


@dataclass(frozen=True, kw_only=True)
class Mechanism:
    """One local DP training run, as one mechanism for the accountant.

    `steps` sampled batches, each drawn by Poisson sampling with rate `sample_rate`, each released through a
    Gaussian mechanism whose noise multiplier (noise std / L2 sensitivity) is `noise_multiplier`. That σ is the
    EFFECTIVE σ of everything released about one sampled batch: use `same_batch_steps_sigma`,
    `statistic_and_gradient_sigma` or `compose_same_batch` to fold several releases on one batch into it.
    `label` is for humans ("finetune dp-sgd", "ssl surrogate+statistic").
    """

    sample_rate: float
    noise_multiplier: float
    steps: int
    label: str = ""
    kind: str = "subsampled_gaussian"

    @classmethod
    def unprotected(cls, label: str) -> "Mechanism":
        """A release without any DP guarantee: every ε of a history holding it is ∞."""
        return cls(sample_rate=1.0, noise_multiplier=1.0, steps=1, label=label, kind="unprotected")

    def __post_init__(self) -> None:
        if self.kind not in MECHANISM_KINDS:
            raise PrivacyParameterError("kind", f"unknown mechanism kind {self.kind!r}; choose from: {', '.join(MECHANISM_KINDS)}")
        object.__setattr__(self, "sample_rate", check_sample_rate(self.sample_rate))
        object.__setattr__(self, "noise_multiplier", check_sigma(self.noise_multiplier))
        object.__setattr__(self, "steps", check_count(self.steps, "steps"))
        if not isinstance(self.label, str):
            raise PrivacyParameterError("label", f"must be a string, got {self.label!r}")


# ---------------------------------------------------------------------------------------------------------------
# Folding several Gaussian releases on ONE sampled batch into one effective σ.
# ---------------------------------------------------------------------------------------------------------------

def compose_same_batch(*sigmas: float) -> float:
    """Effective σ of several Gaussian mechanisms applied to the SAME sampled batch: (Σ σ_i⁻²)^(-1/2).

    Reason: Gaussian mechanisms compose by adding their squared sensitivity/σ ratios (each σ_i is already noise
    std / L2 sensitivity, i.e. the ratio is 1/σ_i), and adaptivity between them does not change that; since they
    share one Poisson sample, the subsampling is applied once, to the composed Gaussian.
    """
    if not sigmas:
        raise PrivacyParameterError("sigmas", "need at least one noise multiplier")
    total = sum(check_sigma(s, f"sigmas[{i}]") ** -2 for i, s in enumerate(sigmas))
    return total ** -0.5


def same_batch_steps_sigma(sigma: float, k: int) -> float:
    """Effective σ of k optimizer steps on the SAME Poisson batch, equal clipping norm and noise σ each: σ/√k.

    Reason: the k steps are k adaptive Gaussian mechanisms on one sample, so their sensitivity/σ ratios add in
    squares (k/σ²); they are ONE subsampled mechanism per batch, never k independent subsampled steps (that would
    apply the subsampling amplification k times and under-count).
    """
    s = check_sigma(sigma, "sigma")
    k = check_count(k, "k")
    return s / math.sqrt(k)


def statistic_and_gradient_sigma(sigma_statistic: float, sigma_gradient: float) -> float:
    """Effective σ when one Poisson batch releases a statistic (σ_s) and a gradient (σ_g): (σ_s⁻² + σ_g⁻²)^(-1/2).

    Both σ are normalised by their own L2 sensitivity (for the SSL cross-correlation statistic with per-sample
    embeddings of norm √D the sensitivity is D, so σ_s = noise std / D). Reason: Gaussian mechanism composition,
    the sum of squared sensitivity/σ ratios, on a batch that is sampled once.
    """
    return compose_same_batch(check_sigma(sigma_statistic, "sigma_statistic"),
                              check_sigma(sigma_gradient, "sigma_gradient"))


def dp_sgd_run(*, sample_rate: float, noise_multiplier: float, batches: int, steps_per_batch: int = 1,
               label: str = "dp-sgd") -> Mechanism:
    """A DP-SGD run of `batches` Poisson batches with `steps_per_batch` equal-σ optimizer steps on each batch."""
    return Mechanism(sample_rate=sample_rate, noise_multiplier=same_batch_steps_sigma(noise_multiplier, steps_per_batch),
                     steps=check_count(batches, "batches"), label=label)


# ---------------------------------------------------------------------------------------------------------------
# ε of a history, through Opacus.
# ---------------------------------------------------------------------------------------------------------------

def _grouped(history: Sequence[Mechanism]) -> list[tuple[float, float, int]]:
    """(σ, q, steps) entries in Opacus' history layout, merging equal (σ, q): composition is commutative."""
    steps: dict[tuple[float, float], int] = {}
    for i, m in enumerate(history):
        if not isinstance(m, Mechanism):
            raise PrivacyParameterError(f"history[{i}]", f"must be a Mechanism, got {type(m).__name__}")
        key = (m.noise_multiplier, m.sample_rate)
        steps[key] = steps.get(key, 0) + m.steps
    return [(sigma, q, n) for (sigma, q), n in steps.items()]


def rdp_curve(history: Sequence[Mechanism]) -> "np.ndarray":
    """The RDP ε(α) of the composition of `history` at every order of `RDP_ORDERS` (Opacus' compute_rdp, summed:
    RDP composes by adding at each order); every entry is inf when the history holds an unprotected release."""
    import numpy as np
    from opacus.accountants.analysis import rdp as rdp_analysis

    if any(m.kind == "unprotected" for m in history):
        return np.full(len(RDP_ORDERS), np.inf)
    rdp = np.zeros(len(RDP_ORDERS))
    for sigma, q, n in _grouped(history):
        rdp = rdp + rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=n, orders=list(RDP_ORDERS))
    return rdp


def rdp_to_epsilon(curve: "np.ndarray", delta: float, orders: Sequence[float] = RDP_ORDERS) -> float:
    """ε at `delta` of an RDP curve over `orders` (Opacus' get_privacy_spent, Balle et al. 2020 Thm. 21); inf
    when the curve is inf at every order."""
    import numpy as np
    from opacus.accountants.analysis import rdp as rdp_analysis

    delta = check_delta(delta)
    if not np.isfinite(curve).any():
        return math.inf
    if not curve.any():
        return 0.0
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        # "Optimal order is the smallest/largest alpha": the bound is still valid, only looser than it could be.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _order = rdp_analysis.get_privacy_spent(orders=list(orders), rdp=curve, delta=delta)
    return float(eps)


def group_epsilon(curve: "np.ndarray", k: int, delta: float) -> float:
    """ε at `delta` for a group of up to `k` images, from a per-image RDP curve over `RDP_ORDERS`: Mironov 2017
    ("Rényi Differential Privacy"), Prop. 11: a mechanism that is (α, ε)-RDP is (α/2^c, 3^c·ε)-RDP for data sets that
    differ in up to 2^c records, for α ≥ 2^(c+1); c = ⌈log2 k⌉. Orders below 2^(c+1) give nothing; inf when none is
    left. k = 1 is the per-image ε."""
    import numpy as np

    k = check_count(k, "k")
    if k == 1:
        return max(rdp_to_epsilon(curve, delta), 0.0)
    c = math.ceil(math.log2(k))
    keep = np.array([a >= 2 ** (c + 1) for a in RDP_ORDERS])
    if not keep.any():
        return math.inf
    orders = [a / 2 ** c for a in np.array(RDP_ORDERS)[keep]]
    return max(rdp_to_epsilon(3 ** c * np.asarray(curve)[keep], delta, orders), 0.0)


def worst_holder_curve(runs: Sequence[Sequence[Sequence[Mechanism]]]) -> "np.ndarray":
    """RDP bound of one image over several runs that each split a data set among disjoint holders (simulated sites):
    Σ over runs of the max over that run's holders of each holder's RDP curve, at every order.

    In one run an image is released only by the one holder that has it, so its own RDP curve is at most that run's
    worst holder's at every order; over runs the curves add (RDP composition). The bound holds for every image,
    whichever holder it had in each run.
    """
    import numpy as np

    total = np.zeros(len(RDP_ORDERS))
    for holders in runs:
        if holders:
            total = total + np.max([rdp_curve(h) for h in holders], axis=0)
    return total


def _rdp_epsilon(entries: list[tuple[float, float, int]], delta: float) -> float:
    history = [Mechanism(sample_rate=q, noise_multiplier=sigma, steps=n) for sigma, q, n in entries]
    return rdp_to_epsilon(rdp_curve(history), delta)


def _prv_epsilon(entries: list[tuple[float, float, int]], delta: float) -> float:
    import numpy as np
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = list(entries)
    try:
        with warnings.catch_warnings(), np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            # q = 1 makes Opacus' PRV evaluate log(1 - q) = -inf (harmless there); a very large ε overflows exp()
            # and comes back as inf (an honest "unbounded"). See docs/privacy.md.
            warnings.filterwarnings("ignore", message="Optimal order is the")
            eps = acc.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR)  # the upper bound, not the estimate
    except (ValueError, RuntimeError) as e:
        raise AccountingError(f"Opacus' PRV accountant failed on history {entries} at δ={delta:g}: {e}; "
                              "use accountant='rdp'") from e
    return float(eps)


def epsilon(history: Sequence[Mechanism], delta: float, accountant: Accountant = "rdp") -> float:
    """ε at `delta` of the adaptive composition of every mechanism in `history` (0.0 for an empty history).

    "rdp": Opacus' RDP analysis (compute_rdp summed over the history, converted with get_privacy_spent) over
    `RDP_ORDERS`. "prv": Opacus' PRVAccountant (numerical composition of privacy loss random variables), reporting
    its upper bound with additive error `PRV_EPS_ERROR`. May be inf (no finite bound); raises AccountingError
    rather than ever returning NaN. Both assume add/remove-one-sample neighbouring datasets
    and Poisson sampling, as Opacus does.
    """
    delta = check_delta(delta)
    accountant = check_accountant(accountant)
    if any(m.kind == "unprotected" for m in history):
        return math.inf
    entries = _grouped(history)
    if not entries:
        return 0.0
    eps = _rdp_epsilon(entries, delta) if accountant == "rdp" else _prv_epsilon(entries, delta)
    if math.isnan(eps):  # NaN compares False with every budget: it must never pass as "within budget"
        raise AccountingError(f"the {accountant} accountant returned NaN for history {entries} at δ={delta:g}")
    return max(eps, 0.0)


def noise_for_target_epsilon(target_eps: float, delta: float, sample_rate: float, steps: int,
                             accountant: Accountant = "rdp") -> float:
    """Smallest σ (within Opacus' bisection tolerance of 0.01 in ε) such that `steps` subsampled Gaussian steps at
    rate `sample_rate` stay within ε ≤ `target_eps` at `delta`. Uses opacus.accountants.utils.get_noise_multiplier
    with the same orders / PRV error as `epsilon`, so `epsilon` of the result never exceeds the target.

    `steps` counts sampled batches; if each batch takes k equal-σ optimizer steps, the per-step σ is
    result·√k (see `same_batch_steps_sigma`).
    """
    target_eps = check_epsilon(target_eps, "target_eps")
    delta = check_delta(delta)
    q = check_sample_rate(sample_rate)
    steps = check_count(steps, "steps")
    accountant = check_accountant(accountant)
    import numpy as np
    from opacus.accountants.utils import get_noise_multiplier

    kwargs = {"alphas": list(RDP_ORDERS)} if accountant == "rdp" else {"eps_error": PRV_EPS_ERROR}
    try:
        with warnings.catch_warnings(), np.errstate(divide="ignore"):
            warnings.filterwarnings("ignore", message="Optimal order is the")
            sigma = float(get_noise_multiplier(target_epsilon=target_eps, target_delta=delta, sample_rate=q,
                                               steps=steps, accountant=accountant, **kwargs))
    except ValueError as e:
        raise PrivacyParameterError("target_eps", f"cannot reach ε={target_eps} at δ={delta:g} with q={q}, "
                                                  f"{steps} steps ({e})") from e
    reached = epsilon([Mechanism(sample_rate=q, noise_multiplier=sigma, steps=steps)], delta, accountant)
    if reached > target_eps:  # get_noise_multiplier returns the high end of its bisection; keep that promise
        raise RuntimeError(f"get_noise_multiplier returned σ={sigma} with ε={reached} > target {target_eps}")
    return sigma


def default_delta(n: int) -> float:
    """Default δ for a dataset of n samples: min(1e-5, 1/(10·n)).

    δ must be well below 1/n (δ ≥ 1/n permits releasing one sample in the clear). 1/(10·n) alone is large for the
    small datasets of one medical site (n = 100 gives 1e-3), hence the additional cap of 1e-5.
    """
    n = check_count(n, "n")
    return min(1e-5, 1.0 / (10.0 * n))
