"""Secure aggregation (federation.secure_aggregation) on Flower's real SecAgg+ workflow and client mod.

Expected values are recomputed outside Flower: each site's `train_round` from the same weights is deterministic,
so the mean change the server should have applied is known exactly, up to Flower's quantisation.
"""

import json
import tempfile
from pathlib import Path

from simulations.run import flower_environment

flower_environment(Path(tempfile.gettempdir()) / "fgssl-flwr-home")  # before anything imports flwr

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from flwr.common import bytes_to_ndarray  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from client.site import train_round  # noqa: E402
from fgssl.config import ConfigError, load_config  # noqa: E402
from fgssl.rundir import RunDir  # noqa: E402
from server.app import initial_global  # noqa: E402
from simulations.sites import SimulatedSites  # noqa: E402
from strategies.aggregate import SiteUpdate  # noqa: E402
from strategies.fgssl_strategy import FGSSLStrategy  # noqa: E402
from strategies.secagg import SecureMeanStrategy, WatchedGrid, clipped_delta  # noqa: E402

from .conftest import TINY, merge, run_cli  # noqa: E402

CLIP = 1.0
# Coarse on purpose: one level is 2·CLIP/Q ≈ 4.9e-4, far above training's run-to-run noise, so the bound is tested.
QUANT = 4096
STEP = 2 * CLIP / QUANT
SECURE = {"model": {"norm": "group"},
          "federation": {"sites": 4, "ssl_rounds": 0, "finetune_rounds": 1, "min_nodes": 2,
                         "secure_aggregation": True, "secagg_clipping_range": CLIP,
                         "secagg_quantization_range": QUANT}}


def _config(tmp_path: Path, **over) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(merge(merge(TINY, SECURE), over)))
    return path


def _deltas(out: Path, tmp: Path, sites: list[int]) -> tuple[dict, dict[int, dict[str, np.ndarray]], list[str]]:
    """The initial global weights and each listed site's change in round 1, replayed outside Flower."""
    cfg = load_config(out / "config.yaml")
    partition = json.loads((out / "partition.json").read_text())
    parts = [np.array(s["indices"]) for s in partition["sites"]]
    replay = SimulatedSites(cfg, parts, tmp / "replay-state")
    global_ = initial_global(cfg, len(partition["class_names"]))
    strategy = FGSSLStrategy(cfg.federation, list(global_))
    rc = {**strategy.round_config(1, cfg.seed), "run_id": out.name}
    keys = strategy.keys_to_send(rc["phase"])
    deltas = {}
    for s in sites:
        arrays, _ = train_round(cfg, replay, s, {k: global_[k] for k in keys}, rc)
        deltas[s] = {k: arrays[k].astype(np.float64) - global_[k].astype(np.float64) for k in keys}
    return global_, deltas, keys


def _assert_mean_applied(final: dict, global_: dict, deltas: dict, keys: list[str]) -> float:
    """final = global + equal-weight mean of the deltas, within one quantisation level; returns the largest error."""
    worst = 0.0
    for k in keys:
        mean = sum(d[k] for d in deltas.values()) / len(deltas)
        expected = global_[k].astype(np.float64) + mean
        err = np.abs(final[k].astype(np.float64) - expected)
        # float32 storage of the new global adds at most one ulp of the weight itself.
        bound = STEP + 1e-6 + np.abs(expected) * np.finfo(np.float32).eps
        assert (err <= bound).all(), f"{k}: error {err.max():.3g} over the bound"
        worst = max(worst, float(err.max()))
    return worst


@pytest.fixture(scope="module")
def instrumented_run(tmp_path_factory):
    """One secure 4-site round, in this process so the server side can be watched: every reply the server's Grid
    receives and every argument the server-side strategy's aggregate_fit gets."""
    from simulations.run import simulate

    tmp = tmp_path_factory.mktemp("secagg")
    cfg = load_config(_config(tmp, partition={"method": "dirichlet", "alpha": 1.0}))
    run_dir = RunDir(tmp / "run")
    run_dir.write_config(cfg)
    replies, fit_inputs = [], []
    original_send, original_aggregate = WatchedGrid.send_and_receive, SecureMeanStrategy.aggregate_fit

    def recording_send(self, messages, *, timeout=None):
        got = list(original_send(self, messages, timeout=timeout))
        replies.extend(got)
        return got

    def recording_aggregate(self, server_round, results, failures):
        fit_inputs.append([(proxy.node_id, res) for proxy, res in results])
        return original_aggregate(self, server_round, results, failures)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(WatchedGrid, "send_and_receive", recording_send)
        mp.setattr(SecureMeanStrategy, "aggregate_fit", recording_aggregate)
        simulate(cfg, run_dir, say=lambda _line: None)
    return tmp, run_dir.path, replies, fit_inputs


@pytest.mark.slow
def test_secure_aggregate_is_the_equal_weight_mean_of_changes_within_one_quantisation_level(instrumented_run):
    tmp, out, _, _ = instrumented_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = {r["site"]: r for r in records if r["site"] != "pooled"}
    assert {s: r["status"] for s, r in train.items()} == {str(s): "accepted" for s in range(4)}
    assert all(r["train_secagg_clipped"] == 0 for r in train.values())  # the bound below assumes no clipping
    sizes = {r["train_num_examples"] for r in train.values()}
    assert len(sizes) > 1, "sites of equal size would not tell equal from example weights"
    global_, deltas, keys = _deltas(out, tmp, [0, 1, 2, 3])
    worst = _assert_mean_applied(load_file(str(out / "model.safetensors")), global_, deltas, keys)
    assert worst > 1e-6, "no quantisation error at all: was the update really quantised?"


@pytest.mark.slow
def test_the_server_never_holds_one_sites_change_in_the_clear(instrumented_run):
    tmp, out, replies, fit_inputs = instrumented_run
    _, deltas, keys = _deltas(out, tmp, [0, 1, 2, 3])
    candidates = [np.concatenate([d[k].ravel() for k in keys]) for d in deltas.values()]

    # The strategy got one call, and every result in it carries the same arrays: the mean, never a site's own.
    assert len(fit_inputs) == 1 and len(fit_inputs[0]) == 4
    from flwr.common import parameters_to_ndarrays
    seen = [np.concatenate([a.ravel() for a in parameters_to_ndarrays(res.parameters)]) for _, res in fit_inputs[0]]
    assert all(np.array_equal(seen[0], s) for s in seen[1:])
    mean = np.mean(candidates, axis=0)
    assert np.abs(seen[0] - mean).max() <= STEP + 1e-6
    for c in candidates:
        assert np.abs(seen[0] - c).max() > 10 * STEP

    # Every array that reached the server in a reply: the legacy parameters record is emptied by the mod, and the
    # masked vectors match neither a site's change nor its quantised form.
    assert replies, "the Grid was not watched"
    quantised = [(c + CLIP) * QUANT / (2 * CLIP) for c in candidates]
    masked = 0
    for r in replies:
        if r.has_error():
            continue
        for record in r.content.array_records.values():
            assert len(record) == 0, "a reply carried arrays in the clear"
        for record in r.content.config_records.values():
            for value in record.values():
                for item in value if isinstance(value, list) else [value]:
                    if not isinstance(item, bytes):
                        continue
                    try:
                        arr = bytes_to_ndarray(item)
                    except Exception:  # keys, ciphertexts and shares are not arrays
                        continue
                    masked += 1
                    flat = arr.astype(np.float64).ravel()
                    for c, q in zip(candidates, quantised):
                        for ref in (c, q):
                            n = min(len(ref), len(flat))
                            assert not np.allclose(flat[:n], ref[:n], atol=2), "an upload matches a site's change"
    assert masked > 0, "no masked upload was seen"


@pytest.mark.slow
def test_a_site_dropping_out_after_key_sharing_leaves_the_mean_of_the_others(tmp_path):
    # Site 3 takes part in setup and key sharing, then crashes while training (the masked-upload step).
    cfg_path = _config(tmp_path, simulation={"faults": [{"site": 3, "round": 1, "kind": "raise"}]})
    out = tmp_path / "run"
    run_cli("simulate", "--config", str(cfg_path), "--out", str(out), "--quiet")
    records = {r["site"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    assert [records[s]["status"] for s in "012"] == ["accepted"] * 3
    assert records["3"]["status"] == "rejected"
    assert "training and masked upload" in records["3"]["reason"] and "injected crash" in records["3"]["reason"]
    global_, deltas, keys = _deltas(out, tmp_path, [0, 1, 2])
    _assert_mean_applied(load_file(str(out / "model.safetensors")), global_, deltas, keys)


@pytest.mark.slow
def test_sample_level_dp_and_secure_aggregation_run_together(tmp_path):
    cfg_path = _config(tmp_path, federation={"sites": 3},
                       privacy={"mode": "sample", "noise_multiplier": 1.0, "max_grad_norm": 1.0})
    out = tmp_path / "run"
    run_cli("simulate", "--config", str(cfg_path), "--out", str(out), "--quiet")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["privacy"]["guarantee"] == "sample-level"
    assert set(summary["privacy"]["per_site"]) == {"0", "1", "2"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["status"] == "accepted" for r in records if r["site"] != "pooled")
    final = load_file(str(out / "model.safetensors"))
    assert all(np.isfinite(v).all() for v in final.values())


@pytest.mark.parametrize("overrides,key", [
    (["federation.strategy=trimmed_mean"], "federation.strategy"),
    (["federation.strategy=norm_bounded"], "federation.strategy"),
    (["privacy.mode=client", "privacy.noise_multiplier=1.0"], "privacy.mode"),
    (["model.norm=batch"], "model.norm"),
    (["federation.sites=2"], "federation.sites"),
    (["federation.min_nodes=1"], "federation.min_nodes"),
    (["federation.secagg_reconstruction_threshold=4"], "federation.secagg_reconstruction_threshold"),
    (["federation.secagg_num_shares=5"], "federation.secagg_num_shares"),
    (["federation.secagg_quantization_range=2000000000"], "federation.secagg_quantization_range"),
    (["federation.secagg_clipping_range=0"], "federation.secagg_clipping_range"),
])
def test_settings_secure_aggregation_cannot_honour_are_refused(overrides, key):
    base = ["federation.secure_aggregation=true", "federation.sites=4", "federation.min_nodes=2", "model.norm=group"]
    with pytest.raises(ConfigError) as err:
        load_config(None, base + overrides)
    assert f"'{key}'" in str(err.value)


def test_defaults_share_with_every_site_and_need_a_majority():
    fed = load_config(None, ["federation.secure_aggregation=true", "federation.sites=5",
                             "model.norm=group"]).federation
    assert (fed.secagg_shares, fed.secagg_threshold) == (5, 3)


def test_the_mean_change_step_matches_the_plain_equal_weight_round():
    cfg = load_config(None, ["federation.server_optimizer=fedadam", "federation.max_update_norm=null"])
    rng = np.random.default_rng(0)
    global_ = {"backbone.conv.weight": rng.normal(size=(3, 4)).astype(np.float32), "heads.0.bias": rng.normal(size=5).astype(np.float32)}
    plain, secure = FGSSLStrategy(cfg.federation, list(global_)), FGSSLStrategy(cfg.federation, list(global_))
    changes = [{k: rng.normal(scale=0.1, size=v.shape) for k, v in global_.items()} for _ in range(3)]
    updates = [SiteUpdate(str(i), {k: (global_[k] + c[k]).astype(np.float32) for k in c}, 10)
               for i, c in enumerate(changes)]
    a = plain.aggregate_round(1, global_, updates)
    mean = {k: np.mean([(u.arrays[k].astype(np.float64) - global_[k]) for u in updates], axis=0) for k in global_}
    b = secure.apply_mean_delta(1, global_, mean, ["0", "1", "2"], {})
    for k in global_:
        np.testing.assert_allclose(a.new_global[k], b.new_global[k], rtol=1e-6, atol=1e-7)
    assert a.accepted == b.accepted


def test_a_site_clips_its_change_and_refuses_to_upload_a_broken_one():
    received = {"w": np.zeros(4, dtype=np.float32)}
    delta, clipped = clipped_delta(received, {"w": np.array([0.5, -3.0, 2.0, 0.0], dtype=np.float32)}, 1.0)
    np.testing.assert_array_equal(delta[0], [0.5, -1.0, 1.0, 0.0])
    assert clipped == 2
    with pytest.raises(ValueError, match="non-finite"):
        clipped_delta(received, {"w": np.array([np.nan, 0, 0, 0], dtype=np.float32)}, 1.0)
    with pytest.raises(ValueError, match="does not match"):
        clipped_delta(received, {"w": np.zeros(5, dtype=np.float32)}, 1.0)
