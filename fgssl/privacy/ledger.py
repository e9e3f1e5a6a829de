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
import secrets
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
    rdp_to_epsilon,
    worst_holder_curve,
)

DEFAULT_FILENAME = "privacy_ledger.sqlite3"
# PRAGMA application_id marks a file as ours ("FGPL"), so a foreign SQLite file is never taken for a ledger.
APPLICATION_ID = 0x4647504C
SCHEMA_VERSION = 2  # 2: entries.site and the meta, sources, images and weights tables (a version-1 file is upgraded)

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
    committed_at     TEXT,
    site             TEXT
)
"""
# `site`: NULL in a node's own ledger (every entry is the node's). In a data ledger, which holder of the images made
# the release in its run (a simulated site), so that ε can take each run's worst holder (`spent`).
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
# meta: this file's own random uid, and what it is bound to (a data ledger's data key, a node's data set).
# sources: for entries copied from a site's ledger (`import_entries`), which ledger and entry they came from.
# images, image_digests: a data ledger's image ids and its files' content digests (what overlaps what,
# fgssl.privacy.data_ledger). weights: public weights a run started from.
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    entry_id  INTEGER PRIMARY KEY REFERENCES entries(id),
    ledger    TEXT    NOT NULL,
    source_id INTEGER NOT NULL,
    UNIQUE (ledger, source_id)
);
CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS image_digests (digest TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS weights (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    path       TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (run_id, sha256)
);
"""
_COLUMNS_V1 = ("id", "run_id", "round", "phase", "kind", "steps", "sample_rate", "noise_multiplier", "delta", "label",
               "status", "created_at", "committed_at")
_COLUMNS = (*_COLUMNS_V1, "site")


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
    site: str | None = None

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
    `readonly`: open an existing ledger for reading only (nothing is created, upgraded or written).
    """

    def __init__(self, path: str | Path, *, timeout: float = 10.0, readonly: bool = False) -> None:
        p = Path(path)
        if p.is_dir() or (not p.exists() and not p.suffix):
            p = p / DEFAULT_FILENAME
        self.path, self.readonly = p, readonly
        self._lock = threading.Lock()
        if readonly and not p.is_file():
            raise LedgerError(p, "not found" if not p.exists() else "is not a file")
        try:
            if not readonly:
                p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LedgerError(p, f"cannot create its directory: {e}") from e
        try:
            target = f"file:{p.resolve()}?mode=ro" if readonly else str(p)
            self._conn = sqlite3.connect(target, timeout=timeout, isolation_level=None, check_same_thread=False,
                                         uri=readonly)
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

    def _check_columns(self, allowed: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
        cols = tuple(r[1] for r in self._conn.execute("PRAGMA table_info(entries)"))
        if cols not in allowed:
            raise LedgerCorruptError(self.path, f"table 'entries' has columns {cols}, expected {_COLUMNS}")
        return cols

    def _open(self) -> None:
        c = self._conn
        try:
            app_id = c.execute("PRAGMA application_id").fetchone()[0]
            has_tables = c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
            if (has_tables or self.readonly) and app_id != APPLICATION_ID:
                raise LedgerCorruptError(self.path, "is an SQLite file but not a privacy ledger (wrong "
                                                    "application_id); refusing to use it")
            if self.readonly:
                version = c.execute("PRAGMA user_version").fetchone()[0]
                if version not in (1, SCHEMA_VERSION):
                    raise LedgerError(self.path, f"schema version {version}, this code reads 1 to {SCHEMA_VERSION}")
                self._columns = self._check_columns((_COLUMNS_V1,) if version == 1 else (_COLUMNS,))
            else:
                self._create()
            check = c.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise LedgerCorruptError(self.path, f"integrity check failed: {check[:5]}")
        except sqlite3.Error as e:
            raise self._error(e, "opening") from e

    def _create(self) -> None:
        """Create or upgrade the tables (writable opening only), in one write transaction."""
        c = self._conn
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
            if version == 1 and self._check_columns((_COLUMNS_V1, _COLUMNS)) == _COLUMNS_V1:
                c.execute("ALTER TABLE entries ADD COLUMN site TEXT")  # every earlier entry is the node's own
            if version in (0, 1):
                c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise LedgerError(self.path, f"schema version {version}, this code reads {SCHEMA_VERSION}")
            self._columns = self._check_columns((_COLUMNS,))
            for statement in _TABLES.split(";"):
                if statement.strip():
                    c.execute(statement)
            c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('uid', ?)", (secrets.token_hex(16),))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "PrivacyLedger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------------------------

    def _rows(self) -> list[LedgerEntry]:
        rows = self._conn.execute(f"SELECT {', '.join(self._columns)} FROM entries ORDER BY id").fetchall()
        return [LedgerEntry(*r) for r in rows]

    def _read(self, doing: str, sql: str, args: tuple = ()) -> list[tuple]:
        """Rows of a query; [] for a table a version-1 ledger (opened read-only, not upgraded) does not have."""
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.OperationalError as e:
                if "no such table" in str(e):
                    return []
                raise self._error(e, doing) from e
            except sqlite3.Error as e:
                raise self._error(e, doing) from e

    def meta(self, key: str) -> str | None:
        """A value of the meta table: 'uid' (this file's random id), 'data_key', 'data' (what it is bound to),
        'images' (a data ledger holds its image ids and digests), 'sigma:<plan hash>' (a node's solved σ,
        `fgssl.privacy.node.noise_multiplier`)."""
        rows = self._read(f"reading {key}", "SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    @property
    def uid(self) -> str:
        return self.meta("uid") or str(self.path.resolve())

    def image_ids(self) -> set[str]:
        """A data ledger's image ids (empty for a node's ledger)."""
        return {r[0] for r in self._read("reading its image ids", "SELECT id FROM images")}

    def image_digests(self) -> set[str]:
        """A data ledger's image files' content digests (empty for a node's ledger, and for a data ledger written
        before digests were kept until its data set is used again)."""
        return {r[0] for r in self._read("reading its image digests", "SELECT digest FROM image_digests")}

    def weights(self) -> list[dict[str, str]]:
        """The public weights runs started from: run_id, sha256, path, source, created_at, oldest first."""
        rows = self._read("reading its weights", "SELECT run_id, sha256, path, source, created_at FROM weights "
                                                 "ORDER BY id")
        return [dict(zip(("run_id", "sha256", "path", "source", "created_at"), r)) for r in rows]

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
        """ε at `delta` of the whole history, reserved entries included; recomputed every call, never stored (see
        `ledger_epsilon` for a data ledger's rule)."""
        return ledger_epsilon(self.history(), delta, accountant)

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
                max_epsilon: float | None = None, accountant: Accountant = "rdp", site: str = "?",
                holder: str | None = None) -> int:
        """Record `mechanism` as (possibly) spent, BEFORE its private computation starts; returns the entry id.

        The entry is durable (committed and fsynced) when this returns. With `max_epsilon`, the budget is checked
        against the history read inside the same write transaction, and `BudgetExceededError` (whose `reason`
        is the refusal message for `site`) is raised instead of inserting. `holder`: the entry's `site` column
        (a data ledger's holder of the images; None in a node's own ledger).
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
                "delta, label, status, created_at, site) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?)",
                (run_id, round, phase, mechanism.kind, mechanism.steps, mechanism.sample_rate,
                 mechanism.noise_multiplier, delta, mechanism.label, _now(), holder))
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

    def record_unprotected(self, label: str, *, run_id: str, round: int, phase: str, delta: float,
                           holder: str | None = None) -> int:
        """Record a release without any DP guarantee (training without sample-level DP): every ε of this ledger is
        ∞ from then on. Written before the release happens, like any entry."""
        entry = self.reserve(Mechanism.unprotected(label), run_id=run_id, round=round, phase=phase, delta=delta,
                             holder=holder)
        self.commit(entry)
        return entry

    def bind(self, key: str, value: str, *, replace: bool = False) -> str:
        """Store `value` under meta `key` unless one is stored already (or always, with `replace`); returns the
        stored value (the first one, without `replace`)."""
        with self._write(f"binding {key}") as c:
            c.execute(f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO meta (key, value) VALUES (?, ?)",
                      (key, value))
            return str(c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def add_images(self, ids: Sequence[str], digests: Sequence[str] = ()) -> None:
        """Record a data ledger's image ids and its files' content digests ("" = unknown, not recorded)."""
        with self._write("recording its image ids") as c:
            c.executemany("INSERT OR IGNORE INTO images (id) VALUES (?)", ((str(i),) for i in ids))
            c.executemany("INSERT OR IGNORE INTO image_digests (digest) VALUES (?)", ((str(d),) for d in digests if d))

    def record_weights(self, *, run_id: str, sha256: str, path: str, source: str) -> None:
        """Record that run `run_id` started from the public weights `path` (its SHA-256 and declared source);
        recording the same file for the same run again changes nothing."""
        with self._write("recording public weights") as c:
            c.execute("INSERT OR IGNORE INTO weights (run_id, sha256, path, source, created_at) VALUES (?, ?, ?, ?, ?)",
                      (run_id, sha256, path, source, _now()))

    def import_entries(self, source: "PrivacyLedger", *, run_id: str, holder: str) -> int:
        """Copy into this (data) ledger every entry of `source` (a site's ledger) it does not hold yet, under
        `run_id` and `holder`, in one write transaction; entries copied earlier follow their source's later commit
        (status, and a lowered step count). Returns how many were new. Copying again is harmless: each source entry
        is held once (table `sources`, keyed by the source ledger's uid and the entry's id)."""
        entries, origin = source.history(), source.uid
        new = 0
        with self._write(f"importing entries of {source.path}") as c:
            done = dict(c.execute("SELECT source_id, entry_id FROM sources WHERE ledger = ?", (origin,)).fetchall())
            for e in entries:
                if e.id in done:
                    if e.status == "committed":
                        c.execute("UPDATE entries SET status = 'committed', committed_at = ?, steps = min(steps, ?) "
                                  "WHERE id = ? AND status = 'reserved'", (e.committed_at, e.steps, done[e.id]))
                    continue
                cur = c.execute(
                    "INSERT INTO entries (run_id, round, phase, kind, steps, sample_rate, noise_multiplier, delta, "
                    "label, status, created_at, committed_at, site) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, e.round, e.phase, e.kind, e.steps, e.sample_rate, e.noise_multiplier, e.delta, e.label,
                     e.status, e.created_at, e.committed_at, holder))
                c.execute("INSERT INTO sources (entry_id, ledger, source_id) VALUES (?, ?, ?)",
                          (int(cur.lastrowid), origin, e.id))
                new += 1
            for w in source.weights():
                c.execute("INSERT OR IGNORE INTO weights (run_id, sha256, path, source, created_at) "
                          "VALUES (?, ?, ?, ?, ?)", (run_id, w["sha256"], w["path"], w["source"], w["created_at"]))
        return new


def by_run_and_holder(entries: Sequence[LedgerEntry]) -> list[list[list[Mechanism]]]:
    """Mechanisms grouped by run, then by holder (the `site` column; None is one holder), in ledger order."""
    runs: dict[str, dict[str | None, list[Mechanism]]] = {}
    for e in entries:
        runs.setdefault(e.run_id, {}).setdefault(e.site, []).append(e.mechanism)
    return [list(holders.values()) for holders in runs.values()]


def ledger_epsilon(entries: Sequence[LedgerEntry], delta: float, accountant: Accountant = "rdp") -> float:
    """ε at `delta` of a ledger's entries. A node's own ledger (no entry names a holder): the composition of every
    entry. A data ledger: Σ over runs of each run's worst holder's RDP curve (`worst_holder_curve`), with the RDP
    accountant whatever `accountant` says (the worst-holder bound is an RDP argument)."""
    delta, accountant = check_delta(delta), check_accountant(accountant)
    if all(e.site is None for e in entries):
        return epsilon([e.mechanism for e in entries], delta, accountant)
    return max(rdp_to_epsilon(worst_holder_curve(by_run_and_holder(entries)), delta), 0.0)
