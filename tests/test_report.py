"""`fgssl report RUN_DIR`: report.md, self-contained report.html and plots/ for finished and interrupted runs."""

import json
import shutil
import struct

import pytest
import yaml

from cli.reports.jigsaw_figure import JIGSAW_FIGSIZE
from cli.reports.plots import CONFUSION_FIGSIZE, PARTITION_FIGSIZE, REPORT_DPI, REPORT_FIGSIZE

from .conftest import run_cli

CURVE_PX = (round(REPORT_FIGSIZE[0] * REPORT_DPI), round(REPORT_FIGSIZE[1] * REPORT_DPI))
EXPECTED = {  # plot file -> (width, height) in pixels
    "balanced_accuracy.png": CURVE_PX,
    "training_loss.png": CURVE_PX,
    "partition.png": (round(PARTITION_FIGSIZE[0] * 100), round(PARTITION_FIGSIZE[1] * 100)),
    "confusion_pooled.png": (round(CONFUSION_FIGSIZE[0] * REPORT_DPI), round(CONFUSION_FIGSIZE[1] * REPORT_DPI)),
    "jigsaw_views.png": (round(JIGSAW_FIGSIZE[0] * REPORT_DPI), round(JIGSAW_FIGSIZE[1] * REPORT_DPI)),
}


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def check_plots(run, expected):
    for name, size in expected.items():
        p = run / "plots" / name
        assert p.is_file() and p.stat().st_size > 5000, name
        assert png_size(p) == size, name


def test_report_on_a_finished_run(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    proc = run_cli("report", str(run))
    assert f"wrote {run / 'report.md'}" in proc.stdout and "finished" in proc.stdout
    md = (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    for text in (md, page):
        assert "Finished: all 3 rounds completed" in text and "did not finish" not in text
        assert "No differential privacy: updates are plain model weights." in text
        assert "balanced accuracy" in text and "site 0" in text and "site 1" in text and "pooled" in text
        assert "iid" in text and "fedavg" in text
    # the per-site table holds summary.json's final numbers
    final = json.loads((run / "summary.json").read_text())["final"]
    row = next(line for line in md.splitlines() if line.startswith("| site 0 |") and "0." in line)
    assert f"{final['0']['balanced_accuracy']:.3f}" in row
    assert "| total | 240 |" in md  # partition table
    # self-contained: every plot inlined, no reference to a file
    assert page.count('src="data:image/png;base64,') == len(EXPECTED) + 1 and 'src="plots/' not in page
    check_plots(run, EXPECTED)
    # the cross-site section: the global model's row holds summary.json's cross-site numbers, and its heat map
    cross = json.loads((run / "summary.json").read_text())["cross_site"]
    row = next(line for line in md.splitlines() if line.startswith(f"| global (round {cross['model_round']}) |"))
    assert f"{cross['cells']['global']['1']['balanced_accuracy']:.3f} / " in row
    assert "## Cross-site evaluation" in md and "local_groups is empty" in md and "](plots/cross_site.png)" in md
    assert "Cross-site evaluation" in page and (run / "plots" / "cross_site.png").stat().st_size > 5000
    assert not (run / "plots" / "epsilon.png").exists()  # no DP, no ε plot
    for text in (md, page):  # the jigsaw views: the run's granularities, images regenerated from its config
        assert "Jigsaw views" in text and "model.granularities" in text and "regenerated from config.yaml" in text
    assert "](plots/jigsaw_views.png)" in md and "Not drawn: jigsaw" not in md


def test_report_says_why_the_jigsaw_views_are_missing(finished_run, tmp_path):
    # A run on a real data set whose images are not on this machine: the report is still written, and says why.
    from cli.reports.report import write_report
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.rmtree(run / "plots")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"].update(dataset="isic2018", root=str(tmp_path / "no-such-folder"))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    paths = write_report(run)
    md = paths.markdown.read_text()
    assert f"jigsaw views: the isic2018 images are not available here: data.root {tmp_path / 'no-such-folder'} " \
           "does not exist" in md and "fgssl prepare" in md
    assert "jigsaw views" in paths.html.read_text()
    check_plots(run, {k: v for k, v in EXPECTED.items() if k != "jigsaw_views.png"})
    assert not (run / "plots" / "jigsaw_views.png").exists()


def test_report_on_an_interrupted_run(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["round"] <= 2]
    assert len(kept) < len(lines)
    (run / "metrics.jsonl").write_text("\n".join(kept) + '\n{"round": 3, "pha')  # and a line cut short
    proc = run_cli("report", str(run), "--quiet")
    assert "wrote" in proc.stdout
    md = (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    for text in (md, page):
        assert "This run did not finish: it stopped at round 2 of 3" in text
        assert "from round 2, the last evaluated round" in text
        assert "No differential privacy" in text
        assert "The cross-site evaluation follows the last round; this run did not get there." in text
    round2 = {r["site"]: r for r in map(json.loads, kept) if r["round"] == 2}
    row = next(line for line in md.splitlines() if line.startswith("| pooled |"))
    assert f"{round2['pooled']['balanced_accuracy']:.3f}" in row
    check_plots(run, EXPECTED)


def test_report_draws_epsilon_against_the_budget(finished_run, tmp_path):
    # A DP run's records, made from the finished run (a real DP simulation is tested in test_federation_dp.py).
    from cli.reports.report import write_report
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["privacy"].update(mode="sample", noise_multiplier=1.5, max_epsilon=8.0)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        if r["site"] != "pooled":
            r.update(epsilon=1.5 * r["round"] + int(r["site"]), delta=1e-5)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    paths = write_report(run)
    check_plots(run, {**EXPECTED, "epsilon.png": CURVE_PX})
    md = paths.markdown.read_text()
    assert "Sample-level (ε, δ)-DP at every site" in md and "at most 5.50" in md
    assert "| site 1 | 5.500 | 1.0e-05 | 3 | 8 | 0 |" in md


def test_report_on_a_directory_that_is_not_a_run(tmp_path):
    proc = run_cli("report", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and str(tmp_path) in proc.stderr



def test_report_on_a_run_without_metrics(tmp_path, capsys):
    from cli.main import main
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no metrics" in err and str(tmp_path) in err


def test_a_stopped_client_level_run_is_not_called_sample_level(finished_run, tmp_path):
    from cli.reports.report import write_report
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["privacy"].update(mode="client", noise_multiplier=1.0)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        if r["site"] != "pooled":
            r.update(epsilon=2.0 * r["round"], delta=1e-5)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    md = write_report(run).markdown.read_text()
    assert "Client-level (ε, δ)-DP at every site" in md and "Sample-level" not in md
    assert "whole data set" in md


def test_a_finished_simulation_leaves_a_model_that_loads_with_its_description(finished_run):
    from fgssl.model_card import load_model

    summary = json.loads((finished_run / "summary.json").read_text())
    model, card = load_model(finished_run)
    assert card["training"]["command"] == "simulate" and card["training"]["sites"] == 2
    assert card["class_names"] == summary["class_names"]
    assert card["metrics"]["balanced_accuracy"] == summary["final"]["pooled"]["balanced_accuracy"]
    assert card["privacy"]["text"] == summary["privacy"]["text"]
    assert sum(p.numel() for p in model.parameters()) > 0


# `fgssl serve`'s last state: its children are gone and it writes the report in-process. The plots stand in for a
# large run's (a minute here), so that the signal lands inside them on any machine.
_SERVE_WRITING_THE_REPORT = """
import argparse, sys, time
import cli.reports.report as report
from cli.deploy.coordinator import _finish
from cli.deploy.processes import stop_on_signals
from cli.errors import run_command
from fgssl.rundir import RunDir

def slow_plots(run):
    print("making the plots", flush=True)
    time.sleep(60)
    raise AssertionError("the signal did not stop the report")

report.make_plots = slow_plots
stop_on_signals()
sys.exit(run_command("fgssl serve", argparse.Namespace(), lambda _: _finish(RunDir(sys.argv[1]), print) or 0))
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_serve_stops_promptly_while_it_writes_the_report_and_keeps_the_results(finished_run, tmp_path, sig):
    import signal
    import subprocess
    import sys
    import time

    from .conftest import REPO

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for name in ("report.md", "report.html"):
        (run / name).unlink(missing_ok=True)
    kept = {name: (run / name).read_bytes() for name in ("summary.json", "metrics.jsonl", "model.safetensors")}
    proc = subprocess.Popen([sys.executable, "-c", _SERVE_WRITING_THE_REPORT, str(run)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    said = []
    try:
        for line in proc.stdout:
            said.append(line)
            if line.startswith("making the plots"):
                break
        assert said and said[-1].startswith("making the plots"), "".join(said)
        assert any("fgssl serve: done in" in line for line in said), "".join(said)
        t0 = time.monotonic()
        proc.send_signal(getattr(signal, sig))
        out, _ = proc.communicate(timeout=30)
        seconds = time.monotonic() - t0
    finally:
        proc.kill()  # a failed check leaves no sleeping child behind
        proc.wait()
    assert proc.returncode == 130 and "fgssl serve: interrupted" in out, "".join(said) + out
    assert seconds < 10, f"stopped {seconds:.1f} s after {sig}"
    assert {name: (run / name).read_bytes() for name in kept} == kept  # the results stay as they were
    assert not (run / "report.md").exists() and not (run / "report.html").exists()  # no half report
