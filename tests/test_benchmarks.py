"""The benchmarks cannot rot: `python -m benchmarks --quick` runs every script on tiny sizes and each gives a
well-formed result line (the targets are checked by the full runs, recorded in benchmarks/RESULTS.md)."""

import json
import subprocess
import sys

import pytest

from benchmarks.__main__ import SCRIPTS, markdown

from .conftest import REPO


@pytest.mark.slow
def test_every_benchmark_runs_quick_and_gives_a_well_formed_result(tmp_path):
    out = tmp_path / "results.json"
    # Two at a time, not --quick's four: beside the suite's other workers, four more simulations at once would crowd
    # the deployment tests, whose waits are what fails on an overloaded machine.
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--jobs", "2", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["quick"] and report["machine"]["cores"] >= 1
    results = {r["id"]: r for r in report["results"]}
    assert list(results) == list(SCRIPTS)
    for bench, r in results.items():
        assert "error" not in r, r
        if "skipped" in r:  # only a figure this machine cannot measure, said why
            assert bench in ("B2", "B10") and r["skipped"], r
            continue
        assert r["quick"] is True and isinstance(r["pass"], bool) and r["exit"] == 0, r
        assert isinstance(r["ratio"], float) and r["ratio"] == r["ratio"] and r["ratio"] >= 0, r
        assert r["target"].split()[0] in ("<=", ">=") and r["command"].startswith(f"python -m benchmarks.b"), r
    assert "| B6 |" in proc.stdout and "machine:" in proc.stdout


def test_the_table_names_failed_and_skipped_benchmarks():
    table = markdown([{"id": "B1", "figure": "f", "ratio": 0.1, "target": "<= 0.5", "pass": True, "command": "c"},
                      {"id": "B2", "error": "exit 1, no result line:\nTraceback"},
                      {"id": "B10", "figure": "g", "skipped": "no GPU on this machine"}])
    assert "| B1 | f | 0.1 | <= 0.5 | yes | `c` |" in table
    assert "| B2 | failed: exit 1, no result line: | | | no | |" in table
    assert "not run: no GPU on this machine" in table


def test_a_script_that_misses_its_target_exits_non_zero(tmp_path):
    from benchmarks.common import finish

    assert finish("B0", "x", 2.0, 1.0) == 1 and finish("B0", "x", 0.5, 1.0) == 0
    assert finish("B0", "x", 2.0, 1.0, quick=True) == 0  # --quick checks the script, not the target
    assert finish("B0", "x", 0.5, 1.0, higher_is_better=True) == 1


def test_dp_overhead_times_a_recipe_from_its_config(tmp_path):
    """benchmarks/dp_overhead.py --config: the DP recipe's own frozen parts, size and batch, both phases, a ratio each."""
    import yaml

    from .conftest import TINY, merge

    config = tmp_path / "dp.yaml"
    config.write_text(yaml.safe_dump(merge(TINY, {"train": {"batch_size": 8, "frozen": ["backbone", "blocks"]},
                                                   "model": {"weights": "absent.safetensors"}})))
    proc = subprocess.run([sys.executable, "benchmarks/dp_overhead.py", "--config", str(config), "--modes", "hooks",
                           "--workloads", "finetune", "ssl", "--repeats", "1", "--no-memory", "--threads", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "frozen: backbone, blocks" in proc.stdout and "size=32 batch=8" in proc.stdout, proc.stdout
    for workload in ("finetune", "ssl"):
        table = proc.stdout.split(f"\n{workload}:")[1]
        rows = {line.split()[0]: line.split() for line in table.splitlines()[2:4]}
        assert rows["nonprivate"][2] == "1.00x" and float(rows["hooks"][2].rstrip("x")) > 0, table


def test_the_runner_refuses_fewer_than_one_job(capsys):
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--quick", "--jobs", "0"])
    assert exc.value.code == 2 and "--jobs must be at least 1, not 0" in capsys.readouterr().err
