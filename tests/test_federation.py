"""End-to-end federation tests on Flower's real simulation engine, with a tiny model."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flwr.app import RecordDict
from safetensors.numpy import load_file

from client.site import train_round
from fgssl.config import load_config
from server.app import initial_global
from simulations.sites import SimulatedSites
from strategies.fgssl_strategy import FGSSLStrategy
from strategies.flower import to_record, uploaded_bytes
from strategies.groups import keys_matching

from .conftest import REPO, run_cli


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_aggregate_is_the_example_weighted_mean_and_local_groups_stay_home(tiny_config, tmp_path):
    # BatchNorm on purpose: its 0-d num_batches_tracked counters must travel and aggregate too.
    # Site 2 crashes in the cross-site evaluation at the end (after training), so its local groups never go out.
    cfg_path = tiny_config(partition={"method": "dirichlet", "alpha": 1.0}, model={"norm": "batch"},
                           federation={"sites": 3, "ssl_rounds": 0, "finetune_rounds": 1, "local_groups": ["*bn*"]},
                           simulation={"faults": [{"site": 2, "round": 1, "kind": "cross_site_raise"}]})
    out = tmp_path / "run"
    run_cli("simulate", "--config", str(cfg_path), "--out", str(out), "--quiet")
    cfg = load_config(out / "config.yaml")
    final = load_file(str(out / "model.safetensors"))

    # Recompute the round outside Flower: each site's local training from the same weights, then a plain
    # example-weighted mean written here, independently of strategies/. (One round: a second would start from a
    # mean rounded differently in the last bit, and training amplifies that beyond any useful tolerance.)
    partition = json.loads((out / "partition.json").read_text())
    parts = [np.array(s["indices"]) for s in partition["sites"]]
    assert sorted(np.concatenate(parts).tolist()) == list(range(cfg.data.num_samples))
    sites = SimulatedSites(cfg, parts, tmp_path / "replay-state")
    names = partition["class_names"]
    global_ = initial_global(cfg, len(names))
    strategy = FGSSLStrategy(cfg.federation, list(global_))
    local = keys_matching(list(global_), ["*bn*"])
    assert local and all(k not in strategy.keys_to_send(p) for k in local for p in ("ssl", "finetune"))
    # The sites uploaded float16 changes (federation.upload_encoding's default): each coordinate of the mean may
    # differ from the float32 one by 2**-11 of the sites' weighted changes there, and by float32 rounding.
    assert cfg.upload_encoding == "float16_delta"
    tolerance = {}
    for rnd in (1,):
        rc = strategy.round_config(rnd, cfg.seed)
        keys = strategy.keys_to_send(rc["phase"])
        results = [train_round(cfg, sites, s, {k: global_[k] for k in keys}, rc) for s in range(3)]
        total = sum(info["num_examples"] for _, info in results)
        sizes = [len(sites.splits(s).train) for s in range(3)]
        assert [info["num_examples"] for _, info in results] == sizes
        for k in keys:
            if np.issubdtype(global_[k].dtype, np.floating):
                mean = sum(arr[k].astype(np.float64) * info["num_examples"] for arr, info in results) / total
                change = sum(np.abs(arr[k].astype(np.float64) - global_[k]) * info["num_examples"]
                             for arr, info in results) / total
                tolerance[k] = change * 2.0 ** -11 + np.abs(mean) * 2.0 ** -21 + 1e-9
                global_[k] = mean.astype(global_[k].dtype)
    for k in global_:
        if np.issubdtype(global_[k].dtype, np.floating):
            gap = np.abs(final[k].astype(np.float64) - global_[k]) - tolerance.get(k, 1e-9)
            assert gap.max() <= 0, (k, float(gap.max()))
    records = _metrics(out)
    # against the same update uploaded as float32 values, headers and all
    plain = uploaded_bytes(RecordDict({"arrays": to_record({k: v for k, v in global_.items() if k in keys})}))
    assert all(0 < r["train_upload_bytes"] < 0.5 * plain for r in records if r["site"] != "pooled"), records

    # Local groups never travelled: the server's copy is still the initial one ...
    init = initial_global(cfg, len(names))
    for k in local:
        np.testing.assert_array_equal(final[k], init[k])
    # ... while each site trained its own, and they differ between sites.
    saved = [load_file(str(out / "sites" / f"site_{s}" / "local_r1.safetensors")) for s in range(3)]
    assert set(saved[0]) == set(local)
    assert any(not np.array_equal(saved[0][k], init[k]) for k in local)
    assert any(not np.array_equal(saved[0][k], saved[1][k]) for k in local)

    records = _metrics(out)
    assert {(r["round"], r["site"]) for r in records} == {(1, "0"), (1, "1"), (1, "2"), (1, "pooled")}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["final"]) == {"0", "1", "2", "pooled"}
    assert (out / "metrics.csv").read_text().startswith("round,phase,site")
    # The cross-site table: sites 0 and 1 passed their groups on and evaluated each other's models; site 2 crashed,
    # so its column and its model's row say why there is no number.
    cells = summary["cross_site"]["cells"]
    assert summary["cross_site"]["models"] == ["global", "0", "1", "2"]
    for owner in ("global", "0", "1"):
        assert all(isinstance(cells[owner][s]["balanced_accuracy"], float) for s in ("0", "1"))
        assert "injected crash of site 2 in the cross-site evaluation" in cells[owner]["2"]["error"]
        assert cells[owner]["mean"]["sites"] == 2
    assert all(cells["2"][s] == {"error": "site 2's local groups did not arrive"} for s in ("0", "1", "2"))


@pytest.mark.slow
def test_bad_updates_and_a_crashing_site_are_dropped_and_the_round_completes(tiny_config, tmp_path):
    faults = [{"site": 0, "round": 1, "kind": "nan"}, {"site": 1, "round": 1, "kind": "wrong_shape"},
              {"site": 2, "round": 1, "kind": "scale", "scale": 1e6}, {"site": 3, "round": 1, "kind": "raise"},
              {"site": 5, "round": 1, "kind": "huge_metric"}, {"site": 6, "round": 1, "kind": "extra_array"},
              {"site": 4, "round": 1, "kind": "cross_site_raise"}]
    cfg_path = tiny_config(federation={"sites": 7, "ssl_rounds": 0, "finetune_rounds": 1, "min_nodes": 1},
                           simulation={"faults": faults})
    out = tmp_path / "run"
    proc = run_cli("simulate", "--config", str(cfg_path), "--out", str(out))
    rounds = {r["site"]: r for r in _metrics(out) if r["round"] == 1}
    assert rounds["4"]["status"] == "accepted"
    expectations = {"0": "non-finite", "1": "shape", "2": "norm", "3": "injected crash",
                    "5": "rejected reply from site 5", "6": "unexpected array 'injected.weight'"}
    for site, fragment in expectations.items():
        assert rounds[site]["status"] == "rejected"
        assert fragment in rounds[site]["reason"], rounds[site]["reason"]
    # a crashed site's reason is its exception's message, not the tail of Flower's traceback around it
    assert rounds["3"]["reason"] == "client error: injected crash of site 3 in round 1 (simulation.faults)", rounds["3"]
    assert "dropped" in proc.stdout
    assert "is 2000000 characters long" in rounds["5"]["reason"] and "x" * 1000 not in (out / "metrics.jsonl").read_text()
    assert (out / "model.safetensors").exists()
    final = load_file(str(out / "model.safetensors"))
    assert all(np.isfinite(v).all() for v in final.values())
    # site 4 crashed in the cross-site evaluation: its cell says so, the others' hold their metrics, the run completed
    cells = json.loads((out / "summary.json").read_text())["cross_site"]["cells"]["global"]
    assert "injected crash of site 4 in the cross-site evaluation" in cells["4"]["error"]
    assert all(isinstance(cells[s]["balanced_accuracy"], float) for s in "012356") and cells["mean"]["sites"] == 6
    assert "injected crash of site 4 in the cross-site" in (out / "cross_site.csv").read_text()


@pytest.mark.slow
def test_too_few_good_updates_stop_the_run_with_the_reasons(tiny_config, tmp_path):
    cfg_path = tiny_config(federation={"sites": 2, "ssl_rounds": 0, "finetune_rounds": 1, "min_nodes": 2},
                           simulation={"faults": [{"site": 1, "round": 1, "kind": "nan"}]})
    proc = run_cli("simulate", "--config", str(cfg_path), "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode != 0
    assert "min_nodes=2" in proc.stderr and "site 1" in proc.stderr and "non-finite" in proc.stderr
    assert "Traceback" not in proc.stderr


def _popen_simulate(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "cli.main", "simulate", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_same_final_weights(tiny_config, tmp_path):
    cfg_path = tiny_config(federation={"sites": 2, "ssl_rounds": 1, "finetune_rounds": 2, "local_groups": ["*bn*"],
                                       "server_optimizer": "fedadam"})
    straight = tmp_path / "straight"
    run_cli("simulate", "--config", str(cfg_path), "--out", str(straight), "--quiet")

    killed = tmp_path / "killed"
    proc = _popen_simulate("--config", str(cfg_path), "--out", str(killed), "--quiet")
    state = killed / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while not (state.exists() and json.loads(state.read_text())["round"] >= 1):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed / "model.safetensors").exists()

    run_cli("simulate", "--resume", str(killed), "--quiet")
    _check_cross_site(straight, tmp_path / "check")
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    rounds = [(r["round"], r["site"]) for r in _metrics(killed)]
    assert len(rounds) == len(set(rounds)), "a resumed round was logged twice"
    assert rounds == [(r["round"], r["site"]) for r in _metrics(straight)]

    original = json.loads((straight / "summary.json").read_text())
    assert json.loads((killed / "summary.json").read_text())["cross_site"] == original["cross_site"]

    # Stopped after the last checkpoint but before the summary (during the cross-site evaluation): resuming
    # recomputes the final metrics and redoes the cross-site evaluation.
    (straight / "summary.json").unlink()
    (straight / "cross_site.csv").unlink()
    run_cli("simulate", "--resume", str(straight), "--quiet")
    again = json.loads((straight / "summary.json").read_text())
    assert again["final"] == original["final"] and again["final"]["pooled"]["balanced_accuracy"] is not None
    assert again["cross_site"] == original["cross_site"] and (straight / "cross_site.csv").is_file()


def _check_cross_site(run, scratch):
    """The cross-site table of a finished run with local groups and no DP, against an evaluation made here: the kept
    global model, alone and with each site's local groups of its round, on every site's test split."""
    import torch

    from fgssl.metrics import HEADLINE_METRICS
    from fgssl.model import build_model
    from fgssl.train import evaluate

    summary = json.loads((run / "summary.json").read_text())
    table, rnd = summary["cross_site"], summary["final_round"]
    assert table["models"] == ["global", "0", "1"] and table["sites"] == ["0", "1"] and table["model_round"] == rnd
    assert all(set(table["cells"][m]) == {"0", "1", "mean"} for m in table["models"])
    cfg = load_config(run / "config.yaml")
    partition = json.loads((run / "partition.json").read_text())
    sites = SimulatedSites(cfg, [np.array(s["indices"]) for s in partition["sites"]], scratch)
    weights = load_file(str(run / "model.safetensors"))
    for owner in table["models"]:
        state = dict(weights)
        if owner != "global":
            state.update(load_file(str(run / "sites" / f"site_{owner}" / f"local_r{rnd}.safetensors")))
        model = build_model(cfg.model, len(partition["class_names"]))
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        for s in table["sites"]:
            expected = evaluate(model, sites.splits(int(s)).test)
            assert table["cells"][owner][s] == {k: expected[k] for k in HEADLINE_METRICS}, (owner, s)
        row = [table["cells"][owner][s]["balanced_accuracy"] for s in table["sites"]]
        assert table["cells"][owner]["mean"]["balanced_accuracy"] == pytest.approx(sum(row) / len(row))
    for s in table["sites"]:  # the diagonal: each site's model on its own split, as the rounds reported it
        assert table["cells"][s][s]["balanced_accuracy"] == summary["final"][s]["balanced_accuracy"]
        assert table["cells"][s][s]["accuracy"] == summary["final"][s]["accuracy"]
    assert (run / "cross_site.csv").read_text().count("\n") == 1 + 3 * 3


@pytest.mark.parametrize("override,key", [
    ("federation.strategy=krum", "federation.strategy"),
    ("federation.min_nodes=9", "federation.min_nodes"),
    ("federation.finetune_rounds=-1", "federation.finetune_rounds"),
    ("model.backbone=resnet19", "model.backbone"),
])
def test_bad_config_fails_before_training_naming_the_key(tmp_path, override, key):
    out = tmp_path / "run"
    proc = run_cli("simulate", "--set", override, "--out", str(out), check=False, timeout=120)
    assert proc.returncode == 2
    assert f"'{key}'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
