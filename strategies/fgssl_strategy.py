"""This project's strategy: the phase plan, which groups travel, validation, robust aggregation, server optimiser.

Pure Python/numpy over named arrays, so every decision is testable without a network; `flower.py` only moves
records in and out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from fgssl.config import FederationConfig
from fgssl.phases import trained_prefixes

from .aggregate import NamedArrays, SiteUpdate, aggregate
from .groups import keys_matching, shared_keys
from .server_opt import make_server_optimizer
from .validation import UpdateBounds, validate_update

log = logging.getLogger(__name__)


class RoundFailed(RuntimeError):
    """Too few acceptable updates to aggregate a round."""


@dataclass
class RoundOutcome:
    new_global: NamedArrays
    accepted: list[str]
    rejected: dict[str, str] = field(default_factory=dict)


class FGSSLStrategy:
    def __init__(self, fed: FederationConfig, all_keys: list[str], statistics: Iterable[str] = (),
                 frozen: tuple[str, ...] = ()) -> None:
        """`statistics`: keys of running statistics (buffers), exempt from norm bounds and clipping.
        `frozen`: parts (backbone, blocks) that never train, so never travel."""
        self.fed = fed
        self.frozen = tuple(frozen)
        self.all_keys = list(all_keys)
        self.statistics = frozenset(statistics)
        self.local_keys = keys_matching(self.all_keys, fed.local_groups)
        params: dict[str, Any] = {}
        if fed.server_lr is not None:
            params["server_lr"] = fed.server_lr
        if fed.server_optimizer == "fedavgm":
            params["momentum"] = fed.server_momentum
        self.server_opt = make_server_optimizer(fed.server_optimizer, **params)
        self.bounds = UpdateBounds(max_update_norm=fed.max_update_norm, norm_exempt=self.statistics)

    def round_config(self, rnd: int, seed: int) -> dict[str, Any]:
        """What every site is told for round `rnd` (1-based)."""
        phase = self.fed.phase_of(rnd)
        start, end = self.fed.phase_progress(rnd)
        return {"round": rnd, "phase": phase, "local_epochs": self.fed.epochs_of(phase),
                "max_local_batches": self.fed.max_local_batches or 0,
                "progress_start": start, "progress_end": end, "seed": seed}

    def keys_to_send(self, phase: str) -> list[str]:
        """Keys the phase trains, minus the site-local groups: what travels in both directions this round."""
        trained = [p + "*" for p in trained_prefixes(phase, self.frozen)]
        return shared_keys(self.all_keys, trained, self.fed.local_groups)

    def aggregate_round(self, rnd: int, global_: NamedArrays, updates: list[SiteUpdate],
                        failures: dict[str, str] | None = None) -> RoundOutcome:
        """Validate each update, drop bad ones with a reason, aggregate the rest, apply the server optimiser."""
        keys = self.keys_to_send(self.fed.phase_of(rnd))
        reference = {k: global_[k] for k in keys}
        rejected = dict(failures or {})
        good = []
        for u in sorted(updates, key=lambda u: u.site):
            reason = validate_update(u.arrays, reference, self.bounds)
            if reason is None and u.num_examples <= 0:
                reason = f"reported {u.num_examples} training examples"
            if reason is None:
                good.append(u)
            else:
                rejected[u.site] = reason
                log.warning("round %d: dropped the update of site %s: %s", rnd, u.site, reason)
        self.require_enough(rnd, len(good), rejected)
        params: dict[str, Any] = {}
        if self.fed.strategy == "norm_bounded":
            params["max_norm"] = self.fed.clip_norm
            params["exempt"] = self.statistics
        elif self.fed.strategy == "trimmed_mean":
            params["trim_fraction"] = self.fed.trim_fraction
        agg = aggregate(good, reference, self.fed.strategy, **params)
        new_global = self.server_opt.step(global_, agg, self.statistics)
        return RoundOutcome(new_global, [u.site for u in good], rejected)

    def require_enough(self, rnd: int, accepted: int, rejected: dict[str, str]) -> None:
        """RoundFailed, with every site's reason, when fewer than federation.min_nodes updates are usable."""
        if accepted < self.fed.min_nodes:
            detail = "; ".join(f"site {s}: {r}" for s, r in sorted(rejected.items())) or "no replies"
            raise RoundFailed(f"round {rnd}: {accepted} acceptable update(s), fewer than "
                              f"federation.min_nodes={self.fed.min_nodes} ({detail})")

    def apply_mean_delta(self, rnd: int, global_: NamedArrays, mean_delta: NamedArrays, accepted: list[str],
                         rejected: dict[str, str]) -> RoundOutcome:
        """The round's end when only the mean change is known (secure aggregation): the same server optimiser step
        as `aggregate_round`, on exactly the keys that travelled this round."""
        keys = self.keys_to_send(self.fed.phase_of(rnd))
        if set(mean_delta) != set(keys):
            raise ValueError(f"round {rnd}: the mean change covers other keys than the ones sent")
        self.require_enough(rnd, len(accepted), rejected)
        # float64 on purpose: the optimiser subtracts the global again, and a float32 round trip would blur the step.
        agg = {k: global_[k].astype(np.float64) + np.asarray(mean_delta[k], dtype=np.float64) for k in keys}
        for k, v in agg.items():
            if not np.issubdtype(global_[k].dtype, np.floating):
                agg[k] = np.rint(v)
        return RoundOutcome(self.server_opt.step(global_, agg, self.statistics), sorted(accepted), dict(rejected))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.server_opt.state_dict().items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.server_opt.load_state_dict(state)
