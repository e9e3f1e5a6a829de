"""`fgssl predict`: one CSV row per image, decoded as training did; unreadable images listed, fatal with --strict."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cli.main import main as fgssl
from fgssl.data.images import ImageSet
from fgssl.data.official import decode_image
from fgssl.model_card import load_model
from fgssl.train import predict

from .conftest import REPO
from .test_model_card import _saved

SHARED = REPO.parent / "shared" / "realdata" / "ham10000_isic2018_task3" / "ISIC2018_Task3_Training_Input"


def _images(folder, tmp_path):
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 256, (90, 40), dtype=np.uint8)).save(folder / "grey.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    real = sorted(SHARED.glob("*.jpg"))[:2] if SHARED.is_dir() else []
    for f in real:  # real dermoscopy JPEGs in the official layout, where ../shared has them
        shutil.copy(f, folder / f.name)
    return real


def test_predict_writes_one_row_per_image_with_the_training_preprocessing(tmp_path, capsys):
    run, _, _ = _saved(tmp_path)
    real = _images(tmp_path / "new", tmp_path)
    out = tmp_path / "p" / "predictions.csv"
    assert fgssl(["predict", str(run), str(tmp_path / "new"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    names = sorted(["broken.jpg", "grey.jpg", "wide.png", *(f.name for f in real)])
    assert sorted(r["image"].rsplit("/", 1)[-1] for r in rows) == names
    assert list(rows[0]) == ["image", "predicted", "p_nv", "p_mel", "p_bkl", "error"]
    broken = next(r for r in rows if r["image"].endswith("broken.jpg"))
    assert broken["predicted"] == "" and "cannot decode image" in broken["error"] and "broken.jpg" in broken["error"]
    model, card = load_model(run)
    good = [r for r in rows if not r["error"]]
    images = torch.from_numpy(np.stack([decode_image(r["image"], card["preprocessing"]["image_size"],
                                                     card["preprocessing"]["resize"]) for r in good]))
    _, logits = predict(model, ImageSet(images, torch.zeros(len(good), dtype=torch.long), ("nv", "mel", "bkl")))
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    for r, p in zip(good, probs):
        got = np.array([float(r[f"p_{n}"]) for n in ("nv", "mel", "bkl")])
        np.testing.assert_allclose(got, p, atol=2e-6)
        assert r["predicted"] == ("nv", "mel", "bkl")[int(p.argmax())] and abs(got.sum() - 1) < 1e-5
    text = capsys.readouterr()
    assert f"{len(good)} of {len(rows)} images predicted" in text.out and "broken.jpg" in text.err


def test_strict_stops_at_an_unreadable_image_and_a_bad_model_is_named(tmp_path, capsys):
    run, _, _ = _saved(tmp_path)
    _images(tmp_path / "new", tmp_path)
    out = tmp_path / "predictions.csv"
    assert fgssl(["predict", str(run), str(tmp_path / "new"), "--out", str(out), "--strict"]) == 2
    assert "broken.jpg" in capsys.readouterr().err and not out.exists()
    assert fgssl(["predict", str(tmp_path / "nowhere"), str(tmp_path / "new")]) == 2
    assert "model.json not found" in capsys.readouterr().err
    assert fgssl(["predict", str(run), str(tmp_path / "missing.png")]) == 2
    assert "missing.png: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert fgssl(["predict", str(run), str(tmp_path / "empty")]) == 2
    assert "no image files" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent (real ISIC 2018 images in ../shared)")
def test_real_images_only(tmp_path):
    run, _, _ = _saved(tmp_path)
    out = tmp_path / "real.csv"
    files = sorted(SHARED.glob("*.jpg"))[:3]
    assert fgssl(["predict", str(run), *map(str, files), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["image"] for r in rows] == [str(f) for f in files] and all(not r["error"] for r in rows)
