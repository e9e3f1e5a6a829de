"""--json and --quiet, shared by every long-running command: JSON lines with round events, and no progress."""

import json
import math

import numpy as np
import pytest

from cli.progress import Output, plain

from .conftest import run_cli
from .test_official_data import make_aptos


def json_lines(text: str) -> list[dict]:
    events = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line must parse
    assert events and all(isinstance(e, dict) and isinstance(e.get("event"), str) for e in events)
    return events


def test_output_modes(capsys):
    for kwargs, expected in (({}, "working\nresult\n"), ({"quiet": True}, "result\n")):
        out = Output("x", **kwargs)
        out.emit("step", "working", n=1)
        out.emit("done", "result", result=True)
        assert capsys.readouterr().out == expected
    out = Output("x", json_lines=True, interval_s=3600)
    out.emit("step", "working", n=1)
    out.emit("done", "result", result=True, value=math.nan, arr=np.float32(1.5))
    with out.bar("train", 10) as bar:
        for i in range(1, 11):
            bar(i, 10, {"loss": 0.5})
    events = json_lines(capsys.readouterr().out)
    # one progress event only: the throttle holds back all but the last batch
    assert events == [{"event": "step", "n": 1}, {"event": "done", "value": None, "arr": 1.5},
                      {"event": "progress", "step": "train", "done": 10, "total": 10, "loss": 0.5}]
    assert plain({"a": [float("inf"), 2]}) == {"a": [None, 2]}


def test_a_bar_in_a_log_file_is_a_line_every_few_seconds_not_a_frame_per_batch(capsys, monkeypatch):
    clock = iter(range(0, 1000, 3))  # every update 3 s after the last
    monkeypatch.setattr("cli.progress.time.monotonic", lambda: next(clock))
    out = Output("x", log_interval_s=10.0)
    with out.bar("train", 12) as bar:
        for i in range(1, 13):
            bar(i, 12, {"loss": 0.25})
    err = capsys.readouterr().err  # pytest's capture is no terminal
    assert "\r" not in err
    lines = err.splitlines()
    assert lines == ["train: 4/12, loss 0.250", "train: 8/12, loss 0.250", "train: 12/12, loss 0.250"]


def test_simulate_json_lines_carry_round_events(tiny_config, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("simulate", "--config", str(tiny_config()), "--out", str(out), "--json")
    events = json_lines(proc.stdout)
    assert events[0] == {"event": "start", "command": "simulate", "run_dir": str(out), "rounds": 2, "sites": 2,
                         "resume": False}
    rounds = [e for e in events if e["event"] == "round"]
    assert [(r["round"], r["total"], r["phase"]) for r in rounds] == [(1, 2, "ssl"), (2, 2, "finetune")]
    assert all(r["seconds"] > 0 and r["mean_local_loss"] > 0 and r["text"].startswith(f"round {r['round']}/2")
               for r in rounds)
    summary = json.loads((out / "summary.json").read_text())
    pooled = summary["final"]["pooled"]
    assert rounds[1]["pooled_balanced_accuracy"] == pytest.approx(pooled["balanced_accuracy"])
    assert rounds[1]["pooled_macro_auc"] == pytest.approx(pooled["macro_auc"])
    assert "pooled_balanced_accuracy" not in rounds[0]  # SSL rounds are not evaluated
    assert set(rounds[1]["sites"]) == {"0", "1"} and rounds[1]["sites"]["0"]["status"] == "accepted"
    done = events[-1]
    assert done["event"] == "done" and done["run_dir"] == str(out) and done["report"] == str(out / "report.html")
    assert done["final"]["pooled"]["balanced_accuracy"] == pytest.approx(pooled["balanced_accuracy"])
    assert "confusion_matrix" not in done["final"]["pooled"]
    assert (out / "report.html").is_file()


def test_simulate_quiet_prints_no_progress(tiny_config, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("simulate", "--config", str(tiny_config(federation={"ssl_rounds": 0, "finetune_rounds": 1})),
                   "--out", str(out), "--quiet")
    assert "round 1/1" not in proc.stdout and "partition:" not in proc.stdout
    # only results: where it writes, the table, where the report went
    assert f"writing to {out}" in proc.stdout and "pooled" in proc.stdout and "done in" in proc.stdout
    assert f"report in {out / 'report.html'}" in proc.stdout
    assert "it/s" not in proc.stderr  # no progress bar either


def test_partition_json(tiny_config, tmp_path):
    proc = run_cli("partition", "--config", str(tiny_config()), "--out", str(tmp_path / "p"), "--json")
    (event,) = json_lines(proc.stdout)
    assert event["event"] == "done" and event["method"] == "iid" and event["plot"].endswith("partition.png")
    assert sum(s["num_samples"] for s in event["sites"]) == 240 and "indices" not in event["sites"][0]


def test_prepare_json_reports_progress(tmp_path):
    root = tmp_path / "aptos"
    make_aptos(root)
    args = ("prepare", "--dataset", "aptos2019", "--root", str(root), "--size", "16", "--out",
            str(tmp_path / "cache"), "--json", "--workers", "1")
    events = json_lines(run_cli(*args).stdout)
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "done"
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 10
    assert events[-1]["num_images"] == 10 and events[-1]["built"] is True
    again = json_lines(run_cli(*args).stdout)  # a valid cache is reused: nothing to decode, no progress
    assert [e["event"] for e in again] == ["start", "done"] and again[-1]["built"] is False


def test_json_errors_are_events_too(tmp_path):
    proc = run_cli("simulate", "--set", "federation.min_nodes=9", "--json", "--out", str(tmp_path / "r"),
                   check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    (event,) = json_lines(proc.stdout)
    assert event["event"] == "error" and event["exit_code"] == 2 and "federation.min_nodes" in event["message"]


def test_quiet_and_json_are_exclusive(capsys):
    from cli.main import main
    with pytest.raises(SystemExit) as e:
        main(["simulate", "--quiet", "--json"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_help_and_the_node_commands_start_without_torch():
    """Commands are imported lazily: `fgssl --help`, `fgssl node --help`, `fgssl nodes --help`, `fgssl certs --help`
    and `fgssl ledger --help` load no torch."""
    import subprocess
    import sys

    from .conftest import REPO

    probe = ("import sys, contextlib, io\nfrom cli.main import main\n"
             "for argv in ([], ['node'], ['nodes'], ['certs'], ['ledger']):\n"
             "    with contextlib.redirect_stdout(io.StringIO()):\n        try:\n"
             "            main([*argv, '--help'])\n        except SystemExit:\n            pass\n"
             "print('torch' in sys.modules, 'flwr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "False", out.stdout
