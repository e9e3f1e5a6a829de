"""Figures written to disk (matplotlib, Agg backend: no display needed on a server or in CI)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402



PARTITION_FIGSIZE = (11.0, 4.8)  # inches; at PARTITION_DPI gives a 1100 x 480 px PNG
PARTITION_DPI = 100


def _partition_title(record: dict) -> str:
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.get("params", {}).items())
    method = record["method"] + (f" ({params})" if params else "")
    total = sum(s["num_samples"] for s in record["sites"])
    return f"Partition: {method}, {len(record['sites'])} sites, {total} images, seed {record['seed']}"


def save_partition_chart(path: str | Path, record: dict) -> Path:
    """Per-site class counts of a partition.json record: stacked bars of counts (left) and of each site's class
    proportions (right), one colour per class, legend with the class names."""
    path = Path(path)
    names = list(record["class_names"])
    sites = record["sites"]
    counts = np.asarray([s["class_counts"] for s in sites], dtype=np.float64).reshape(len(sites), len(names))
    totals = counts.sum(axis=1)
    props = counts / np.maximum(totals, 1)[:, None]
    x = np.arange(len(sites))
    many = len(sites) > 10  # then the ticks are bare site numbers (names, if any, are in partition.json)
    labels = [str(s["site"]) if many else f"site {s['site']}" + (f"\n{s['name']}" if s.get("name") else "")
              for s in sites]
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colors = [cmap(k % cmap.N) for k in range(len(names))]
    fig, (ax_n, ax_p) = plt.subplots(1, 2, figsize=PARTITION_FIGSIZE, dpi=PARTITION_DPI)
    width = 0.8
    # The proportions panel ends with the whole pool's class mix, the reference every site's mix is compared with.
    pool = counts.sum(axis=0) / max(totals.sum(), 1)
    x_pool = np.append(x, len(sites) + 0.3)
    short = [str(s["site"]) if many else f"site {s['site']}" for s in sites] + ["pool"]  # names: left panel only
    panels = ((ax_n, counts, x, labels), (ax_p, np.vstack([props, pool]), x_pool, short))
    for ax, values, xs, ticks in panels:
        bottom = np.zeros(len(xs))
        for k, name in enumerate(names):
            ax.bar(xs, values[:, k], width, bottom=bottom, color=colors[k], label=name, edgecolor="white",
                   linewidth=0.4 if len(sites) <= 30 else 0.0)
            bottom += values[:, k]
        ax.set_xticks(xs, ticks, fontsize=8 if len(sites) <= 24 else 6)
        if len(sites) > 48:  # label every n-th site only
            step = -(-len(sites) // 24)
            for i, tick in enumerate(ax.get_xticklabels()[:-1] if ax is ax_p else ax.get_xticklabels()):
                tick.set_visible(i % step == 0)
        ax.set_xlabel("site")
        ax.set_xlim(-0.6, xs[-1] + 0.6)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    ax_n.set_ylabel("images")
    ax_n.set_title("class counts per site", fontsize=10)
    ax_n.set_ylim(0, max(totals.max(), 1) * 1.1)
    if len(sites) <= 20:
        for xi, t in zip(x, totals):
            ax_n.text(xi, t, f"{int(t)}", ha="center", va="bottom", fontsize=8)
    ax_p.set_ylabel("share of the site's images")
    ax_p.set_ylim(0, 1)
    ax_p.set_title("class proportions per site", fontsize=10)
    handles, legend_labels = ax_p.get_legend_handles_labels()  # top of the legend = top of the stack
    ax_p.legend(handles[::-1], legend_labels[::-1], title="class", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                fontsize=8, title_fontsize=9, frameon=False)
    fig.suptitle(_partition_title(record), fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PARTITION_DPI)
    plt.close(fig)
    return path


# ---- run report figures (`fgssl report`). Fixed size, no tight bbox: every PNG is exactly REPORT_PX pixels. ----

REPORT_FIGSIZE = (9.0, 4.8)  # inches; at REPORT_DPI gives a 900 x 480 px PNG
REPORT_DPI = 100
CONFUSION_FIGSIZE = (7.5, 6.5)  # 750 x 650 px
Series = dict[str, list[tuple[int, float]]]  # site id or "pooled" -> [(round, value)] in round order


def _site_style(site: str, k: int) -> dict:
    if site == "pooled":
        return {"color": "black", "linewidth": 2.8, "marker": "o", "markersize": 5, "zorder": 5,
                "label": "pooled (all sites' test images)"}
    cmap = plt.get_cmap("tab10")
    # Hollow markers of different shapes and sizes, so sites with identical values (equal ε, say) stay visible.
    markers = "osD^vP*X<>"
    return {"color": cmap(k % 10), "linewidth": 1.4, "marker": markers[k % len(markers)],
            "markersize": max(4.0, 9.0 - 1.2 * (k % 5)), "markerfacecolor": "none", "markeredgewidth": 1.3,
            "alpha": 0.9, "label": f"site {site}"}


def _round_axis(ax, rounds: Sequence[int]) -> None:
    rounds = sorted(set(int(r) for r in rounds))
    if rounds:
        step = max(1, -(-len(rounds) // 15))
        ax.set_xticks(rounds[::step])
        ax.set_xlim(rounds[0] - 0.5, rounds[-1] + 0.5)
    ax.set_xlabel("federated round")
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)


def _plot_series(ax, series: Series) -> list[int]:
    rounds: list[int] = []
    k = 0
    for site, points in series.items():
        if not points:
            continue
        xs, ys = zip(*points)
        rounds += xs
        ax.plot(xs, ys, **_site_style(site, k))
        if site != "pooled":
            k += 1
    return rounds


def _legend(ax, n: int) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              ncol=1 if n <= 16 else 2)


def save_figure(fig, path: str | Path, dpi: int = REPORT_DPI) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def save_balanced_accuracy_curve(path: str | Path, series: Series, chance: float | None, title: str = "") -> Path:
    """Test balanced accuracy per site and pooled (bold black) per round, with the chance level dashed."""
    fig, ax = plt.subplots(figsize=REPORT_FIGSIZE, dpi=REPORT_DPI)
    rounds = _plot_series(ax, series)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1.2,
                   label=f"chance level ({chance:.2f} = 1 / classes)")
    _round_axis(ax, rounds)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test balanced accuracy (0-1, mean per-class recall)")
    ax.set_title(title or "Test balanced accuracy per round", fontsize=11)
    _legend(ax, len(series) + 1)
    fig.tight_layout()
    return save_figure(fig, path)


PHASE_LABELS = {
    "ssl": ("SSL phase: Barlow Twins loss", "loss, sum of the 4 branches (unitless)"),
    "finetune": ("Fine-tune phase: cross-entropy", "loss, sum of the 4 branches (nats)"),
}


def save_loss_curves(path: str | Path, by_phase: dict[str, Series], title: str = "") -> Path:
    """Local training loss per site per round, one panel per phase (their scales differ by orders of magnitude)."""
    phases = [p for p in by_phase if any(by_phase[p].values())] or ["finetune"]
    fig, axes = plt.subplots(1, len(phases), figsize=REPORT_FIGSIZE, dpi=REPORT_DPI, squeeze=False)
    for ax, phase in zip(axes[0], phases):
        rounds = _plot_series(ax, by_phase.get(phase, {}))
        _round_axis(ax, rounds)
        panel_title, ylabel = PHASE_LABELS.get(phase, (phase, "loss"))
        ax.set_title(panel_title, fontsize=10)
        ax.set_ylabel(ylabel)
        if not rounds:
            ax.text(0.5, 0.5, "no training records", ha="center", va="center", transform=ax.transAxes)
    handles, labels = axes[0, -1].get_legend_handles_labels()
    if handles:
        axes[0, -1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(title or "Local training loss per site (mean over the round's local batches)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def save_epsilon_curve(path: str | Path, series: Series, budget: float | None, delta: float | None = None,
                       budget_label: str = "budget", title: str = "") -> Path:
    """Privacy loss ε spent so far per site per round, against the sites' budget (dashed red)."""
    fig, ax = plt.subplots(figsize=REPORT_FIGSIZE, dpi=REPORT_DPI)
    rounds = _plot_series(ax, series)
    top = max((v for pts in series.values() for _, v in pts), default=1.0)
    if budget is not None:
        ax.axhline(budget, color="tab:red", linestyle="--", linewidth=1.5, label=f"{budget_label} ε = {budget:g}")
        top = max(top, budget)
    _round_axis(ax, rounds)
    ax.set_ylim(0, top * 1.08 if top > 0 else 1)
    d = f", δ = {delta:.0e}" if delta else ""
    ax.set_ylabel(f"ε spent so far (site's whole ledger){d}")
    ax.set_title(title or "Privacy loss ε per site (cumulative, from each site's ledger)", fontsize=11)
    _legend(ax, len(series) + 1)
    fig.tight_layout()
    return save_figure(fig, path)


def _heatmap(fig, ax, values: np.ndarray, texts: Sequence[Sequence[str]], colorbar_label: str) -> None:
    """Values in [0, 1] shaded in blue (NaN: no value, light grey), each cell's text in a colour legible on it."""
    cmap = plt.get_cmap("Blues").with_extremes(bad="#f0f0f0")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(colorbar_label)
    rows, cols = values.shape
    fontsize = 9 if max(rows, cols) <= 8 else 7 if max(rows, cols) <= 12 else 5
    for i in range(rows):
        for j in range(cols):
            v = values[i, j]
            color = "grey" if not np.isfinite(v) else "white" if v > 0.55 else "black"
            ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=fontsize, color=color)


def save_confusion_matrix(path: str | Path, matrix: Sequence[Sequence[int]], class_names: Sequence[str],
                          title: str = "") -> Path:
    """Row-normalised confusion matrix (colour and % = share of the true class), with the counts in each cell."""
    cm = np.asarray(matrix, dtype=np.float64)
    n = cm.shape[0]
    names = list(class_names)[:n] + [str(k) for k in range(len(class_names), n)]
    support = cm.sum(axis=1)
    norm = np.divide(cm, support[:, None], out=np.full_like(cm, np.nan), where=support[:, None] > 0)
    texts = [["–" if support[i] == 0 else f"{norm[i, j]:.0%}\n({int(cm[i, j])})" for j in range(n)] for i in range(n)]
    fig, ax = plt.subplots(figsize=CONFUSION_FIGSIZE, dpi=REPORT_DPI)
    _heatmap(fig, ax, norm, texts, "share of the true class's images (row-normalised)")
    ax.set_xticks(range(n), names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), [f"{name} (n={int(s)})" for name, s in zip(names, support)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (number of test images)")
    ax.set_title(title or "Confusion matrix", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def save_cross_site(path: str | Path, values: Sequence[Sequence[float]], texts: Sequence[Sequence[str]],
                    models: Sequence[str], splits: Sequence[str], title: str = "") -> Path:
    """The cross-site table as a heat map: rows models, columns test splits (and their mean), shaded by balanced
    accuracy (NaN: no number, e.g. kept at the site or failed), each cell's `texts` on it."""
    grid = np.asarray(values, dtype=np.float64).reshape(len(models), len(splits))
    width = min(14.0, max(7.5, 3.5 + 1.4 * len(splits)))
    fig, ax = plt.subplots(figsize=(width, 1.6 + 0.75 * len(models)), dpi=REPORT_DPI)
    _heatmap(fig, ax, grid, texts, "balanced accuracy (0-1)")
    ax.set_xticks(range(len(splits)), splits, rotation=30 if len(splits) > 6 else 0,
                  ha="right" if len(splits) > 6 else "center")
    ax.set_yticks(range(len(models)), models)
    ax.set_xlabel("test split")
    ax.set_ylabel("model")
    ax.set_title(title or "Cross-site evaluation", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def save_compare_curves(path: str | Path, series: dict[str, list[tuple[int, float]]],
                        references: dict[str, float], metric_label: str, title: str = "") -> Path:
    """One line per simulate run (its pooled metric per round) and a dashed horizontal line per train run."""
    fig, ax = plt.subplots(figsize=REPORT_FIGSIZE, dpi=REPORT_DPI)
    cmap = plt.get_cmap("tab10")
    rounds: list[int] = []
    k = 0
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            rounds += xs
            ax.plot(xs, ys, color=cmap(k % 10), marker="os^Dv"[k % 5], linewidth=1.8, markersize=5, label=name)
        k += 1
    for name, value in references.items():
        ax.axhline(value, color=cmap(k % 10), linestyle="--", linewidth=1.5, label=f"{name} (train, test)")
        k += 1
    _round_axis(ax, rounds)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"pooled test {metric_label}")
    ax.set_title(title or f"Pooled test {metric_label} per round", fontsize=11)
    _legend(ax, len(series) + len(references))
    fig.tight_layout()
    return save_figure(fig, path)


# ---- evaluation figures (`fgssl evaluate`) ----


def save_reliability_diagram(path: str | Path, bins: Sequence[dict], ece: float, title: str = "") -> Path:
    """Accuracy against mean confidence per confidence bin (bars; the diagonal is perfect calibration), and how many
    images each bin holds."""
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(6.5, 6.5), dpi=REPORT_DPI, sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    lower = np.array([b["lower"] for b in bins])
    width = np.array([b["upper"] - b["lower"] for b in bins])
    filled = [i for i, b in enumerate(bins) if b["count"]]
    acc = np.array([bins[i]["accuracy"] for i in filled])
    conf = np.array([bins[i]["confidence"] for i in filled])
    ax.bar(lower[filled], acc, width[filled], align="edge", color="tab:blue", edgecolor="white", label="accuracy")
    centre = lower[filled] + width[filled] / 2
    ax.vlines(centre, acc, conf, color="tab:red", linewidth=1.5)
    ax.scatter(centre, conf, marker="_", s=250, color="tab:red", zorder=3, label="mean confidence (gap: red line)")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1.2, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy of the bin's images")
    ax.set_title(title or f"Reliability diagram (ECE {ece:.3f}, {len(bins)} bins)", fontsize=11)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    ax_n.bar(lower, [b["count"] for b in bins], width, align="edge", color="grey", edgecolor="white")
    ax_n.set_xlabel("confidence (highest class probability)")
    ax_n.set_ylabel("images")
    ax_n.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def save_class_curves(path: str | Path, curves: dict[str, tuple[Sequence[float], Sequence[float], float]],
                      kind: str, title: str = "") -> Path:
    """One-vs-rest curve of every class: `kind` "roc" (true- against false-positive rate, chance dashed) or "pr"
    (precision against recall). `curves`: class -> (x, y, area)."""
    fig, ax = plt.subplots(figsize=REPORT_FIGSIZE, dpi=REPORT_DPI)
    cmap = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    area = "AUC" if kind == "roc" else "AP"
    for k, (name, (x, y, value)) in enumerate(curves.items()):
        # precision-recall points are steps: a point's precision holds over the recall it adds (average precision)
        ax.plot(x, y, color=cmap(k % cmap.N), linewidth=1.6, drawstyle="default" if kind == "roc" else "steps-pre",
                label=f"{name} ({area} {value:.3f})")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1.0, label="chance")
        ax.set_xlabel("false-positive rate (1 − specificity)")
        ax.set_ylabel("true-positive rate (sensitivity)")
    else:
        ax.set_xlabel("recall (sensitivity)")
        ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title or ("ROC curves, one class against the rest" if kind == "roc"
                           else "Precision-recall curves, one class against the rest"), fontsize=11)
    _legend(ax, len(curves) + 1)
    fig.tight_layout()
    return save_figure(fig, path)
