"""Privacy accounting and the crash-safe per-node ledger (docs/privacy.md)."""

import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from fgssl.privacy import (
    RDP_ORDERS,
    BudgetExceededError,
    LedgerCorruptError,
    LedgerError,
    LedgerLockedError,
    Mechanism,
    PrivacyLedger,
    PrivacyParameterError,
    compose_same_batch,
    default_delta,
    dp_sgd_run,
    epsilon,
    noise_for_target_epsilon,
    refusal_message,
    same_batch_steps_sigma,
    statistic_and_gradient_sigma,
)

WORKER = Path(__file__).resolve().parent / "_ledger_worker.py"
DELTA = 1e-5

# A history like a node's: SSL rounds (statistic + gradient on one batch), then fine-tuning with 4 steps per batch.
HISTORY = [
    Mechanism(sample_rate=0.05, noise_multiplier=statistic_and_gradient_sigma(3.0, 1.2), steps=40, label="ssl"),
    Mechanism(sample_rate=0.05, noise_multiplier=statistic_and_gradient_sigma(3.0, 1.2), steps=40, label="ssl"),
    dp_sgd_run(sample_rate=0.02, noise_multiplier=2.0, batches=100, steps_per_batch=4, label="finetune dp-sgd"),
    Mechanism(sample_rate=0.1, noise_multiplier=1.5, steps=10, label="finetune dp-sgd"),
]


def fill(ledger: PrivacyLedger, history, *, commit_every_other: bool = True) -> None:
    for i, m in enumerate(history):
        entry = ledger.reserve(m, run_id=f"run-{i}", round=i, phase=m.label, delta=DELTA)
        if commit_every_other and i % 2 == 0:
            ledger.commit(entry)


def opacus_rdp_epsilon(history, delta, orders):
    """The accountant library's own RDP analysis, entry by entry, no merging."""
    rdp = sum(rdp_analysis.compute_rdp(q=m.sample_rate, noise_multiplier=m.noise_multiplier, steps=m.steps,
                                       orders=list(orders)) for m in history)
    eps, _ = rdp_analysis.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


def opacus_accountant_epsilon(cls, history, delta, **kwargs):
    """Feed Opacus' accountant one step() per sampled batch, the way its optimizer hook does."""
    acc = cls()
    for m in history:
        for _ in range(m.steps):
            acc.step(noise_multiplier=m.noise_multiplier, sample_rate=m.sample_rate)
    return float(acc.get_epsilon(delta=delta, **kwargs))


# ---------------------------------------------------------------------------------------------------------------
# (d) the ledger's ε equals the accountant library's own computation
# ---------------------------------------------------------------------------------------------------------------

def test_ledger_epsilon_equals_opacus_rdp(tmp_path):
    with PrivacyLedger(tmp_path) as ledger:
        fill(ledger, HISTORY)
    with PrivacyLedger(tmp_path) as ledger:  # reopened: the history survived
        assert [e.mechanism for e in ledger.history()] == HISTORY
        spent = ledger.spent(DELTA, "rdp")
    assert spent == pytest.approx(opacus_rdp_epsilon(HISTORY, DELTA, RDP_ORDERS), rel=1e-12)
    # Opacus' RDPAccountant with its default orders: a subset of ours, so never tighter, and equal when its
    # optimum order is interior (it is for this history).
    default = opacus_accountant_epsilon(RDPAccountant, HISTORY, DELTA)
    assert spent <= default + 1e-12
    assert spent == pytest.approx(default, rel=1e-9)
    assert 1.0 < spent < 20.0


def test_ledger_epsilon_equals_opacus_prv(tmp_path):
    # Equal (σ, q) entries adjacent, so Opacus' step() grouping and the ledger's grouping coincide.
    history = [HISTORY[0], HISTORY[1], HISTORY[3]]
    with PrivacyLedger(tmp_path) as ledger:
        fill(ledger, history)
        spent = ledger.spent(DELTA, "prv")
    reference = opacus_accountant_epsilon(PRVAccountant, history, DELTA, eps_error=0.01)
    assert spent == pytest.approx(reference, rel=1e-9)
    # PRV is the tighter accountant, RDP an upper bound on it (up to PRV's eps_error)
    assert spent <= epsilon(history, DELTA, "rdp") + 0.01


def test_prv_grouping_of_non_adjacent_entries(tmp_path):
    """The ledger merges equal (σ, q) entries wherever they are; the composition is the same up to PRV's error."""
    history = [HISTORY[0], HISTORY[3], HISTORY[1]]
    merged = epsilon(history, DELTA, "prv")
    reference = opacus_accountant_epsilon(PRVAccountant, history, DELTA, eps_error=0.01)
    assert merged == pytest.approx(reference, abs=0.02)


def test_ledger_path_file_or_state_dir(tmp_path):
    for given, expected in ((tmp_path / "node" / "state", tmp_path / "node" / "state" / "privacy_ledger.sqlite3"),
                            (tmp_path / "ledger.db", tmp_path / "ledger.db"),
                            (tmp_path, tmp_path / "privacy_ledger.sqlite3")):
        with PrivacyLedger(given) as ledger:
            assert ledger.path == expected
        assert expected.is_file()


def test_reserved_entries_count(tmp_path):
    m = HISTORY[2]
    with PrivacyLedger(tmp_path) as ledger:
        assert ledger.spent(DELTA) == 0.0
        entry = ledger.reserve(m, run_id="r", round=0, phase="finetune", delta=DELTA)
        reserved = ledger.spent(DELTA)
        assert reserved == epsilon([m], DELTA) > 0
        ledger.commit(entry)
        assert ledger.spent(DELTA) == reserved
        assert [e.status for e in ledger.history()] == ["committed"]


def test_commit_may_only_lower_steps(tmp_path):
    m = Mechanism(sample_rate=0.05, noise_multiplier=1.0, steps=50, label="finetune")
    with PrivacyLedger(tmp_path) as ledger:
        entry = ledger.reserve(m, run_id="r", round=0, phase="finetune", delta=DELTA)
        with pytest.raises(LedgerError, match="cannot commit 51"):
            ledger.commit(entry, steps=51)
        ledger.commit(entry, steps=20)
        assert ledger.history()[0].steps == 20
        assert ledger.spent(DELTA) == epsilon([Mechanism(sample_rate=0.05, noise_multiplier=1.0, steps=20)], DELTA)
        ledger.commit(entry)  # idempotent
        with pytest.raises(LedgerError, match="no entry with id 999"):
            ledger.commit(999)


# ---------------------------------------------------------------------------------------------------------------
# (e) several steps / several mechanisms on ONE sampled batch
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_k_steps_on_one_batch_is_one_mechanism_not_k(tmp_path, accountant):
    q, sigma, batches, k = 0.05, 1.0, 30, 4
    run = dp_sgd_run(sample_rate=q, noise_multiplier=sigma, batches=batches, steps_per_batch=k)
    assert run.noise_multiplier == same_batch_steps_sigma(sigma, k) == sigma / math.sqrt(k)
    assert run.steps == batches
    honest = epsilon([Mechanism(sample_rate=q, noise_multiplier=sigma / math.sqrt(k), steps=batches)], DELTA,
                     accountant)
    # What Opacus records when step() is called k times per batch: k·batches independent subsampled steps.
    opacus_cls = RDPAccountant if accountant == "rdp" else PRVAccountant
    undercount = opacus_accountant_epsilon(opacus_cls, [Mechanism(sample_rate=q, noise_multiplier=sigma,
                                                                  steps=k * batches)], DELTA)
    with PrivacyLedger(tmp_path) as ledger:
        ledger.reserve(run, run_id="r", round=0, phase="ssl", delta=DELTA)
        reported = ledger.spent(DELTA, accountant)
    assert reported == honest
    assert reported > undercount * 1.2, (reported, undercount)  # the independent-steps figure under-counts


def test_k_steps_without_subsampling_coincide():
    """At q = 1 there is no amplification to lose: σ/√k once equals σ k times exactly (RDP adds α/(2σ²))."""
    sigma, k = 1.3, 4
    orders = list(RDP_ORDERS)
    one = rdp_analysis.compute_rdp(q=1.0, noise_multiplier=same_batch_steps_sigma(sigma, k), steps=1, orders=orders)
    many = rdp_analysis.compute_rdp(q=1.0, noise_multiplier=sigma, steps=k, orders=orders)
    np.testing.assert_allclose(one, many, rtol=1e-13)


@pytest.mark.parametrize("sigma_s,sigma_g", [(3.0, 1.2), (1.0, 1.0), (0.7, 5.0)])
def test_statistic_and_gradient_composition_matches_direct_rdp_sum(sigma_s, sigma_g):
    """Two Gaussian mechanisms on one batch, no subsampling: the RDP of Gaussians adds exactly (α/(2σ²) each)."""
    sigma_eff = statistic_and_gradient_sigma(sigma_s, sigma_g)
    assert sigma_eff == pytest.approx((sigma_s ** -2 + sigma_g ** -2) ** -0.5, rel=1e-15)
    assert sigma_eff < min(sigma_s, sigma_g)
    orders = np.array(RDP_ORDERS)
    steps = 7
    direct = (rdp_analysis.compute_rdp(q=1.0, noise_multiplier=sigma_s, steps=steps, orders=list(orders))
              + rdp_analysis.compute_rdp(q=1.0, noise_multiplier=sigma_g, steps=steps, orders=list(orders)))
    closed_form = steps * (orders / (2 * sigma_s ** 2) + orders / (2 * sigma_g ** 2))
    composed = rdp_analysis.compute_rdp(q=1.0, noise_multiplier=sigma_eff, steps=steps, orders=list(orders))
    np.testing.assert_allclose(direct, closed_form, rtol=1e-13)
    np.testing.assert_allclose(composed, direct, rtol=1e-13)  # exact up to float rounding
    eps_direct, _ = rdp_analysis.get_privacy_spent(orders=list(orders), rdp=direct, delta=DELTA)
    m = Mechanism(sample_rate=1.0, noise_multiplier=sigma_eff, steps=steps, label="ssl surrogate+statistic")
    assert epsilon([m], DELTA, "rdp") == pytest.approx(float(eps_direct), rel=1e-12)


def test_compose_same_batch_general():
    assert compose_same_batch(2.0) == 2.0
    assert compose_same_batch(1.0, 1.0, 1.0, 1.0) == pytest.approx(0.5, rel=1e-15)
    assert compose_same_batch(3.0, 1.2) == compose_same_batch(1.2, 3.0) == statistic_and_gradient_sigma(3.0, 1.2)
    # a statistic once per batch, a gradient on each of k steps
    assert compose_same_batch(3.0, *[1.2] * 4) == pytest.approx((3.0 ** -2 + 4 * 1.2 ** -2) ** -0.5, rel=1e-15)


# ---------------------------------------------------------------------------------------------------------------
# (f) kill -9 during ledger writes and during training never under-counts and never corrupts
# ---------------------------------------------------------------------------------------------------------------

def _side_lines(side: Path, kind: str) -> set[str]:
    if not side.exists():
        return set()
    return {m.group(1) for m in re.finditer(rf"^{kind} (\S+)$", side.read_text(), flags=re.M)}


def _wait_ready(proc: subprocess.Popen, side: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if str(proc.pid) in _side_lines(side, "ready"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"worker exited {proc.returncode} before it was ready: {proc.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError("worker never became ready")


def test_kill9_never_undercounts(tmp_path):
    rng = random.Random(20240605)
    ledger_path = tmp_path / "state" / "privacy_ledger.sqlite3"
    side = tmp_path / "side.log"
    kills = 0
    for i in range(24):
        proc = subprocess.Popen([sys.executable, str(WORKER), str(ledger_path), str(side), str(i)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            if i % 8 == 7:  # a few kills at any moment from process start (startup, opening the ledger, ...)
                time.sleep(rng.uniform(0.0, 0.4))
            else:  # most while the reserve -> train -> commit loop runs
                _wait_ready(proc, side)
                time.sleep(rng.uniform(0.0, 0.25))
            assert proc.poll() is None, f"worker died on its own: {proc.stderr.read()}"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        if not ledger_path.exists():
            continue
        # never corrupt: SQLite's own full integrity check, on a plain connection (recovers the WAL first)
        raw = sqlite3.connect(ledger_path)
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        raw.close()
        with PrivacyLedger(ledger_path) as ledger:  # opens
            entries = ledger.history()
        by_run = {e.run_id: e for e in entries}
        started, committed = _side_lines(side, "started"), _side_lines(side, "committed")
        assert len(entries) >= len(started)
        assert started <= set(by_run), f"runs that started training without a ledger entry: {started - set(by_run)}"
        assert all(by_run[r].status == "committed" for r in committed)
    assert kills >= 20
    with PrivacyLedger(ledger_path) as ledger:
        entries = ledger.history()
    statuses = [e.status for e in entries]
    assert len(_side_lines(side, "started")) >= 20  # the loop really ran
    assert "reserved" in statuses  # some kills landed between reserve and commit: those entries still count


# ---------------------------------------------------------------------------------------------------------------
# (g)-support: the budget check, refusal messages, bad inputs, broken ledgers
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_would_exceed_exactly_when_composed_epsilon_exceeds(tmp_path, accountant):
    history, nxt = HISTORY[:2], HISTORY[3]
    with PrivacyLedger(tmp_path) as ledger:
        fill(ledger, history)
        after = epsilon([*history, nxt], DELTA, accountant)
        before = ledger.spent(DELTA, accountant)
        assert before < after
        for bound in (before, (before + after) / 2, math.nextafter(after, 0), after, math.nextafter(after, math.inf),
                      after + 1.0):
            assert ledger.would_exceed(nxt, bound, DELTA, accountant) is (after > bound), bound
        assert ledger.refusal_reason("A", nxt, after, DELTA, accountant) is None
        reason = ledger.refusal_reason("A", nxt, (before + after) / 2, DELTA, accountant)
        assert re.fullmatch(r"site A: next round would bring ε from [\d.]+ to [\d.]+ > max_epsilon [\d.]+ "
                            r"\(δ=1e-05\)", reason), reason


def test_reserve_with_budget_refuses_atomically(tmp_path):
    with PrivacyLedger(tmp_path) as ledger:
        fill(ledger, HISTORY[:2])
        before = ledger.spent(DELTA)
        after = epsilon([*HISTORY[:2], HISTORY[3]], DELTA)
        with pytest.raises(BudgetExceededError) as info:
            ledger.reserve(HISTORY[3], run_id="x", round=9, phase="finetune", delta=DELTA,
                           max_epsilon=(before + after) / 2, site="7")
        assert info.value.reason.startswith("site 7: next round would bring ε from ")
        assert info.value.before == before and info.value.after == after
        assert len(ledger.history()) == 2  # nothing inserted
        ledger.reserve(HISTORY[3], run_id="x", round=9, phase="finetune", delta=DELTA, max_epsilon=after)
        assert len(ledger.history()) == 3


def test_refusal_message_format():
    assert (refusal_message("X", 7.2, 8.4, 8.0, 1e-5)
            == "site X: next round would bring ε from 7.2 to 8.4 > max_epsilon 8.0 (δ=1e-05)")
    # enough digits that the new ε visibly exceeds the bound
    assert "to 8.004 > max_epsilon 8.000" in refusal_message("X", 7.9, 8.004, 8.0, 1e-5)


@pytest.mark.parametrize("kwargs,name", [
    (dict(sample_rate=0.1, noise_multiplier=0.0, steps=1), "noise_multiplier"),
    (dict(sample_rate=0.1, noise_multiplier=-1.0, steps=1), "noise_multiplier"),
    (dict(sample_rate=0.1, noise_multiplier=float("nan"), steps=1), "noise_multiplier"),
    (dict(sample_rate=0.0, noise_multiplier=1.0, steps=1), "sample_rate"),
    (dict(sample_rate=1.5, noise_multiplier=1.0, steps=1), "sample_rate"),
    (dict(sample_rate=-0.1, noise_multiplier=1.0, steps=1), "sample_rate"),
    (dict(sample_rate=0.1, noise_multiplier=1.0, steps=0), "steps"),
    (dict(sample_rate=0.1, noise_multiplier=1.0, steps=2.5), "steps"),
    (dict(sample_rate=0.1, noise_multiplier=1.0, steps=1, kind="laplace"), "kind"),
])
def test_bad_mechanism_raises_clear_error(kwargs, name):
    with pytest.raises(PrivacyParameterError, match=f"^{name}: ") as info:
        Mechanism(**kwargs)
    assert info.value.name == name


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 2.0, float("nan")])
def test_bad_delta_raises_clear_error(tmp_path, delta):
    with pytest.raises(PrivacyParameterError, match="^delta: "):
        epsilon(HISTORY, delta)
    with PrivacyLedger(tmp_path) as ledger:
        with pytest.raises(PrivacyParameterError, match="^delta: "):
            ledger.reserve(HISTORY[0], run_id="r", round=0, phase="ssl", delta=delta)
        with pytest.raises(PrivacyParameterError, match="^delta: "):
            ledger.spent(delta)
        assert ledger.history() == []


def test_other_bad_inputs():
    with pytest.raises(PrivacyParameterError, match="^accountant: "):
        epsilon(HISTORY, DELTA, "gdp")
    with pytest.raises(PrivacyParameterError, match="^sigma: "):
        same_batch_steps_sigma(0.0, 4)
    with pytest.raises(PrivacyParameterError, match="^k: "):
        same_batch_steps_sigma(1.0, 0)
    with pytest.raises(PrivacyParameterError, match="^sigma_statistic: "):
        statistic_and_gradient_sigma(-1.0, 1.0)
    with pytest.raises(PrivacyParameterError, match="^n: "):
        default_delta(0)


def test_noise_for_target_epsilon_and_default_delta():
    for accountant, steps in (("rdp", 500), ("prv", 20)):
        sigma = noise_for_target_epsilon(4.0, DELTA, 0.05, steps, accountant)
        reached = epsilon([Mechanism(sample_rate=0.05, noise_multiplier=sigma, steps=steps)], DELTA, accountant)
        assert 4.0 - 0.02 <= reached <= 4.0
    assert default_delta(100) == 1e-5
    assert default_delta(10 ** 6) == pytest.approx(1e-7)
    assert default_delta(50) <= 1 / (10 * 50)


def test_corrupt_ledger_names_the_file(tmp_path):
    path = tmp_path / "privacy_ledger.sqlite3"
    path.write_bytes(b"definitely not sqlite " * 500)
    with pytest.raises(LedgerCorruptError, match=re.escape(str(path))):
        PrivacyLedger(path)


def test_foreign_sqlite_file_is_not_a_ledger(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE things (x)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerCorruptError, match="not a privacy ledger"):
        PrivacyLedger(path)


def test_locked_ledger_names_the_file(tmp_path):
    with PrivacyLedger(tmp_path, timeout=0.2) as ledger:
        other = sqlite3.connect(ledger.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        try:
            with pytest.raises(LedgerLockedError, match=re.escape(str(ledger.path))):
                ledger.reserve(HISTORY[0], run_id="r", round=0, phase="ssl", delta=DELTA)
        finally:
            other.execute("ROLLBACK")
            other.close()
        ledger.reserve(HISTORY[0], run_id="r", round=0, phase="ssl", delta=DELTA)
        assert len(ledger.history()) == 1


def test_importing_the_ledger_does_not_import_torch():
    code = ("import sys; import fgssl.privacy; "
            "assert 'torch' not in sys.modules and 'opacus' not in sys.modules and 'flwr' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_a_released_count_is_drawn_once_per_data_set_and_charged_once(tmp_path):
    draws = iter([0.26, -3.0, 0.0])
    with PrivacyLedger(tmp_path) as ledger:
        first = ledger.released_count("images:a", 400, 20.0, lambda: next(draws), run_id="r", round=1, delta=1e-5)
        assert first == round(400 + 20.0 * 0.26) == 405
        assert ledger.released_count("images:a", 400, 20.0, lambda: 99.0, run_id="r2", round=7, delta=1e-5) == 405
        assert ledger.released_count("images:b", 10, 20.0, lambda: next(draws), run_id="r", round=1, delta=1e-5) == 1
        history = ledger.history()
        assert [(e.phase, e.run_id, e.steps, e.sample_rate, e.noise_multiplier) for e in history] == [
            ("count", "r", 1, 1.0, 20.0), ("count", "r", 1, 1.0, 20.0)]
        expected = epsilon([Mechanism(sample_rate=1.0, noise_multiplier=20.0, steps=1)] * 2, 1e-5)
        assert ledger.spent(1e-5) == pytest.approx(expected)
        # a budget the count would exceed is refused before anything is drawn or written
        with pytest.raises(BudgetExceededError):
            ledger.released_count("images:c", 400, 0.05, lambda: next(draws), run_id="r", round=1, delta=1e-5,
                                  max_epsilon=1.0)
        assert len(ledger.history()) == 2 and next(draws) == 0.0


def test_an_unprotected_release_makes_every_epsilon_infinite():
    dp = Mechanism(sample_rate=0.1, noise_multiplier=1.0, steps=10)
    assert math.isfinite(epsilon([dp], 1e-5))
    for accountant in ("rdp", "prv"):
        assert epsilon([dp, Mechanism.unprotected("trained with privacy.mode=none")], 1e-5, accountant) == math.inf


def test_a_version_1_ledger_reads_as_it_was_and_is_upgraded_on_writing(tmp_path):
    path = tmp_path / "old.sqlite3"
    c = sqlite3.connect(path)
    c.executescript(
        "CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, round INTEGER NOT NULL,"
        " phase TEXT NOT NULL, kind TEXT NOT NULL, steps INTEGER NOT NULL, sample_rate REAL NOT NULL,"
        " noise_multiplier REAL NOT NULL, delta REAL NOT NULL, label TEXT NOT NULL, status TEXT NOT NULL,"
        " created_at TEXT NOT NULL, committed_at TEXT);"
        "INSERT INTO entries (run_id, round, phase, kind, steps, sample_rate, noise_multiplier, delta, label, status,"
        " created_at) VALUES ('old', 1, 'finetune', 'subsampled_gaussian', 40, 0.05, 1.2, 1e-5, 'x', 'reserved', 't');"
        f"PRAGMA application_id={0x4647504C}; PRAGMA user_version=1;")
    c.close()
    old = Mechanism(sample_rate=0.05, noise_multiplier=1.2, steps=40, label="x")
    with PrivacyLedger(path, readonly=True) as ledger:
        [entry] = ledger.history()
        assert entry.site is None and ledger.weights() == [] and ledger.spent(DELTA) == epsilon([old], DELTA)
    with PrivacyLedger(path) as ledger:  # a writer upgrades it in place
        assert [e.run_id for e in ledger.history()] == ["old"] and ledger.spent(DELTA) == epsilon([old], DELTA)
        with PrivacyLedger(path) as again:
            assert ledger.uid and ledger.uid == again.uid
    c = sqlite3.connect(path)
    assert c.execute("PRAGMA user_version").fetchone()[0] == 2
    c.close()
    with pytest.raises(LedgerError, match="not found"):
        PrivacyLedger(tmp_path / "missing.sqlite3", readonly=True)
    assert not (tmp_path / "missing.sqlite3").exists()


def test_group_epsilon_is_the_per_image_epsilon_for_one_image_and_grows_with_the_group():
    from fgssl.privacy.accounting import group_epsilon, rdp_curve

    curve = rdp_curve(HISTORY)
    single = epsilon(HISTORY, DELTA)
    assert group_epsilon(curve, 1, DELTA) == pytest.approx(single, rel=1e-12)
    by_k = [group_epsilon(curve, k, DELTA) for k in (1, 2, 3, 4, 5)]
    assert by_k[0] < by_k[1] < by_k[2] == by_k[3] < by_k[4]  # 3 and 4 share c = 2
    assert group_epsilon(curve, 1000, DELTA) == float("inf")  # no order α ≥ 2^11 is computed: no bound
    with pytest.raises(PrivacyParameterError, match="k"):
        group_epsilon(curve, 0, DELTA)
