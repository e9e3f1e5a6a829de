"""`fgssl compare RUN_DIR...`: one table (printed, compare.csv, compare.md) and compare.png across runs."""

import csv
import json
import shutil

import pytest
import yaml

from cli.reports.plots import REPORT_DPI, REPORT_FIGSIZE

from .conftest import TINY, merge, run_cli
from .test_report import png_size

PNG_PX = (round(REPORT_FIGSIZE[0] * REPORT_DPI), round(REPORT_FIGSIZE[1] * REPORT_DPI))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, finished_run):
    root = tmp_path_factory.mktemp("compare")
    shutil.copytree(finished_run, root / "sim")
    train_cfg = root / "train.yaml"
    train_cfg.write_text(yaml.safe_dump(merge(TINY, {"data": {"num_samples": 120},
                                                     "train": {"ssl_epochs": 1, "finetune_epochs": 1}})))
    run_cli("train", "--config", str(train_cfg), "--out", str(root / "train"), "--quiet")
    # a simulate run stopped after round 2: no summary.json, later records gone, a line cut short
    stopped = root / "stopped"
    shutil.copytree(root / "sim", stopped)
    (stopped / "summary.json").unlink()
    lines = (stopped / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["round"] <= 2]
    (stopped / "metrics.jsonl").write_text("\n".join(kept) + '\n{"round": 3, "pha')
    return root


def test_compare_table_csv_md_and_plot(runs, tmp_path):
    out = tmp_path / "cmp"
    proc = run_cli("compare", str(runs / "sim"), str(runs / "stopped"), str(runs / "train"), "--out", str(out))
    assert "wrote" in proc.stdout and "sim" in proc.stdout and "stopped at round 2" in proc.stdout
    rows = {r["run"]: r for r in csv.DictReader((out / "compare.csv").open())}
    assert list(rows) == ["sim", "stopped", "train"]

    sim = json.loads((runs / "sim" / "summary.json").read_text())
    pooled = sim["final"]["pooled"]
    r = rows["sim"]
    assert (r["command"], r["dataset"], r["sites"], r["partition"]) == ("simulate", "synthetic", "2", "iid")
    assert r["strategy"] == "fedavg / server fedavg" and r["privacy"] == "none"
    assert r["progress"] == "3/3 rounds" and r["status"] == "finished"
    for m in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
        assert float(r[m]) == pytest.approx(pooled[m])

    records = [json.loads(line) for line in (runs / "stopped" / "metrics.jsonl").read_text().splitlines()[:-1]]
    round2 = next(x for x in records if x["round"] == 2 and x["site"] == "pooled")
    r = rows["stopped"]
    assert r["status"].startswith("stopped at round 2") and r["progress"] == "2/3 rounds"
    assert float(r["balanced_accuracy"]) == pytest.approx(round2["balanced_accuracy"])

    test = json.loads((runs / "train" / "summary.json").read_text())["test"]
    r = rows["train"]
    assert (r["command"], r["progress"], r["status"], r["sites"]) == ("train", "2/2 epochs", "finished", "-")
    for m in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
        assert float(r[m]) == pytest.approx(test[m])

    md = (out / "compare.md").read_text()
    assert md.count("\n| ") == 4 and "| stopped | simulate |" in md and "stopped at round 2" in md
    assert f"{pooled['balanced_accuracy']:.4f}" in md and "compare.png" in md
    png = out / "compare.png"
    assert png.stat().st_size > 5000 and png_size(png) == PNG_PX


def test_compare_other_metric_and_default_out(runs, tmp_path):
    from cli.main import main
    import os
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["compare", str(runs / "sim"), "--metric", "macro_auc"]) == 0
    finally:
        os.chdir(cwd)
    (out,) = (tmp_path / "runs").iterdir()
    assert out.name.endswith("-compare") and png_size(out / "compare.png") == PNG_PX


def test_compare_bad_path_is_one_line_exit_2(runs, tmp_path):
    bad = tmp_path / "not-a-run"
    bad.mkdir()
    proc = run_cli("compare", str(runs / "sim"), str(bad), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and str(bad) in proc.stderr and "not a run directory" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_compare_needs_a_run(capsys):
    from cli.main import main
    with pytest.raises(SystemExit) as e:
        main(["compare"])
    assert e.value.code == 2 and "RUN_DIR" in capsys.readouterr().err
