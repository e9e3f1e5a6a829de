"""MedMNIST files on disk: one ``*mnist*.npz`` with its official train / val / test splits; nothing is downloaded.

A file holds ``train_images``, ``train_labels``, ``val_images``, ``val_labels``, ``test_images``, ``test_labels``:
images uint8 (N, H, W) grey or (N, H, W, 3) RGB, 28-224 px (MedMNIST and MedMNIST+); labels (N,) or (N, 1) class
indices. ``data.root`` names the file, or a folder holding exactly one such file. The subset, and so its class
names, comes from the file name (``dermamnist.npz``, ``retinamnist_224.npz``, ...); a subset this module does not
know gets classes "0".."K-1" and a note.

`scan_medmnist` checks every key while reading only the arrays' headers and the (small) labels, so a cache check
stays cheap; the images of a split are loaded when the cache is built, each one made RGB and resized like a decoded
image file (`official.square_rgb`). Everything is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import re
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import DataError
from .official import APTOS2019_CLASSES, ISIC2018_CLASSES, Index, Record, square_rgb

MEDMNIST_SPLITS = ("train", "val", "test")
KEYS = tuple(f"{split}_{what}" for split in MEDMNIST_SPLITS for what in ("images", "labels"))
MIN_SIDE, MAX_SIDE = 28, 224

_ORGANS = ("bladder", "femur_left", "femur_right", "heart", "kidney_left", "kidney_right", "liver", "lung_left",
           "lung_right", "pancreas", "spleen")
# Class names in label order, from each subset's published label table (MedMNIST v2), spelled as identifiers.
SUBSET_CLASSES: dict[str, tuple[str, ...]] = {
    # HAM10000's seven diagnoses, which MedMNIST orders by their dx codes: named as ISIC 2018 names them, so a model
    # trained on ISIC 2018 is evaluated on DermaMNIST class by class.
    "dermamnist": tuple(sorted(ISIC2018_CLASSES)),
    # DeepDRiD's diabetic retinopathy grades 0-4, the scale APTOS 2019 grades on: named as APTOS 2019 names them.
    "retinamnist": APTOS2019_CLASSES,
    "bloodmnist": ("basophil", "eosinophil", "erythroblast", "immature_granulocytes", "lymphocyte", "monocyte",
                   "neutrophil", "platelet"),
    "pathmnist": ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth_muscle", "normal_colon_mucosa",
                  "cancer_associated_stroma", "colorectal_adenocarcinoma_epithelium"),
    "octmnist": ("choroidal_neovascularization", "diabetic_macular_edema", "drusen", "normal"),
    "pneumoniamnist": ("normal", "pneumonia"),
    "breastmnist": ("malignant", "normal_or_benign"),
    "tissuemnist": ("collecting_duct_connecting_tubule", "distal_convoluted_tubule", "glomerular_endothelial_cells",
                    "interstitial_endothelial_cells", "leukocytes", "podocytes", "proximal_tubule_segments",
                    "thick_ascending_limb"),
    "organamnist": _ORGANS,
    "organcmnist": _ORGANS,
    "organsmnist": _ORGANS,
}
MULTI_LABEL = ("chestmnist",)


def medmnist_file(root: str | Path) -> Path:
    """The npz that ``data.root`` names: the file itself, or the one ``*mnist*.npz`` in a folder."""
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() != ".npz" or "mnist" not in root.name.lower():
            raise DataError(f"{root}: not a MedMNIST file (expected a *mnist*.npz, e.g. dermamnist.npz)")
        return root
    if not root.is_dir():
        raise DataError(f"MedMNIST file or folder not found: {root}")
    found = sorted(p for p in root.glob("*.npz") if "mnist" in p.name.lower() and p.is_file())
    if len(found) != 1:
        which = f": {', '.join(p.name for p in found)}" if found else ""
        raise DataError(f"{root}: a MedMNIST folder holds exactly one *mnist*.npz, found {len(found)}{which}; "
                        "name the file in data.root")
    return found[0]


def subset_of(path: Path) -> str:
    """The subset a file name names (``dermamnist_224.npz`` -> ``dermamnist``); "" when there is none."""
    m = re.search(r"[a-z]*mnist(3d)?", path.name.lower())
    return m.group(0) if m else ""


def class_names_for(root: str | Path) -> tuple[str, ...]:
    """The known subset's class names from the file name alone (a federation's server reads no file)."""
    path = medmnist_file(root) if Path(root).exists() else Path(root)
    subset = subset_of(path)
    _refuse_unsupported(path, subset)
    if subset not in SUBSET_CLASSES:
        raise DataError(f"{path}: unknown MedMNIST subset {subset or path.name!r}: its classes are only known from "
                        f"the file's labels (known subsets: {', '.join(SUBSET_CLASSES)})")
    return SUBSET_CLASSES[subset]


def _refuse_unsupported(path: Path, subset: str) -> None:
    if subset in MULTI_LABEL:
        raise DataError(f"{path}: {subset} is multi-label (several findings per image); fgssl trains single-label "
                        "classifiers, so it is not supported")
    if subset.endswith("3d"):
        raise DataError(f"{path}: {subset} holds 3-D volumes; only the 2-D MedMNIST subsets are read")


def _headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in the npz, from the .npy headers (no data is read)."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if not name.endswith(".npy"):
                    continue
                with z.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                out[name[:-4]] = (tuple(shape), dtype)
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    return out


def _check_images(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise DataError(f"{path}: key '{key}' holds Python objects, which are never unpickled; expected uint8 images")
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 3):
        raise DataError(f"{path}: key '{key}' has shape {shape}; expected (N, H, W) grey or (N, H, W, 3) RGB images")
    if dtype != np.uint8:
        raise DataError(f"{path}: key '{key}' is {dtype}; expected uint8 images (0-255)")
    if not all(MIN_SIDE <= s <= MAX_SIDE for s in shape[1:3]):
        raise DataError(f"{path}: key '{key}' holds {shape[1]}x{shape[2]} px images; MedMNIST images are "
                        f"{MIN_SIDE}-{MAX_SIDE} px")
    if shape[0] == 0:
        raise DataError(f"{path}: key '{key}' holds no images")


def _labels(path: Path, z: Any, split: str, n_images: int, shape: tuple[int, ...]) -> np.ndarray:
    key = f"{split}_labels"
    if len(shape) == 2 and shape[1] > 1:
        raise DataError(f"{path}: key '{key}' has shape {shape}: {shape[1]} labels per image (multi-label), which "
                        "fgssl does not train")
    if len(shape) not in (1, 2) or shape[0] != n_images:
        raise DataError(f"{path}: key '{key}' has shape {shape}, but '{split}_images' holds {n_images} images; "
                        f"expected ({n_images},) or ({n_images}, 1)")
    try:
        labels = np.asarray(z[key]).reshape(-1)
    except ValueError as e:  # e.g. an object array, which allow_pickle=False refuses
        raise DataError(f"{path}: key '{key}' cannot be read without unpickling ({e})") from None
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: key '{key}' is {labels.dtype}; expected integer class indices")
    if labels.min() < 0:
        raise DataError(f"{path}: key '{key}' row {int(np.argmin(labels))}: label {int(labels.min())} is negative")
    return labels.astype(np.int64)


class _Images:
    """A split's images, loaded from the npz on first use (threads of one cache build share it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loaded: dict[int, np.ndarray] = {}
        self.lock = threading.Lock()

    def __call__(self, record: Record, size: int, resize: str) -> np.ndarray:
        with self.lock:
            if record.partition not in self.loaded:
                with np.load(self.path, allow_pickle=False) as z:
                    self.loaded[record.partition] = z[f"{MEDMNIST_SPLITS[record.partition]}_images"]
        pixels = self.loaded[record.partition][int(record.id.rsplit("_", 1)[1])]
        return square_rgb(Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB"), size, resize)


def scan_medmnist(root: str | Path) -> Index:
    """Check the file's keys, shapes and labels; one record per image (id ``<split>_<row>``), split kept."""
    path = medmnist_file(root)
    subset = subset_of(path)
    _refuse_unsupported(path, subset)
    headers = _headers(path)
    for key in KEYS:
        if key not in headers:
            raise DataError(f"{path}: key '{key}' missing (a MedMNIST file holds {', '.join(KEYS)})")
    labels: dict[str, np.ndarray] = {}
    with np.load(path, allow_pickle=False) as z:
        for split in MEDMNIST_SPLITS:
            shape, dtype = headers[f"{split}_images"]
            _check_images(path, f"{split}_images", shape, dtype)
            labels[split] = _labels(path, z, split, shape[0], headers[f"{split}_labels"][0])
    notes = []
    if subset in SUBSET_CLASSES:
        names = SUBSET_CLASSES[subset]
    else:
        k = max(2, int(max(v.max() for v in labels.values())) + 1)
        names = tuple(str(c) for c in range(k))
        notes.append(f"MedMNIST: unknown subset {subset or path.name!r}, so its {k} classes are named 0..{k - 1} "
                     f"(known subsets: {', '.join(SUBSET_CLASSES)})")
    records = []
    for part, split in enumerate(MEDMNIST_SPLITS):
        y = labels[split]
        if y.max() >= len(names):
            row = int(np.argmax(y >= len(names)))
            raise DataError(f"{path}: key '{split}_labels' row {row}: label {int(y[row])} is not a class of "
                            f"{subset} ({len(names)} classes: 0..{len(names) - 1})")
        records += [Record(f"{split}_{i}", path, int(v), f"{path} key '{split}_labels' row {i}", partition=part)
                    for i, v in enumerate(y)]
    return Index("medmnist", path.parent, names, records, [path], notes=notes, partition_names=MEDMNIST_SPLITS,
                 decode=_Images(path))
