"""The crash campaign's quick variant (benchmarks/crash_campaign.py): one real loopback DP federation of two
hospitals, one of whose SuperNodes is SIGKILLed while the coordinator asks who is there, and restarted as a supervisor
would; the run finishes with every round once, no ledger below what its site released, finite weights and no process
left. The full campaign is opt-in."""

import json
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_a_killed_supernode_is_restarted_and_the_run_loses_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.crash_campaign", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (trial,) = [json.loads(line) for line in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert trial["killed"].startswith("site ") and "supernode" in trial["killed"], trial
    assert trial["finished"] and trial["rounds_once"] and trial["weights_finite"], trial
    # Restarted once: the new `fgssl node` waits itself while the SuperLink still counts the killed SuperNode online.
    assert trial["under_counts"] == {} and trial["orphans"] == 0 and trial["restarts"] == 1, trial
    assert set(trial["released_epsilon"]) == {"0", "1"} and trial["sites"] == 2 and not trial["durable"], trial


def test_a_trial_that_finished_with_a_round_missing_or_doubled_keeps_its_folder():
    from benchmarks.crash_campaign import _passed

    ok = {"finished": True, "rounds_once": True, "weights_finite": True, "under_counts": {}, "orphans": 0}
    assert _passed(ok)
    for bad in ({"rounds_once": False}, {"weights_finite": False}, {"finished": False},
                {"under_counts": {"0": {"ledger": 1.0, "released": 2.0}}}, {"orphans": 1}):
        assert not _passed({**ok, **bad}), bad  # its logs stay for the diagnosis
