"""Cross-site evaluation, as NVFlare's cross-site validation shows it: after the last round, every model (the selected
global one and, where sites keep local parameter groups and may share them, each site's own) on every site's test
split. Pure functions over the sites' screened replies, without Flower: the table that goes into summary.json, its
CSV and its printed form. server/app.py moves the messages, client/site.py does a site's part, cli/reports/report.py
draws the table.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from fgssl.config import CROSS_SITE_EVALUATIONS, Config
from fgssl.metrics import HEADLINE_METRICS, below_majority
from strategies.incoming import error_line

GLOBAL, MEAN = "global", "mean"
CSV_FILE = "cross_site.csv"
AVERAGED = ("accuracy", "balanced_accuracy", "majority_rate")  # over sites in the mean column; counts are not
Cell = dict[str, Any]  # HEADLINE_METRICS | {"kept_at_site": True} | {"error": why it holds no number}


def _number(v: Any) -> float | int | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def reply_cell(reply: dict[str, Any] | None, failure: str | None, model: str | None = None) -> Cell:
    """One cell from a site's screened reply: its "test" metrics (the global model; `model` None) or its
    "models"[model] ones, a reply saying they stayed at the site, or why nothing came (`failure`, from the exchange).
    A reply is a node's word, so anything but numbers where numbers belong makes an error cell."""
    if failure is not None:
        return {"error": failure}
    if reply is None:
        return {"error": "no reply"}
    if reply.get("kept_at_site") is True:
        return {"kept_at_site": True}
    if model is None:
        found, values = "test" in reply, reply.get("test")
    else:
        models = reply.get("models")
        found = isinstance(models, dict) and model in models
        values = models.get(model) if found else None
    if not found:
        return {"error": "the reply holds no metrics for this model"}
    if values is None:
        return {"error": "the site has no test images"}
    if not isinstance(values, dict):
        return {"error": "malformed metrics in the reply"}
    return {k: _number(values.get(k)) for k in HEADLINE_METRICS}


def mean_cell(cells: list[Cell]) -> Cell:
    """The unweighted mean over the sites whose cell holds metrics (each hospital counts once, as in NVFlare's
    table); "sites" says over how many."""
    scored = [c for c in cells if "error" not in c and not c.get("kept_at_site")]
    if not scored:
        if cells and all(c.get("kept_at_site") for c in cells):
            return {"kept_at_site": True}
        return {"error": "no site's metrics"}
    out: Cell = {}
    for k in AVERAGED:
        values = [c[k] for c in scored if c.get(k) is not None]
        out[k] = sum(values) / len(values) if values else None
    out["sites"] = len(scored)
    return out


def build_table(sites: list[str], model_round: int, rows: dict[str, dict[str, Cell]], note: str) -> dict[str, Any]:
    """summary.json's `cross_site`. `rows`: model ("global", or a site id for that site's own model) -> site -> cell;
    a cell missing from a row reads as no reply. Rows: the global model first, then the sites' in site order."""
    models = [GLOBAL] + [s for s in sites if s in rows]
    cells = {}
    for m in models:
        row = {s: rows.get(m, {}).get(s) or {"error": "no reply"} for s in sites}
        cells[m] = {**row, MEAN: mean_cell(list(row.values()))}
    return {"model_round": model_round, "weights": "model.safetensors", "models": models, "sites": sites,
            "cells": cells, "note": note}


def table_note(cfg: Config) -> str:
    """What the rows are and why some are absent (the run's local groups and privacy mode decide)."""
    groups = ", ".join(cfg.federation.local_groups)
    if not groups:
        text = ("No site-local parameter groups (federation.local_groups is empty): each site's model is the global "
                "one, so the global row is the whole table.")
    else:
        text = ("The global row is model.safetensors as it is: its site-local groups hold the coordinator's copy (their "
                "initial values), as a hospital outside the federation gets it. ")
        if cfg.cross_site_models:
            text += (f"Each site's model is the global one with that site's own local groups ({groups}), which "
                     "travelled to the other sites through the coordinator for this (privacy.mode 'none').")
        else:
            text += (f"Only the global model's row: each site's own model holds its local groups ({groups}), and "
                     f"evaluating it at the other sites would send those groups there, a release that privacy.mode "
                     f"'{cfg.privacy.mode}' does not cover.")
    if cfg.privacy.evaluation_stays_at_sites:
        text += (f" Under sample-level DP the metrics stay at each site ({CROSS_SITE_EVALUATIONS} in its state "
                 "directory), so the cells say 'kept at the site'.")
    return text


def model_label(table: dict[str, Any], model: str) -> str:
    return f"global (round {table['model_round']})" if model == GLOBAL else f"site {model}'s model"


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if _number(v) is not None else "–"


def cell_text(cell: Cell, sites: int, width: int = 60) -> str:
    """"balanced accuracy / accuracy" (▼ under the majority rate), "kept at the site", or the error's line, cut to
    `width`."""
    if cell.get("kept_at_site"):
        return "kept at the site"
    if "error" in cell:
        error = error_line(cell["error"])
        return error if len(error) <= width else error[: width - 1] + "…"
    text = f"{_fmt(cell.get('balanced_accuracy'))} / {_fmt(cell.get('accuracy'))}"
    if below_majority(cell):
        text += " ▼"
    if cell.get("sites", sites) < sites:
        text += f" ({cell['sites']} of {sites} sites)"
    return text


def majority_rates(table: dict[str, Any]) -> dict[str, float | None]:
    """Each site's majority-class rate (its test split's, the same in every row) and the global row's mean of them."""
    out: dict[str, float | None] = {}
    for col in table["sites"] + [MEAN]:
        rates = [table["cells"][m][col].get("majority_rate") for m in table["models"]]
        out[col] = next((r for r in rates if r is not None), None)
    return out


def display_rows(table: dict[str, Any], width: int = 60) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of the table as people read it: one row per model, one column per site's test split and the
    mean, "balanced accuracy / accuracy" in each cell, and a last row with each split's majority-class rate."""
    sites = table["sites"]
    columns = ["model (balanced accuracy / accuracy)"] + [f"site {s} test" for s in sites] + ["mean over sites"]
    rows = [[model_label(table, m)] + [cell_text(table["cells"][m][c], len(sites), width) for c in sites + [MEAN]]
            for m in table["models"]]
    rates = majority_rates(table)
    rows.append(["majority-class rate"] + [_fmt(rates[c]) for c in sites + [MEAN]])
    return columns, rows


CSV_COLUMNS = ["model", "model_round", "test_split", *HEADLINE_METRICS, "sites", "status"]


def write_csv(table: dict[str, Any], path: Path) -> Path:
    """One line per (model, test split or "mean"); `status` is ok, kept at the site, or the error."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for m in table["models"]:
            for col in table["sites"] + [MEAN]:
                cell = table["cells"][m][col]
                status = "kept at the site" if cell.get("kept_at_site") else cell.get("error", "ok")
                w.writerow([m, table["model_round"], col, *("" if cell.get(k) is None else cell[k]
                                                             for k in (*HEADLINE_METRICS, "sites")), status])
    return path
