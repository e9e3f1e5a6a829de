"""The files `fgssl evaluate` writes: evaluation.json (every number), evaluation.md and a self-contained
evaluation.html with the plots embedded (rendered like the run report, cli/reports/report.py), and plots/*.png."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgssl.metrics import below_majority

from cli.progress import plain
from cli.reports.report import PLOTS_DIR, Block, Plot, fmt_cell, render_html, render_markdown

VARIANTS = {"plain": "the images as they are", "tta": "test-time augmentation (mean over the image and its flips)"}
HEADLINE = [  # (key, row title)
    ("num_examples", "images"),
    ("accuracy", "accuracy"),
    ("majority_rate", "majority-class rate"),
    ("balanced_accuracy", "balanced accuracy"),
    ("macro_f1", "macro F1"),
    ("macro_auc", "macro AUC (one-vs-rest)"),
    ("quadratic_weighted_kappa", "quadratic weighted kappa"),
    ("expected_calibration_error", "expected calibration error (15 bins)"),
]


@dataclass
class EvaluationPaths:
    json: Path
    markdown: Path
    html: Path
    plots: list[Path]


def _variants(record: dict[str, Any]) -> list[str]:
    return [v for v in VARIANTS if v in record]


def _plots(record: dict[str, Any], out_dir: Path) -> list[Plot]:
    from cli.reports import plots as P  # matplotlib only here

    made = []
    names = record["model"]["class_names"]
    for v in _variants(record):
        m, suffix, how = record[v], "" if v == "plain" else "_tta", "" if v == "plain" else " (TTA)"
        made.append(Plot(f"Confusion matrix{how}", P.save_confusion_matrix(
            out_dir / f"confusion{suffix}.png", m["confusion_matrix"], names, f"Confusion matrix{how}"),
            "Rows: true class; colour and percentage: share of the true class's images; counts in brackets."))
        made.append(Plot(f"Reliability diagram{how}", P.save_reliability_diagram(
            out_dir / f"reliability{suffix}.png", m["reliability"], m["expected_calibration_error"]),
            "Images binned by their highest class probability: a calibrated model's bars reach the diagonal."))
        for kind, x, y, area, title in (("roc", "fpr", "tpr", "roc_auc", "ROC curves"),
                                        ("pr", "recall", "precision", "average_precision", "Precision-recall curves")):
            curves = {n: (c[x], c[y], c[area]) for n, c in m["curves"].items() if c}
            if curves:
                made.append(Plot(f"{title}{how}", P.save_class_curves(out_dir / f"{kind}{suffix}.png", curves, kind),
                                 "One class against all others; classes absent from the images have no curve."))
    return made


def _headline(record: dict[str, Any]) -> Block:
    variants = _variants(record)
    rows = []
    for key, title in HEADLINE:
        if any(key in record[v] for v in variants):
            rows.append([title] + [fmt_cell(record[v].get(key)) for v in variants])
    return ("table", ["metric"] + ["plain" if v == "plain" else "TTA" for v in variants], rows)


def _per_class(record: dict[str, Any], v: str) -> Block:
    m = record[v]
    rows = []
    for name in record["model"]["class_names"]:
        c = m["curves"].get(name) or {}
        rows.append([name, str(m["support"][name]), fmt_cell(m["per_class_recall"][name]),
                     fmt_cell(m["per_class_precision"][name]), fmt_cell(c.get("roc_auc")), fmt_cell(c.get("average_precision"))])
    return ("table", ["class", "images", "recall", "precision", "ROC AUC", "average precision"], rows)


def _sensitivity(record: dict[str, Any]) -> Block:
    rows = []
    for v in _variants(record):
        for r in record[v]["sensitivity_at_specificity"]:
            rows.append(["plain" if v == "plain" else "TTA", f"{r['target_specificity']:.0%}", fmt_cell(r["threshold"]),
                         fmt_cell(r["specificity"]), fmt_cell(r["sensitivity"])])
    return ("table", ["prediction", "target specificity", "threshold (p > t)", "specificity reached",
                      "sensitivity"], rows)


def build_blocks(record: dict[str, Any], plots: list[Plot]) -> list[Block]:
    data, model = record["data"], record["model"]
    where = f"{data['dataset']}" + (f" ({data['root']})" if data.get("root") else "")
    blocks: list[Block] = [("h1", f"Evaluation on {data['dataset']}, {data['split']} split"),
                           ("p", f"Data: {where}, split '{data['split']}' (seed {data['split_seed']}), "
                                 f"{data['num_images']} images at {model['image_size']} px ({model['resize']}). "
                                 f"Classes: " + ", ".join(f"{n} {c}" for n, c in data["class_counts"].items()) + ".")]
    if model.get("trained_on") or model.get("privacy"):
        blocks.append(("p", f"Model trained on {model.get('trained_on') or '?'}. {model.get('privacy') or ''}"))
    blocks += [("warn", n) for n in data["notes"]]
    blocks += [("h2", "Metrics"), _headline(record)]
    for v in _variants(record):
        if below_majority(record[v]):
            blocks.append(("warn", f"{'TTA' if v == 'tta' else 'Plain'} accuracy {record[v]['accuracy']:.3f} is "
                                   f"below the majority-class rate {record[v]['majority_rate']:.3f}: always answering "
                                   "the most frequent class would score higher."))
    for v in _variants(record):
        blocks += [("h2", f"Per class: {VARIANTS[v]}"), _per_class(record, v)]
    blocks += [("h2", f"Sensitivity for {record['positive_class']} at fixed specificity"), _sensitivity(record),
               ("p", record["specificity_note"])]
    blocks.append(("h2", "Plots"))
    for plot in plots:
        blocks += [("h3", plot.title), ("p", plot.caption), ("img", plot)]
    return blocks


def write_evaluation(out_dir: str | Path, record: dict[str, Any]) -> EvaluationPaths:
    """Write OUT/evaluation.json, OUT/evaluation.md, OUT/evaluation.html and OUT/plots/*.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = EvaluationPaths(out / "evaluation.json", out / "evaluation.md", out / "evaluation.html", [])
    paths.json.write_text(json.dumps(plain(record), indent=1, ensure_ascii=False), encoding="utf-8")
    plots = _plots(record, out / PLOTS_DIR)
    paths.plots = [p.path for p in plots]
    blocks = build_blocks(record, plots)
    paths.markdown.write_text(render_markdown(blocks, out), encoding="utf-8")
    paths.html.write_text(render_html(blocks), encoding="utf-8")
    return paths
