"""`fgssl evaluate`: a trained model's full metric set on a labelled dataset, in evaluation.json/.md/.html; data with
other classes, a model whose weights do not fit model.json and a bad data file are refused in one line."""

from __future__ import annotations

import csv
import json
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cli.main import main as fgssl
from fgssl.data import synthetic
from fgssl.data.errors import DataWarning
from fgssl.data.images import ImageSet
from fgssl.data.official import ISIC2018_CLASSES, ISIC2018_IMAGES, isic2018_part
from fgssl.data.sources import load_split, load_splits
from fgssl.evaluation import class_probabilities, evaluation_data
from fgssl.model_card import load_model

from .test_medmnist import make_npz
from .test_model_card import _saved
from .test_official_data import (REAL_FULL, make_isic2018, real_isic2018_labels, write_csv,
                                 write_isic2018_part)

APTOS = ["no_dr", "mild", "moderate", "severe", "proliferative_dr"]


def _folder(root, labels: list[str]) -> list[str]:
    """Images (random pixels, odd sizes) with a labels.csv; returns the image paths relative to root."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(7)
    names = []
    for i, _ in enumerate(labels):
        Image.fromarray(rng.integers(0, 256, (30 + i % 5, 40, 3), dtype=np.uint8)).save(root / f"im{i}.png")
        names.append(f"im{i}.png")
    write_csv(root / "labels.csv", ["image", "label"], [[n, y] for n, y in zip(names, labels)])
    return names


def _evaluate(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return fgssl(["evaluate", *args])


def test_evaluation_files_hold_every_metric_with_and_without_flips(tmp_path, capsys):
    run, _, _ = _saved(tmp_path)
    _folder(tmp_path / "data", ["nv", "mel", "bkl"] * 8)
    out = tmp_path / "ev"
    assert _evaluate(str(run), "--dataset", "folder", "--root", str(tmp_path / "data"), "--set", "data.csv=labels.csv",
                     "--set", "data.class_names=[bkl, mel, nv]", "--set", f"data.cache_dir={tmp_path / 'c'}",
                     "--tta", "--positive-class", "mel", "--out", str(out), "--json") == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    assert any(e["event"] == "note" and "mapped to the model's order" in e["text"] for e in events)
    record = json.loads((out / "evaluation.json").read_text())
    assert record["data"]["num_images"] == 24 and record["data"]["class_counts"] == {"nv": 8, "mel": 8, "bkl": 8}
    assert record["positive_class"] == "mel" and "chosen on the evaluated images" in record["specificity_note"]
    for v in ("plain", "tta"):
        m = record[v]
        assert set(m) >= {"accuracy", "balanced_accuracy", "majority_rate", "macro_f1", "macro_auc", "per_class_recall",
                          "per_class_precision", "confusion_matrix", "expected_calibration_error", "reliability",
                          "curves", "sensitivity_at_specificity"}
        assert "quadratic_weighted_kappa" not in m  # not graded data
        assert np.sum(m["confusion_matrix"]) == 24 and len(m["reliability"]) == 15
        assert [r["target_specificity"] for r in m["sensitivity_at_specificity"]] == [0.8, 0.9, 0.95]
        assert m["curves"]["nv"]["fpr"][0] == 0.0 and m["curves"]["nv"]["tpr"][-1] == 1.0
    assert events[-1]["metrics"]["tta"]["accuracy"] == record["tta"]["accuracy"]
    html = (out / "evaluation.html").read_text()
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == sorted(f"{k}{s}.png" for k in ("confusion", "reliability", "roc", "pr") for s in ("", "_tta"))
    assert html.count('src="data:image/png;base64,') == 8 and 'src="plots/' not in html
    md = (out / "evaluation.md").read_text()
    assert "Sensitivity for mel at fixed specificity" in md and "(plots/roc_tta.png)" in md


def test_test_time_augmentation_averages_the_image_and_its_three_flips(tmp_path):
    model, _ = load_model(_saved(tmp_path)[0])
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    views = torch.cat([x, x.flip(3), x.flip(2), x.flip((2, 3))])
    images = ImageSet(views, torch.zeros(4, dtype=torch.long), ("nv", "mel", "bkl"))
    plain, tta = class_probabilities(model, images, tta=True, batch_size=3)
    assert not np.allclose(plain[0], plain[1])  # the model does tell a flipped image from the image
    np.testing.assert_allclose(tta, np.repeat(tta[:1], 4, axis=0), atol=1e-6)
    np.testing.assert_allclose(tta[0], plain.mean(axis=0), atol=1e-6)
    assert class_probabilities(model, images)[1] is None


def test_a_split_is_the_one_training_made(tmp_path, capsys):
    names = tuple(synthetic.class_names(7))
    run, _, cfg = _saved(tmp_path, names=names)
    card = json.loads((run / "model.json").read_text())
    data = evaluation_data(card, "synthetic", None, "test")
    assert data.cfg.num_samples == cfg.data.num_samples and data.seed == cfg.seed and not data.notes
    want = load_splits(cfg.data, cfg.seed, progress=False).test
    assert _evaluate(str(run), "--dataset", "synthetic", "--split", "test", "--out", str(tmp_path / "t"),
                     "--quiet") == 0
    record = json.loads((tmp_path / "t" / "evaluation.json").read_text())
    assert record["data"]["num_images"] == len(want)
    assert list(record["data"]["class_counts"].values()) == want.class_counts()
    assert _evaluate(str(run), "--dataset", "synthetic", "--out", str(tmp_path / "all"), "--quiet") == 0
    assert "only --split test holds images it never saw" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        load_split(data.cfg, data.seed, "holdout")
    card["training"]["command"] = "simulate"  # sites split the data their own way: no split here is unseen
    assert "trained by a federation" in evaluation_data(card, "synthetic", None, "test").notes[0]


def test_graded_medmnist_and_a_subset_named_like_the_model(tmp_path):
    run, _, _ = _saved(tmp_path / "aptos", names=tuple(APTOS))
    arrays = make_npz(tmp_path / "retinamnist.npz", classes=5)
    assert _evaluate(str(run), "--dataset", "medmnist", "--root", str(tmp_path / "retinamnist.npz"), "--split", "test",
                     "--out", str(tmp_path / "r"), "--quiet") == 0
    record = json.loads((tmp_path / "r" / "evaluation.json").read_text())
    assert -1.0 <= record["plain"]["quadratic_weighted_kappa"] <= 1.0
    assert list(record["data"]["class_counts"].values()) == np.bincount(arrays["test_labels"].ravel(), minlength=5).tolist()
    assert record["positive_class"] == "no_dr"
    # DermaMNIST lists HAM10000's classes in another order than ISIC 2018: matched by name
    run18, _, _ = _saved(tmp_path / "isic", names=ISIC2018_CLASSES)
    arrays = make_npz(tmp_path / "derma" / "dermamnist.npz")
    assert _evaluate(str(run18), "--dataset", "medmnist", "--root", str(tmp_path / "derma"), "--split", "val",
                     "--out", str(tmp_path / "d"), "--quiet") == 0
    record = json.loads((tmp_path / "d" / "evaluation.json").read_text())
    derma = sorted(ISIC2018_CLASSES)  # the npz's label order
    counts = np.bincount(arrays["val_labels"].ravel(), minlength=7)
    assert record["data"]["class_counts"] == {n: int(counts[derma.index(n)]) for n in ISIC2018_CLASSES}
    assert record["positive_class"] == "MEL"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("fgssl evaluate: error: ")
    return err


def test_bad_input_is_refused_in_one_line(tmp_path, capsys):
    run, _, _ = _saved(tmp_path)
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    make_isic2018(tmp_path / "isic", per_class=1)
    # other classes than the model's: refused before any image is decoded
    assert _evaluate(str(run), "--dataset", "isic2018", "--root", str(tmp_path / "isic"), "--set", cache) == 2
    err = _one_error_line(capsys)
    assert "classes (MEL, NV, BCC, AKIEC, BKL, DF, VASC) differ from the model's (nv, mel, bkl)" in err
    assert not (tmp_path / "cache").exists()
    _folder(tmp_path / "f", ["nv", "mel", "scc"] * 2)  # found out once the labels are read
    assert _evaluate(str(run), "--dataset", "folder", "--root", str(tmp_path / "f"), "--set", "data.csv=labels.csv",
                     "--set", cache) == 2
    assert "classes (mel, nv, scc) differ from the model's (nv, mel, bkl)" in _one_error_line(capsys)
    folder = ["--dataset", "folder", "--root", str(tmp_path / "data"), "--set", "data.csv=labels.csv", "--set", cache]
    _folder(tmp_path / "data", ["nv", "mel", "bkl"] * 2)
    for extra, message in (
            (["--positive-class", "MEL"], "'MEL' is not one of the model's classes (nv, mel, bkl)"),
            (["--set", "model.width=8"], "'model.width': fgssl evaluate takes data.* settings only"),
            (["--set", "data.image_size=48"], "'data.image_size': the model takes 32"),
    ):
        assert _evaluate(str(run), *folder, *extra) == 2
        assert message in _one_error_line(capsys)
    assert _evaluate(str(run), "--dataset", "isic2018") == 2
    assert "data.root" in _one_error_line(capsys)
    make_npz(tmp_path / "m" / "dermamnist.npz", test_labels=None)
    assert _evaluate(str(run), "--dataset", "medmnist", "--root", str(tmp_path / "m")) == 2
    assert "dermamnist.npz: key 'test_labels' missing" in _one_error_line(capsys)
    # weights that do not fit model.json
    state = load_file(str(run / "model.safetensors"))
    del state["classifiers.0.weight"]
    save_file(state, str(run / "model.safetensors"))
    assert _evaluate(str(run), *folder) == 2
    assert "does not fit its description: tensor 'classifiers.0.weight' missing" in _one_error_line(capsys)


def _train_tiny(tmp_path, tiny_config, labels: dict[str, int]):
    root = tmp_path / "train"
    write_isic2018_part(root, "Training", labels, REAL_FULL / ISIC2018_IMAGES)
    cfg = tiny_config(train={"batch_size": 8, "ssl_epochs": 1, "finetune_epochs": 1})
    args = ["train", "--config", str(cfg), "--set", "data.dataset=isic2018", "--set", f"data.root={root}",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", "--out", str(tmp_path / "run"), "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert fgssl(args) == 0
    return tmp_path / "run"


@pytest.mark.skipif(not REAL_FULL.is_dir(), reason=f"real ISIC 2018 images not found at {REAL_FULL} (../shared)")
def test_a_model_trained_on_real_images_evaluated_on_an_official_test_folder_agrees_with_predict(
        tmp_path, tiny_config):
    run = _train_tiny(tmp_path, tiny_config, real_isic2018_labels(6))  # 42 real images
    test = real_isic2018_labels(3, skip=6)  # 21 other real images, as an official Test part
    root = tmp_path / "isic_test"
    write_isic2018_part(root, "Test", test, REAL_FULL / ISIC2018_IMAGES)
    assert fgssl(["evaluate", str(run / "model.safetensors"), "--dataset", "isic2018", "--root", str(root),
                  "--set", f"data.cache_dir={tmp_path / 'cache'}", "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    record = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["plain"]
    assert fgssl(["predict", str(run), str(root / isic2018_part("Test")[0]), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 21 and not any(r["error"] for r in rows)
    # the same numbers, computed here from predict's CSV and the Test ground truth
    classes = list(ISIC2018_CLASSES)
    truth = np.array([test[re.sub(r"\.jpg$", "", r["image"].rsplit("/", 1)[-1])] for r in rows])
    pred = np.array([classes.index(r["predicted"]) for r in rows])
    cm = np.zeros((7, 7), dtype=int)
    np.add.at(cm, (truth, pred), 1)
    assert record["confusion_matrix"] == cm.tolist()
    assert record["accuracy"] == pytest.approx(np.mean(truth == pred))
    recalls = [cm[k, k] / cm[k].sum() for k in range(7) if cm[k].sum()]
    assert record["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    aucs = []
    for k in range(7):  # pairs of (positive, negative) images ranked right, ties half
        pos, neg = probs[truth == k, k], probs[truth != k, k]
        aucs.append(((pos[:, None] > neg).sum() + 0.5 * (pos[:, None] == neg).sum()) / (pos.size * neg.size))
    assert record["macro_auc"] == pytest.approx(np.mean(aucs), abs=0.01)  # the CSV rounds to 6 decimals
    assert record["majority_rate"] == pytest.approx(3 / 21)
