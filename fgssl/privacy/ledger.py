"""A node's crash-safe privacy ledger: every local DP run it ever started, in SQLite, in its state directory.

Protocol (docs/privacy.md, "The ledger and crash safety"):

1. Before ANY private computation of a run starts (before training begins), `reserve()` inserts the run's
   mechanism with status 'reserved' in a committed transaction (WAL journal, synchronous=FULL).
2. Train.
3. When the update leaves the node, `commit()` marks the entry 'committed' (optional; it changes nothing in ε).

ε is always recomputed from ALL entries, reserved ones included: a reserved entry is spending that may have
happened (the process may have trained and even sent its update before it was killed), and a ledger may only
ever over-count. There is deliberately no way to delete or "release" an entry.

One writer process per node: every write runs in `BEGIN IMMEDIATE`, so a second writer waits (up to `timeout`)
and then fails with `LedgerLockedError`; `reserve(..., max_epsilon=...)` checks the budget and inserts inside
that one transaction. This module imports no torch/opacus until ε is computed.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .accounting import (
    Accountant,
    Mechanism,
    PrivacyParameterError,
    check_accountant,
    check_count,
    check_delta,
    check_epsilon,
    epsilon,
)

DEFAULT_FILENAME = "privacy_ledger.sqlite3"
# PRAGMA application_id marks a file as ours ("FGPL"), so a foreign SQLite file is never taken for a ledger.
APPLICATION_ID = 0x4647504C
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id           TEXT    NOT NULL,
    round            INTEGER NOT NULL,
    phase            TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    steps            INTEGER NOT NULL CHECK (steps >= 1),
    sample_rate      REAL    NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    noise_multiplier REAL    NOT NULL CHECK (noise_multiplier > 0),
    delta            REAL    NOT NULL CHECK (delta > 0 AND delta < 1),
    label            TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('reserved', 'committed')),
    created_at       TEXT    NOT NULL,
    committed_at     TEXT
)
"""
# Released example counts (privacy.count_noise): each is drawn once per data set and kept, so every later round and
# run reuses the same noisy value (post-processing) instead of paying for a new draw. `entry_id` is its charge.
_COUNTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (
    key        TEXT    PRIMARY KEY,
    value      INTEGER NOT NULL CHECK (value >= 1),
    noise      REAL    NOT NULL CHECK (noise > 0),
    entry_id   INTEGER NOT NULL REFERENCES entries(id),
    created_at TEXT    NOT NULL
)
"""
_COLUMNS = ("id", "run_id", "round", "phase", "kind", "steps", "sample_rate", "noise_multiplier", "delta", "label",
            "status", "created_at", "committed_at")


class LedgerError(RuntimeError):
    """The privacy ledger cannot be used. `path` is the ledger file."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"privacy ledger {self.path}: {message}")


class LedgerCorruptError(LedgerError):
    """The file is not a readable privacy ledger (corrupt, truncated, or some other file)."""


class LedgerLockedError(LedgerError):
    """Another process holds the ledger's write lock (or its file lock) for longer than the timeout."""


class BudgetExceededError(LedgerError):
    """`reserve(..., max_epsilon=...)` refused: the next run would exceed the budget. `reason` is the message."""

    def __init__(self, path: Path, reason: str, before: float, after: float) -> None:
        self.reason, self.before, self.after = reason, before, after
        super().__init__(path, reason)


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    run_id: str
    round: int
    phase: str
    kind: str
    steps: int
    sample_rate: float
    noise_multiplier: float
    delta: float
    label: str
    status: str
    created_at: str
    committed_at: str | None

    @property
    def mechanism(self) -> Mechanism:
        return Mechanism(sample_rate=self.sample_rate, noise_multiplier=self.noise_multiplier, steps=self.steps,
                         label=self.label, kind=self.kind)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _fmt_pair(before: float, after: float, bound: float) -> tuple[str, str, str]:
    """Format ε values with the fewest decimals (>= 1) that keep `after` visibly above `bound`."""
    for digits in range(1, 7):
        b, a, m = (f"{x:.{digits}f}" for x in (before, after, bound))
        if float(a) > float(m):
            return b, a, m
    return repr(before), repr(after), repr(bound)


def refusal_message(site: str, before: float, after: float, max_epsilon: float, delta: float) -> str:
    """The message a node sends when it refuses to train (see `PrivacyLedger.refusal_reason`)."""
    b, a, m = _fmt_pair(before, after, max_epsilon)
    return f"site {site}: next round would bring ε from {b} to {a} > max_epsilon {m} (δ={delta:g})"


class PrivacyLedger:
    """The per-node ledger of DP mechanisms. `path`: the SQLite file, or the node's state directory (an existing
    directory, or a path without a file suffix), in which case the file is `<path>/privacy_ledger.sqlite3`.
    Missing directories are created.

    `timeout` (seconds): how long a write waits for another process's write lock before `LedgerLockedError`.
    """

    def __init__(self, path: str | Path, *, timeout: float = 10.0) -> None:
        p = Path(path)
        if p.is_dir() or (not p.exists() and not p.suffix):
            p = p / DEFAULT_FILENAME
        self.path = p
        self._lock = threading.Lock()
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LedgerError(p, f"cannot create its directory: {e}") from e
        try:
            self._conn = sqlite3.connect(str(p), timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise LedgerError(p, f"cannot open: {e}") from e
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise

    # -- opening ---------------------------------------------------------------------------------------------------

    def _error(self, e: sqlite3.Error, doing: str) -> LedgerError:
        msg = str(e)
        low = msg.lower()
        if isinstance(e, sqlite3.OperationalError) and ("locked" in low or "busy" in low):
            return LedgerLockedError(self.path, f"locked by another process while {doing} ({msg}); only one "
                                                "process per node may write the ledger")
        if isinstance(e, sqlite3.DatabaseError) and (
                "not a database" in low or "malformed" in low or "corrupt" in low or "disk image" in low):
            return LedgerCorruptError(self.path, f"corrupt or not a privacy ledger while {doing} ({msg}). Do not "
                                                 "delete it: that would reset this node's ε to 0; restore it from "
                                                 "a backup")
        return LedgerError(self.path, f"error while {doing}: {msg}")

    def _open(self) -> None:
        c = self._conn
        try:
            app_id = c.execute("PRAGMA application_id").fetchone()[0]
            has_tables = c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
            if has_tables and app_id != APPLICATION_ID:
                raise LedgerCorruptError(self.path, "is an SQLite file but not a privacy ledger (wrong "
                                                    "application_id); refusing to use it")
            mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(self.path, f"cannot switch to WAL journal mode (got {mode!r}); is the state "
                                             "directory on a network filesystem?")
            c.execute("PRAGMA synchronous=FULL")  # per connection: every commit is fsynced before it returns
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute(_SCHEMA)
                c.execute(_COUNTS_SCHEMA)
                if c.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                    c.execute(f"PRAGMA application_id={APPLICATION_ID}")
                version = c.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                elif version != SCHEMA_VERSION:
                    raise LedgerError(self.path, f"schema version {version}, this code reads {SCHEMA_VERSION}")
                cols = tuple(r[1] for r in c.execute("PRAGMA table_info(entries)"))
                if cols != _COLUMNS:
                    raise LedgerCorruptError(self.path, f"table 'entries' has columns {cols}, expected {_COLUMNS}")
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            check = c.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise LedgerCorruptError(self.path, f"integrity check failed: {check[:5]}")
        except sqlite3.Error as e:
            raise self._error(e, "opening") from e

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "PrivacyLedger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------------------------

    def _rows(self) -> list[LedgerEntry]:
        rows = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM entries ORDER BY id").fetchall()
        return [LedgerEntry(*r) for r in rows]

    def history(self) -> list[LedgerEntry]:
        """Every entry, reserved and committed, oldest first."""
        with self._lock:
            try:
                return self._rows()
            except sqlite3.Error as e:
                raise self._error(e, "reading the history") from e

    def unprotected(self) -> list[LedgerEntry]:
        """Entries of data that left the node without a DP guarantee (ε = ∞ from then on)."""
        return [e for e in self.history() if e.kind == "unprotected"]

    def mechanisms(self) -> list[Mechanism]:
        """The history as mechanisms (reserved entries included): what ε is computed from."""
        return [e.mechanism for e in self.history()]

    def spent(self, delta: float, accountant: Accountant = "rdp") -> float:
        """ε at `delta` of the whole history, reserved entries included; recomputed every call, never stored."""
        return epsilon(self.mechanisms(), check_delta(delta), check_accountant(accountant))

    def would_exceed(self, next: Mechanism, max_epsilon: float, delta: float, accountant: Accountant = "rdp") -> bool:
        """True exactly when ε(history + [next]) > max_epsilon (reaching max_epsilon exactly is allowed)."""
        max_epsilon = check_epsilon(max_epsilon)
        return epsilon([*self.mechanisms(), next], check_delta(delta), check_accountant(accountant)) > max_epsilon

    def refusal_reason(self, site: str, next: Mechanism, max_epsilon: float, delta: float,
                       accountant: Accountant = "rdp") -> str | None:
        """None if `next` fits in the budget, else the message the node sends when it refuses to train, e.g.
        "site 2: next round would bring ε from 7.2 to 8.4 > max_epsilon 8.0 (δ=1e-05)"."""
        before, after = self._before_after(self.mechanisms(), next, max_epsilon, delta, accountant)
        return refusal_message(site, before, after, max_epsilon, delta) if after > max_epsilon else None

    @staticmethod
    def _before_after(history: Sequence[Mechanism], next: Mechanism, max_epsilon: float, delta: float,
                      accountant: Accountant) -> tuple[float, float]:
        check_epsilon(max_epsilon)
        check_delta(delta)
        check_accountant(accountant)
        if not isinstance(next, Mechanism):
            raise PrivacyParameterError("next", f"must be a Mechanism, got {type(next).__name__}")
        return epsilon(history, delta, accountant), epsilon([*history, next], delta, accountant)

    # -- writing ---------------------------------------------------------------------------------------------------

    @contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE), committed when the block ends normally, else rolled back."""
        with self._lock:
            c = self._conn
            try:
                c.execute("BEGIN IMMEDIATE")
                try:
                    yield c
                    c.execute("COMMIT")
                except BaseException:
                    if c.in_transaction:
                        c.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise self._error(e, doing) from e

    def _check_budget(self, mechanism: Mechanism, max_epsilon: float | None, delta: float, accountant: Accountant,
                      site: str) -> None:
        """Inside a write transaction: BudgetExceededError when `mechanism` would take the history past the budget."""
        if max_epsilon is None:
            return
        history = [e.mechanism for e in self._rows()]
        before, after = self._before_after(history, mechanism, max_epsilon, delta, accountant)
        if after > max_epsilon:
            raise BudgetExceededError(self.path, refusal_message(site, before, after, max_epsilon, delta), before,
                                      after)

    def reserve(self, mechanism: Mechanism, *, run_id: str, round: int, phase: str, delta: float,
                max_epsilon: float | None = None, accountant: Accountant = "rdp", site: str = "?") -> int:
        """Record `mechanism` as (possibly) spent, BEFORE its private computation starts; returns the entry id.

        The entry is durable (committed and fsynced) when this returns. With `max_epsilon`, the budget is checked
        against the history read inside the same write transaction, and `BudgetExceededError` (whose `reason`
        is the refusal message for `site`) is raised instead of inserting.
        """
        if not isinstance(mechanism, Mechanism):
            raise PrivacyParameterError("mechanism", f"must be a Mechanism, got {type(mechanism).__name__}")
        if not isinstance(run_id, str) or not run_id:
            raise PrivacyParameterError("run_id", f"must be a non-empty string, got {run_id!r}")
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise PrivacyParameterError("round", f"must be an integer >= 0, got {round!r}")
        if not isinstance(phase, str) or not phase:
            raise PrivacyParameterError("phase", f"must be a non-empty string, got {phase!r}")
        delta = check_delta(delta)
        check_accountant(accountant)
        if max_epsilon is not None:
            check_epsilon(max_epsilon)
        with self._write("reserving an entry") as c:
            self._check_budget(mechanism, max_epsilon, delta, accountant, site)
            cur = c.execute(
                "INSERT INTO entries (run_id, round, phase, kind, steps, sample_rate, noise_multiplier, "
                "delta, label, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?)",
                (run_id, round, phase, mechanism.kind, mechanism.steps, mechanism.sample_rate,
                 mechanism.noise_multiplier, delta, mechanism.label, _now()))
            entry_id = int(cur.lastrowid)
        return entry_id

    def released_count(self, key: str, true_count: int, noise: float, draw: Callable[[], float], *, run_id: str,
                       round: int, delta: float, max_epsilon: float | None = None, accountant: Accountant = "rdp",
                       site: str = "?") -> int:
        """The public stand-in for a private example count: max(1, round(n + noise·z)) with z = `draw()` ~ N(0, 1),
        released once per `key` (a data set's fingerprint) and charged as a Gaussian mechanism of sensitivity 1
        (adding or removing one image changes n by 1). Later calls with the same key return the stored value at no
        cost. The charge and the value are written in one transaction, before the value is returned; with
        `max_epsilon`, `BudgetExceededError` is raised instead when the charge would exceed it.
        """
        if not isinstance(key, str) or not key:
            raise PrivacyParameterError("key", f"must be a non-empty string, got {key!r}")
        check_count(true_count, "true_count")
        mechanism = Mechanism(sample_rate=1.0, noise_multiplier=noise, steps=1, label="example count")
        delta = check_delta(delta)
        with self._write("releasing an example count") as c:
            row = c.execute("SELECT value FROM counts WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return int(row[0])
            self._check_budget(mechanism, max_epsilon, delta, accountant, site)
            cur = c.execute(
                "INSERT INTO entries (run_id, round, phase, kind, steps, sample_rate, noise_multiplier, delta, label, "
                "status, created_at, committed_at) VALUES (?, ?, 'count', ?, 1, 1.0, ?, ?, ?, 'committed', ?, ?)",
                (run_id, round, mechanism.kind, noise, delta, mechanism.label, _now(), _now()))
            value = max(1, math.floor(true_count + noise * draw() + 0.5))
            c.execute("INSERT INTO counts (key, value, noise, entry_id, created_at) VALUES (?, ?, ?, ?, ?)",
                      (key, value, noise, int(cur.lastrowid), _now()))
        return value

    def commit(self, entry_id: int, *, steps: int | None = None) -> None:
        """Mark a reserved entry 'committed' (its update has left the node). Idempotent.

        `steps`: the number of sampled batches actually run, if fewer than reserved (e.g. stopped early); it may
        only lower the entry, never raise it (running more than reserved would have been unaccounted spending).
        """
        if steps is not None:
            check_count(steps, "steps")
        with self._write(f"committing entry {entry_id}") as c:
            row = c.execute("SELECT steps, status FROM entries WHERE id = ?", (entry_id,)).fetchone()
            if row is None:
                raise LedgerError(self.path, f"no entry with id {entry_id!r}")
            reserved_steps, status = row
            if steps is not None and steps > reserved_steps:
                raise LedgerError(self.path, f"entry {entry_id} reserved {reserved_steps} steps; cannot commit "
                                             f"{steps} (more than reserved would be unaccounted)")
            if status == "committed":
                if steps is not None and steps != reserved_steps:
                    raise LedgerError(self.path, f"entry {entry_id} is already committed with {reserved_steps} steps")
                return
            c.execute("UPDATE entries SET status = 'committed', committed_at = ?, steps = ? WHERE id = ?",
                      (_now(), reserved_steps if steps is None else steps, entry_id))
