"""Flower ServerApp: runs the phase plan round by round, records per-site metrics, checkpoints every round.

The decisions (what to send, what to accept, how to combine) belong to strategies.FGSSLStrategy; this module only
moves messages and writes the run directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fgssl.config import SITE_EVALUATIONS, Config
from fgssl.data.images import ImageSet
from fgssl.metrics import classification_metrics
from fgssl.model import FGSSLNet, build_model
from fgssl.model_card import describe, write_model_card
from fgssl.privacy.client_level import ClientLevelAccount
from fgssl.privacy.data_ledger import run_key
from fgssl.privacy.provenance import public_weights
from fgssl.rundir import RunDir
from fgssl.selection import Selection
from fgssl.train import evaluate
from strategies.aggregate import SiteUpdate
from strategies.client_dp import client_dp_aggregate
from strategies.fgssl_strategy import FGSSLStrategy, RoundOutcome
from strategies.flower import array_specs, screen_reply, to_config, to_record, uploaded_bytes
from strategies.groups import tag_by_site
from strategies.incoming import ArraySpec, RejectedReply, error_line
from strategies.secagg import secure_round
from strategies.wire import decode, is_encoded

from .checkpoint import (drop_unselected, load_checkpoint, load_releases, load_selected, save_checkpoint,
                         save_releases, save_selected)
from .cross_site import CSV_FILE, GLOBAL, build_table, reply_cell, table_note, write_csv
from .exchange import exchange

Say = Callable[[str], None]
# Structured per-round data for callers that want more than the printed line (fgssl simulate --json):
# {round, total, phase, seconds, train: {site: record}, evals: {site or "pooled": metrics}, text}.
RoundHook = Callable[[dict[str, Any]], None]
SCALAR_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "quadratic_weighted_kappa", "loss",
                  "majority_rate", "predicted_classes")


def initial_model(cfg: Config, num_classes: int) -> FGSSLNet:
    torch.manual_seed(cfg.seed)  # clients rebuild the same initial values for keys they are not sent
    return build_model(cfg.model, num_classes, cfg.train.frozen)


def initial_global(cfg: Config, num_classes: int) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in initial_model(cfg, num_classes).state_dict().items()}


def wait_for_sites(grid: Grid, count: int, timeout: float, say: Callable[[str], None] | None = None,
                   poll: float = 1.0, retry_after: float = 5.0, answer_within: float = 30.0) -> dict[int, int]:
    """Map site id -> Flower node id (node ids are random per run; site ids are stable).

    A node that fails the handshake (it died while connecting: the SuperLink still lists it until its heartbeat
    times out) is asked again `retry_after` seconds later: with node authentication the same hospital started
    again comes back under the same node id, without it under a new one. A node whose answer does not come within
    `answer_within` seconds (doubling with each silence) is asked again too: Flower drops a reply whose upload
    failed, and one lost answer must not hold the whole federation until `timeout`.
    """
    deadline = time.time() + timeout
    sites: dict[int, int] = {}
    failed: dict[int, tuple[str, float]] = {}  # node -> (reason, when)
    silences: dict[int, int] = {}  # node -> handshakes it let pass without an answer
    while len(sites) < count:
        now = time.time()
        ids = [n for n in grid.get_node_ids()
               if n not in sites.values() and (n not in failed or now - failed[n][1] >= retry_after)]
        if now > deadline:
            why = "; ".join(f"node {n}: {r}" for n, (r, _) in failed.items())
            raise TimeoutError(f"only {len(sites)} of {count} sites connected within {timeout:.0f} s"
                               + (f" (failed the handshake: {why})" if why else ""))
        if len(sites) + len(ids) < count and not any(n in failed for n in ids):
            time.sleep(0.1)
            continue
        queries = {n: Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in ids}
        wait = answer_within * 2 ** max((silences.get(n, 0) for n in ids), default=0)
        got = exchange(grid, queries, timeout=max(1.0, min(wait, deadline - time.time())), reask_after=None)
        for node in set(ids) - set(got.replies):
            silences[node] = silences.get(node, 0) + 1
            reason = f"no answer within {wait:.0f} s"
            if say is not None and node not in failed:
                say(f"node {node} gave the handshake {reason}; asking it again and waiting for the others")
            failed[node] = (reason, 0.0)  # asked again at once: nothing suggests it is down
        for node, r in got.replies.items():
            if r.has_error():
                if say is not None and node not in failed:
                    say(f"node {node} failed the handshake ({r.error.reason}); asking it again every "
                        f"{retry_after:g} s and waiting for the others")
                failed[node] = (r.error.reason, time.time())
                continue
            failed.pop(node, None)
            site = int(r.content["site"]["site"])
            if site in sites:  # two hospitals with one site id would silently merge into one
                raise RuntimeError(f"nodes {sites[site]} and {node} both say they are site {site}; "
                                   "give every node its own site id (fgssl node --site)")
            sites[site] = node
        if len(sites) < count:
            time.sleep(poll)
    return dict(sorted(sites.items()))


def flat_metrics(metrics: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """Scalars at the top level, nested values (per-class recall, confusion matrix) kept as they are."""
    if not metrics:
        return {}
    return {f"{prefix}{k}": v for k, v in metrics.items() if prefix == "" or k in SCALAR_METRICS}


def pooled_from_confusion(matrices: list[list[list[int]]], class_names: list[str]) -> dict[str, Any]:
    """Pooled metrics from summed site confusion matrices (AUC needs scores, so it is left out)."""
    cm = np.sum(np.asarray(matrices, dtype=np.int64), axis=0)
    k = cm.shape[0]
    y_true = np.repeat(np.repeat(np.arange(k), k), cm.ravel())
    y_pred = np.repeat(np.tile(np.arange(k), k), cm.ravel())
    scores = np.eye(k)[y_pred]
    out = classification_metrics(y_true, scores, class_names)
    out["macro_auc"] = None
    return out


class FederatedRun:
    def __init__(self, cfg: Config, run_dir: RunDir, grid: Grid, sites: dict[int, int], class_names: list[str],
                 pooled_test: ImageSet | None, say: Say, on_round: RoundHook | None = None,
                 data_statement: Callable[[], dict[str, Any]] | None = None) -> None:
        self.cfg, self.run_dir, self.grid, self.sites = cfg, run_dir, grid, sites
        self.class_names, self.pooled_test, self.say = class_names, pooled_test, say
        self.on_round = on_round
        # A simulation's word on its images' ledgers (fgssl.privacy.data_ledger.data_statement), for the summary.
        self.data_statement = data_statement
        self.run_uid = ""
        self.weights = public_weights(cfg)  # its hash and source go to every site's ledger
        # One model serves as the initial global weights and, later, for the pooled evaluation.
        self.model = initial_model(cfg, len(class_names))
        self.global_ = {k: v.numpy().copy() for k, v in self.model.state_dict().items()}
        # Buffers (running statistics) are averaged but not norm-bounded like weights.
        statistics = [name for name, _ in self.model.named_buffers()]
        self.strategy = FGSSLStrategy(cfg.federation, list(self.global_), statistics, cfg.train.frozen)
        self.timeout = cfg.federation.round_timeout_s
        self.last_eval: dict[str, Any] = {}
        self.epsilon: dict[str, dict[str, float]] = {}
        self.client_dp = ClientLevelAccount(cfg) if cfg.privacy.mode == "client" else None
        # The kept model: the round with the best pooled validation metric (the sites' summed val confusions).
        self.selection = Selection(cfg.train.select_metric, cfg.train.select_above_majority)
        self.selected_eval: dict[str, Any] | None = None
        self.asks: dict[int, int] = {}  # how often each site was sent the last request

    def _send(self, kind: str, rnd: int, arrays: dict[str, np.ndarray], config: dict[str, Any],
              expected: dict[str, ArraySpec] | None = None):
        """Ask every site; (screened replies, their arrays, why the others failed). `expected`: the arrays a reply
        may hold (default: a training reply the arrays sent, any other reply none)."""
        mtype = MessageType.TRAIN if kind == "train" else MessageType.EVALUATE
        record, settings = to_record(arrays), to_config(config)
        requests = {s: Message(RecordDict({"arrays": record, "config": settings}), dst_node_id=n,
                               message_type=mtype, group_id=f"{kind}-{rnd}") for s, n in self.sites.items()}
        lost = frozenset(f.site for f in self.cfg.simulation.faults
                         if f.kind == "lost_reply" and f.round == rnd and kind == "train")
        got = exchange(self.grid, requests, timeout=self.timeout, reask_after=self.cfg.federation.reask_after_s,
                       drop_first=lost, say=self.say)
        self.asks = got.asks
        ok: dict[int, dict[str, Any]] = {}
        arrays_by_site: dict[int, dict[str, np.ndarray]] = {}
        failed: dict[int, str] = {}
        self.replies: dict[int, Message] = {}  # the raw replies with arrays, for Flower's DP wrapper
        if expected is None:
            expected = array_specs(arrays) if kind == "train" else {}
        compact = config.get("upload_encoding") == "float16_delta"
        for site, r in got.replies.items():
            if r.has_error():
                failed[site] = f"client error: {error_line(r.error.reason)[-300:]}"
                continue
            try:
                ok[site], received = screen_reply(r.content, expected, compact=compact)
            except RejectedReply as e:  # a broken or hostile node: dropped like any bad update, named in the log
                failed[site] = f"rejected reply from site {site} (node {r.metadata.src_node_id}): {e}"
                continue
            if received is not None:
                arrays_by_site[site] = decode(received, arrays) if is_encoded(received) else received
                ok[site]["upload_bytes"] = uploaded_bytes(r.content)
                self.replies[site] = r
        for site in self.sites:
            if site not in ok and site not in failed:
                failed[site] = (f"no reply within federation.round_timeout_s={self.timeout:.0f} "
                                f"(asked {got.asks[site]} times)")
        return ok, arrays_by_site, failed

    def train_round(self, rnd: int) -> dict[int, dict[str, Any]]:
        round_cfg = {**self.strategy.round_config(rnd, self.cfg.seed), "run_id": self.run_dir.path.name,
                     "run_uid": self.run_uid, "upload_encoding": self.cfg.upload_encoding,
                     **(self.weights.to_round_config() if self.weights else {})}
        if self.cfg.cross_site_models and self.selection.best_step is not None:
            # The sites keep their local groups of the round selected so far: its model is evaluated cross-site.
            round_cfg["keep_local_round"] = self.selection.best_step
        keys = self.strategy.keys_to_send(round_cfg["phase"])
        sent = {k: self.global_[k] for k in keys}
        if self.cfg.federation.secure_aggregation:  # the server learns only the mean change, through SecAgg+
            outcome, info = secure_round(self.strategy, self.grid, self.sites, rnd, self.global_, sent, round_cfg)
            return self._finish_train_round(outcome, info)
        info, arrays, failed = self._send("train", rnd, sent, round_cfg)
        for site, rec in info.items():
            if "refused" in rec:  # over its privacy budget: a non-participant this round, not a fault
                failed[site] = f"refused: {rec['refused']}"
        if self.client_dp is not None:
            replies = {s: r for s, r in self.replies.items() if s not in failed}
            outcome = client_dp_aggregate(self.strategy, self.sites, rnd, self.global_, sent, replies,
                                          {str(s): r for s, r in failed.items()},
                                          noise_multiplier=self.client_dp.noise_multiplier,
                                          clipping_norm=self.client_dp.clip_norm, grid=self.grid)
            for site in outcome.accepted:
                info[int(site)].update(self.client_dp.release(site))
            # durable before the noised global is sent anywhere (the evaluation, the next round)
            save_releases(self.run_dir.path / "checkpoint", self.client_dp.rounds)
        else:
            updates = [SiteUpdate(str(s), arrays[s], int(info[s]["num_examples"]), info[s])
                       for s in sorted(arrays) if arrays[s]]
            outcome = self.strategy.aggregate_round(rnd, self.global_, updates,
                                                    {str(s): r for s, r in failed.items()})
        return self._finish_train_round(outcome, info)

    def _finish_train_round(self, outcome: RoundOutcome, info: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        self.global_ = outcome.new_global
        records = {}
        for site in self.sites:
            rec: dict[str, Any] = {"status": "accepted" if str(site) in outcome.accepted else "rejected"}
            if str(site) in outcome.rejected:
                rec["reason"] = outcome.rejected[str(site)]
                if rec["reason"].startswith("refused: "):
                    rec["status"] = "refused"
            for k, v in info.get(site, {}).items():
                if k in ("epsilon", "delta"):
                    rec[k] = v
                elif k not in ("site", "refused"):
                    rec[f"train_{k}"] = v
            if self.asks.get(site, 1) > 1:  # its first reply was lost (or late) and it was asked again
                rec["asks"] = self.asks[site]
            records[site] = rec
        return records

    def evaluate_round(self, rnd: int) -> dict[str, dict[str, Any]]:
        """Each site evaluates the global model on its own val/test split; plus the pooled test metrics."""
        local = set(self.strategy.local_keys)
        arrays = {k: v for k, v in self.global_.items() if k not in local}
        info, _, failed = self._send("evaluate", rnd, arrays, {"round": rnd})
        out: dict[str, dict[str, Any]] = {}
        for site in self.sites:
            if site in info and info[site].get("kept_at_site"):
                out[str(site)] = {"kept_at_site": True}
            elif site in info:
                out[str(site)] = {**flat_metrics(info[site].get("test")),
                                  **flat_metrics(info[site].get("val"), "val_")}
            else:
                out[str(site)] = {"eval_error": failed.get(site, "no reply")}
        if self.pooled_test is not None and not local:
            self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.global_.items()})
            out["pooled"] = flat_metrics(evaluate(self.model, self.pooled_test))
        else:
            matrices = [info[s]["test"]["confusion_matrix"] for s in info if info[s].get("test")]
            if matrices:
                out["pooled"] = pooled_from_confusion(matrices, self.class_names)
        val = [info[s]["val"]["confusion_matrix"] for s in info if info[s].get("val")]
        if val:
            out.setdefault("pooled", {}).update(flat_metrics(pooled_from_confusion(val, self.class_names), "val_"))
        return out

    def cross_site(self, model_round: int, state: dict[str, np.ndarray]) -> dict[str, Any]:
        """After the last round: every site evaluates the kept global model (`state`, from `model_round`) on its test
        split; where cfg.cross_site_models, each site also sends its local groups, and a second request carries them
        all to every site, which evaluates each site's model on its own test split. server/cross_site.py builds the
        table; failures and timeouts take the rounds' path (_send) and become cells that say so."""
        rnd, local = self.cfg.federation.total_rounds, self.strategy.local_keys
        request = {"round": rnd, "model_round": model_round}
        share = self.cfg.cross_site_models
        expected = array_specs({k: state[k] for k in local}) if share else {}
        info, groups, failed = self._send("cross-site", rnd, state, {**request, "cross_site": GLOBAL}, expected)
        rows = {GLOBAL: {str(s): reply_cell(info.get(s), failed.get(s)) for s in self.sites}}
        if share:
            shared = {k: v for k, v in state.items() if k not in local}
            sent = {**shared, **tag_by_site(groups)}
            evals, _, lost = self._send("cross-site", rnd, sent, {**request, "cross_site": "models"}) if groups \
                else ({}, {}, {})
            for owner in self.sites:
                if owner in groups:
                    rows[str(owner)] = {str(s): reply_cell(evals.get(s), lost.get(s), str(owner)) for s in self.sites}
                else:  # why is in its cell of the global row
                    rows[str(owner)] = {str(s): {"error": f"site {owner}'s local groups did not arrive"}
                                        for s in self.sites}
        return build_table([str(s) for s in self.sites], model_round, rows, table_note(self.cfg))

    def _select(self, rnd: int, evals: dict[str, dict[str, Any]], ckpt_dir: Path) -> None:
        """Offer round `rnd` to the selection; a winner's weights and metrics go to disk before the checkpoint."""
        val = pooled_val(evals)
        if not val:
            return
        if self.selection.offer(rnd, val, lambda: {k: np.array(v, copy=True) for k, v in self.global_.items()}):
            self.selected_eval = evals
            save_selected(ckpt_dir, rnd, self.selection.best_state, evals)

    def _replay_selection(self, ckpt_round: int, ckpt_dir: Path) -> None:
        """After a resume: the selection over the checkpointed rounds, from metrics.jsonl and the kept files."""
        for rec in self.run_dir.read_metrics():
            if rec.get("site") == "pooled" and int(rec["round"]) <= ckpt_round:
                self.selection.offer(int(rec["round"]), pooled_val({"pooled": rec}), lambda: None)
        if self.selection.best_step is not None:
            kept = load_selected(ckpt_dir, self.selection.best_step)
            if kept is None:  # a run from before selection existed: nothing to restore
                self.selection = Selection(self.selection.metric, self.selection.above_majority)
            else:
                self.selection.best_state, self.selected_eval = kept

    def run(self, resume: bool) -> dict[str, Any]:
        fed = self.cfg.federation
        ckpt_dir = self.run_dir.path / "checkpoint"
        start = 1
        self.run_uid = self.run_dir.uid(fresh=not resume)
        if resume:
            ckpt = load_checkpoint(ckpt_dir)
            if ckpt is not None:
                self.global_, start = ckpt.global_arrays, ckpt.round + 1
                self.strategy.load_state_dict(ckpt.strategy_state)
                self.run_dir.truncate_metrics(lambda rec: int(rec.get("round", 0)) <= ckpt.round)
                released = load_releases(ckpt_dir) if self.client_dp is not None else None
                for rec in self.run_dir.read_metrics():
                    if rec.get("site") == "pooled":
                        continue
                    if "epsilon" in rec:  # what each site has spent so far, for the summary
                        self.epsilon[str(rec["site"])] = {"epsilon": rec["epsilon"], "delta": rec["delta"]}
                    if self.client_dp is not None and released is None and rec.get("status") == "accepted":
                        self.client_dp.release(str(rec["site"]))  # a run from before the release count
                if released is not None:  # every noised global that left, a round redone after a crash included
                    self.client_dp.rounds = dict(released)
                self._replay_selection(ckpt.round, ckpt_dir)
                self.say(f"resuming after round {ckpt.round} of {fed.total_rounds}")
                if start > fed.total_rounds:  # stopped between the last checkpoint and the summary
                    self.last_eval = self.evaluate_round(fed.total_rounds)
        started = time.time()
        for rnd in range(start, fed.total_rounds + 1):
            t0 = time.time()
            phase = fed.phase_of(rnd)
            train = self.train_round(rnd)
            for site, rec in train.items():
                if "epsilon" in rec:
                    self.epsilon[str(site)] = {"epsilon": rec["epsilon"], "delta": rec["delta"]}
            evals = self.evaluate_round(rnd) if phase == "finetune" else {}
            if not resume and any(f.kind == "coordinator_crash" and f.round == rnd for f in self.cfg.simulation.faults):
                raise RuntimeError(f"injected coordinator crash in round {rnd}, after its global went out and before "
                                   "its checkpoint (simulation.faults)")
            for site in [str(s) for s in self.sites] + (["pooled"] if "pooled" in evals else []):
                rec = {"round": rnd, "phase": phase, "site": site}
                rec.update(train.get(int(site), {}) if site != "pooled" else {})
                rec.update(evals.get(site, {}))
                self.run_dir.log(rec)
            if evals:
                self._select(rnd, evals, ckpt_dir)
            save_checkpoint(ckpt_dir, rnd, self.global_, self.strategy.state_dict())
            drop_unselected(ckpt_dir, self.selection.best_step)
            self.last_eval = evals or self.last_eval
            secs = time.time() - t0
            line = _round_line(rnd, fed.total_rounds, phase, train, evals, secs)
            if self.on_round is not None:  # the hook replaces the line (it gets the line too)
                self.on_round({"round": rnd, "total": fed.total_rounds, "phase": phase, "seconds": secs,
                               "train": train, "evals": evals, "text": line})
            else:
                self.say(line)
        last = {k: torch.from_numpy(np.array(v)) for k, v in self.global_.items()}
        self.run_dir.save_weights(last, "model_last.safetensors")
        chosen = self.selection.best_state if self.selection.best_step is not None else None
        self.run_dir.save_weights({k: torch.from_numpy(np.array(v)) for k, v in chosen.items()} if chosen else last)
        final = self.selected_eval if chosen else self.last_eval
        final_round = self.selection.best_step if chosen else fed.total_rounds
        cross = self.cross_site(final_round, chosen or self.global_) if fed.cross_site else None
        summary = {"command": "simulate", "run_id": run_key(self.run_dir.path.name, self.run_uid),
                   "rounds": fed.total_rounds, "sites": len(self.sites),
                   "class_names": self.class_names, "chance_balanced_accuracy": 1.0 / len(self.class_names),
                   "elapsed_s": round(time.time() - started, 1), "final": dict(final or {}),
                   "final_round": final_round,
                   "final_last": self.last_eval, "selected": self.selection.summary("round"),
                   "privacy": privacy_statement(self.cfg, self.epsilon, "pooled" in (final or {}),
                                                self.data_statement() if self.data_statement else None)}
        for site, spent in self.epsilon.items():  # ε is what each site has spent in the whole run
            summary["final"][site] = {**summary["final"].get(site, {}), **spent}
        if cross is not None:
            summary["cross_site"] = cross
            write_csv(cross, self.run_dir.path / CSV_FILE)
        self.run_dir.write_summary(summary)
        self.run_dir.write_metrics_csv()
        write_model_card(self.run_dir.path, describe(self.cfg, self.class_names, summary))
        return summary


def pooled_val(evals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pooled = evals.get("pooled") or {}
    return {k[len("val_"):]: v for k, v in pooled.items() if k.startswith("val_")}


def privacy_statement(cfg: Config, spent: dict[str, dict[str, float]], pooled_test_at_server: bool = False,
                      data: dict[str, Any] | None = None) -> dict[str, Any]:
    """What guarantee the run has, in words and numbers (never an ε the mechanism does not give); `data`: what the
    images' ledgers say (a simulation's lifetime of its real images, or that synthetic ones have per-run ledgers)."""
    out = _run_statement(cfg, spent, pooled_test_at_server)
    if data:
        out = {**out, "data_ledger": data, "data_key": data.get("data_key"), "text": f"{out['text']} {data['text']}"}
    return out


def _run_statement(cfg: Config, spent: dict[str, dict[str, float]], pooled_test_at_server: bool) -> dict[str, Any]:
    p = cfg.privacy
    if p.mode == "none":
        return {"guarantee": "none", "text": "No differential privacy: updates are plain model weights."}
    worst = max((v["epsilon"] for v in spent.values()), default=0.0)
    if p.mode == "client":
        return {"guarantee": "client-level", "accountant": p.accountant, "per_site": spent,
                "max_epsilon_spent": worst, "clip_norm": p.client_clip_norm,
                "text": (f"Client-level (ε, δ)-DP: the sequence of global models is (ε, δ)-DP with respect to adding "
                         f"or removing one site's whole contribution (all its images at once), with ε per site as "
                         f"listed (at most {worst:.2f}) and δ as listed ({p.accountant.upper()} accountant, one "
                         f"Gaussian release per round the site took part in). The server clips each site's update to "
                         f"norm {p.client_clip_norm:g} and adds the noise (Flower's server-side fixed-clipping "
                         f"wrapper), so the server itself sees the individual updates: this protects against everyone "
                         f"who sees the global models, not against the server, which also receives each site's "
                         f"training loss and exact example count. Published without noise: the set of sites whose "
                         f"updates were accepted each round, and every site's evaluation metrics.")}
    return {"guarantee": "sample-level", "accountant": p.accountant, "per_site": spent, "max_epsilon_spent": worst,
            "text": (f"Sample-level (ε, δ)-DP at every site: each site's released updates and its noised example "
                     f"count (σ = {p.count_noise:g} images) over all rounds are (ε, δ)-DP with respect to adding or "
                     f"removing one training image of that site, with ε per site as listed (at most {worst:.2f}) "
                     f"and δ per site as listed ({p.accountant.upper()} accountant, composed over every release "
                     f"recorded in the site's ledger). The unit is one image: a patient or lesion with k images is "
                     f"protected at group level k only. It does not hide a whole site's participation, nor which "
                     f"rounds a site refused. Each site's validation and test metrics stay at the site (its "
                     f"{SITE_EVALUATIONS} in its state directory) and are not sent, so the kept model is the last "
                     f"round's (no validation leaves the sites to choose another)"
                     + (f"; the pooled test metrics here come from the simulation's own copy of the sites' test "
                        f"images, which a real coordinator does not have." if pooled_test_at_server else "."))}


def _round_line(rnd: int, total: int, phase: str, train: dict, evals: dict, secs: float) -> str:
    losses = [r["train_loss"] for r in train.values() if "train_loss" in r]
    rejected = [f"site {s} ({r['reason'][:80]})" for s, r in train.items() if r["status"] == "rejected"]
    line = f"round {rnd}/{total} [{phase}] {secs:.0f}s"
    eps = [r["epsilon"] for r in train.values() if "epsilon" in r]
    if eps:
        line += f"  max ε {max(eps):.2f}"
    if losses:
        line += f"  mean local loss {sum(losses) / len(losses):.3f}"
    if "pooled" in evals and evals["pooled"].get("balanced_accuracy") is not None:
        line += f"  pooled test balanced_accuracy {evals['pooled']['balanced_accuracy']:.3f}"
    if rejected:
        line += "  dropped: " + "; ".join(rejected)
    return line


def make_server_app(cfg: Config, run_dir: RunDir, class_names: list[str], *, resume: bool = False,
                    pooled_test: ImageSet | None = None, say: Say = print, on_round: RoundHook | None = None,
                    result: dict[str, Any] | None = None,
                    data_statement: Callable[[], dict[str, Any]] | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        sites = wait_for_sites(grid, cfg.federation.sites, timeout=cfg.federation.round_timeout_s)
        summary = FederatedRun(cfg, run_dir, grid, sites, class_names, pooled_test, say, on_round,
                               data_statement).run(resume)
        if result is not None:
            result.update(summary)

    return app
