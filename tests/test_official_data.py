"""Real datasets in their official layouts, the preprocessing cache and `fgssl prepare`.

Tiny datasets are generated in tmp dirs (odd sizes, RGB/grey/RGBA/CMYK/palette/16-bit, JPEG and PNG); every cache
goes to a tmp dir. Where ../shared/realdata exists, the real ISIC 2018 and ISIC 2017 samples run end to end.
"""

from __future__ import annotations

import csv
import json
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli.main import main as fgssl
from fgssl.config import ConfigError, DataConfig, config_from_dict
from fgssl.data import cache as cache_mod
from fgssl.data import official
from fgssl.data.cache import cache_path, load_cache, prepare
from fgssl.data.errors import DataError, DataWarning
from fgssl.data.official import (APTOS2019_CLASSES, ISIC2017_CLASSES, ISIC2018_CLASSES, ISIC2018_CSV,
                                 ISIC2018_IMAGES, decode_image, scan)
from fgssl.data.sources import load_splits, stratified_group_split

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
REAL_FULL = REALDATA / "isic2018_task3_full"  # all 10,015 HAM10000 images, 200x150
SIZE = 16
KINDS = ("rgb_jpeg", "grey_png", "rgba_png", "cmyk_jpeg", "png16", "palette_png", "rgb16_png")
ODD_SIZES = ((37, 23), (23, 41), (50, 31), (29, 29), (61, 17))

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ image makers


def write_png16_rgb(path: Path, rgb16: np.ndarray) -> None:
    """A 48-bit RGB PNG, written by hand (PIL cannot save one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_image(path: Path, kind: str, size: tuple[int, int], seed: int = 0) -> Path:
    """An image whose colour depends on `seed`, in the given file kind; returns the path (suffix from kind)."""
    w, h = size
    rng = np.random.default_rng(seed)
    colour = tuple(int(v) for v in rng.integers(30, 226, 3))
    path = path.with_suffix(".jpg" if kind.endswith("jpeg") else ".png")
    if kind == "rgb_jpeg":
        Image.new("RGB", size, colour).save(path, quality=95)
    elif kind == "cmyk_jpeg":
        Image.new("RGB", size, colour).convert("CMYK").save(path, quality=95)
    elif kind == "grey_png":
        Image.new("L", size, colour[0]).save(path)
    elif kind == "rgba_png":
        Image.new("RGBA", size, (*colour, 255)).save(path)
    elif kind == "palette_png":
        Image.new("RGB", size, colour).convert("P").save(path)
    elif kind == "png16":
        Image.fromarray(np.full((h, w), colour[0] * 257, dtype=np.uint16)).save(path)
    elif kind == "rgb16_png":
        write_png16_rgb(path, np.broadcast_to(np.array(colour, dtype=np.uint16) * 257, (h, w, 3)))
    else:
        raise ValueError(kind)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def onehot(label: int, n: int) -> list[str]:
    return ["1.0" if k == label else "0.0" for k in range(n)]


def make_isic2018(root: Path, per_class: int = 4, lesions: list[str] | None = None, metadata: bool = True) -> list[int]:
    """ISIC 2018 Task 3 layout; image i has class i % 7 and a mixed file kind. Returns the labels."""
    n = per_class * 7
    labels = [i % 7 for i in range(n)]
    (root / ISIC2018_IMAGES).mkdir(parents=True)
    rows = []
    for i, y in enumerate(labels):
        iid = f"ISIC_{i:07d}"
        # official images are .jpg; mix in other kinds to exercise the decoder (ids are file stems)
        kind = "rgb_jpeg" if i % 3 else KINDS[(i // 3) % len(KINDS)]
        write_image(root / ISIC2018_IMAGES / iid, kind, ODD_SIZES[i % len(ODD_SIZES)], seed=i)
        rows.append([iid, *onehot(y, 7)])
    write_csv(root / ISIC2018_CSV, ["image", *ISIC2018_CLASSES], rows)
    (root / ISIC2018_IMAGES / "LICENSE.txt").write_text("not an image")
    if metadata:
        lesions = lesions or [f"HAM_{i // 2:07d}" for i in range(n)]
        write_csv(root / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx"],
                  [[lesions[i], f"ISIC_{i:07d}", ISIC2018_CLASSES[y].lower()] for i, y in enumerate(labels)])
    return labels


def write_isic2018_part(root: Path, part: str, labels: dict[str, int], source: Path | None = None) -> None:
    """One official ISIC 2018 part (Training, Validation, Test) of `root`: the images `labels` names (copied from the
    folder `source`, else generated) and their one-hot ground truth."""
    folder, gt = (root / p for p in official.isic2018_part(part))
    folder.mkdir(parents=True)
    for j, iid in enumerate(labels):
        if source is None:
            write_image(folder / iid, "rgb_jpeg", ODD_SIZES[j % len(ODD_SIZES)], seed=300 + j)
        else:
            shutil.copy(source / f"{iid}.jpg", folder / f"{iid}.jpg")
    write_csv(gt, ["image", *ISIC2018_CLASSES], [[iid, *onehot(y, 7)] for iid, y in labels.items()])


def real_isic2018_labels(per_class: int, skip: int = 0) -> dict[str, int]:
    """`per_class` real HAM10000 image ids of every class, after the first `skip` of each, with their class."""
    with open(REAL_FULL / ISIC2018_CSV) as f:
        rows = list(csv.DictReader(f))
    out: dict[str, int] = {}
    for k, c in enumerate(ISIC2018_CLASSES):
        out.update({r["image"]: k for r in [r for r in rows if float(r[c]) == 1.0][skip:skip + per_class]})
    return out


def make_isic2017(root: Path, parts=("Training", "Validation", "Test_v2"), per_class: int = 3) -> dict:
    """ISIC 2017 Part 3 layout; labels cycle melanoma, seborrheic keratosis, nevus. Returns {part: [labels]}."""
    out = {}
    k = 0
    for part in parts:
        folder = root / f"ISIC-2017_{part}_Data"
        folder.mkdir(parents=True)
        rows, labels = [], []
        for j in range(3 * per_class):
            y = j % 3
            iid = f"ISIC_{k:07d}"
            write_image(folder / iid, "rgb_jpeg", ODD_SIZES[k % len(ODD_SIZES)], seed=100 + k)
            Image.new("RGB", (8, 8)).save(folder / f"{iid}_superpixels.png")
            rows.append([iid, "1.0" if y == 0 else "0.0", "1.0" if y == 1 else "0.0"])
            labels.append(y)
            k += 1
        write_csv(root / f"ISIC-2017_{part}_Part3_GroundTruth.csv", ["image_id", "melanoma", "seborrheic_keratosis"],
                  rows)
        out[part] = labels
    return out


def make_aptos(root: Path, grades=(0, 1, 2, 3, 4, 0, 2, 4, 1, 3)) -> list[int]:
    (root / "train_images").mkdir(parents=True)
    rows = []
    for i, g in enumerate(grades):
        iid = f"{i:012x}"
        write_image(root / "train_images" / iid, "rgb_jpeg" if i % 2 else "png16", ODD_SIZES[i % 5], seed=200 + i)
        if i % 2:  # APTOS ships PNGs; store the JPEG-coded ones under .png too (PIL sniffs the content)
            (root / "train_images" / f"{iid}.jpg").rename(root / "train_images" / f"{iid}.png")
        rows.append([iid, str(g)])
    write_csv(root / "train.csv", ["id_code", "diagnosis"], rows)
    return list(grades)


def cfg_for(dataset: str, root: Path, tmp_path: Path, **kw) -> DataConfig:
    return config_from_dict({"data": {"dataset": dataset, "root": str(root), "cache_dir": str(tmp_path / "cache"),
                                      "image_size": SIZE, **kw}}).data


def raises_naming(*parts: str):
    """Context: expects a DataError whose message contains every one of `parts`."""
    class _Ctx:
        def __enter__(self):
            self.ctx = pytest.raises(DataError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            ok = self.ctx.__exit__(*exc)
            msg = str(self.info.value)
            for p in parts:
                assert p in msg, f"{p!r} not in error message: {msg}"
            return ok
    return _Ctx()


# ------------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [(37, 23), (23, 41)])
def test_every_kind_decodes_to_rgb_uint8_with_its_colour(tmp_path, kind, size):
    p = write_image(tmp_path / "x", kind, size, seed=7)
    colour = np.random.default_rng(7).integers(30, 226, 3)
    expected = np.full(3, colour[0]) if kind in ("grey_png", "png16") else colour
    out = decode_image(p, SIZE)
    assert out.shape == (3, SIZE, SIZE) and out.dtype == np.uint8
    tol = 8 if kind in ("rgb_jpeg", "cmyk_jpeg", "palette_png") else 1
    assert np.abs(out.reshape(3, -1).mean(1) - expected).max() <= tol, (out.reshape(3, -1).mean(1), expected)


def test_16_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0).repeat(8, axis=1)  # 4 x 32
    Image.fromarray(values).save(tmp_path / "g16.png")
    out = decode_image(tmp_path / "g16.png", 32, resize="stretch")[0]
    # plain 8-bit conversion would clip 1000 and 32896 to 255
    assert out[0, 0] == 0 and out[0, -1] == 255
    assert abs(int(out[0, 12]) - 4) <= 2  # 1000 / 257
    assert abs(int(out[0, 20]) - 128) <= 2
    write_png16_rgb(tmp_path / "rgb16.png", np.broadcast_to(np.array([65535, 0, 32896], np.uint16), (5, 7, 3)))
    assert decode_image(tmp_path / "rgb16.png", 8)[:, 4, 4].tolist() == [255, 0, 128]


def test_alpha_is_composited_on_black(tmp_path):
    Image.new("RGBA", (20, 20), (200, 100, 50, 0)).save(tmp_path / "clear.png")
    assert decode_image(tmp_path / "clear.png", 8).max() == 0


def test_resize_modes(tmp_path):
    # 40x20: left half red, right half blue
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20, 0] = 255
    a[:, 20:, 2] = 255
    Image.fromarray(a).save(tmp_path / "w.png")
    crop = decode_image(tmp_path / "w.png", 20, "crop")  # the centre 20x20: half red, half blue
    assert crop[0, 10, 2] > 200 and crop[2, 10, 17] > 200
    pad = decode_image(tmp_path / "w.png", 20, "pad")  # 20x10 band in the middle, black above and below
    assert pad[:, :4].max() == 0 and pad[:, -4:].max() == 0 and pad[0, 10, 2] > 200
    stretch = decode_image(tmp_path / "w.png", 20, "stretch")
    assert stretch[0, 10, 2] > 200 and stretch[2, 10, 18] > 200 and stretch[:, 0].min() < 60  # no black border
    for out in (crop, pad, stretch):
        assert out.shape == (3, 20, 20)


# ------------------------------------------------------------------------------------------------- loaders


def test_isic2018_labels_class_order_shapes_and_cache(tmp_path):
    labels = make_isic2018(tmp_path / "isic")
    cfg = cfg_for("isic2018", tmp_path / "isic", tmp_path)
    result = prepare(cfg, progress=False)
    assert result.built
    data = load_cache(result.path)
    assert data.class_names == ISIC2018_CLASSES
    assert data.images.shape == (28, 3, SIZE, SIZE) and data.images.dtype == np.uint8
    assert data.labels.tolist() == labels
    assert data.ids.tolist() == [f"ISIC_{i:07d}" for i in range(28)]
    assert data.groups.tolist() == [f"HAM_{i // 2:07d}" for i in range(28)]
    assert result.manifest["class_counts"] == [4] * 7 and result.manifest["has_groups"]
    # the cache holds what decode_image gives for the original file
    first = next((tmp_path / "isic" / ISIC2018_IMAGES).glob("ISIC_0000005.*"))
    assert np.array_equal(data.images[5], decode_image(first, SIZE))
    # only .npy (no object arrays) and JSON on disk
    assert sorted(p.name for p in result.path.iterdir()) == sorted(
        [f"{a}.npy" for a in cache_mod.ARRAYS] + ["manifest.json"])


def test_isic2017_labels_partitions_and_official_splits(tmp_path):
    parts = make_isic2017(tmp_path / "i17")
    cfg = cfg_for("isic2017", tmp_path / "i17", tmp_path)
    data = load_cache(prepare(cfg, progress=False).path)
    assert data.class_names == ISIC2017_CLASSES == ("melanoma", "seborrheic_keratosis", "nevus")
    assert data.labels.tolist() == parts["Training"] + parts["Validation"] + parts["Test_v2"]
    assert data.partitions.tolist() == [0] * 9 + [1] * 9 + [2] * 9
    assert not any(i.endswith("superpixels") for i in data.ids)
    splits = load_splits(cfg, seed=0, progress=False)
    assert splits.sizes() == {"train": 9, "val": 9, "test": 9}
    assert splits.train.labels.tolist() == parts["Training"]
    assert any("official splits" in n for n in splits.notes)
    # stratified on request
    strat = load_splits(cfg_for("isic2017", tmp_path / "i17", tmp_path, split="stratified", val_fraction=0.2,
                                test_fraction=0.2), seed=0, progress=False)
    assert sum(strat.sizes().values()) == 27 and strat.sizes()["test"] == 6


def test_isic2017_without_test_folder_pools_or_refuses_official(tmp_path):
    make_isic2017(tmp_path / "i17", parts=("Training", "Validation"))
    with pytest.warns(DataWarning, match="Test_v2 not found"):
        splits = load_splits(cfg_for("isic2017", tmp_path / "i17", tmp_path), seed=0, progress=False)
    assert sum(splits.sizes().values()) == 18 and len(splits.test) > 0
    with raises_naming("data.split=official", "ISIC-2017_Test_v2_Data") as e:
        load_splits(cfg_for("isic2017", tmp_path / "i17", tmp_path, split="official"), seed=0, progress=False)
    assert e.value.key == "data.split"


def test_isic2018_official_validation_and_test_parts(tmp_path):
    root = tmp_path / "isic"
    labels = make_isic2018(root, per_class=2)  # HAM10000 metadata for the Training images only, as shipped
    val = {f"ISIC_{100 + j:07d}": j % 7 for j in range(7)}
    test = {f"ISIC_{200 + j:07d}": (j * 3) % 7 for j in range(14)}
    write_isic2018_part(root, "Validation", val)
    write_isic2018_part(root, "Test", test)
    cfg = cfg_for("isic2018", root, tmp_path)
    data = load_cache(prepare(cfg, progress=False).path)
    assert data.manifest["partition_names"] == ["Training", "Validation", "Test"]
    assert data.partitions.tolist() == [0] * 14 + [1] * 7 + [2] * 14
    assert data.groups.tolist()[14:] == [*val, *test]  # no lesion id: each image is its own group
    splits = load_splits(cfg, seed=0, progress=False)
    assert splits.sizes() == {"train": 14, "val": 7, "test": 14}
    assert splits.train.labels.tolist() == labels and splits.test.labels.tolist() == list(test.values())
    assert any("ISIC 2018: official splits" in n for n in splits.notes)
    assert load_splits(cfg_for("isic2018", root, tmp_path, split="official"), 0, progress=False).sizes()["val"] == 7
    strat = load_splits(cfg_for("isic2018", root, tmp_path, split="stratified"), seed=0, progress=False)
    assert sum(strat.sizes().values()) == 35 and strat.sizes()["val"] != 7
    # a part without its ground truth, and a Training part without the others
    test_gt = root / official.isic2018_part("Test")[1]
    test_gt.rename(tmp_path / "gt.csv")
    with raises_naming("label file not found", str(test_gt)):
        scan(cfg)
    val_images = root / official.isic2018_part("Validation")[0]
    val_images.rename(tmp_path / "val_images")
    with raises_naming("image folder not found", str(val_images), "ISIC2018_Task3_Validation_GroundTruth.csv exist"):
        scan(cfg)
    (tmp_path / "val_images").rename(val_images)
    shutil.rmtree(root / official.isic2018_part("Test")[0])
    with pytest.warns(DataWarning, match="official Test not found"):
        assert sum(load_splits(cfg, seed=0, progress=False).sizes().values()) == 21
    with raises_naming("data.split=official", "ISIC2018_Task3_Test_Input/") as e:
        load_splits(cfg_for("isic2018", root, tmp_path, split="official"), seed=0, progress=False)
    assert e.value.key == "data.split"
    # a folder holding only the official Test part (what a hospital evaluates on) is a dataset too
    alone = tmp_path / "test_only"
    write_isic2018_part(alone, "Test", test)
    index = scan(cfg_for("isic2018", alone, tmp_path))
    assert index.partition_names == ("Test",) and [r.id for r in index.records] == list(test)


def test_aptos2019_grades(tmp_path):
    grades = make_aptos(tmp_path / "aptos")
    cfg = cfg_for("aptos2019", tmp_path / "aptos", tmp_path)
    data = load_cache(prepare(cfg, progress=False).path)
    assert data.class_names == APTOS2019_CLASSES and len(APTOS2019_CLASSES) == 5
    assert data.labels.tolist() == grades
    assert data.images.shape == (10, 3, SIZE, SIZE)


def test_folder_dataset_sorted_and_explicit_classes_and_groups(tmp_path):
    root = tmp_path / "f"
    (root / "imgs" / "sub").mkdir(parents=True)
    rows = []
    for i in range(12):
        rel = f"imgs/{'sub/' if i % 2 else ''}im{i}"
        write_image(root / rel, "rgb_jpeg" if i % 3 else "grey_png", ODD_SIZES[i % 5], seed=i)
        suffix = ".jpg" if i % 3 else ".png"
        rows.append([rel + suffix if i % 4 else rel, ["benign", "malignant", "atypical"][i % 3], f"p{i // 2}"])
    write_csv(root / "labels.csv", ["file", "dx", "patient"], rows)
    write_image(root / "imgs" / "unused", "rgb_jpeg", (20, 20))
    base = dict(csv="labels.csv", path_column="file", label_column="dx")
    with pytest.warns(DataWarning, match="1 image file"):
        splits = load_splits(cfg_for("folder", root, tmp_path, **base), seed=0, progress=False)
    assert splits.train.class_names == ("atypical", "benign", "malignant")
    data = load_cache(cache_path(cfg_for("folder", root, tmp_path, **base)))
    assert data.labels.tolist() == [[1, 2, 0][i % 3] for i in range(12)]
    ordered = cfg_for("folder", root, tmp_path, class_names=["benign", "atypical", "malignant"], **base)
    assert load_cache(prepare(ordered, progress=False).path).labels.tolist() == [[0, 2, 1][i % 3] for i in range(12)]
    grouped = cfg_for("folder", root, tmp_path, group_column="patient", val_fraction=0.3, test_fraction=0.3, **base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        g = load_cache(prepare(grouped, progress=False).path)
        parts = load_splits(grouped, seed=1, progress=False)
    assert g.groups.tolist() == [f"p{i // 2}" for i in range(12)]
    assert sum(parts.sizes().values()) == 12
    # numeric labels sort numerically; an unknown label against an explicit list is an error naming the row
    write_csv(root / "num.csv", ["file", "dx"], [[r[0], str(v)] for r, v in zip(rows, [10, 2, 1] * 4)])
    num = cfg_for("folder", root, tmp_path, csv="num.csv", path_column="file", label_column="dx")
    assert load_cache(prepare(num, progress=False).path).class_names == ("1", "2", "10")
    bad = cfg_for("folder", root, tmp_path, csv="num.csv", path_column="file", label_column="dx",
                  class_names=["1", "2"])
    with raises_naming("num.csv line 2", "'10'"):
        prepare(bad, progress=False)
    with raises_naming("labels.csv", "'label'") as e:
        prepare(cfg_for("folder", root, tmp_path, csv="labels.csv", path_column="file"), progress=False)
    assert e.value.key == "data.label_column"


def test_a_folder_site_column_gives_the_natural_partition_its_sites(tmp_path):
    """data.site_column: each image's acquisition site, kept in the cache, one simulated site each (largest first);
    an image without a site stops with its row; the key belongs to folder data sets only."""
    from simulations.partition import compute_partition

    root = tmp_path / "f"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(14):
        write_image(root / "img" / f"im{i}", "rgb_jpeg", (20, 20), seed=i)
        rows.append([f"img/im{i}.jpg", "ab"[i % 2], ["north", "south", "west"][min(i // 6, 2)]])
    write_csv(root / "labels.csv", ["file", "dx", "hospital"], rows)
    data = {"dataset": "folder", "root": str(root), "csv": "labels.csv", "path_column": "file", "label_column": "dx",
            "site_column": "hospital", "cache_dir": str(tmp_path / "cache"), "image_size": SIZE}
    cfg = config_from_dict({"data": data, "partition": {"method": "natural"}, "federation": {"sites": 3}})
    pool, parts, record = compute_partition(cfg)
    assert [s["name"] for s in record["sites"]] == ["north", "south", "west"]
    assert [sorted(p.tolist()) for p in parts] == [list(range(6)), list(range(6, 12)), [12, 13]]
    assert load_cache(cache_path(cfg.data)).sites.tolist() == [r[2] for r in rows]
    # without the column the folder has no sites: natural says what would give them
    with pytest.raises(ConfigError, match="data.site_column"):
        compute_partition(config_from_dict({"data": {**data, "site_column": None}, "partition": {"method": "natural"},
                                            "federation": {"sites": 3}}))
    rows[4][2] = ""
    write_csv(root / "labels.csv", ["file", "dx", "hospital"], rows)
    with raises_naming("labels.csv line 6", "empty hospital", "data.site_column"):
        prepare(cfg.data, progress=False)
    with pytest.raises(ConfigError, match="data.site_column"):
        cfg_for("isic2018", root, tmp_path, site_column="hospital")


# ------------------------------------------------------------------------------------------------- the cache


def test_cache_is_reused_and_rebuilt_when_sources_or_size_change(tmp_path):
    make_isic2018(tmp_path / "isic", per_class=2)
    cfg = cfg_for("isic2018", tmp_path / "isic", tmp_path)
    first = prepare(cfg, progress=False)
    manifest = first.path / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    again = prepare(cfg, progress=False)
    assert not again.built and again.reason == "" and manifest.stat().st_mtime_ns == stamp
    assert again.manifest["created"] == first.manifest["created"]

    # an image changes on disk -> rebuilt, and the new pixels are in the cache
    img = next((tmp_path / "isic" / ISIC2018_IMAGES).glob("ISIC_0000001.*"))
    Image.new("RGB", (30, 30), (255, 255, 255)).save(img, format="JPEG" if img.suffix == ".jpg" else "PNG")
    rebuilt = prepare(cfg, progress=False)
    assert rebuilt.built and "ISIC_0000001" in rebuilt.reason
    assert load_cache(rebuilt.path).images[1].min() > 240
    assert not prepare(cfg, progress=False).built

    # the ground truth changes -> rebuilt with the new label
    gt = tmp_path / "isic" / ISIC2018_CSV
    lines = gt.read_text().splitlines()
    lines[1] = "ISIC_0000000," + ",".join(onehot(6, 7))
    gt.write_text("\n".join(lines) + "\n")
    relabelled = prepare(cfg, progress=False)
    assert relabelled.built and "GroundTruth" in relabelled.reason
    assert load_cache(relabelled.path).labels[0] == 6

    # another size is another cache; the first is still valid afterwards
    bigger = prepare(cfg_for("isic2018", tmp_path / "isic", tmp_path, image_size=24), progress=False)
    assert bigger.built and bigger.path != first.path and load_cache(bigger.path).images.shape[2:] == (24, 24)
    assert not prepare(cfg, progress=False).built
    # another resize mode too
    assert prepare(cfg_for("isic2018", tmp_path / "isic", tmp_path, resize="pad"), progress=False).built


def test_a_killed_build_leaves_no_cache_that_looks_valid(tmp_path, monkeypatch):
    make_isic2018(tmp_path / "isic", per_class=2)
    cfg = cfg_for("isic2018", tmp_path / "isic", tmp_path)
    real = official.decode_image
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # like Ctrl-C half-way
        return real(*a, **k)

    monkeypatch.setattr(official, "decode_image", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, progress=False)
    monkeypatch.setattr(official, "decode_image", real)
    base = tmp_path / "cache"
    assert not cache_path(cfg).exists() and [p for p in base.iterdir() if p.suffix != ".lock"] == []
    # a partial build from a SIGKILLed process (dead pid) is removed; a folder without manifest is rebuilt
    leftover = base / f".tmp-{cache_path(cfg).name}-999999999-abcd"
    leftover.mkdir()
    (leftover / "images.npy").write_bytes(b"partial")
    cache_path(cfg).mkdir()
    (cache_path(cfg) / "images.npy").write_bytes(b"half-copied")
    result = prepare(cfg, progress=False)
    assert result.built and result.reason == "no readable manifest"
    assert str(leftover) in result.removed_leftovers and not leftover.exists()
    assert load_cache(result.path).images.shape == (14, 3, SIZE, SIZE)


def test_concurrent_prepares_build_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    make_isic2018(tmp_path / "isic", per_class=2)
    cfg = cfg_for("isic2018", tmp_path / "isic", tmp_path)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: prepare(cfg, progress=False), range(3)))
    assert sum(r.built for r in results) == 1
    assert len({r.manifest["created"] for r in results}) == 1


def test_default_cache_dir_is_under_root_unless_root_is_read_only(tmp_path):
    root = tmp_path / "aptos"
    make_aptos(root)
    cfg = config_from_dict({"data": {"dataset": "aptos2019", "root": str(root), "image_size": SIZE}}).data
    assert prepare(cfg, progress=False).path.parent == root / ".fgssl-cache"
    ro = tmp_path / "ro"
    make_aptos(ro)
    ro.chmod(0o555)
    try:
        cfg = config_from_dict({"data": {"dataset": "aptos2019", "root": str(ro), "image_size": SIZE}}).data
        with raises_naming(str(ro), "read-only", "data.cache_dir") as e:
            prepare(cfg, progress=False)
        assert e.value.key == "data.cache_dir"
    finally:
        ro.chmod(0o755)


def test_cache_never_unpickles(tmp_path):
    make_isic2018(tmp_path / "isic", per_class=1, metadata=False)
    cfg = cfg_for("isic2018", tmp_path / "isic", tmp_path)
    path = prepare(cfg, progress=False).path
    np.save(path / "ids.npy", np.array([object()] * 7, dtype=object), allow_pickle=True)
    with raises_naming(str(path)):
        load_cache(path)


# --------------------------------------------------------------------------------------------- bad input


def _isic(tmp_path, **kw) -> tuple[Path, DataConfig]:
    root = tmp_path / "isic"
    make_isic2018(root, per_class=1, **kw)
    return root, cfg_for("isic2018", root, tmp_path)


def _edit_gt(root: Path, line_no: int, text: str | None) -> None:
    gt = root / ISIC2018_CSV
    lines = gt.read_text().splitlines()
    if text is None:
        del lines[line_no - 1]
    else:
        lines[line_no - 1] = text
    gt.write_text("\n".join(lines) + "\n")


def test_missing_root_and_missing_folders(tmp_path):
    with raises_naming(str(tmp_path / "nope")) as e:
        scan(cfg_for("isic2018", tmp_path / "nope", tmp_path))
    assert e.value.key == "data.root"
    (tmp_path / "empty").mkdir()
    with raises_naming(str(tmp_path / "empty" / ISIC2018_IMAGES)):
        scan(cfg_for("isic2018", tmp_path / "empty", tmp_path))
    with raises_naming(str(tmp_path / "empty" / "train_images")):
        scan(cfg_for("aptos2019", tmp_path / "empty", tmp_path))
    with raises_naming("ISIC-2017_Training_Data/"):
        scan(cfg_for("isic2017", tmp_path / "empty", tmp_path))
    root, cfg = _isic(tmp_path)
    (root / ISIC2018_CSV).unlink()
    with raises_naming(str(root / ISIC2018_CSV), "not found"):
        scan(cfg)


def test_wrong_header(tmp_path):
    root, cfg = _isic(tmp_path)
    _edit_gt(root, 1, "image,MEL,NV,BCC,AKIEC,BKL,DF,VASCULAR")
    with raises_naming(str(root / ISIC2018_CSV), "wrong header", "VASCULAR"):
        scan(cfg)
    make_aptos(tmp_path / "aptos")
    (tmp_path / "aptos" / "train.csv").write_text("id,diagnosis\nabc,1\n")
    with raises_naming("train.csv", "wrong header 'id,diagnosis'", "id_code"):
        scan(cfg_for("aptos2019", tmp_path / "aptos", tmp_path))


@pytest.mark.parametrize("row, problem", [
    ("ISIC_0000002,0.0,1.0,1.0,0.0,0.0,0.0,0.0", "NV and BCC"),
    ("ISIC_0000002,0.0,0.0,0.0,0.0,0.0,0.0,0.0", "no class"),
    ("ISIC_0000002,0.0,0.5,0.0,0.0,0.0,0.0,0.0", "must be 0 or 1"),
    ("ISIC_0000002,0.0,1.0,0.0", "fields"),
])
def test_bad_one_hot_rows(tmp_path, row, problem):
    root, cfg = _isic(tmp_path)
    _edit_gt(root, 4, row)
    with raises_naming(f"{root / ISIC2018_CSV} line 4", problem):
        scan(cfg)


def test_isic2017_both_labels_is_an_error(tmp_path):
    make_isic2017(tmp_path / "i17", parts=("Training",), per_class=1)
    gt = tmp_path / "i17" / "ISIC-2017_Training_Part3_GroundTruth.csv"
    gt.write_text(gt.read_text().replace("ISIC_0000001,0.0,1.0", "ISIC_0000001,1.0,1.0"))
    with raises_naming(f"{gt} line 3", "ISIC_0000001", "both"):
        scan(cfg_for("isic2017", tmp_path / "i17", tmp_path))


@pytest.mark.parametrize("grade", ["5", "-1", "two", "1.5", ""])
def test_unknown_aptos_grade(tmp_path, grade):
    make_aptos(tmp_path / "aptos")
    csv_path = tmp_path / "aptos" / "train.csv"
    lines = csv_path.read_text().splitlines()
    lines[3] = f"{2:012x},{grade}"
    csv_path.write_text("\n".join(lines) + "\n")
    with raises_naming(f"{csv_path} line 4", "unknown APTOS grade", f"{2:012x}"):
        scan(cfg_for("aptos2019", tmp_path / "aptos", tmp_path))


def test_id_without_image_and_image_without_row(tmp_path):
    root, cfg = _isic(tmp_path)
    img = next((root / ISIC2018_IMAGES).glob("ISIC_0000003.*"))
    img.unlink()
    with raises_naming(f"{root / ISIC2018_CSV} line 5", "'ISIC_0000003'", "no file"):
        scan(cfg)
    write_image(root / ISIC2018_IMAGES / "ISIC_0000003", "rgb_jpeg", (20, 20))
    write_image(root / ISIC2018_IMAGES / "ISIC_0099999", "rgb_jpeg", (20, 20))
    with raises_naming(str(root / ISIC2018_IMAGES / "ISIC_0099999.jpg"), "no row"):
        scan(cfg)


def test_duplicate_ids(tmp_path):
    root, cfg = _isic(tmp_path)
    _edit_gt(root, 5, "ISIC_0000001," + ",".join(onehot(1, 7)))
    with raises_naming(f"{root / ISIC2018_CSV} line 5", "duplicate image id 'ISIC_0000001'", "line 3"):
        scan(cfg)
    # the same id twice in the folder (two formats)
    root2, cfg2 = _isic(tmp_path / "two")
    write_image(root2 / ISIC2018_IMAGES / "ISIC_0000000", "grey_png", (20, 20))
    with raises_naming(str(root2 / ISIC2018_IMAGES), "duplicate image id 'ISIC_0000000'"):
        scan(cfg2)
    # and across ISIC 2017 partitions
    make_isic2017(tmp_path / "i17", parts=("Training", "Validation"), per_class=1)
    val = tmp_path / "i17" / "ISIC-2017_Validation_Part3_GroundTruth.csv"
    val.write_text(val.read_text().replace("ISIC_0000003", "ISIC_0000000"))
    with raises_naming(f"{val} line 2", "ISIC_0000000", "Training_Part3_GroundTruth.csv line 2"):
        scan(cfg_for("isic2017", tmp_path / "i17", tmp_path))


def test_metadata_without_a_row_for_an_image(tmp_path):
    root, cfg = _isic(tmp_path)
    meta = root / "HAM10000_metadata.csv"
    meta.write_text("\n".join(l for l in meta.read_text().splitlines() if "ISIC_0000004" not in l) + "\n")
    with raises_naming(str(meta), "'ISIC_0000004'"):
        scan(cfg)


def test_the_cache_holds_each_file_digest_and_an_older_format_is_rebuilt_or_named(tmp_path, monkeypatch):
    make_isic2018(tmp_path / "isic", per_class=1)
    cfg = cfg_for("isic2018", tmp_path / "isic", tmp_path)
    path = prepare(cfg, progress=False).path
    data = load_cache(path)
    files = {f.stem: f for f in (tmp_path / "isic" / ISIC2018_IMAGES).iterdir()}
    assert data.digests.tolist() == [cache_mod.file_digest(files[i]) for i in data.ids.tolist()]
    assert len(set(data.digests.tolist())) == len(data)
    # a cache written by the previous format (no digests) is named on loading and rebuilt by prepare
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))
    with raises_naming(str(path), "format version 2", "prepare the data set again"):
        load_cache(path)
    again = prepare(cfg, progress=False)
    assert again.built and "found version 2" in again.reason and load_cache(again.path).digests.tolist()
    # a file that cannot be read for its digest is named (or skipped, when bad images are skipped)
    denied = files["ISIC_0000003"]

    def unreadable(p):
        if Path(p) == denied:
            raise PermissionError(13, "Permission denied")
        return real(p)
    real = cache_mod.file_digest
    monkeypatch.setattr(cache_mod, "file_digest", unreadable)
    (tmp_path / "isic" / ISIC2018_CSV).touch()  # sources changed: rebuilt
    with raises_naming(str(denied), "cannot read image", "Permission denied"):
        prepare(cfg, progress=False)
    skipping = prepare(cfg_for("isic2018", tmp_path / "isic", tmp_path, skip_bad_images=True), progress=False)
    assert [s["id"] for s in skipping.skipped] == ["ISIC_0000003"]
    assert "Permission denied" in skipping.skipped[0]["reason"]


def _corrupt(root: Path) -> tuple[Path, Path]:
    """Truncate one JPEG and replace one image by a zero-byte PNG; returns both paths."""
    folder = root / ISIC2018_IMAGES
    jpg = folder / "ISIC_0000001.jpg"
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])
    old = next(folder.glob("ISIC_0000002.*"))
    old.unlink()
    png = folder / "ISIC_0000002.png"
    png.write_bytes(b"")
    return jpg, png


def test_truncated_jpeg_and_zero_byte_png_name_the_file(tmp_path):
    root, cfg = _isic(tmp_path)
    jpg, png = _corrupt(root)
    with raises_naming(str(jpg), "cannot decode"):
        prepare(cfg, progress=False)
    with raises_naming(str(png), "cannot"):
        decode_image(png, SIZE)
    assert not cache_path(cfg).exists()


def test_skip_bad_images_counts_and_lists_them(tmp_path):
    root = tmp_path / "isic"
    make_isic2018(root, per_class=2)
    jpg, png = _corrupt(root)
    next((root / ISIC2018_IMAGES).glob("ISIC_0000003.*")).unlink()
    cfg = cfg_for("isic2018", root, tmp_path, skip_bad_images=True)
    result = prepare(cfg, progress=False)
    files = sorted(s["file"] for s in result.skipped)
    assert len(result.skipped) == 3 and result.num_images == 11
    assert str(jpg) in files and str(png) in files and any("ISIC_0000003" in f for f in files)
    reasons = {s["id"]: s["reason"] for s in result.skipped}
    assert "cannot decode" in reasons["ISIC_0000001"] and "no image file" in reasons["ISIC_0000003"]
    assert "ISIC_0000001" not in load_cache(result.path).ids.tolist()
    with open(result.path / "skipped.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    with pytest.warns(DataWarning, match="3 bad image"):
        splits = load_splits(cfg, seed=0, progress=False)
    assert len(splits.skipped) == 3 and sum(splits.sizes().values()) == 11
    # without skipping, the same cache is not good enough: rebuilding stops at the bad file
    with raises_naming("line 5", "ISIC_0000003", "no file"):
        prepare(cfg_for("isic2018", root, tmp_path), progress=False)
    # label errors are never skipped
    _edit_gt(root, 6, "ISIC_0000004," + ",".join(["1.0"] * 7))
    with raises_naming("line 6", "exactly one class"):
        prepare(cfg, progress=False)


# ------------------------------------------------------------------------------------------------ splits


def test_lesion_groups_never_straddle_splits(tmp_path):
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 4, 40)  # lesions with 1-3 images each
    lesions = [f"HAM_{g:07d}" for g, s in enumerate(sizes) for _ in range(s)]
    n = len(lesions) // 7 * 7
    root = tmp_path / "isic"
    make_isic2018(root, per_class=n // 7, lesions=lesions[:n])
    # images of one lesion share the diagnosis, as in HAM10000
    gt = root / ISIC2018_CSV
    label_of = {}
    rows = []
    for i in range(n):
        label_of.setdefault(lesions[i], i % 7)
        rows.append([f"ISIC_{i:07d}", *onehot(label_of[lesions[i]], 7)])
    write_csv(gt, ["image", *ISIC2018_CLASSES], rows)
    cfg = cfg_for("isic2018", root, tmp_path, val_fraction=0.2, test_fraction=0.2)
    data = load_cache(prepare(cfg, progress=False).path)
    from fgssl.data.sources import cached_splits
    for seed in range(5):
        parts, _ = cached_splits(cfg, seed, data)
        sets = [set(data.groups[p].tolist()) for p in parts]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
        assert sorted(np.concatenate(parts).tolist()) == list(range(n)) and all(len(p) for p in parts)


def test_stratified_group_split_is_stratified_and_grouped():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(300), rng.integers(1, 5, 300))
    labels = (groups * 7919 % 5 == 0).astype(int) + (groups % 3 == 0)  # one label per group, 3 classes
    train, val, test = stratified_group_split(labels, groups, (0.15, 0.15), seed=0)
    for a, b in ((train, val), (train, test), (val, test)):
        assert not set(groups[a]) & set(groups[b])
    for part in (val, test):
        frac = np.bincount(labels[part], minlength=3) / np.bincount(labels, minlength=3)
        assert np.all(np.abs(frac - 0.15) < 0.06), frac


def test_without_metadata_splits_are_per_image_and_say_so(tmp_path):
    root = tmp_path / "isic"
    make_isic2018(root, per_class=3, metadata=False)
    with pytest.warns(DataWarning, match="HAM10000_metadata.csv not found"):
        splits = load_splits(cfg_for("isic2018", root, tmp_path), seed=0, progress=False)
    assert any("per image" in n for n in splits.notes)
    assert sum(splits.sizes().values()) == 21


# ------------------------------------------------------------------------------------------------ config + CLI


def test_config_keys_are_validated():
    def err(**data):
        with pytest.raises(ConfigError) as e:
            config_from_dict({"data": data})
        return e.value.key

    assert err(dataset="isic2019", root="/x") == "data.dataset"
    assert err(dataset="isic2018") == "data.root"
    assert err(dataset="aptos2019", root="/x", split="official") == "data.split"
    with pytest.raises(ConfigError, match="only for isic2017, isic2018, medmnist, not 'aptos2019'"):
        config_from_dict({"data": {"dataset": "aptos2019", "root": "/x", "split": "official"}})
    assert config_from_dict({"data": {"dataset": "isic2018", "root": "/x", "split": "official"}}).data.split == "official"
    assert err(dataset="folder", root="/x") == "data.csv"
    assert err(dataset="folder", root="/x", csv="a.csv", path_column="x", label_column="x") == "data.label_column"
    assert err(dataset="isic2018", root="/x", class_names=["a", "b"]) == "data.class_names"
    assert err(dataset="isic2018", root="/x", resize="squash") == "data.resize"
    assert err(dataset="isic2018", root="/x", skip_bad_images="yes") == "data.skip_bad_images"
    ok = config_from_dict({"data": {"dataset": "isic2017", "root": "/x", "split": "official"}}).data
    assert ok.cache_dir is None and ok.resize == "crop" and not ok.skip_bad_images


def test_prepare_command_summary_reuse_and_errors(tmp_path, capsys):
    root = tmp_path / "aptos"
    make_aptos(root)
    args = ["prepare", "--dataset", "aptos2019", "--root", str(root), "--size", "20", "--out", str(tmp_path / "c"),
            "--quiet", "--workers", "2"]
    assert fgssl(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "10 images of 20 px" in out[0] and "no_dr 2, mild 2" in out[0] and "images/s" in out[0]
    assert str(tmp_path / "c") in out[0] and "built" in out[0]
    manifest = next((tmp_path / "c").glob("aptos2019-*")) / "manifest.json"
    assert json.loads(manifest.read_text())["image_shape"] == [3, 20, 20]
    assert fgssl(args) == 0
    assert "reused" in capsys.readouterr().out

    (root / "train.csv").write_text("id_code,diagnosis\n" + f"{0:012x},7\n")
    assert fgssl(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fgssl prepare: error: ") and "line 2" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert fgssl(["prepare", "--dataset", "aptos2019", "--quiet"]) == 2
    assert "data.root" in capsys.readouterr().err
    assert fgssl(["prepare", "--quiet"]) == 2
    assert "--dataset" in capsys.readouterr().err


def test_prepare_command_skips_and_folder_options(tmp_path, capsys):
    root = tmp_path / "isic"
    make_isic2018(root, per_class=1)
    _corrupt(root)
    base = ["prepare", "--dataset", "isic2018", "--root", str(root), "--out", str(tmp_path / "c"), "--quiet"]
    assert fgssl(base) == 2
    assert "ISIC_0000001.jpg" in capsys.readouterr().err
    assert fgssl(base + ["--skip-bad-images"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2" in out and out.count("\nskipped: ") == 2

    f = tmp_path / "f"
    f.mkdir()
    for i in range(4):
        write_image(f / f"a{i}", "rgb_jpeg", (30, 20), seed=i)
    write_csv(f / "meta.csv", ["path", "y", "where"], [[f"a{i}.jpg", "xy"[i % 2], f"h{i // 2}"] for i in range(4)])
    assert fgssl(["prepare", "--dataset", "folder", "--root", str(f), "--csv", "meta.csv", "--path-column", "path",
                  "--label-column", "y", "--classes", "y,x", "--site-column", "where", "--out", str(tmp_path / "c"),
                  "--quiet"]) == 0
    assert "2 classes (y 2, x 2)" in capsys.readouterr().out
    (cache,) = [p for p in (tmp_path / "c").iterdir() if p.name.startswith("folder")]
    assert load_cache(cache).sites.tolist() == ["h0", "h0", "h1", "h1"]


def test_train_command_on_an_official_layout(tmp_path, tiny_config, capsys):
    root = tmp_path / "isic"
    make_isic2018(root, per_class=4)
    cfg = tiny_config(data={"dataset": "isic2018", "root": str(root), "cache_dir": str(tmp_path / "cache")},
                      train={"batch_size": 8, "ssl_epochs": 0, "finetune_epochs": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert fgssl(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["class_names"] == list(ISIC2018_CLASSES)
    assert sum(summary["splits"].values()) == 28
    # a data error in `fgssl train` is one line too
    (root / ISIC2018_CSV).write_text("image,MEL\n")
    assert fgssl(["train", "--config", str(cfg), "--out", str(tmp_path / "run2"), "--quiet"]) == 2
    assert "wrong header" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ real samples


def _finetune_one_step(splits, tmp_path):
    from fgssl.model import build_model
    from fgssl.train import train_local
    cfg = config_from_dict({"data": {"image_size": 32},
                            "model": {"granularities": [4, 2, 1], "block_mid_channels": 16, "block_out_channels": 32,
                                      "embed_dim": 16, "norm": "group", "groups": 4},
                            "train": {"batch_size": 8}})
    torch.manual_seed(0)
    model = build_model(cfg.model, splits.train.num_classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train_local(model, splits.train, "finetune", cfg, max_batches=1, generator=torch.Generator().manual_seed(0))
    assert np.isfinite(res.losses["loss"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(not (REALDATA / "ham10000_isic2018_task3").is_dir(),
                    reason=f"real-data fixture not found at {REALDATA} (see DESIGN.md section 6)")
def test_real_isic2018_sample_end_to_end(tmp_path):
    root = REALDATA / "ham10000_isic2018_task3"
    cfg = cfg_for("isic2018", root, tmp_path, image_size=32)
    result = prepare(cfg, progress=False)
    assert result.num_images == 49 and result.manifest["has_groups"]
    assert result.path.is_relative_to(tmp_path) and not (root / ".fgssl-cache").exists()
    # class counts from the fixture's ground truth
    counts = dict(zip(result.manifest["class_names"], result.manifest["class_counts"]))
    with open(root / ISIC2018_CSV) as f:
        rows = list(csv.DictReader(f))
    assert counts == {c: sum(float(r[c]) == 1.0 for r in rows) for c in ISIC2018_CLASSES}
    splits = load_splits(cfg, seed=0, progress=False)
    assert splits.notes == [] and sum(splits.sizes().values()) == 49
    assert splits.train.images.shape[1:] == (3, 32, 32)
    data = load_cache(result.path)
    from fgssl.data.sources import cached_splits
    parts, _ = cached_splits(cfg, 0, data)
    sets = [set(data.groups[p].tolist()) for p in parts]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    _finetune_one_step(splits, tmp_path)


@pytest.mark.skipif(not REAL_FULL.is_dir(), reason=f"real-data fixture not found at {REAL_FULL} (see DESIGN.md section 6)")
def test_real_isic2018_official_parts(tmp_path):
    root = tmp_path / "isic"
    train, val, test = real_isic2018_labels(2), real_isic2018_labels(1, skip=2), real_isic2018_labels(1, skip=3)
    for part, labels in (("Training", train), ("Validation", val), ("Test", test)):
        write_isic2018_part(root, part, labels, REAL_FULL / ISIC2018_IMAGES)
    cfg = cfg_for("isic2018", root, tmp_path, image_size=32, split="official")
    splits = load_splits(cfg, seed=0, progress=False)
    assert splits.sizes() == {"train": 14, "val": 7, "test": 7}
    assert splits.val.labels.tolist() == list(val.values()) and splits.test.labels.tolist() == list(test.values())
    last = list(test)[-1]  # the cache holds what decoding the real file gives
    source = root / official.isic2018_part("Test")[0] / f"{last}.jpg"
    assert np.array_equal(splits.test.images[-1].numpy(), decode_image(source, 32))


@pytest.mark.skipif(not (REALDATA / "isic2017").is_dir(),
                    reason=f"real-data fixture not found at {REALDATA} (see DESIGN.md section 6)")
def test_real_isic2017_sample_end_to_end(tmp_path):
    root = REALDATA / "isic2017"
    cfg = cfg_for("isic2017", root, tmp_path, image_size=32)
    result = prepare(cfg, progress=False)
    assert result.num_images == 32 and result.manifest["partition_names"] == ["Training", "Validation"]
    assert dict(zip(result.manifest["class_names"], result.manifest["class_counts"])) == {
        "melanoma": 12, "seborrheic_keratosis": 6, "nevus": 14}
    assert not (root / ".fgssl-cache").exists()
    with pytest.warns(DataWarning, match="Test_v2 not found"):
        splits = load_splits(cfg, seed=0, progress=False)
    assert sum(splits.sizes().values()) == 32 and splits.train.num_classes == 3
    _finetune_one_step(splits, tmp_path)
