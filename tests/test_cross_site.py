"""Cross-site evaluation's table (server/cross_site.py) and the pieces the sites need for it; end-to-end runs are in
test_federation.py (every cell against an independent evaluation, a failing site, a resumed run) and
test_federation_dp.py (sample-level DP: the global row only, kept at the sites)."""

import csv

import numpy as np
import pytest

from client.site import save_local_groups
from fgssl.config import load_config
from fgssl.model import build_model
from server.cross_site import build_table, display_rows, error_line, reply_cell, table_note, write_csv
from strategies.groups import split_by_site, tag_by_site

from .conftest import TINY, merge


def _metrics(balanced: float, accuracy: float, rate: float = 0.5, n: int = 10) -> dict:
    return {"num_examples": n, "accuracy": accuracy, "balanced_accuracy": balanced, "majority_rate": rate,
            "macro_f1": 0.1, "confusion_matrix": [[1]]}


def test_the_table_has_a_row_per_model_a_column_per_site_and_their_mean(tmp_path):
    timeout = "no reply within federation.round_timeout_s=5 (asked 2 times)"
    rows = {
        "global": {"0": reply_cell({"test": _metrics(0.6, 0.7)}, None),
                   "1": reply_cell({"test": _metrics(0.4, 0.3, rate=0.6)}, None),
                   "2": reply_cell(None, timeout)},
        "0": {"0": reply_cell({"models": {"0": _metrics(0.8, 0.9, n=12)}}, None, "0"),
              "1": reply_cell({"models": {"0": None}}, None, "0"),  # that site has no test images
              "2": reply_cell({"models": {"1": _metrics(0.1, 0.1)}}, None, "0")},
        "2": {s: reply_cell({"kept_at_site": True}, None, "2") for s in "012"},
    }
    table = build_table(["0", "1", "2"], 4, rows, "why")
    assert table["models"] == ["global", "0", "2"] and table["sites"] == ["0", "1", "2"]
    assert table["model_round"] == 4 and table["weights"] == "model.safetensors" and table["note"] == "why"
    cells = table["cells"]
    assert all(set(cells[m]) == {"0", "1", "2", "mean"} for m in table["models"])
    # only the headline metrics are kept; the mean is over the sites with numbers, unweighted
    assert cells["global"]["0"] == {"num_examples": 10, "accuracy": 0.7, "balanced_accuracy": 0.6, "majority_rate": 0.5}
    assert cells["global"]["2"] == {"error": timeout}
    assert cells["global"]["mean"] == pytest.approx({"accuracy": 0.5, "balanced_accuracy": 0.5, "majority_rate": 0.55,
                                                     "sites": 2})
    assert cells["0"]["1"] == {"error": "the site has no test images"}
    assert cells["0"]["2"] == {"error": "the reply holds no metrics for this model"}
    assert cells["0"]["mean"] == pytest.approx({"accuracy": 0.9, "balanced_accuracy": 0.8, "majority_rate": 0.5,
                                                "sites": 1})
    assert cells["2"]["mean"] == {"kept_at_site": True}

    columns, lines = display_rows(table)
    assert columns == ["model (balanced accuracy / accuracy)", "site 0 test", "site 1 test", "site 2 test",
                       "mean over sites"]
    assert lines[0] == ["global (round 4)", "0.600 / 0.700", "0.400 / 0.300 ▼", timeout,
                        "0.500 / 0.500 ▼ (2 of 3 sites)"]  # the mean accuracy is under the mean rate
    assert lines[2] == ["site 2's model"] + ["kept at the site"] * 4
    assert lines[-1] == ["majority-class rate", "0.500", "0.600", "–", "0.550"]
    assert display_rows(table, width=20)[1][0][3] == timeout[:19] + "…"

    with open(write_csv(table, tmp_path / "cross_site.csv"), newline="", encoding="utf-8") as f:
        read = list(csv.DictReader(f))
    assert [(r["model"], r["test_split"]) for r in read] == [(m, s) for m in ("global", "0", "2")
                                                              for s in ("0", "1", "2", "mean")]
    first, mean = read[0], read[3]
    assert (first["balanced_accuracy"], first["accuracy"], first["num_examples"], first["status"]) == \
        ("0.6", "0.7", "10", "ok")
    assert (mean["sites"], mean["num_examples"], read[2]["status"], read[-1]["status"]) == \
        ("2", "", timeout, "kept at the site")


def test_a_reply_that_is_not_numbers_makes_an_error_cell_or_empty_values():
    assert reply_cell({"test": 5}, None) == {"error": "malformed metrics in the reply"}
    assert reply_cell({"models": [1, 2]}, None, "0") == {"error": "the reply holds no metrics for this model"}
    assert reply_cell({}, None) == {"error": "the reply holds no metrics for this model"}
    odd = reply_cell({"test": {"accuracy": "1.0", "balanced_accuracy": True, "majority_rate": float("nan"),
                               "num_examples": 3}}, None)
    assert odd == {"num_examples": 3, "accuracy": None, "balanced_accuracy": None, "majority_rate": None}
    assert build_table(["0"], 1, {"global": {"0": odd}}, "")["cells"]["global"]["mean"] == \
        {"accuracy": None, "balanced_accuracy": None, "majority_rate": None, "sites": 1}
    # a crashed ClientApp's traceback is shown by its last line, the exception's message
    crash = "client error: Traceback ...\n  File x\nException ClientAppException occurred. Message: boom (faults)'>"
    assert error_line(crash) == "boom (faults)" and error_line("no reply within 5 s") == "no reply within 5 s"
    assert build_table(["0"], 1, {}, "")["cells"]["global"] == {"0": {"error": "no reply"},
                                                                 "mean": {"error": "no site's metrics"}}


def _config(privacy: dict | None = None, **federation) -> object:
    return load_config(None, [], base=merge(TINY, {"privacy": privacy or {}, "federation": federation}))


def test_the_note_says_which_rows_exist_and_why():
    shared = _config(local_groups=["*bn*"])
    assert shared.cross_site_models and "travelled to the other sites" in table_note(shared)
    assert not _config(local_groups=["*bn*"], cross_site=False).cross_site_models
    plain = _config()
    assert not plain.cross_site_models and "local_groups is empty" in table_note(plain)
    for mode in ("sample", "client"):
        cfg = _config({"mode": mode, "target_epsilon": 8.0}, local_groups=["*bn*"])
        note = table_note(cfg)
        assert not cfg.cross_site_models
        assert "Only the global model's row" in note and f"privacy.mode '{mode}' does not cover" in note
        assert ("'kept at the site'" in note) == (mode == "sample")


def test_sites_arrays_travel_under_tagged_names_and_the_selected_rounds_groups_are_kept(tmp_path):
    a, b = np.zeros(2, np.float32), np.ones(3, np.float32)
    tagged = tag_by_site({0: {"x.bn1.weight": a}, 3: {"x.bn1.weight": b}})
    assert set(tagged) == {"site0/x.bn1.weight", "site3/x.bn1.weight"}
    shared, by_site = split_by_site({**tagged, "x.conv1.weight": a})
    assert list(shared) == ["x.conv1.weight"] and by_site["3"]["x.bn1.weight"] is b and set(by_site) == {"0", "3"}

    # a site keeps its last two rounds' local groups, and those of the round the coordinator selected
    model = build_model(_config().model, 3)
    for rnd in range(1, 6):
        save_local_groups(tmp_path, rnd, model, ("*bn*",), also_keep=2)
    assert sorted(p.name for p in tmp_path.glob("local_r*")) == [f"local_r{r}.safetensors" for r in (2, 4, 5)]
