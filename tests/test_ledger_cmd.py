"""`fgssl ledger PATH`: a ledger's history, ε per run and over its lifetime, as a table, JSON, CSV and a plot; bad
paths are one line naming the file, exit code 2."""

from __future__ import annotations

import csv
import json
import sqlite3

import pytest

from cli.main import main
from fgssl.privacy.accounting import Mechanism, epsilon
from fgssl.privacy.ledger import PrivacyLedger, ledger_epsilon

DELTA = 1e-5
WEAK, STRONG = (Mechanism(sample_rate=0.2, noise_multiplier=s, steps=10, label="finetune dp-sgd") for s in (0.8, 2.0))


def fgssl(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["ledger", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def data_ledger(tmp_path):
    """A data ledger of two runs of two sites each (copied from the sites' own ledgers), then training without DP."""
    path = tmp_path / "images-x.sqlite3"
    for run, sites in {"a@1": [[WEAK, WEAK], [STRONG]], "b@2": [[STRONG], [WEAK]]}.items():
        for site, mechanisms in enumerate(sites):
            with PrivacyLedger(tmp_path / run / str(site)) as own, PrivacyLedger(path) as ledger:
                for i, m in enumerate(mechanisms):
                    own.commit(own.reserve(m, run_id=run, round=i + 1, phase="finetune", delta=DELTA))
                ledger.import_entries(own, run_id=run, holder=str(site))
    return path


def test_a_node_ledger_per_run_and_over_its_lifetime(tmp_path, capsys):
    with PrivacyLedger(tmp_path / "state") as ledger:
        for run, m in (("r1", WEAK), ("r1", STRONG), ("r2", STRONG)):
            ledger.reserve(m, run_id=run, round=1, phase="finetune", delta=DELTA)
        ledger.record_weights(run_id="r2", sha256="ab" * 32, path="/pub/model.safetensors", source="public run")
    code, out, _ = fgssl(capsys, str(tmp_path / "state"), "--csv", str(tmp_path / "h.csv"), "--plot",
                         str(tmp_path / "h.png"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"ledger {tmp_path / 'state' / 'privacy_ledger.sqlite3'}: 3 entries, 2 run(s)")
    assert "δ = 1e-05" in lines[0] and "reserved" in lines[3] and "q=0.2 σ=0.8 steps=10" in lines[3]
    r1, total = epsilon([WEAK, STRONG], DELTA), epsilon([WEAK, STRONG, STRONG], DELTA)
    assert f"run r1: 2 entries" in out and f"ε = {r1:.3f}" in out
    assert f"run r2: 1 entries" in out and f"ε = {epsilon([STRONG], DELTA):.3f}" in out
    assert f"lifetime: ε = {total:.3f} at δ = 1e-05" in out
    assert "public weights of run r2: /pub/model.safetensors sha256 abab" in out and "(source: public run)" in out
    rows = list(csv.DictReader(open(tmp_path / "h.csv")))
    assert [r["run"] for r in rows] == ["r1", "r1", "r2"]
    assert float(rows[-1]["lifetime_epsilon"]) == pytest.approx(total, rel=1e-9)
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_data_ledger_counts_each_runs_worst_site_and_shows_an_unbounded_entry(data_ledger, capsys):
    code, out, _ = fgssl(capsys, str(data_ledger), "--json")
    h = json.loads(out)
    assert code == 0 and h["kind"] == "data" and h["delta"] == DELTA and h["accountant"] == "rdp"
    assert [(e["run"], e["site"]) for e in h["entries"]] == [("a@1", "0"), ("a@1", "0"), ("a@1", "1"),
                                                             ("b@2", "0"), ("b@2", "1")]
    with PrivacyLedger(data_ledger, readonly=True) as ledger:
        entries = ledger.history()
    assert h["lifetime_epsilon"] == pytest.approx(ledger_epsilon(entries, DELTA), rel=1e-9)
    assert h["runs"][0]["epsilon"] == pytest.approx(epsilon([WEAK, WEAK], DELTA), rel=1e-9)  # its worst site
    assert [e["lifetime_epsilon"] for e in h["entries"]] == sorted(e["lifetime_epsilon"] for e in h["entries"])

    with PrivacyLedger(data_ledger) as ledger:
        ledger.record_unprotected("centralised training (fgssl train)", run_id="c@3", round=0, phase="train",
                                  delta=DELTA, holder="central")
    code, out, _ = fgssl(capsys, str(data_ledger))
    assert code == 0 and "unprotected (no DP)" in out
    assert "lifetime: ε = ∞ since run c@3 (round 0) released data without a DP guarantee" in out
    h = json.loads(fgssl(capsys, str(data_ledger), "--json")[1])
    assert h["lifetime_epsilon"] is None and h["unbounded"] and h["unbounded_by"] == "c@3"
    assert h["entries"][-1]["unbounded"] and not h["entries"][-2]["unbounded"]


def test_bad_paths_are_one_line_naming_the_file(tmp_path, capsys):
    foreign = tmp_path / "foreign.sqlite3"
    c = sqlite3.connect(foreign)
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    (tmp_path / "empty-dir").mkdir()
    for path, says in ((tmp_path / "missing.sqlite3", "not found"), (foreign, "not a privacy ledger"),
                       (corrupt, "corrupt or not a privacy ledger"), (tmp_path / "empty-dir", "without")):
        code, out, err = fgssl(capsys, str(path))
        assert code == 2 and out == "", path
        assert err.startswith(f"fgssl ledger: error: privacy ledger {path}") and says in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "missing.sqlite3").exists()  # reading never creates a ledger
    with PrivacyLedger(tmp_path / "ok"):
        pass
    code, _, err = fgssl(capsys, str(tmp_path / "ok"), "--csv", str(tmp_path / "no-such-dir" / "h.csv"))
    assert code == 2 and "--csv" in err and "no-such-dir" in err


def test_an_empty_ledger(tmp_path, capsys):
    with PrivacyLedger(tmp_path / "s"):
        pass
    code, out, _ = fgssl(capsys, str(tmp_path / "s"), "--json")
    h = json.loads(out)
    assert code == 0 and h["entries"] == [] and h["runs"] == [] and h["lifetime_epsilon"] == 0.0
    assert fgssl(capsys, str(tmp_path / "s"))[1].startswith(f"ledger {tmp_path / 's'}")
