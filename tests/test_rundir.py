"""RunDir.open, the one reader of run directories: tolerant of what a killed run leaves, strict about what is wrong."""

import json

import pytest

from fgssl.rundir import RunDir, RunFileError

from .conftest import run_cli


def test_open_reads_a_run_that_was_killed_mid_line(tmp_path):
    run = RunDir(tmp_path / "run")
    run.log({"round": 1, "site": "0", "balanced_accuracy": 0.5})
    run.log({"round": 1, "site": "pooled", "balanced_accuracy": 0.6})
    with open(run.metrics_path, "a") as f:
        f.write('{"round": 2, "site": "0", "bala')  # the kill came mid-write
    (run.path / "config.yaml").write_text("seed: 3\nfederation: {sites: 2}\n")
    (run.path / "partition.json").write_text(json.dumps({"sizes": [1, 2]}))
    saved = RunDir.open(run.path)
    assert [r["site"] for r in saved.records] == ["0", "pooled"] and saved.bad_lines == 1
    assert saved.summary is None and saved.partition == {"sizes": [1, 2]}
    assert saved.section("federation") == {"sites": 2} and saved.section("privacy") == {}
    assert saved.command == "simulate" and saved.has_config and saved.has_metrics
    assert run.read_metrics() == saved.records  # the writer's resume reads the same way
    (run.path / "summary.json").write_text('{"command": "train", "fin')  # cut short: as if not written
    assert RunDir.open(run.path).summary is None


def test_open_names_what_is_wrong_and_creates_nothing(tmp_path):
    with pytest.raises(RunFileError, match="no such directory"):
        RunDir.open(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("seed: [1,\n")
    with pytest.raises(RunFileError, match=r"bad/config.yaml is not valid YAML"):
        RunDir.open(tmp_path / "bad")
    empty = RunDir.open(tmp_path)
    assert (empty.records, empty.config, empty.command, empty.has_metrics) == ([], {}, None, False)


def test_resume_of_a_folder_that_is_not_a_run_fails_and_creates_nothing(tmp_path):
    proc = run_cli("simulate", "--resume", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and "nope/config.yaml not found" in proc.stderr
    assert not (tmp_path / "nope").exists()
