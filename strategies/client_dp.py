"""Client-level DP (privacy.mode: client): this project's strategy inside Flower's central-DP wrapper.

`FlowerStrategy` puts FGSSLStrategy behind Flower's `Strategy` interface so that Flower's own
`DifferentialPrivacyServerSideFixedClipping` can wrap it: the wrapper clips every site's update (its change from the
global weights) to L2 norm C, our strategy averages the clipped updates with equal weights, and the wrapper adds
N(0, (σ·C/m)²) to the average of the m sites. Over the sites' updates that is the Gaussian mechanism on their sum
with noise multiplier σ, once per round, with no subsampling (every site takes part).

Three things the wrapper alone does not guarantee, and this module does:
- the mean must weigh sites equally (an example-weighted mean would let one site move it by more than C/m);
- m must be the number of updates actually averaged, so bad updates are refused *before* the wrapper (it would clip
  a NaN update to itself) and m is set from the replies that remain;
- Flower draws the noise from NumPy's global generator, which `fgssl simulate` seeds with the run's public seed,
  so the global generator is reseeded from the operating system's entropy around the release.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

from .aggregate import NamedArrays, SiteUpdate
from .fgssl_strategy import FGSSLStrategy, RoundFailed, RoundOutcome
from .flower import from_config, from_record, to_record
from .validation import validate_update


@contextmanager
def secret_numpy_noise() -> Iterator[None]:
    """NumPy's global generator seeded from OS entropy inside the block; the previous state is restored after."""
    saved = np.random.get_state()
    np.random.seed()  # None: fresh entropy from the operating system
    try:
        yield
    finally:
        np.random.set_state(saved)


class FlowerStrategy(Strategy):
    """FGSSLStrategy as a Flower Strategy (train side only; evaluation is done by the server app itself)."""

    def __init__(self, inner: FGSSLStrategy, nodes: dict[int, int]) -> None:
        self.inner, self.nodes = inner, nodes
        self.global_: NamedArrays = {}
        self.failures: dict[str, str] = {}
        self.outcome: RoundOutcome | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return [Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=n,
                        message_type=MessageType.TRAIN, group_id=f"train-{server_round}") for n in self.nodes.values()]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        site_of = {n: s for s, n in self.nodes.items()}
        updates = [SiteUpdate(str(site_of[r.metadata.src_node_id]), from_record(r.content["arrays"]), 1,
                              from_config(r.content["info"])) for r in replies]
        outcome = self.inner.aggregate_round(server_round, self.global_, updates, self.failures)
        late = sorted(set(outcome.rejected) - set(self.failures))
        if late:  # the noise was sized for every update given; one left out now would be under-noised
            raise RoundFailed(f"round {server_round}: site(s) {', '.join(late)} rejected after clipping")
        self.outcome = outcome
        keys = self.inner.keys_to_send(self.inner.fed.phase_of(server_round))
        return to_record({k: outcome.new_global[k] for k in keys}), MetricRecord({"accepted": len(outcome.accepted)})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        pass


def client_dp_aggregate(inner: FGSSLStrategy, nodes: dict[int, int], rnd: int, global_: NamedArrays,
                        sent: NamedArrays, replies: dict[int, Message], failures: dict[str, str], *,
                        noise_multiplier: float, clipping_norm: float, grid: Grid) -> RoundOutcome:
    """One client-level DP round over the sites' train replies (site id -> reply without error).

    Replies that fail validation against `sent` are refused first (reason in the outcome); the rest go through
    Flower's wrapper. Returns the outcome with the noised global weights.
    """
    failures = dict(failures)
    good: dict[int, Message] = {}
    for site, reply in sorted(replies.items()):
        arrays = from_record(reply.content["arrays"])
        reason = validate_update(arrays, sent, inner.bounds)
        if reason is None and all(np.array_equal(arrays[k], sent[k]) for k in sent):
            reason = "unchanged weights (an empty update; Flower's clipping divides by its norm)"
        if reason is None:
            # The wrapper pairs reply and global arrays by position: same keys, same order.
            reply.content["arrays"] = to_record({k: arrays[k] for k in sent})
            good[site] = reply
        else:
            failures[str(site)] = reason
    inner.require_enough(rnd, len(good), failures)
    adapter = FlowerStrategy(inner, {s: nodes[s] for s in good})
    adapter.global_, adapter.failures = global_, failures
    dp = DifferentialPrivacyServerSideFixedClipping(adapter, noise_multiplier, clipping_norm, len(good))
    dp.configure_train(rnd, to_record(sent), ConfigRecord(), grid)  # remembers the reference weights
    with secret_numpy_noise():
        noised, _ = dp.aggregate_train(rnd, list(good.values()))
    if noised is None or adapter.outcome is None:
        raise RoundFailed(f"round {rnd}: Flower's DP wrapper refused to aggregate (see the log above)")
    new_global = dict(adapter.outcome.new_global)
    new_global.update(from_record(noised))
    return RoundOutcome(new_global, adapter.outcome.accepted, adapter.outcome.rejected)
