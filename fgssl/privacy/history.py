"""A ledger's history for people (`fgssl ledger`): one row per entry with the cumulative ε after it, per run and over
the ledger's lifetime, at the ledger's δ; as a table, JSON, CSV or a plot.

ε is the ledger's own rule (`ledger.ledger_epsilon`: a node's entries compose; a data ledger's runs each count their
worst site), always with the RDP accountant, computed incrementally from each entry's RDP curve.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .accounting import rdp_curve, rdp_to_epsilon
from .data_ledger import ledger_delta, related_ledgers
from .ledger import DEFAULT_FILENAME, LedgerEntry, LedgerError, PrivacyLedger, ledger_epsilon


@dataclass
class Row:
    entry: LedgerEntry
    run_epsilon: float  # the entry's run so far
    lifetime_epsilon: float  # the whole ledger so far


@dataclass
class RunTotal:
    run: str
    entries: int
    epsilon: float
    first: str
    last: str
    unprotected: LedgerEntry | None


@dataclass
class LedgerHistory:
    path: Path
    kind: str  # "node" (a node's or a simulated site's own ledger) or "data" (a data set's)
    delta: float | None
    rows: list[Row]
    runs: list[RunTotal]
    weights: list[dict[str, str]]
    related: list[Path] = field(default_factory=list)  # data ledgers that share images with this one
    with_related: float | None = None  # the lifetime ε with their histories

    @property
    def lifetime(self) -> float:
        return self.rows[-1].lifetime_epsilon if self.rows else 0.0

    @property
    def unprotected(self) -> LedgerEntry | None:
        return next((r.entry for r in self.rows if r.entry.kind == "unprotected"), None)


def ledger_file(path: str | Path) -> Path:
    """The ledger file PATH names: itself, or a node's state directory's privacy_ledger.sqlite3."""
    p = Path(path)
    if p.is_dir():
        if not (p / DEFAULT_FILENAME).is_file():
            raise LedgerError(p, f"is a folder without {DEFAULT_FILENAME} (a node's state directory holds one; a data "
                                 "set's ledgers are the .sqlite3 files in privacy-ledgers/ of its cache folder)")
        return p / DEFAULT_FILENAME
    if not p.exists():
        raise LedgerError(p, "not found")
    return p


def read_history(path: str | Path) -> LedgerHistory:
    """The history of the ledger at `path` (a file or a node's state directory), read-only; LedgerError (naming the
    file) when it is missing, corrupt or not a ledger."""
    with PrivacyLedger(ledger_file(path), readonly=True) as ledger:
        entries, weights, ids = ledger.history(), ledger.weights(), ledger.image_ids()
        digests = ledger.image_digests()
        data_key = ledger.meta("data_key")
    delta = ledger_delta(entries)
    kind = "data" if ids or any(e.site is not None for e in entries) else "node"
    rows, runs = _cumulative(entries, delta)
    out = LedgerHistory(ledger.path, kind, delta, rows, runs, weights)
    if ids and data_key:
        out.related = related_ledgers(ledger.path, ids, digests)
        if out.related:
            others = []
            for p in out.related:
                with PrivacyLedger(p, readonly=True) as other:
                    others += other.history()
            every = entries + others
            out.with_related = ledger_epsilon(every, ledger_delta(every) or delta or 1e-5)
    return out


def _cumulative(entries: list[LedgerEntry], delta: float | None) -> tuple[list[Row], list[RunTotal]]:
    import numpy as np

    curves: dict[tuple, Any] = {}
    per_run: dict[str, dict[str | None, Any]] = {}
    rows = []

    def eps(curve: Any) -> float:
        return max(rdp_to_epsilon(curve, delta), 0.0) if delta is not None else 0.0

    for e in entries:
        key = (e.kind, e.sample_rate, e.noise_multiplier, e.steps)
        if key not in curves:
            curves[key] = rdp_curve([e.mechanism])
        holders = per_run.setdefault(e.run_id, {})
        holders[e.site] = holders.get(e.site, 0) + curves[key]
        run_curve = np.max(list(holders.values()), axis=0)
        total = sum(np.max(list(h.values()), axis=0) for h in per_run.values())
        rows.append(Row(e, eps(run_curve), eps(total)))
    runs = []
    for run in per_run:
        mine = [r for r in rows if r.entry.run_id == run]
        runs.append(RunTotal(run, len(mine), mine[-1].run_epsilon, mine[0].entry.created_at,
                             mine[-1].entry.created_at, next((r.entry for r in mine if r.entry.kind == "unprotected"),
                                                             None)))
    return rows, runs


def fmt_eps(eps: float) -> str:
    return "∞" if math.isinf(eps) else f"{eps:.3f}"


def mechanism_text(e: LedgerEntry) -> str:
    if e.kind == "unprotected":
        return "unprotected (no DP)"
    return f"q={e.sample_rate:.4g} σ={e.noise_multiplier:.4g} steps={e.steps}"


def render_text(h: LedgerHistory) -> str:
    what = "data set ledger" if h.kind == "data" else "ledger"
    if not h.rows:
        return f"{what} {h.path}: no entries yet (ε = 0)"
    lines = [f"{what} {h.path}: {len(h.rows)} entries, {len(h.runs)} run(s); ε (RDP) at δ = {h.delta:g}"]
    head = ["id", "run", "round", "phase", "site", "mechanism", "status", "time", "ε run", "ε total"]
    cells = [[str(r.entry.id), r.entry.run_id, str(r.entry.round), r.entry.phase, r.entry.site or "-",
              mechanism_text(r.entry), r.entry.status, r.entry.created_at, fmt_eps(r.run_epsilon),
              fmt_eps(r.lifetime_epsilon)] for r in h.rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(head)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, ["-" * w for w in widths],
                                                                                      *cells]]
    for run in h.runs:
        why = f" (trained without sample-level DP: {run.unprotected.label})" if run.unprotected else ""
        lines.append(f"run {run.run}: {run.entries} entries, {run.first} to {run.last}, "
                     f"ε = {fmt_eps(run.epsilon)}{why}")
    if h.unprotected is not None:
        lines.append(f"lifetime: ε = ∞ since run {h.unprotected.run_id} (round {h.unprotected.round}) released data "
                     f"without a DP guarantee ({h.unprotected.label})")
    else:
        lines.append(f"lifetime: ε = {fmt_eps(h.lifetime)}" + (f" at δ = {h.delta:g}" if h.delta is not None else ""))
    if h.related:
        lines.append(f"shares images with {len(h.related)} other data set ledger(s): "
                     f"{', '.join(str(p) for p in h.related)}; with their histories ε = {fmt_eps(h.with_related)}")
    for w in h.weights:
        lines.append(f"public weights of run {w['run_id']}: {w['path']} sha256 {w['sha256']} (source: {w['source']})")
    return "\n".join(lines)


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def to_json(h: LedgerHistory) -> dict[str, Any]:
    """The history as JSON values; an unbounded ε is null with `unbounded: true` beside it."""
    def entry(r: Row) -> dict[str, Any]:
        e = r.entry
        return {"id": e.id, "run": e.run_id, "round": e.round, "phase": e.phase, "site": e.site, "kind": e.kind,
                "sample_rate": e.sample_rate, "noise_multiplier": e.noise_multiplier, "steps": e.steps,
                "delta": e.delta, "label": e.label, "status": e.status, "created_at": e.created_at,
                "committed_at": e.committed_at, "run_epsilon": _num(r.run_epsilon),
                "lifetime_epsilon": _num(r.lifetime_epsilon), "unbounded": math.isinf(r.lifetime_epsilon)}
    return {"path": str(h.path), "kind": h.kind, "accountant": "rdp", "delta": h.delta,
            "lifetime_epsilon": _num(h.lifetime), "unbounded": math.isinf(h.lifetime),
            "unbounded_by": h.unprotected.run_id if h.unprotected else None,
            "runs": [{"run": r.run, "entries": r.entries, "epsilon": _num(r.epsilon),
                      "unbounded": math.isinf(r.epsilon), "first": r.first, "last": r.last} for r in h.runs],
            "entries": [entry(r) for r in h.rows], "weights": h.weights,
            "related_ledgers": [str(p) for p in h.related], "epsilon_with_related": _num(h.with_related)}


def write_csv(h: LedgerHistory, path: str | Path) -> Path:
    rows = to_json(h)["entries"]
    columns = ["id", "run", "round", "phase", "site", "kind", "sample_rate", "noise_multiplier", "steps", "delta",
               "label", "status", "created_at", "committed_at", "run_epsilon", "lifetime_epsilon"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r, row in zip(h.rows, rows):
            row["run_epsilon"], row["lifetime_epsilon"] = r.run_epsilon, r.lifetime_epsilon  # inf as "inf"
            w.writerow(["" if row[c] is None else row[c] for c in columns])
    return Path(path)


def save_plot(h: LedgerHistory, path: str | Path) -> Path:
    """Cumulative ε against time: the lifetime (a step line) and each run's own; an unbounded stretch is drawn at the
    top of the axis and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from datetime import datetime

    when = [datetime.fromisoformat(r.entry.created_at) for r in h.rows]
    finite = [v for r in h.rows for v in (r.lifetime_epsilon, r.run_epsilon) if math.isfinite(v)]
    top = max(finite, default=1.0) * 1.15 or 1.0
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.step(when, [min(r.lifetime_epsilon, top) for r in h.rows], where="post", color="black", lw=2,
            label="lifetime")
    for run in h.runs:
        mine = [(t, r.run_epsilon) for t, r in zip(when, h.rows) if r.entry.run_id == run.run]
        ax.step([t for t, _ in mine], [min(e, top) for _, e in mine], where="post", lw=1,
                label=f"run {run.run}" if len(h.runs) <= 8 else None)  # a sweep's many runs: no legend each
    if h.unprotected is not None:
        ax.annotate(f"ε = ∞ from run {h.unprotected.run_id}", (0.02, 0.95), xycoords="axes fraction", va="top")
    ax.set_ylim(0, top)
    ax.set_ylabel(f"ε (RDP, δ = {h.delta:g})" if h.delta is not None else "ε")
    ax.set_title(f"Privacy ledger {h.path.name}", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
