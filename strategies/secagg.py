"""Secure aggregation (federation.secure_aggregation): one round through Flower's SecAgg+, server side.

What the server sees: the site's metrics (losses, example counts, ε) and, from the protocol, only the sum of the
sites' masked, quantised weight changes, which Flower's `SecAggPlusWorkflow` unmasks and divides by the summed
weight. Every site reports weight 1 (0 when it refuses to train), so the result is the equal-weight mean of the
changes; why equal and not example-weighted: the server cannot check a masked weight, so a site claiming many
examples could outvote the rest, and Flower clips *after* weighting, so with example weights the clipping range
would no longer bound each site's change.

Error: Flower rounds each clipped coordinate stochastically to one of `quantization_range` levels spanning
[-clipping_range, clipping_range], off by less than one level, 2·c/Q; summed over m sites the error is below
m·2·c/Q, and in the mean below 2·c/Q per coordinate.

The mean change then goes through `FGSSLStrategy.apply_mean_delta`, the same server optimiser and key selection as
the plain path. What the plain path does per update (norm bounds, NaN checks, trimming) cannot happen here: the
clipping range is the only bound on one site's contribution (each coordinate of the mean moves by at most 2·c/m per
site). The site's own client refuses to upload a non-finite or misshapen change instead.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from fgssl.config import SECAGG_MODULUS, FederationConfig

from .aggregate import NamedArrays
from .fgssl_strategy import FGSSLStrategy, RoundFailed, RoundOutcome
from .flower import from_config, to_config, to_record
from .incoming import error_line

# Flower's workflow asks each node for the four protocol steps in this order (one send_and_receive each).
STAGES = ("setup", "key sharing", "training and masked upload", "unmasking")


def clipped_delta(received: NamedArrays, trained: NamedArrays, clipping_range: float) -> tuple[list[np.ndarray], int]:
    """The site's change of each received array (in `received` order), clipped to ±clipping_range, in float64.

    Flower's quantiser clips too; clipping here as well lets the site count what it cut (a clipping range that is too
    small shows up in the metrics instead of silently shrinking the step). Raises on a change that is not finite or
    does not match what was sent: such an upload would quantise to garbage that no one could detect later.
    """
    out, clipped = [], 0
    for key, ref in received.items():
        value = trained.get(key)
        if value is None or value.shape != ref.shape:
            raise ValueError(f"key {key!r}: the trained array does not match the one received")
        delta = value.astype(np.float64) - ref.astype(np.float64)
        if not np.isfinite(delta).all():
            raise ValueError(f"key {key!r}: non-finite change; not uploading it to secure aggregation")
        clipped += int(np.count_nonzero(np.abs(delta) > clipping_range))
        out.append(np.clip(delta, -clipping_range, clipping_range))
    return out, clipped


def secagg_workflow(fed: FederationConfig) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ workflow with the federation's settings; weights are 0 or 1, hence max_weight 1."""
    return SecAggPlusWorkflow(num_shares=fed.secagg_shares, reconstruction_threshold=fed.secagg_threshold,
                              max_weight=1.0, clipping_range=fed.secagg_clipping_range,
                              quantization_range=fed.secagg_quantization_range, modulus_range=SECAGG_MODULUS,
                              timeout=fed.round_timeout_s)


class WatchedGrid:
    """The run's Grid, unchanged, noting which node answered a protocol step with an error.

    Flower's workflow keeps the errors but not who sent them; the per-site record wants a reason per site.
    """

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        self._grid, self._nodes = grid, set(node_ids)
        self.errors: dict[int, str] = {}
        self.stage = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        # A SuperLink answering for a node it considers dead signs the reply itself: match by the message answered.
        dst_of = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        stage = STAGES[min(self.stage, len(STAGES) - 1)]
        for r in replies:
            if r.has_error():
                src = r.metadata.src_node_id
                node = src if src in self._nodes else dst_of.get(r.metadata.reply_to_message_id, -1)
                self.errors.setdefault(node, f"client error during secure aggregation ({stage}): "
                                             f"{error_line(r.error.reason)[-300:]}")
        self.stage += 1
        return replies


class SecureMeanStrategy(Strategy):
    """A legacy Flower Strategy for one round: sends the round's keys, turns the unmasked mean into the new global."""

    def __init__(self, inner: FGSSLStrategy, nodes: dict[int, int], global_: NamedArrays, sent: NamedArrays,
                 round_cfg: dict[str, Any], grid: Grid, run_id: int, errors: dict[int, str]) -> None:
        self.inner, self.nodes, self.global_, self.sent = inner, nodes, global_, sent
        self.round_cfg, self.grid, self.run_id, self.errors = round_cfg, grid, run_id, errors
        self.infos: dict[int, dict[str, Any]] = {}
        self.outcome: RoundOutcome | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        # Legacy parameters are a bare list: the key names travel in the config so the site can name the arrays.
        config: dict[str, Scalar] = dict(to_config({**self.round_cfg, "keys": list(self.sent)}))
        proxies = [GridClientProxy(node, self.grid, self.run_id) for node in self.nodes.values()]
        for proxy in proxies:
            client_manager.register(proxy)
        return [(proxy, FitIns(parameters, config)) for proxy in proxies]

    def rejected(self) -> dict[str, str]:
        """Why each site is not in the mean: a client error, no reply, or a refusal to train (weight 0)."""
        out: dict[str, str] = {}
        for site, node in self.nodes.items():
            if site in self.infos:
                if "refused" in self.infos[site]:
                    out[str(site)] = f"refused: {self.infos[site]['refused']}"
            else:
                out[str(site)] = self.errors.get(node, "no reply within federation.round_timeout_s during secure "
                                                       "aggregation")
        return out

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        site_of = {n: s for s, n in self.nodes.items()}
        self.infos = {site_of[proxy.node_id]: from_config(res.metrics) for proxy, res in results}
        rejected = self.rejected()
        accepted = [str(s) for s in sorted(self.infos) if str(s) not in rejected]
        self.inner.require_enough(server_round, len(accepted), rejected)
        # The workflow hands every result the same unmasked mean; no result carries a site's own arrays.
        mean = parameters_to_ndarrays(results[0][1].parameters)
        if len(mean) != len(self.sent):
            raise RoundFailed(f"round {server_round}: secure aggregation returned {len(mean)} arrays for "
                              f"{len(self.sent)} keys")
        delta = {}
        for (key, ref), value in zip(self.sent.items(), mean):
            if value.shape != ref.shape or not np.isfinite(value).all():
                raise RoundFailed(f"round {server_round}: the securely aggregated change of {key!r} is unusable "
                                  f"(shape {value.shape}, expected {ref.shape}, or non-finite values)")
            delta[key] = value
        self.outcome = self.inner.apply_mean_delta(server_round, self.global_, delta, accepted, rejected)
        return ndarrays_to_parameters([self.outcome.new_global[k] for k in self.sent]), {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list:
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[float | None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


def secure_round(inner: FGSSLStrategy, grid: Grid, nodes: dict[int, int], rnd: int, global_: NamedArrays,
                 sent: NamedArrays, round_cfg: dict[str, Any]) -> tuple[RoundOutcome, dict[int, dict[str, Any]]]:
    """Run round `rnd` under SecAgg+ (site id -> node id in `nodes`); returns the outcome and each site's metrics.

    Raises RoundFailed when too few sites stay in the protocol (Flower's threshold) or too few contribute
    (federation.min_nodes).
    """
    watched = WatchedGrid(grid, nodes.values())
    run_id = int(getattr(getattr(grid, "run", None), "run_id", 0))
    adapter = SecureMeanStrategy(inner, nodes, global_, sent, round_cfg, watched, run_id, watched.errors)
    context = LegacyContext(Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            config=ServerConfig(num_rounds=1), strategy=adapter, client_manager=SimpleClientManager())
    # One fit round of Flower's workflow, driven from this project's own round loop (evaluation, checkpoints).
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: rnd})
    context.state.array_records[MAIN_PARAMS_RECORD] = to_record(sent)
    secagg_workflow(inner.fed)(watched, context)  # type: ignore[arg-type]
    if adapter.outcome is None:
        detail = "; ".join(f"site {s}: {r}" for s, r in sorted(adapter.rejected().items())) or "see the log above"
        raise RoundFailed(f"round {rnd}: secure aggregation halted: fewer than "
                          f"secagg_reconstruction_threshold={inner.fed.secagg_threshold} sites stayed in the "
                          f"protocol ({detail})")
    return adapter.outcome, adapter.infos
