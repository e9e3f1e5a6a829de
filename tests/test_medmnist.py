"""MedMNIST files: a local *mnist*.npz with its official splits and its subset's class names; bad files are named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cli.main import main as fgssl
from fgssl.data.cache import load_cache, prepare
from fgssl.data.classes import class_names_of
from fgssl.data.errors import DataWarning
from fgssl.data.medmnist import SUBSET_CLASSES
from fgssl.data.official import square_rgb
from fgssl.data.sources import load_splits

from .test_official_data import cfg_for, raises_naming

SIZES = {"train": 21, "val": 7, "test": 14}


def make_npz(path, classes: int = 7, side: int = 28, grey: bool = False, column: bool = True, **replace):
    """A MedMNIST-style file: labels cycle through the classes; `replace` swaps or (None) drops arrays."""
    rng = np.random.default_rng(len(path.name))
    arrays = {}
    for split, n in SIZES.items():
        shape = (n, side, side) if grey else (n, side, side, 3)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = (np.arange(n) * 3 % classes).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1) if column else labels
    for key, value in replace.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def test_a_known_subset_with_its_official_splits_and_class_names(tmp_path):
    arrays = make_npz(tmp_path / "derma" / "dermamnist.npz")
    cfg = cfg_for("medmnist", tmp_path / "derma" / "dermamnist.npz", tmp_path, image_size=32)
    splits = load_splits(cfg, seed=0, progress=False)
    assert splits.sizes() == SIZES and splits.train.class_names == SUBSET_CLASSES["dermamnist"]
    assert splits.train.class_names == ("AKIEC", "BCC", "BKL", "DF", "MEL", "NV", "VASC")
    assert any("MedMNIST: official splits" in n for n in splits.notes)
    for split, part in (("train", splits.train), ("test", splits.test)):
        assert part.labels.tolist() == arrays[f"{split}_labels"].reshape(-1).tolist()
    # each image resized as a decoded file would be
    want = square_rgb(Image.fromarray(arrays["test_images"][5]), 32)
    assert np.array_equal(splits.test.images[5].numpy(), want)
    # a folder holding the file works the same, and so does data.split=official; the file is one source
    same = load_splits(cfg_for("medmnist", tmp_path / "derma", tmp_path, image_size=32, split="official"), 0,
                       progress=False)
    assert np.array_equal(same.val.images.numpy(), splits.val.images.numpy())
    manifest = load_cache(prepare(cfg, progress=False).path).manifest
    assert [s[0] for s in manifest["sources"]] == ["dermamnist.npz"]


def test_grey_images_flat_labels_and_other_sizes(tmp_path):
    arrays = make_npz(tmp_path / "retinamnist_64.npz", classes=5, side=64, grey=True, column=False)
    splits = load_splits(cfg_for("medmnist", tmp_path / "retinamnist_64.npz", tmp_path), 0, progress=False)
    assert splits.train.class_names == ("no_dr", "mild", "moderate", "severe", "proliferative_dr")
    img = splits.val.images[2].numpy()
    assert img.shape == (3, 16, 16) and np.array_equal(img[0], img[1]) and np.array_equal(img[1], img[2])
    assert np.array_equal(img, square_rgb(Image.fromarray(arrays["val_images"][2]), 16))


def test_an_unknown_subset_gets_numbered_classes_and_a_note(tmp_path):
    make_npz(tmp_path / "newmnist.npz", classes=4)
    with pytest.warns(DataWarning, match="unknown subset 'newmnist'"):
        splits = load_splits(cfg_for("medmnist", tmp_path / "newmnist.npz", tmp_path), 0, progress=False)
    assert splits.train.class_names == ("0", "1", "2", "3")


def test_the_server_knows_a_subset_from_the_file_name(tmp_path):
    data = cfg_for("medmnist", tmp_path / "bloodmnist_128.npz", tmp_path)  # no file needed
    assert len(class_names_of(data)) == 8 and class_names_of(data)[0] == "basophil"
    with raises_naming("unknown MedMNIST subset 'newmnist'"):
        class_names_of(cfg_for("medmnist", tmp_path / "newmnist.npz", tmp_path))




@pytest.mark.parametrize("name, replace, parts", [
    ("dermamnist.npz", {"test_labels": None}, ["key 'test_labels' missing"]),
    ("dermamnist.npz", {"val_labels": np.zeros((6, 1), np.uint8)}, ["key 'val_labels' has shape (6, 1)",
                                                                    "'val_images' holds 7 images"]),
    ("dermamnist.npz", {"train_labels": np.full((21, 1), 7, np.uint8)}, ["key 'train_labels' row 0", "label 7",
                                                                         "7 classes"]),
    ("dermamnist.npz", {"test_labels": np.array([[-1]] * 14)}, ["key 'test_labels' row 0", "negative"]),
    ("dermamnist.npz", {"test_labels": np.full((14, 1), 0.5)}, ["key 'test_labels'", "float64", "integer"]),
    ("dermamnist.npz", {"test_labels": np.array([[0]] * 14, dtype=object)}, ["key 'test_labels'", "unpickling"]),
    ("dermamnist.npz", {"val_images": np.array([None] * 7, dtype=object)}, ["key 'val_images'", "Python objects"]),
    ("dermamnist.npz", {"train_images": np.zeros((21, 28, 28), np.float32)}, ["key 'train_images'", "float32"]),
    ("dermamnist.npz", {"train_images": np.zeros((21, 20, 20), np.uint8)}, ["key 'train_images'", "20x20 px"]),
    ("dermamnist.npz", {"train_images": np.zeros((21, 28, 28, 4), np.uint8)}, ["key 'train_images'",
                                                                              "(21, 28, 28, 4)"]),
    ("dermamnist.npz", {"test_labels": np.zeros((14, 7), np.uint8)}, ["key 'test_labels'", "multi-label"]),
    ("dermamnist.npz", {"val_images": np.zeros((0, 28, 28, 3), np.uint8), "val_labels": np.zeros((0, 1), np.uint8)},
     ["key 'val_images' holds no images"]),
    ("chestmnist.npz", {}, ["chestmnist is multi-label"]),
    ("organmnist3d.npz", {}, ["organmnist3d holds 3-D volumes"]),
])
def test_bad_files_are_named_with_the_key(tmp_path, name, replace, parts):
    path = tmp_path / name
    make_npz(path, **replace)
    with raises_naming(str(path), *parts):
        prepare(cfg_for("medmnist", path, tmp_path), progress=False)


def test_bad_roots_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with raises_naming(str(tmp_path / "empty"), "found 0"):
        prepare(cfg_for("medmnist", tmp_path / "empty", tmp_path), progress=False)
    make_npz(tmp_path / "two" / "dermamnist.npz")
    make_npz(tmp_path / "two" / "bloodmnist.npz", classes=8)
    with raises_naming("found 2: bloodmnist.npz, dermamnist.npz"):
        prepare(cfg_for("medmnist", tmp_path / "two", tmp_path), progress=False)
    (tmp_path / "broken_dermamnist.npz").write_bytes(b"not a zip")
    with raises_naming(str(tmp_path / "broken_dermamnist.npz"), "not a readable .npz"):
        prepare(cfg_for("medmnist", tmp_path / "broken_dermamnist.npz", tmp_path), progress=False)
    with raises_naming(str(tmp_path / "nowhere.npz"), "not found"):
        prepare(cfg_for("medmnist", tmp_path / "nowhere.npz", tmp_path), progress=False)
    make_npz(tmp_path / "derma.npz")  # a MedMNIST file says so in its name
    with raises_naming(str(tmp_path / "derma.npz"), "not a MedMNIST file"):
        prepare(cfg_for("medmnist", tmp_path / "derma.npz", tmp_path), progress=False)


def test_prepare_command_on_a_medmnist_file(tmp_path, capsys):
    path = tmp_path / "pathmnist.npz"
    make_npz(path, classes=9)
    args = ["prepare", "--dataset", "medmnist", "--root", str(path), "--out", str(tmp_path / "c"), "--json"]
    assert fgssl(args) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["num_images"] == 42 and done["class_names"][0] == "adipose" and len(done["class_names"]) == 9
    make_npz(path, classes=9, test_labels=None)
    assert fgssl(args[:-1] + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fgssl prepare: error: ") and "key 'test_labels' missing" in err and "Traceback" not in err
