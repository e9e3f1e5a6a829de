"""A readable report of a run directory written by `fgssl simulate`: report.md, a self-contained report.html and
the plots under plots/. Works on a finished run (summary.json) and on one that stopped early (metrics.jsonl only,
possibly cut short): then the tables come from the last evaluated round and the report says where it stopped.

Reads only the run's files (config.yaml as plain YAML, metrics.jsonl, summary.json, partition.json) and no Flower;
matplotlib only when drawing, and torch only for the jigsaw views, whose images are regenerated from the config
(synthetic data) or read from the data set's prepared cache (cli/reports/jigsaw_figure.py).
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fgssl.metrics import below_majority
from fgssl.rundir import METRICS, RunDir, RunFileError, SavedRun

from server.cross_site import CSV_FILE, MEAN, cell_text, display_rows, model_label

from cli.errors import UserError
from cli.reports.run_files import is_finite_number

PLOTS_DIR = "plots"
CROSS_SITE_PLOT = "Cross-site evaluation"
METRIC_COLUMNS = [  # (record key, column title)
    ("num_examples", "test images"),
    ("accuracy", "accuracy"),
    ("majority_rate", "majority rate"),
    ("balanced_accuracy", "balanced accuracy"),
    ("macro_f1", "macro F1"),
    ("macro_auc", "macro AUC"),
    ("quadratic_weighted_kappa", "QW kappa"),
]


class ReportError(UserError):
    """The path cannot be reported on (not a run directory, no metrics). The message names the path."""


@dataclass
class Run(SavedRun):
    """A simulate run directory as the report reads it: only its per-site round records."""
    class_names: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def total_rounds(self) -> int | None:
        fed = self.section("federation")
        if self.summary and isinstance(self.summary.get("rounds"), int):
            return self.summary["rounds"]
        try:
            return int(fed["ssl_rounds"]) + int(fed["finetune_rounds"])
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def last_round(self) -> int:
        return max(int(r["round"]) for r in self.records)

    @property
    def last_eval_round(self) -> int | None:
        evaluated = [int(r["round"]) for r in self.records if _is_evaluated(r)]
        return max(evaluated) if evaluated else None

    def sites(self) -> list[str]:
        """Site ids in order (numeric first), without "pooled"."""
        seen = {str(r["site"]) for r in self.records if str(r["site"]) != "pooled"}
        return sorted(seen, key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s))

    def final_metrics(self) -> tuple[dict[str, dict[str, Any]], int | None]:
        """Per-site (and pooled) final metrics and the round they are from: summary.json's when the run finished,
        else the last evaluated round's records, with each site's latest ε/δ."""
        rnd = self.last_eval_round
        if self.summary is not None and isinstance(self.summary.get("final"), dict):
            return self.summary["final"], self.summary.get("final_round", rnd)  # the selected round
        out: dict[str, dict[str, Any]] = {}
        if rnd is not None:
            for r in self.records:
                if int(r["round"]) == rnd:
                    out[str(r["site"])] = dict(r)
        for site, (eps, delta, _) in self.epsilon_last().items():
            out.setdefault(site, {}).update({"epsilon": eps, "delta": delta})
        return out, rnd

    def epsilon_series(self) -> dict[str, list[tuple[int, float]]]:
        series: dict[str, list[tuple[int, float]]] = {}
        for r in self.records:
            if is_finite_number(r.get("epsilon")):
                series.setdefault(str(r["site"]), []).append((int(r["round"]), float(r["epsilon"])))
        return {s: sorted(series[s]) for s in self.sites() if s in series}

    def epsilon_last(self) -> dict[str, tuple[float, float | None, int]]:
        """site -> (ε, δ, round) of the site's latest record that carries ε."""
        out: dict[str, tuple[float, float | None, int]] = {}
        for r in sorted(self.records, key=lambda r: int(r["round"])):
            if is_finite_number(r.get("epsilon")):
                out[str(r["site"])] = (float(r["epsilon"]), r.get("delta"), int(r["round"]))
        return out

    def epsilon_budget(self) -> tuple[float | None, str]:
        p = self.section("privacy")
        if is_finite_number(p.get("max_epsilon")):
            return float(p["max_epsilon"]), "budget (privacy.max_epsilon)"
        if is_finite_number(p.get("target_epsilon")):
            return float(p["target_epsilon"]), "target (privacy.target_epsilon)"
        return None, ""


def _is_evaluated(r: dict[str, Any]) -> bool:
    return is_finite_number(r.get("balanced_accuracy")) or isinstance(r.get("confusion_matrix"), list)


def load_run(path: str | Path) -> Run:
    try:
        saved = RunDir.open(path)
    except RunFileError as e:
        raise ReportError(str(e)) from None
    if not saved.has_metrics and not saved.has_config:
        raise ReportError(f"{saved.path} is not a run directory (no config.yaml or metrics.jsonl)")
    if not saved.has_metrics:
        raise ReportError(f"{saved.path} has no metrics: {saved.path / METRICS} not found (did the run finish a "
                          "round?)")
    records = [r for r in saved.records if "round" in r and "site" in r]
    if not records:
        raise ReportError(f"{saved.path} has no metrics: {saved.path / METRICS} holds no per-site round records "
                          f"(is it a `fgssl simulate` run?)")
    run = Run(**{**vars(saved), "records": records, "bad_lines": saved.bad_lines + len(saved.records) - len(records)})
    run.class_names = _class_names(run)
    return run


def _class_names(run: Run) -> list[str]:
    for src in (run.summary, run.partition):
        if src and isinstance(src.get("class_names"), list):
            return [str(c) for c in src["class_names"]]
    for r in run.records:
        if isinstance(r.get("per_class_recall"), dict):
            return list(r["per_class_recall"])
    n = run.section("data").get("num_classes")
    return [str(k) for k in range(n)] if isinstance(n, int) else []


# ---- plots ----

@dataclass
class Plot:
    title: str
    path: Path
    caption: str


def make_plots(run: Run) -> tuple[list[Plot], list[str]]:
    """Draw every plot the run's data allows under RUN_DIR/plots/. Returns the plots and notes on those skipped."""
    from cli.reports import plots as P  # matplotlib only here

    out_dir = run.path / PLOTS_DIR
    made: list[Plot] = []
    skipped: list[str] = []
    sites = run.sites()
    stopped = "" if run.finished else f" (run stopped at round {run.last_round})"

    ba = {s: [(int(r["round"]), float(r["balanced_accuracy"])) for r in run.records
              if str(r["site"]) == s and is_finite_number(r.get("balanced_accuracy"))] for s in sites + ["pooled"]}
    ba = {s: sorted(v) for s, v in ba.items() if v}
    if ba:
        chance = 1.0 / len(run.class_names) if run.class_names else None
        made.append(Plot("Balanced accuracy per round", P.save_balanced_accuracy_curve(
            out_dir / "balanced_accuracy.png", ba, chance,
            title=f"Test balanced accuracy per round{stopped}"),
            "Each site's test split and the pooled test set (bold black), after each fine-tune round. "
            "Dashed: chance level (1 / number of classes)."))
    else:
        skipped.append("balanced accuracy: no round was evaluated yet (evaluation follows fine-tune rounds)")

    by_phase: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for r in run.records:
        if str(r["site"]) != "pooled" and is_finite_number(r.get("train_loss")):
            by_phase.setdefault(str(r.get("phase", "?")), {}).setdefault(str(r["site"]), []).append(
                (int(r["round"]), float(r["train_loss"])))
    by_phase = {ph: {s: sorted(v[s]) for s in sites if s in v}
                for ph, v in sorted(by_phase.items(), key=lambda kv: ["ssl", "finetune"].index(kv[0])
                                    if kv[0] in ("ssl", "finetune") else 2)}
    if by_phase:
        made.append(Plot("Local training loss", P.save_loss_curves(
            out_dir / "training_loss.png", by_phase,
            title=f"Local training loss per site (mean over the round's local batches){stopped}"),
            "Each site's mean local training loss per round, one panel per phase: the SSL (Barlow Twins) and "
            "fine-tune (cross-entropy) losses have different scales."))
    else:
        skipped.append("training loss: no record carries train_loss")

    eps = run.epsilon_series()
    if eps:
        budget, label = run.epsilon_budget()
        deltas = {r.get("delta") for r in run.records if is_finite_number(r.get("delta"))}
        delta = deltas.pop() if len(deltas) == 1 else None
        made.append(Plot("Privacy loss ε per site", P.save_epsilon_curve(
            out_dir / "epsilon.png", eps, budget, delta, budget_label=label.split(" ")[0] if label else "budget",
            title=f"Privacy loss ε per site (cumulative, from each site's ledger){stopped}"),
            "ε each site has spent so far (all its rounds composed)"
            + (f", against the {label} of {budget:g} (dashed red)." if budget is not None
               else "; no ε budget was set (privacy.max_epsilon / target_epsilon).")))

    if run.partition and run.partition.get("sites"):
        try:
            made.append(Plot("Data partition", P.save_partition_chart(out_dir / "partition.png", run.partition),
                             "Images per class at each site (left) and each site's class mix against the pool's "
                             "(right)."))
        except (KeyError, TypeError, ValueError) as e:
            skipped.append(f"partition: partition.json is malformed ({e})")
    else:
        skipped.append("partition: no partition.json")

    made_or_why = _jigsaw_plot(run, out_dir)
    if isinstance(made_or_why, Plot):
        made.append(made_or_why)
    else:
        skipped.append(f"jigsaw views: {made_or_why}")

    cross = run.summary.get("cross_site") if run.summary else None
    if cross:
        made.append(_cross_site_plot(cross, out_dir))

    final, rnd = run.final_metrics()
    cm = final.get("pooled", {}).get("confusion_matrix")
    if isinstance(cm, list) and cm:
        made.append(Plot("Pooled confusion matrix", P.save_confusion_matrix(
            out_dir / "confusion_pooled.png", cm, run.class_names,
            title=f"Pooled test confusion matrix, round {rnd}" + ("" if run.finished else " (run did not finish)")),
            "Rows: true class (colour and % = share of that class's test images), columns: predicted class; "
            "counts in brackets. Rows with no test image show –."))
    else:
        skipped.append("confusion matrix: no pooled confusion matrix in the metrics")
    return made, skipped


def _cross_site_plot(table: dict[str, Any], out_dir: Path) -> Plot:
    from cli.reports import plots as P

    splits = table["sites"] + [MEAN]
    values = [[float(c["balanced_accuracy"]) if is_finite_number((c := table["cells"][m][s]).get("balanced_accuracy"))
               else float("nan") for s in splits] for m in table["models"]]
    texts = [[cell_text(table["cells"][m][s], len(table["sites"]), width=12).replace(" / ", "\n") for s in splits]
             for m in table["models"]]
    path = P.save_cross_site(out_dir / "cross_site.png", values, texts, [model_label(table, m) for m in table["models"]],
                             [f"site {s}" for s in table["sites"]] + ["mean over sites"],
                             title=f"Cross-site evaluation (global model of round {table['model_round']}):\n"
                                   "balanced accuracy of each model on each site's test split")
    return Plot(CROSS_SITE_PLOT, path, "Colour: balanced accuracy (grey: no number). In each cell balanced accuracy "
                                       "above accuracy; ▼: accuracy under the site's majority-class rate.")


def _jigsaw_plot(run: Run, out_dir: Path) -> Plot | str:
    """The jigsaw views figure, or why it cannot be drawn (the run's images are not loadable here)."""
    from cli.reports.jigsaw_figure import ViewsUnavailable, load_examples, save_jigsaw_views

    try:
        ex = load_examples(run.path, run.partition)
    except ViewsUnavailable as e:
        return str(e)
    except (OSError, ValueError) as e:  # an unreadable cache file, a bad index: the report goes on without it
        return f"the run's images could not be loaded ({type(e).__name__}: {e})"
    grans = ", ".join(str(n) for n in ex.granularities)
    path = save_jigsaw_views(out_dir / "jigsaw_views.png", ex,
                             title=f"Jigsaw views at each block's granularity (model.granularities = [{grans}])")
    return Plot("Jigsaw views", path,
                f"A few of the run's images ({ex.source}; each shown as its site sees it) and the jigsaw view J_n "
                "each block is trained on: the image cut into n×n tiles (white grid) and shuffled with its own "
                "random permutation, n from model.granularities for the blocks on layer2, layer3 and layer4. "
                "In SSL rounds the shuffle is applied to an augmented copy (not shown); the concatenated branch "
                "sees the unshuffled image.")


# ---- the report's content, as blocks rendered to Markdown and HTML ----

Block = tuple  # ("h1"|"h2"|"p"|"warn", text) | ("table", columns, rows) | ("img", Plot)


def fmt_cell(v: Any) -> str:
    """A table cell: 3 decimals (3 significant digits when tiny), "–" for nothing or a non-finite number."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.3f}"
    return str(v)


def _site_label(site: str) -> str:
    return "pooled" if site == "pooled" else f"site {site}"


def _config_rows(run: Run) -> list[list[str]]:
    data, fed, priv, model = (run.section(k) for k in ("data", "federation", "privacy", "model"))
    part = run.section("partition")
    rows: list[list[str]] = []
    dataset = str(data.get("dataset", "?"))
    if dataset == "synthetic":
        dataset += f" ({data.get('num_samples', '?')} generated images, site shift {data.get('site_shift', '?')})"
    elif data.get("root"):
        dataset += f" ({data['root']})"
    rows.append(["dataset", f"{dataset}, {data.get('image_size', '?')} px"])
    n_classes = len(run.class_names)
    if n_classes:
        rows.append(["classes", f"{n_classes}: {', '.join(run.class_names)}"])
    rows.append(["sites", str(fed.get("sites", len(run.sites())))])
    if run.partition:
        method = str(run.partition.get("method", part.get("method", "?")))
        params = run.partition.get("params") or {}
    else:
        method = str(part.get("method", "?"))
        params = {"dirichlet": {"alpha": part.get("alpha")},
                  "pathological": {"classes_per_site": part.get("classes_per_site")}}.get(method, {})
    rows.append(["partition", method + (" (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
                                        if params else "")])
    rows.append(["rounds", f"{run.total_rounds if run.total_rounds is not None else '?'} = "
                           f"{fed.get('ssl_rounds', '?')} SSL + {fed.get('finetune_rounds', '?')} fine-tune "
                           f"(local epochs per round: SSL {fed.get('ssl_local_epochs') or fed.get('local_epochs', '?')}, "
                           f"fine-tune {fed.get('local_epochs', '?')})"])
    strategy = str(fed.get("strategy", "?"))
    if fed.get("server_optimizer") not in (None, "fedavg"):
        strategy += f", server optimiser {fed['server_optimizer']}"
    if fed.get("local_groups"):
        strategy += f", site-local groups {fed['local_groups']}"
    rows.append(["strategy", strategy + f" (min_nodes {fed.get('min_nodes', '?')})"])
    rows.append(["model", f"{model.get('backbone', '?')}, {model.get('norm', '?')} norm"])
    mode = str(priv.get("mode", "none"))
    if mode != "none":
        budget, label = run.epsilon_budget()
        extras = [f"noise multiplier {priv.get('noise_multiplier')}" if priv.get("noise_multiplier") else "",
                  f"{label.split(' ')[0]} ε {budget:g}" if budget is not None else "no ε budget",
                  f"δ {priv['delta']:g}" if is_finite_number(priv.get("delta")) else "",
                  f"{str(priv.get('accountant', '?')).upper()} accountant"]
        mode += " (DP-SGD: " + ", ".join(e for e in extras if e) + ")"
    rows.append(["privacy mode", mode])
    rows.append(["seed", str(run.config.get("seed", "?"))])
    return rows


def _status_blocks(run: Run) -> list[Block]:
    total = run.total_rounds
    of = f" of {total}" if total is not None else ""
    ev = run.last_eval_round
    if run.finished:
        secs = run.summary.get("elapsed_s") if run.summary else None
        text = f"Finished: all {total} rounds completed" + (f" in {secs:.0f} s" if is_finite_number(secs) else "") + "."
        if ev is not None:
            text += f" Final metrics are from round {ev}, the last evaluated round."
        blocks: list[Block] = [("p", text)]
    else:
        text = (f"This run did not finish: it stopped at round {run.last_round}{of} (no summary.json). "
                + (f"The tables and the confusion matrix are from round {ev}, the last evaluated round."
                   if ev is not None else "No round was evaluated before it stopped, so there are no test metrics."))
        blocks = [("warn", text)]
    if run.bad_lines:
        blocks.append(("warn", f"{run.bad_lines} unreadable line(s) in metrics.jsonl were skipped "
                               f"(a line cut short when the run was stopped)."))
    return blocks


def _partition_table(run: Run) -> Block | None:
    if not run.partition or not run.partition.get("sites"):
        return None
    names = [str(c) for c in run.partition.get("class_names", run.class_names)]
    rows = []
    for s in run.partition["sites"]:
        counts = list(s.get("class_counts", []))
        rows.append([_site_label(str(s.get("site"))), str(s.get("num_samples", sum(counts)))]
                    + [str(c) for c in counts])
    totals = [sum(int(s["class_counts"][k]) for s in run.partition["sites"]) for k in range(len(names))]
    rows.append(["total", str(sum(totals))] + [str(t) for t in totals])
    return ("table", ["site", "images"] + names, rows)


def _metrics_table(run: Run, final: dict[str, dict[str, Any]]) -> Block:
    sites = [s for s in run.sites() if s in final] + [s for s in final if s not in run.sites() and s != "pooled"]
    sites += ["pooled"] if "pooled" in final else []
    has_eps = any(is_finite_number(final[s].get("epsilon")) for s in sites)
    has_err = any(final[s].get("eval_error") or final[s].get("kept_at_site") for s in sites)
    columns = ["site"] + [title for _, title in METRIC_COLUMNS] + (["ε spent"] if has_eps else []) \
        + (["note"] if has_err else [])
    rows = []
    for s in sites:
        m = final[s]
        row = [_site_label(s)] + [fmt_cell(m.get(k)) for k, _ in METRIC_COLUMNS]
        if below_majority(m):  # more accurate to always answer the majority class: say so in the cell
            row[1 + [k for k, _ in METRIC_COLUMNS].index("accuracy")] += " ▼ under the majority rate"
        if has_eps:
            row.append(fmt_cell(m.get("epsilon")))
        if has_err:
            row.append(f"evaluation failed: {m['eval_error']}" if m.get("eval_error") else
                       "kept at the site (sample-level DP)" if m.get("kept_at_site") else "")
        rows.append(row)
    return ("table", columns, rows)


def _privacy_blocks(run: Run) -> list[Block]:
    priv = run.section("privacy")
    statement = run.summary.get("privacy") if run.summary else None
    last = run.epsilon_last()
    budget, label = run.epsilon_budget()
    blocks: list[Block] = []
    if isinstance(statement, dict) and statement.get("text"):
        blocks.append(("p", str(statement["text"])))
    elif str(priv.get("mode", "none")) == "none" and not last:
        blocks.append(("p", "No differential privacy: updates are plain model weights."))
    else:
        worst = max((v[0] for v in last.values()), default=0.0)
        client = str(priv.get("mode")) == "client"
        level, unit = ("Client-level", "site's whole data set (the server that adds the noise is trusted)") \
            if client else ("Sample-level", "training image of that site")
        blocks.append(("p", (
            f"{level} (ε, δ)-DP at every site ({str(priv.get('accountant', '?')).upper()} accountant): each "
            f"site's updates released up to the round listed are (ε, δ)-DP with respect to adding or removing one "
            f"{unit}, with ε per site as listed (at most {worst:.2f}). "
            + ("" if run.finished else "The run did not finish, so these are the values at its last recorded "
                                       "round, not a final statement. ")
            + "It does not hide a whole site's participation, nor evaluation metrics, which are reported "
              "without noise.")))
    if last:
        per_site = statement.get("per_site", {}) if isinstance(statement, dict) else {}
        rows = []
        for s in run.sites():
            if s not in last and s not in per_site:
                continue
            eps, delta, rnd = last.get(s, (None, None, None))
            if isinstance(per_site.get(s), dict):
                eps, delta = per_site[s].get("epsilon", eps), per_site[s].get("delta", delta)
            refused = sum(1 for r in run.records if str(r["site"]) == s and r.get("status") == "refused")
            rows.append([_site_label(s), fmt_cell(eps), f"{delta:.1e}" if is_finite_number(delta) else "–", fmt_cell(rnd),
                         f"{budget:g}" if budget is not None else "none", str(refused)])
        blocks.append(("table", ["site", "ε spent", "δ", "as of round", label.split(" (")[0] or "budget",
                                 "rounds refused"], rows))
    return blocks


def _dropped_blocks(run: Run) -> list[Block]:
    rows = [[str(r["round"]), _site_label(str(r["site"])), str(r.get("status")), str(r.get("reason", ""))[:200]]
            for r in run.records if r.get("status") in ("rejected", "refused")]
    if not rows:
        return [("p", "Every site's update was accepted in every round.")]
    return [("p", f"{len(rows)} update(s) were not aggregated:"), ("table", ["round", "site", "status", "reason"], rows)]


def _cross_site_blocks(run: Run, plots: list[Plot]) -> list[Block]:
    table = run.summary.get("cross_site") if run.summary else None
    blocks: list[Block] = [("h2", "Cross-site evaluation")]
    if not table:
        return blocks + [("p", "The cross-site evaluation follows the last round; this run did not get there."
                               if not run.finished else "This run has no cross-site evaluation "
                                                        "(federation.cross_site: false, or a run from before it).")]
    columns, rows = display_rows(table, width=200)
    blocks += [("p", f"Every model evaluated by every site on its own test split, as NVFlare's cross-site validation "
                     f"shows it: the global model is the kept one (model.safetensors, round {table['model_round']}). "
                     f"Each cell holds balanced accuracy / accuracy (▼: accuracy under the site's majority-class rate, "
                     f"the last row); the mean over sites is unweighted. Every number is in {CSV_FILE}."),
               ("p", str(table.get("note", ""))), ("table", columns, rows)]
    return blocks + [("img", p) for p in plots if p.title == CROSS_SITE_PLOT]


def build_blocks(run: Run, plots: list[Plot], skipped: list[str]) -> list[Block]:
    final, rnd = run.final_metrics()
    blocks: list[Block] = [("h1", f"Run report: {run.path.name}")]
    blocks += _status_blocks(run)
    blocks += [("h2", "Configuration"), ("table", ["setting", "value"], _config_rows(run))]
    part = _partition_table(run)
    blocks += [("h2", "Data partition")]
    blocks += [("p", "Images per class at each site (train, validation and test splits together)."), part] if part \
        else [("p", "No partition.json in the run directory.")]
    title = "Final metrics" if run.finished else f"Metrics at round {rnd} (the run did not finish)"
    blocks.append(("h2", title))
    if final:
        blocks.append(("p", f"Test metrics of the global model on each site's test split and on the pooled test "
                            f"set, from round {rnd}."
                       + (" ε: the privacy loss each site has spent." if any("epsilon" in m for m in final.values())
                          else "")))
        blocks.append(_metrics_table(run, final))
    else:
        blocks.append(("p", "No evaluated round: no test metrics yet."))
    blocks += _cross_site_blocks(run, plots)
    blocks += [("h2", "Privacy")] + _privacy_blocks(run)
    blocks += [("h2", "Dropped updates")] + _dropped_blocks(run)
    blocks.append(("h2", "Plots"))
    for plot in plots:
        if plot.title != CROSS_SITE_PLOT:  # shown in its own section
            blocks += [("h3", plot.title), ("p", plot.caption), ("img", plot)]
    if skipped:
        blocks.append(("p", "Not drawn: " + "; ".join(skipped) + "."))
    return blocks


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block], run_path: Path) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "warn":
            out.append(f"> **Warning.** {b[1]}")
        elif kind == "table":
            columns, rows = b[1], b[2]
            out.append("\n".join(["| " + " | ".join(_md_cell(c) for c in columns) + " |",
                                  "|" + "|".join("---" for _ in columns) + "|"]
                                 + ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]))
        elif kind == "img":
            plot: Plot = b[1]
            out.append(f"![{plot.title}]({plot.path.relative_to(run_path).as_posix()})")
    return "\n\n".join(out) + "\n"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.warn{background:#fff3cd;border-left:5px solid #e0a800;padding:.6em 1em;font-weight:600}
img{max-width:100%;border:1px solid #ddd}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"""


def render_html(blocks: list[Block]) -> str:
    e = html.escape
    body: list[str] = []
    title = "Run report"
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{e(b[1])}</{kind}>")
            if kind == "h1":
                title = b[1]
        elif kind == "p":
            body.append(f"<p>{e(b[1])}</p>")
        elif kind == "warn":
            body.append(f'<p class="warn">Warning. {e(b[1])}</p>')
        elif kind == "table":
            head = "".join(f"<th>{e(c)}</th>" for c in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            plot: Plot = b[1]
            data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
            body.append(f'<img alt="{e(plot.title)}" src="data:image/png;base64,{data}">')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


@dataclass
class ReportPaths:
    markdown: Path
    html: Path
    plots: list[Path]
    finished: bool
    last_round: int


def write_report(run_dir: str | Path) -> ReportPaths:
    """Write RUN_DIR/report.md, RUN_DIR/report.html and RUN_DIR/plots/*.png. Raises ReportError."""
    run = load_run(run_dir)
    plots, skipped = make_plots(run)
    blocks = build_blocks(run, plots, skipped)
    md = run.path / "report.md"
    page = run.path / "report.html"
    md.write_text(render_markdown(blocks, run.path), encoding="utf-8")
    page.write_text(render_html(blocks), encoding="utf-8")
    return ReportPaths(md, page, [p.path for p in plots], run.finished, run.last_round)


def report_at_end(run_dir: str | Path, say: Callable[[str], None] = print) -> ReportPaths | None:
    """For the end of `fgssl simulate`: write the report and say where; a failure is one line, never fatal."""
    try:
        paths = write_report(run_dir)
    except Exception as e:  # noqa: BLE001 (the run's results are already safe on disk; the report is a bonus)
        say(f"fgssl simulate: could not write the report: {type(e).__name__}: {e}")
        return None
    say(f"fgssl simulate: report in {paths.html} and {paths.markdown} ({len(paths.plots)} plots in "
        f"{paths.html.parent / PLOTS_DIR})")
    return paths
