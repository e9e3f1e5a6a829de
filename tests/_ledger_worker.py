"""Helper for tests/test_privacy_ledger.py: a node that loops reserve -> "train" -> commit until it is killed.

    python tests/_ledger_worker.py LEDGER SIDE_FILE SEED

Appends to SIDE_FILE, each line with one write() on an O_APPEND descriptor (so a SIGKILL never leaves half a line
from a completed write): "ready PID" once the ledger is open, "started RUN_ID" only AFTER reserve() returned and
before training, "committed RUN_ID" after commit() returned. The test asserts the ledger never holds fewer
entries than "started" lines, whenever this process is killed.
"""

import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fgssl.privacy.accounting import dp_sgd_run  # noqa: E402  (no torch/opacus import: starts fast)
from fgssl.privacy.ledger import PrivacyLedger  # noqa: E402


def main() -> None:
    ledger_path, side_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    fd = os.open(side_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def say(line: str) -> None:
        os.write(fd, (line + "\n").encode())

    ledger = PrivacyLedger(ledger_path)
    pid = os.getpid()
    say(f"ready {pid}")
    k = 0
    while True:
        run_id = f"{pid}-{k}"
        mech = dp_sgd_run(sample_rate=0.05, noise_multiplier=1.0 + rng.random(), batches=rng.randint(1, 40),
                          steps_per_batch=rng.choice([1, 4]), label="worker dp-sgd")
        entry = ledger.reserve(mech, run_id=run_id, round=k, phase="finetune", delta=1e-5)
        say(f"started {run_id}")
        # "training": half the runs sleep and compute a little, half not at all, so that kills land both in
        # training and, often, inside the ledger's own writes
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0.0, 0.004))
            sum(i * i for i in range(rng.randint(0, 10000)))
        ledger.commit(entry)
        say(f"committed {run_id}")
        k += 1


if __name__ == "__main__":
    main()
