"""A sweep's results: per-cell rows (cells.csv), mean ± std over seeds per (ε, α) (results.csv, results.md) and
utility_vs_epsilon.png. Read from the cells' summary.json files only, so they can be rewritten at any time."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgssl.rundir import SUMMARY, read_json_object

from cli.reports.run_files import finite_or_none
from cli.experiments.sweep import Cell, fmt_eps, fmt_num

METRICS = (("balanced_accuracy", "balanced accuracy"), ("macro_auc", "macro AUC"), ("accuracy", "accuracy"))
PLOT_FIGSIZE = (11.0, 4.8)  # 1100 x 480 px at plots.REPORT_DPI


@dataclass
class CellResult:
    cell: Cell
    run_dir: Path
    status: str  # finished | failed | not run
    metrics: dict[str, float | None] = field(default_factory=dict)
    epsilon_spent: float | None = None
    seconds: float | None = None
    chance: float | None = None
    error: str = ""


def read_cell(cell: Cell, run_dir: Path) -> CellResult:
    """A finished cell's pooled final metrics and the ε it spent (the largest over its sites)."""
    summary = read_json_object(run_dir / SUMMARY)
    if summary is None:
        return CellResult(cell, run_dir, "not run")
    pooled = (summary.get("final") or {}).get("pooled") or {}
    privacy = summary.get("privacy") or {}
    return CellResult(cell, run_dir, "finished", {k: finite_or_none(pooled.get(k)) for k, _ in METRICS},
                      finite_or_none(privacy.get("max_epsilon_spent")), finite_or_none(summary.get("elapsed_s")),
                      finite_or_none(summary.get("chance_balanced_accuracy")))


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), std


@dataclass
class Point:
    """One (ε, α) of the grid, over its seeds."""
    epsilon: float
    alpha: float | None
    results: list[CellResult]

    @property
    def finished(self) -> list[CellResult]:
        return [r for r in self.results if r.status == "finished"]

    def stat(self, key: str) -> tuple[float | None, float | None]:
        if key == "epsilon_spent":
            values = [r.epsilon_spent for r in self.finished]
        else:
            values = [r.metrics.get(key) for r in self.finished]
        return mean_std([v for v in values if v is not None])


def group(results: list[CellResult]) -> list[Point]:
    points: dict[tuple[float, float | None], Point] = {}
    for r in results:
        key = (r.cell.epsilon, r.cell.alpha)
        points.setdefault(key, Point(key[0], key[1], [])).results.append(r)
    return sorted(points.values(), key=lambda p: (p.alpha if p.alpha is not None else -1.0, p.epsilon))


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return fmt_num(v) if math.isinf(v) else round(v, 6)
    return "" if v is None else v


def write_cells_csv(path: Path, results: list[CellResult]) -> Path:
    columns = ["cell", "epsilon", "alpha", "seed", "status", *(k for k, _ in METRICS), "epsilon_spent", "run_seconds",
               "run_dir", "error"]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in results:
            w.writerow([_csv_value(v) for v in (r.cell.name, r.cell.epsilon, r.cell.alpha, r.cell.seed, r.status,
                                                *(r.metrics.get(k) for k, _ in METRICS), r.epsilon_spent,
                                                r.seconds, str(r.run_dir), r.error)])
    return path


def write_results_csv(path: Path, points: list[Point]) -> Path:
    stats = [k for k, _ in METRICS] + ["epsilon_spent"]
    columns = ["epsilon", "alpha", "seeds_finished", "seeds_failed"] + [f"{k}_{s}" for k in stats
                                                                         for s in ("mean", "std")]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for p in points:
            row: list[Any] = [p.epsilon, p.alpha, len(p.finished), sum(r.status == "failed" for r in p.results)]
            for k in stats:
                row += list(p.stat(k))
            w.writerow([_csv_value(v) for v in row])
    return path


def plus_minus(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def render_markdown(points: list[Point], results: list[CellResult], partition_text: str) -> str:
    alpha_col = any(p.alpha is not None for p in points)
    head = ["ε (target)"] + (["α"] if alpha_col else []) + ["seeds"] + [t for _, t in METRICS] + ["ε spent"]
    lines = ["# Sweep results", "",
             "Pooled test metrics of each cell's final round (the global model on the union of the sites' test "
             "splits), mean ± sample standard deviation over seeds (no ± with one seed). ε spent: the largest ε "
             "any site spent over the whole run; ∞ = no differential privacy."
             + ("" if alpha_col else f" Partition: {partition_text}."), "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    for p in points:
        n_failed = sum(r.status == "failed" for r in p.results)
        seeds = f"{len(p.finished)}/{len(p.results)}" + (f" ({n_failed} failed)" if n_failed else "")
        row = [fmt_eps(p.epsilon)] + ([f"{p.alpha:g}"] if alpha_col else []) + [seeds]
        row += [plus_minus(*p.stat(k)) for k, _ in METRICS]
        spent = p.stat("epsilon_spent")
        row.append("–" if math.isinf(p.epsilon) else plus_minus(*spent))
        lines.append("| " + " | ".join(row) + " |")
    failed = [r for r in results if r.status == "failed"]
    if failed:
        lines += ["", "## Failed cells", ""]
        lines += [f"- `{r.cell.name}` ({r.cell.label}): {r.error} (log: logs/{r.cell.name}.log)" for r in failed]
    lines += ["", "![utility against ε](utility_vs_epsilon.png)", "",
              "Per-cell numbers: cells.csv; each cell's own report: cells/<cell>/report.html.", ""]
    return "\n".join(lines)


# ---- the plot ----

def _x_positions(epsilons: list[float]) -> tuple[dict[float, float], float | None]:
    """x of every ε on a log10 scale, with ∞ one clear gap right of the largest finite ε; and the break's x."""
    finite = sorted(e for e in set(epsilons) if math.isfinite(e))
    xs = {e: math.log10(e) for e in finite}
    if any(math.isinf(e) for e in epsilons):
        if not finite:
            return {math.inf: 0.0}, None
        span = xs[finite[-1]] - xs[finite[0]]
        gap = max(0.5, 0.3 * span)
        xs[math.inf] = xs[finite[-1]] + gap
        return xs, xs[finite[-1]] + gap / 2
    return xs, None


def save_utility_vs_epsilon(path: Path, points: list[Point], partition_text: str) -> Path:
    """Pooled balanced accuracy and macro AUC against ε, one line per α, error bars = std over seeds."""
    from cli.reports.plots import REPORT_DPI, save_figure  # matplotlib only when drawing
    import matplotlib.pyplot as plt

    xs, brk = _x_positions([p.epsilon for p in points])
    alphas = sorted({p.alpha for p in points}, key=lambda a: -1.0 if a is None else a)
    chance = next((r.chance for p in points for r in p.finished if r.chance is not None), None)
    span = (max(xs.values()) - min(xs.values())) or 1.0
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=PLOT_FIGSIZE, dpi=REPORT_DPI)
    for ax, (key, title), ref in zip(axes, METRICS[:2], (chance, 0.5)):
        if not any(p.stat(key)[0] is not None for p in points):
            why = "no finished cell yet" if not any(p.finished for p in points) else f"no cell reported {title}"
            ax.text(0.5, 0.75, why, ha="center", va="center", transform=ax.transAxes, color="grey")
        for k, alpha in enumerate(alphas):
            offset = (k - (len(alphas) - 1) / 2) * 0.025 * span  # keeps error bars of different α apart
            pts = [(p, *p.stat(key)) for p in points if p.alpha == alpha]
            pts = [(xs[p.epsilon] + offset, m, s or 0.0, len(p.finished), p.epsilon) for p, m, s in pts
                   if m is not None]
            if not pts:
                continue
            ns = sorted({n for *_, n, _ in pts})
            seeds = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
            label = (f"α = {alpha:g}" if alpha is not None else f"partition: {partition_text}") + f" ({seeds} seeds)"
            style = {"color": cmap(k % 10), "marker": "os^Dv"[k % 5], "markersize": 6, "capsize": 4}
            fin = [q for q in pts if math.isfinite(q[4])]
            inf = [q for q in pts if math.isinf(q[4])]
            if fin:
                ax.errorbar([q[0] for q in fin], [q[1] for q in fin], yerr=[q[2] for q in fin], linewidth=1.8,
                            label=label, **style)
            if inf:
                ax.errorbar([inf[0][0]], [inf[0][1]], yerr=[inf[0][2]], linestyle="none",
                            label=None if fin else label, **style)
                if fin:  # dotted: ∞ is not a point on the log scale, only a reference
                    ax.plot([fin[-1][0], inf[0][0]], [fin[-1][1], inf[0][1]], linestyle=":", linewidth=1.2,
                            color=style["color"])
        if ref is not None:  # labelled in place: the two panels' chance levels differ
            ax.axhline(ref, color="grey", linestyle="--", linewidth=1.1)
            ax.text(0.01, ref, f" chance {ref:.2f}", color="grey", fontsize=8, va="bottom",
                    transform=ax.get_yaxis_transform())
        if brk is not None:  # the ∞ reference sits in its own shaded strip, off the log scale
            ax.axvspan(brk, max(xs.values()) + 10, color="grey", alpha=0.08, linewidth=0)
            ax.axvline(brk, color="black", linewidth=0.8, alpha=0.5)
            ax.text(brk, 0.985, "//", ha="center", va="top", fontsize=10, transform=ax.get_xaxis_transform())
        ticks = sorted(xs.items(), key=lambda kv: kv[1])
        ax.set_xticks([x for _, x in ticks], [("∞\n(no DP)" if math.isinf(e) else f"{e:g}") for e, _ in ticks])
        lo, hi = min(xs.values()), max(xs.values())
        pad = max(0.25, 0.08 * (hi - lo))
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(0, 1)
        ax.set_xlabel("privacy budget ε per site (log scale; ∞ = no DP)")
        ax.set_ylabel(f"pooled test {title} (0-1)")
        ax.set_title(f"Pooled test {title}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_axisbelow(True)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle("Utility against privacy budget: mean ± std over seeds", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)
