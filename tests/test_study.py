"""`fgssl study`: arms × seeds of real train/simulate runs, resumable, with a results table and plot."""

import json
import re

import pytest
import yaml

from cli.experiments.study import EXPERIMENTS, plan, read_experiment
from fgssl.config import ConfigError

from .conftest import REPO, run_cli

TINY_TRAIN = ["data.num_samples=160", "data.image_size=32", "model.backbone=resnet10", "model.width=8",
              "model.granularities=[4,2,1]", "model.block_mid_channels=8", "model.block_out_channels=16",
              "model.embed_dim=8", "model.groups=4", "train.batch_size=16", "train.ssl_epochs=1",
              "train.finetune_epochs=1"]


def _experiment(tmp_path, arms: dict) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"description": "two tiny arms", "seeds": [0, 1], "arms": arms}))
    return str(path)


@pytest.mark.slow
def test_study_runs_every_arm_and_seed_then_skips_what_is_finished(tmp_path):
    arms = {"sampler": {"command": "train", "set": TINY_TRAIN}}
    exp, out = _experiment(tmp_path, arms), tmp_path / "study"
    first = run_cli("study", exp, "--out", str(out))
    assert first.stdout.count("running fgssl train") == 2
    rows = (out / "runs.csv").read_text().splitlines()
    assert rows[0].startswith("arm,command,seed,status") and len(rows) == 3
    assert all(",finished," in r for r in rows[1:])
    md = (out / "results.md").read_text()
    assert "| sampler" in md and " ± " in md and "majority rate" in md
    assert (out / "results.png").stat().st_size > 1000
    assert json.loads((out / "runs" / "sampler-seed1" / "summary.json").read_text())["seed"] == 1
    results = (out / "results.csv").read_text().splitlines()
    assert len(results) == 2 and results[0].startswith("arm,command,runs,balanced_accuracy_mean")
    assert results[1].startswith("sampler,train,2,")

    again = run_cli("study", exp, "--out", str(out))  # nothing left to do
    assert again.stdout.count("finished earlier, skipped") == 2 and "running" not in again.stdout

    # another config for the arm: the old runs are set aside (kept, not deleted) and run again
    arms["sampler"]["set"] = [*TINY_TRAIN, "train.class_balance=loss"]
    third = run_cli("study", _experiment(tmp_path, arms), "--out", str(out), "--seeds", "1")
    assert third.stdout.count("running fgssl") == 1 and "moved to" in third.stdout
    assert len(list((out / "stale").iterdir())) == 1


@pytest.mark.slow
def test_sigterm_stops_the_study_and_the_run_it_is_running(tmp_path):
    """As for `fgssl sweep`: SIGTERM stops the running child as Ctrl-C does, instead of leaving it to train on."""
    import subprocess
    import sys

    from ._procs import sigterm_stops_child

    long_train = [*TINY_TRAIN[:-2], "train.ssl_epochs=0", "train.finetune_epochs=200"]
    exp, out = _experiment(tmp_path, {"long": {"command": "train", "set": long_train}}), tmp_path / "study"
    study = subprocess.Popen([sys.executable, "-m", "cli.main", "study", exp, "--out", str(out), "--quiet"],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = out / "runs" / "long-seed0"
    sigterm_stops_child(study, run / "config.yaml", str(run))


def test_the_tables_written_after_each_run_cover_the_whole_file(tmp_path, monkeypatch):
    """A study of one arm, stopped after its run, leaves tables that still count what other invocations finished."""
    from cli.experiments import study

    arms = {"a": {"command": "train", "set": TINY_TRAIN}, "b": {"command": "train", "set": TINY_TRAIN}}
    exp_path, out = _experiment(tmp_path, arms), tmp_path / "study"
    run_cli("study", exp_path, "--out", str(out), "--arms", "a", "--seeds", "0")
    exp = read_experiment(tmp_path / "exp.yaml")
    every = plan(exp)
    monkeypatch.setattr(study, "execute", lambda *a, **k: (False, "stopped here"))
    errors = study.run_study(exp, [r for r in every if r.name == "b-seed0"], out, lambda _: None, every)
    assert errors == {"b-seed0": "stopped here"}
    rows = {r.split(",")[0] + r.split(",")[2]: r for r in (out / "runs.csv").read_text().splitlines()[1:]}
    assert ",finished," in rows["a0"] and ",failed," in rows["b0"] and ",not run," in rows["a1"], rows
    assert re.search(r"\| a( ▼)? \| train \| 1 \|", (out / "results.md").read_text())


def test_study_refuses_a_bad_experiment_before_running_anything(tmp_path):
    exp = _experiment(tmp_path, {"a": {"command": "train", "set": ["train.batch_size=1"]}})
    proc = run_cli("study", exp, "--out", str(tmp_path / "s"), check=False)
    assert proc.returncode == 2 and "train.batch_size" in proc.stderr and "arm 'a'" in proc.stderr
    assert not (tmp_path / "s" / "runs").exists()
    good = _experiment(tmp_path, {"a": {"command": "train", "set": TINY_TRAIN}})
    proc = run_cli("study", good, "--arms", "a", "b", "--out", str(tmp_path / "s"), check=False)
    assert proc.returncode == 2 and "has no arm b (its arms: a)" in proc.stderr
    assert not (tmp_path / "s" / "runs").exists()
    with pytest.raises(ConfigError, match="command"):
        read_experiment(tmp_path / _experiment(tmp_path, {"a": {"command": "fly"}}))


@pytest.fixture(scope="module")
def quick_cache(tmp_path_factory):
    """One cache of decoded real images for every shipped experiment's quick run: they read the same files at the
    same size, and decoding (and hashing) all 10,015 HAM10000 images is most of such a run."""
    return tmp_path_factory.mktemp("quick-cache")


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_experiments_plan_and_their_quick_variant_runs(path, tmp_path, quick_cache):
    exp = read_experiment(path)
    roots = {(yaml.safe_load(a.config.read_text()) or {}).get("data", {}).get("root") for a in exp.arms if a.config}
    missing = [r for r in roots if r and not (REPO / r).is_dir()]
    if missing:
        pytest.skip(f"{exp.name} reads real images from {missing[0]}, which is absent here")
    assert exp.description and len(plan(exp)) == len(exp.arms) * len(exp.seeds)
    # real images are decoded into a cache: a temporary folder, not the repository's runs/
    raw = yaml.safe_load(path.read_text())
    raw["quick"] = [*raw.get("quick", []), f"data.cache_dir={quick_cache}"]
    path = tmp_path / path.name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    # Every arm's config is resolved and validated by plan(); one arm per command runs end to end here, to keep the
    # suite's time (`fgssl study NAME --quick` runs them all).
    first = {}
    for arm in exp.arms:
        first.setdefault(arm.command, arm.name)
    out = tmp_path / "quick"
    proc = run_cli("study", str(path), "--quick", "--arms", *first.values(), "--out", str(out), timeout=900)
    rows = {r.split(",")[0]: r for r in (out / "runs.csv").read_text().splitlines()[1:]}
    assert list(rows) == [a.name for a in exp.arms], proc.stdout
    assert all(",finished," in rows[a] for a in first.values()), proc.stdout
    assert all(",not run," in r for a, r in rows.items() if a not in first.values()), proc.stdout


def test_overrides_for_every_arm_come_last_and_are_validated(tmp_path):
    arms = {"a": {"command": "train", "set": ["model.width=16"]}, "b": {"command": "simulate"}}
    exp = read_experiment(tmp_path / _experiment(tmp_path, arms))
    runs = plan(exp, overrides=("model.width=8", "data.image_size=48"))
    assert [(r.config().model.width, r.config().data.image_size) for r in runs] == [(8, 48)] * 4
    with pytest.raises(ConfigError, match="arm 'a'.*model.backbone|model.backbone.*arm 'a'"):
        plan(exp, overrides=("model.backbone=resnet99",))
