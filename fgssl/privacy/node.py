"""One node's private round: release its example count (once per data set), plan the mechanism, check and record it
in the ledger, then train with DP-SGD.

The order matters for honesty: the ledger entry is durable before any private computation starts, so a crash
mid-training still counts, and the budget is checked against the whole recorded history plus this round.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from ..config import Config, ConfigError
from ..data.images import ImageSet
from ..model import FGSSLNet
from .accounting import Mechanism, default_delta, epsilon
from .dp_train import DPSettings, dp_train_local, plan_mechanism
from .ledger import BudgetExceededError, PrivacyLedger


@dataclass
class PrivateRound:
    refused: str | None
    epsilon: float
    delta: float
    metrics: dict[str, Any]


def delta_refusal(cfg: Config, num_examples: int) -> str | None:
    """Why this site refuses the run's δ (for its released count `num_examples`), or None. δ ≥ 1/n allows releasing
    one image in the clear, and a larger δ makes any ε look smaller: a site accepts at most 1/(10 n) for its own n,
    and at most its own δ (privacy.site_delta, the node's setting), whatever the coordinator asks."""
    asked, own = cfg.privacy.delta, cfg.privacy.site_delta
    if own is not None and asked is not None and asked > own:
        return (f"privacy.delta={asked:g} is above this node's own δ={own:g} (fgssl node --delta): it computes its "
                f"ε at its own δ and does not train for a run that asks a weaker guarantee")
    for name, value in (("privacy.delta", asked), ("this node's --delta", own)):
        if value is not None and value > 1.0 / (10.0 * num_examples):
            return (f"{name}={value:g} is above this site's limit 1/(10·n) for its number n of training images; "
                    f"a δ that large would let the printed ε hide a release of single images (leave it unset for "
                    f"each site's own default min(1e-5, 1/(10·n)))")
    return None


def node_delta(cfg: Config, num_examples: int) -> float:
    """The δ this site's ε is computed at: its own when the node set one, else the run's, else its default."""
    p = cfg.privacy
    if p.site_delta is not None:
        return p.site_delta
    return p.delta if p.delta is not None else default_delta(num_examples)


# Called with the site's ledger whenever it has recorded something, before anything the site computed leaves it: a
# simulation copies the new entries into its data set's ledger (fgssl.privacy.data_ledger).
Mirror = Callable[[PrivacyLedger], None]


def record_unprotected_round(state_dir: Path, cfg: Config, *, run_id: str, rnd: int, phase: str,
                             mirror: Mirror | None = None) -> None:
    """A round trained without sample-level DP: its data left the node unprotected, which the ledger must remember
    (a later DP run on the same state directory must not print a finite lifetime ε)."""
    with PrivacyLedger(state_dir) as ledger:
        ledger.record_unprotected(f"{phase} round trained with privacy.mode={cfg.privacy.mode}", run_id=run_id,
                                  round=rnd, phase=phase, delta=cfg.privacy.delta or 1e-5)
        if mirror is not None:
            mirror(ledger)


def count_release(cfg: Config) -> Mechanism:
    """What releasing one data set's example count costs (`PrivacyLedger.released_count`)."""
    return Mechanism(sample_rate=1.0, noise_multiplier=cfg.privacy.count_noise, steps=1, label="example count")


def planned_history(cfg: Config, num_examples: int, sigma: float) -> list[Mechanism]:
    """Every release this node is planned to make: the example count of each data set it trains on (the training
    split; the labelled part too when train.label_fraction < 1) and every round, as the mechanisms it will record."""
    fed, dp = cfg.federation, DPSettings.of(cfg.privacy, sigma)
    rounds = [plan_mechanism(num_examples, fed.phase_of(r), cfg, dp, epochs=fed.epochs_of(fed.phase_of(r)),
                             max_batches=fed.max_local_batches) for r in range(1, fed.total_rounds + 1)]
    data_sets = 1 if cfg.train.label_fraction >= 1 or not fed.ssl_rounds or not fed.finetune_rounds else 2
    return [count_release(cfg)] * data_sets + rounds


def data_fingerprint(data: ImageSet) -> str:
    """Which data set a released count belongs to: a hash of its labels and pixels (a changed set gets a new one)."""
    h = hashlib.sha256()
    h.update(data.labels.numpy().astype("<i8").tobytes())
    h.update(data.images.contiguous().numpy().tobytes())
    return f"images:{h.hexdigest()}"


def _gaussian() -> float:
    """One N(0, 1) draw from OS entropy: the count's noise must not follow from the run's public seed."""
    u1, u2 = (secrets.randbits(53) + 1) / 2**53, secrets.randbits(53) / 2**53
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@lru_cache(maxsize=64)
def _solve_sigma(cfg: Config, num_examples: int) -> float:
    target, delta = cfg.privacy.target_epsilon, node_delta(cfg, num_examples)
    lo, hi = 0.3, 1.0
    while epsilon(planned_history(cfg, num_examples, hi), delta, cfg.privacy.accountant) > target:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise _unreachable(cfg, num_examples, delta)
    for _ in range(30):  # bisection: the largest ε at or below the target, to 1e-3 relative in σ
        mid = (lo + hi) / 2
        if epsilon(planned_history(cfg, num_examples, mid), delta, cfg.privacy.accountant) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-3 * hi:
            break
    return hi


def _unreachable(cfg: Config, num_examples: int, delta: float) -> ConfigError:
    """Why no σ meets the target: the releases whose noise is fixed by other keys already spend more than it."""
    floor = epsilon(planned_history(cfg, num_examples, 1e6), delta, cfg.privacy.accountant)
    p, ssl = cfg.privacy, cfg.federation.ssl_rounds
    parts = [f"the example count, privacy.count_noise={p.count_noise:g}"]
    fixes = "raise privacy.count_noise"
    if ssl:
        parts.append(f"the SSL statistic of {ssl} SSL round{'s' if ssl > 1 else ''}, "
                     f"privacy.statistic_noise_multiplier={p.statistic_noise_multiplier:g}")
        fixes = ("train without SSL rounds (federation.ssl_rounds=0), raise privacy.statistic_noise_multiplier or "
                 "privacy.count_noise")
    return ConfigError("privacy.target_epsilon",
                       f"{p.target_epsilon:g} cannot be met at this site: at δ={delta:g} the releases whose noise σ "
                       f"does not set ({'; '.join(parts)}) spend ε={floor:.2f} however much noise the gradients get; "
                       f"ask for more than that, or {fixes}")


# Bump when the σ search or planned_history changes how a plan maps to σ: solved values stored under the old key are
# then solved again.
_SIGMA_KEY_VERSION = 1


def _sigma_key(cfg: Config, num_examples: int) -> str:
    """What decides the solved σ: the planned releases (at σ = 1), δ and the privacy settings (target, accountant,
    the noise of the other releases)."""
    plan = planned_history(cfg, num_examples, 1.0)
    text = repr((_SIGMA_KEY_VERSION, plan, node_delta(cfg, num_examples), cfg.privacy))
    return "sigma:" + hashlib.sha256(text.encode()).hexdigest()[:32]


@lru_cache(maxsize=64)
def _meets_target(cfg: Config, num_examples: int, sigma: float) -> bool:
    """The check of a stored σ, once per process (a simulated site's actor serves every round of a run)."""
    delta = node_delta(cfg, num_examples)
    spent = epsilon(planned_history(cfg, num_examples, sigma), delta, cfg.privacy.accountant)
    return spent <= cfg.privacy.target_epsilon


def noise_multiplier(cfg: Config, num_examples: int, ledger: PrivacyLedger | None = None) -> float:
    """σ of this node: configured, or the smallest that keeps the whole planned run within target_epsilon.

    With the node's `ledger`, a σ solved in an earlier round of the same plan is read back from it: a deployed
    node's every task is a fresh fork, and the search costs seconds of CPU each time. The stored value is used only
    after one accountant evaluation confirms it still meets the target (a wrong or edited value is solved again).
    """
    if cfg.privacy.noise_multiplier is not None:
        return cfg.privacy.noise_multiplier
    if ledger is None:
        return _solve_sigma(cfg, num_examples)
    key = _sigma_key(cfg, num_examples)
    stored = ledger.meta(key)
    if stored is not None:
        try:
            sigma = float(stored)
        except ValueError:
            sigma = float("nan")
        if sigma > 0 and _meets_target(cfg, num_examples, sigma):
            return sigma
    sigma = _solve_sigma(cfg, num_examples)
    ledger.bind(key, repr(sigma), replace=True)
    return sigma


def private_round(model: FGSSLNet, data: ImageSet, phase: str, cfg: Config, state_dir: Path, *, site: int,
                  run_id: str, rnd: int, epochs: int, max_batches: int | None,
                  progress: tuple[float, float], mirror: Mirror | None = None) -> PrivateRound:
    with PrivacyLedger(state_dir) as ledger:
        try:
            return _private_round(ledger, model, data, phase, cfg, site=site, run_id=run_id, rnd=rnd, epochs=epochs,
                                  max_batches=max_batches, progress=progress, mirror=mirror)
        finally:
            if mirror is not None:  # a refusal leaves too, and the commits since the reservation
                mirror(ledger)


def _private_round(ledger: PrivacyLedger, model: FGSSLNet, data: ImageSet, phase: str, cfg: Config, *, site: int,
                   run_id: str, rnd: int, epochs: int, max_batches: int | None, progress: tuple[float, float],
                   mirror: Mirror | None) -> PrivateRound:
    p = cfg.privacy
    if spent_in_clear := ledger.unprotected():
        first = spent_in_clear[0]
        return PrivateRound(f"site {site}: its ledger records training without sample-level DP on its data (run "
                            f"{first.run_id}, round {first.round}: {first.label}), so no finite ε can be claimed "
                            f"for it any more; it does not train in DP runs on this state directory",
                            float("nan"), float("nan"), {})
    # Everything below sees n only through this released count, so nothing the site sends (q, steps, the
    # aggregation weight, a refusal) tells its true n.
    count_delta = p.site_delta or p.delta or 1e-5  # the default δ needs the count; its budget is checked here
    try:
        n = ledger.released_count(data_fingerprint(data), len(data), p.count_noise, _gaussian, run_id=run_id,
                                  round=rnd, delta=count_delta, max_epsilon=p.budget, accountant=p.accountant,
                                  site=str(site))
    except BudgetExceededError as e:
        return PrivateRound(e.reason, e.before, count_delta, {})
    refusal = delta_refusal(cfg, n)
    if refusal is not None:  # before anything is solved, trained or recorded
        return PrivateRound(refusal, float("nan"), float("nan"), {})
    delta = node_delta(cfg, n)
    try:
        dp = DPSettings.of(p, noise_multiplier(cfg, n, ledger))
    except ConfigError as e:  # a refusal like the others: the run stops with the reason, not a client crash
        return PrivateRound(f"site {site}: {e}", float("nan"), float("nan"), {})
    mechanism = plan_mechanism(n, phase, cfg, dp, epochs=epochs, max_batches=max_batches)
    try:
        entry = ledger.reserve(mechanism, run_id=run_id, round=rnd, phase=phase, delta=delta,
                               max_epsilon=p.budget, accountant=p.accountant, site=str(site))
    except BudgetExceededError as e:
        return PrivateRound(e.reason, e.before, delta, {})
    if mirror is not None:  # durable in the data set's ledger too before the training starts
        mirror(ledger)
    # generator=None: batch membership and noise come from OS entropy, never from the public seed.
    result = dp_train_local(model, data, phase, cfg, dp, epochs=epochs, max_batches=max_batches,
                            progress=progress, generator=None, public_count=n)
    ledger.commit(entry, steps=result.mechanism.steps)
    return PrivateRound(None, ledger.spent(delta, cfg.privacy.accountant), delta, result.metrics())
