"""Real datasets read from the folder a user downloaded, exactly as the challenge ships it.

Layouts (`root` is the folder that holds these entries):

- ``isic2018`` (ISIC 2018 Task 3 = HAM10000): for each of Training, Validation, Test that is present,
  ``ISIC2018_Task3_<part>_Input/*.jpg`` and ``ISIC2018_Task3_<part>_GroundTruth/ISIC2018_Task3_<part>_GroundTruth.csv``
  with header ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` (one-hot 0.0/1.0); the part each image came from is kept, as for
  ISIC 2017. Optional ``HAM10000_metadata.csv`` (``lesion_id,image_id,...``; a ``dataset`` column, when present, is
  kept as the acquisition site): its lesion ids group the images so that splits never put one lesion on two sides.
  It covers the Training images only (HAM10000); a Validation or Test image without a row is its own group.
  Classes in the CSV's documented order.
- ``isic2017`` (ISIC 2017 Part 3): for each of Training, Validation, Test_v2 that is present,
  ``ISIC-2017_<part>_Data/*.jpg`` (``*_superpixels.png`` ignored) and ``ISIC-2017_<part>_Part3_GroundTruth.csv``
  with ``image_id,melanoma,seborrheic_keratosis``. Classes: melanoma, seborrheic_keratosis, nevus (both 0).
  The partition each image came from is kept, so the official splits can be used.
- ``aptos2019``: ``train.csv`` with ``id_code,diagnosis`` (grades 0-4) and ``train_images/<id_code>.png``.
  Classes no_dr, mild, moderate, severe, proliferative_dr (class index = grade).
- ``folder``: any image folder plus a CSV (``data.csv``, relative to root) whose ``data.path_column`` holds image
  paths relative to root and ``data.label_column`` string labels; classes are ``data.class_names`` when given,
  else the sorted distinct labels (numerically when all labels are integers). An optional ``data.group_column``
  (patient or lesion id) makes splits group-aware; an optional ``data.site_column`` names each image's acquisition
  site (for ``partition.method: natural``).

Work happens in two stages. `scan` reads and checks every label file and pairs each labelled id with its image
file, decoding nothing; it is cheap and runs at every training start to tell whether the cache is still valid.
`decode_image` turns one file into RGB uint8 (3, S, S). Every problem raises `DataError` naming the file and the
CSV line or image id. Label and CSV problems always stop; with ``skip_bad_images`` a missing or undecodable image
is skipped and listed instead.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from ..config import DataConfig
from .errors import DataError

ISIC2018_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
ISIC2017_CLASSES = ("melanoma", "seborrheic_keratosis", "nevus")
APTOS2019_CLASSES = ("no_dr", "mild", "moderate", "severe", "proliferative_dr")
ISIC2017_PARTS = ("Training", "Validation", "Test_v2")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
RESIZE_MODES = ("crop", "pad", "stretch")

ISIC2018_PARTS = ("Training", "Validation", "Test")


def isic2018_part(part: str) -> tuple[str, str]:
    """The image folder and the ground-truth CSV of one official ISIC 2018 Task 3 part, relative to the root."""
    return f"ISIC2018_Task3_{part}_Input", f"ISIC2018_Task3_{part}_GroundTruth/ISIC2018_Task3_{part}_GroundTruth.csv"


ISIC2018_IMAGES, ISIC2018_CSV = isic2018_part("Training")
HAM10000_METADATA = "HAM10000_metadata.csv"


@dataclass
class Record:
    """One labelled image: its id, file, class index and where its label came from."""
    id: str
    path: Path
    label: int
    where: str  # "<csv> line N", for messages
    group: str = ""  # lesion / patient id ("" = unknown)
    partition: int = -1  # index into Index.partition_names (-1 = none)
    site: str = ""  # acquisition site, when the metadata says


@dataclass
class Skip:
    id: str
    file: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "file": self.file, "reason": self.reason}


@dataclass
class Index:
    """What `scan` found: labelled images with existing files, plus those skipped for a missing file."""
    dataset: str
    root: Path
    class_names: tuple[str, ...]
    records: list[Record]
    label_files: list[Path]
    missing: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    partition_names: tuple[str, ...] = ()
    has_groups: bool = False
    # How a record becomes uint8 (3, size, size) given (record, size, resize); None: decode its image file.
    decode: Callable[[Record, int, str], np.ndarray] | None = None


# ----------------------------------------------------------------------------------------------------------- CSV


def _read_csv(path: Path, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, stripped fields) rows; blank lines are ignored, ragged rows are errors."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    try:
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            fields = [f.strip() for f in fields]
            if header is None:
                header = fields
                continue
            if len(fields) != len(header):
                raise DataError(f"{path} line {reader.line_num}: {len(fields)} fields, but the header has "
                                f"{len(header)} ({','.join(header)})")
            rows.append((reader.line_num, fields))
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: malformed CSV ({e})") from None
    if header is None:
        raise DataError(f"{path}: empty file, expected a header line")
    return header, rows


def _check_header(path: Path, header: list[str], expected: tuple[str, ...], first: str | None = None) -> None:
    """The header must hold exactly `expected` (any order), with `first` as its first column when given."""
    if sorted(header) != sorted(expected) or (first is not None and header[0] != first):
        raise DataError(f"{path}: wrong header '{','.join(header)}'; expected '{','.join(expected)}'")


def _require_columns(path: Path, header: list[str], needed: list[str], key: str | None = None) -> dict[str, int]:
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataError(f"{path}: wrong header '{','.join(header)}': no column {', '.join(map(repr, missing))}",
                        key or "data.root")
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise DataError(f"{path}: header repeats column(s) {', '.join(map(repr, dup))}")
    return {c: header.index(c) for c in header}


def _binary(path: Path, line: int, column: str, text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value not in (0.0, 1.0):
        raise DataError(f"{path} line {line}: column {column} must be 0 or 1, got {text!r}")
    return value == 1.0


def _check_id(path: Path, line: int, image_id: str, seen: dict[str, str]) -> None:
    if not image_id:
        raise DataError(f"{path} line {line}: empty image id")
    if image_id in seen:
        raise DataError(f"{path} line {line}: duplicate image id {image_id!r} (already on {seen[image_id]})")
    seen[image_id] = f"{path} line {line}"


# -------------------------------------------------------------------------------------------------------- folders


def _list_images(folder: Path, ignore: Callable[[str], bool] | None = None) -> dict[str, Path]:
    """Image files directly in `folder` by id (file name without suffix); hidden files and other files ignored."""
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    found: dict[str, Path] = {}
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        name = e.name
        suffix = os.path.splitext(name)[1].lower()
        if name.startswith(".") or suffix not in IMAGE_SUFFIXES or (ignore and ignore(name)) or not e.is_file():
            continue
        stem = name[: -len(suffix)]
        if stem in found:
            raise DataError(f"{folder}: duplicate image id {stem!r}: both {found[stem].name} and {name}")
        found[stem] = Path(e.path)
    return found


def _pair(labelled: list[Record], images: dict[str, Path], csv_path: Path, folder: Path, skip_missing: bool,
          missing: list[Skip], default_suffix: str) -> list[Record]:
    """Attach files to labelled ids; a labelled id without a file is an error (or a skip), and so is the reverse."""
    out = []
    for r in labelled:
        p = images.get(r.id)
        if p is None:
            expected = folder / f"{r.id}{default_suffix}"
            if not skip_missing:
                raise DataError(f"{r.where}: image {r.id!r} has no file in {folder} (expected {expected.name})")
            missing.append(Skip(r.id, str(expected), f"no image file (labelled on {r.where})"))
            continue
        r.path = p
        out.append(r)
    ids = {r.id for r in labelled}
    unlabelled = [p for i, p in images.items() if i not in ids]
    if unlabelled:
        more = f" (and {len(unlabelled) - 1} more)" if len(unlabelled) > 1 else ""
        raise DataError(f"{unlabelled[0]}: image has no row in {csv_path}{more}")
    return out


def _root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise DataError(f"data.root is required for data.dataset={cfg.dataset}", "data.root")
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"data root folder not found: {root}", "data.root")
    return root


@dataclass
class _Parts:
    """What the official parts of a challenge download hold, in ISIC2017_PARTS / ISIC2018_PARTS order."""
    records: list[Record] = field(default_factory=list)
    missing: list[Skip] = field(default_factory=list)
    label_files: list[Path] = field(default_factory=list)
    present: list[str] = field(default_factory=list)


def _scan_parts(parts: tuple[str, ...], layout: Callable[[str], tuple[Path, Path]],
                read_labels: Callable[[Path, dict[str, str], int], list[Record]], skip_missing: bool,
                ignore: Callable[[str], bool] | None = None) -> _Parts:
    """Every part whose image folder or label CSV exists (both must, then); an image id is unique across parts."""
    out = _Parts()
    seen: dict[str, str] = {}
    for part in parts:
        folder, csv_path = layout(part)
        if not folder.exists() and not csv_path.exists():
            continue
        if not folder.is_dir():
            raise DataError(f"image folder not found: {folder} (its labels {csv_path.name} exist)")
        if not csv_path.is_file():
            raise DataError(f"label file not found: {csv_path} (for the images in {folder.name}/)")
        labelled = read_labels(csv_path, seen, len(out.present))
        out.records += _pair(labelled, _list_images(folder, ignore), csv_path, folder, skip_missing, out.missing,
                             ".jpg")
        out.label_files.append(csv_path)
        out.present.append(part)
    return out


# -------------------------------------------------------------------------------------------------------- datasets


def _isic2018_labels(csv_path: Path, seen: dict[str, str], partition: int) -> list[Record]:
    header, rows = _read_csv(csv_path, "ISIC 2018 ground truth file")
    _check_header(csv_path, header, ("image", *ISIC2018_CLASSES), first="image")
    cols = [header.index(c) for c in ISIC2018_CLASSES]
    labelled = []
    for line, f in rows:
        _check_id(csv_path, line, f[0], seen)
        hot = [k for k, c in enumerate(cols) if _binary(csv_path, line, ISIC2018_CLASSES[k], f[c])]
        if len(hot) != 1:
            got = "no class" if not hot else " and ".join(ISIC2018_CLASSES[k] for k in hot)
            raise DataError(f"{csv_path} line {line}: image {f[0]!r} must have exactly one class set to 1, got {got}")
        labelled.append(Record(f[0], Path(), hot[0], f"{csv_path} line {line}", partition=partition))
    return labelled


def scan_isic2018(root: Path, skip_missing: bool = False) -> Index:
    found = _scan_parts(ISIC2018_PARTS, lambda part: tuple(root / p for p in isic2018_part(part)),
                        _isic2018_labels, skip_missing)
    present = found.present
    if not present:
        raise DataError(f"image folder not found: {root / ISIC2018_IMAGES} (an ISIC 2018 Task 3 root holds "
                        f"{ISIC2018_IMAGES}/ and {ISIC2018_CSV}, or the Validation or Test part laid out alike)")
    records = found.records
    index = Index("isic2018", root, ISIC2018_CLASSES, records, found.label_files, found.missing,
                  partition_names=tuple(present))

    meta = root / HAM10000_METADATA
    if not meta.is_file():
        if present != list(ISIC2018_PARTS):  # with every official part the splits are the parts themselves
            index.notes.append(f"ISIC 2018: {meta.name} not found in {root}, so lesion ids are unknown and splits "
                               "are per image: images of one lesion may land in both train and test")
        return index
    header, rows = _read_csv(meta, "HAM10000 metadata")
    col = _require_columns(meta, header, ["lesion_id", "image_id"])
    by_image: dict[str, tuple[str, str]] = {}
    seen = {}
    for line, f in rows:
        image_id, lesion = f[col["image_id"]], f[col["lesion_id"]]
        _check_id(meta, line, image_id, seen)
        if not lesion:
            raise DataError(f"{meta} line {line}: empty lesion_id for image {image_id!r}")
        by_image[image_id] = (lesion, f[col["dataset"]] if "dataset" in col else "")
    training = present.index("Training") if "Training" in present else None
    for r in records:
        if r.id in by_image:
            r.group, r.site = by_image[r.id]
        elif r.partition == training:
            raise DataError(f"{meta}: no row for image {r.id!r} (labelled on {r.where}); every image needs its "
                            "lesion_id for lesion-grouped splits (or remove the metadata file)")
        else:  # HAM10000's metadata lists the Training images only; another part's image is a lesion of its own
            r.group = r.id
    index.label_files.append(meta)
    index.has_groups = True
    return index


def _isic2017_labels(csv_path: Path, seen: dict[str, str], partition: int) -> list[Record]:
    header, rows = _read_csv(csv_path, "ISIC 2017 ground truth file")
    _check_header(csv_path, header, ("image_id", "melanoma", "seborrheic_keratosis"), first="image_id")
    mel, sk = header.index("melanoma"), header.index("seborrheic_keratosis")
    labelled = []
    for line, f in rows:
        _check_id(csv_path, line, f[0], seen)
        is_mel = _binary(csv_path, line, "melanoma", f[mel])
        is_sk = _binary(csv_path, line, "seborrheic_keratosis", f[sk])
        if is_mel and is_sk:
            raise DataError(f"{csv_path} line {line}: image {f[0]!r} is marked both melanoma and "
                            "seborrheic_keratosis")
        label = 0 if is_mel else 1 if is_sk else 2
        labelled.append(Record(f[0], Path(), label, f"{csv_path} line {line}", partition=partition))
    return labelled


def scan_isic2017(root: Path, skip_missing: bool = False) -> Index:
    found = _scan_parts(ISIC2017_PARTS,
                        lambda part: (root / f"ISIC-2017_{part}_Data", root / f"ISIC-2017_{part}_Part3_GroundTruth.csv"),
                        _isic2017_labels, skip_missing, ignore=lambda n: n.lower().endswith("_superpixels.png"))
    if not found.present:
        raise DataError(f"{root}: not an ISIC 2017 Part 3 folder: none of "
                        + ", ".join(f"ISIC-2017_{p}_Data/" for p in ISIC2017_PARTS) + " found")
    return Index("isic2017", root, ISIC2017_CLASSES, found.records, found.label_files, found.missing,
                 partition_names=tuple(found.present))


def _grade(path: Path, line: int, image_id: str, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer() or not 0 <= value <= 4:
        raise DataError(f"{path} line {line}: unknown APTOS grade {text!r} for {image_id!r} (expected 0-4)")
    return int(value)


def scan_aptos2019(root: Path, skip_missing: bool = False) -> Index:
    csv_path, folder = root / "train.csv", root / "train_images"
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder} (an APTOS 2019 root holds train.csv and train_images/)")
    header, rows = _read_csv(csv_path, "APTOS 2019 label file")
    _check_header(csv_path, header, ("id_code", "diagnosis"))
    ci, cd = header.index("id_code"), header.index("diagnosis")
    seen: dict[str, str] = {}
    labelled = []
    for line, f in rows:
        _check_id(csv_path, line, f[ci], seen)
        labelled.append(Record(f[ci], Path(), _grade(csv_path, line, f[ci], f[cd]), f"{csv_path} line {line}"))
    missing: list[Skip] = []
    records = _pair(labelled, _list_images(folder), csv_path, folder, skip_missing, missing, ".png")
    return Index("aptos2019", root, APTOS2019_CLASSES, records, [csv_path], missing)


def _natural_classes(labels: set[str]) -> tuple[str, ...]:
    if all(re.fullmatch(r"[+-]?\d+", s) for s in labels):
        return tuple(sorted(labels, key=int))
    return tuple(sorted(labels))


def _walk_images(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath, n) for n in filenames
                if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES]
    return out


def scan_folder(root: Path, csv_name: str, path_column: str, label_column: str, group_column: str | None = None,
                class_names: tuple[str, ...] = (), skip_missing: bool = False,
                site_column: str | None = None) -> Index:
    csv_path = Path(csv_name) if Path(csv_name).is_absolute() else root / csv_name
    header, rows = _read_csv(csv_path, "label file (data.csv)")
    col = {}
    for name, key in ((path_column, "data.path_column"), (label_column, "data.label_column"),
                      (group_column, "data.group_column"), (site_column, "data.site_column")):
        if name:
            col.update(_require_columns(csv_path, header, [name], key=key))
    if class_names:
        classes = tuple(class_names)
    else:
        classes = _natural_classes({f[col[label_column]] for _, f in rows if f[col[label_column]]})
    class_index = {c: i for i, c in enumerate(classes)}
    seen: dict[str, str] = {}
    records: list[Record] = []
    missing: list[Skip] = []
    used: set[Path] = set()
    for line, f in rows:
        rel, label = f[col[path_column]], f[col[label_column]]
        where = f"{csv_path} line {line}"
        if not label:
            raise DataError(f"{where}: empty {label_column}")
        if label not in class_index:
            raise DataError(f"{where}: label {label!r} is not one of data.class_names ({', '.join(classes)})")
        path = root / rel
        if not path.suffix and not path.exists():
            path = next((c for c in (path.with_suffix(s) for s in sorted(IMAGE_SUFFIXES)) if c.is_file()), path)
        if not rel:
            raise DataError(f"{where}: empty {path_column}")
        key = os.path.normpath(path)
        _check_id(csv_path, line, key, seen)
        group = f[col[group_column]] if group_column else ""
        if group_column and not group:
            raise DataError(f"{where}: empty {group_column}")
        site = f[col[site_column]] if site_column else ""
        if site_column and not site:
            raise DataError(f"{where}: empty {site_column} (data.site_column): every image needs its site")
        if not path.is_file():
            if not skip_missing:
                raise DataError(f"{where}: image file not found: {path}")
            missing.append(Skip(rel, str(path), f"no image file (labelled on {where})"))
            continue
        used.add(Path(key))
        records.append(Record(rel, path, class_index[label], where, group=group, site=site))
    index = Index("folder", root, classes, records, [csv_path], missing, has_groups=bool(group_column))
    unused = [p for p in _walk_images(root) if Path(os.path.normpath(p)) not in used]
    if unused:
        index.notes.append(f"{len(unused)} image file(s) under {root} have no row in {csv_path.name} and are not "
                           f"used (e.g. {unused[0]})")
    return index


def scan(cfg: DataConfig) -> Index:
    """Read and check the labels of the dataset `cfg` names; pair every labelled id with its image file."""
    try:
        return _scan(cfg)
    except OSError as e:  # e.g. a folder that cannot be listed
        raise DataError(f"cannot read {e.filename or cfg.root}: {e.strerror or e}") from None


def _scan(cfg: DataConfig) -> Index:
    root = _root(cfg)
    skip = cfg.skip_bad_images
    if cfg.dataset == "isic2018":
        index = scan_isic2018(root, skip)
    elif cfg.dataset == "isic2017":
        index = scan_isic2017(root, skip)
    elif cfg.dataset == "aptos2019":
        index = scan_aptos2019(root, skip)
    elif cfg.dataset == "folder":
        if not cfg.csv:
            raise DataError("data.csv is required for data.dataset=folder", "data.csv")
        index = scan_folder(root, cfg.csv, cfg.path_column, cfg.label_column, cfg.group_column, cfg.class_names, skip,
                            cfg.site_column)
    else:
        raise DataError(f"data.dataset={cfg.dataset} is not read from files", "data.dataset")
    if not index.records and not index.missing:
        raise DataError(f"{index.label_files[0]}: no labelled images")
    return index


# -------------------------------------------------------------------------------------------------------- decoding


def _scale16(a: np.ndarray) -> np.ndarray:
    """16-bit values (0..65535) to 0..255 with rounding; values outside are clipped."""
    a = np.clip(a.astype(np.int64), 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha is composited onto black, 16-bit data is scaled (not clipped)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode == "I":
        return Image.fromarray(_scale16(np.asarray(im)), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.nan_to_num(a)
        scaled = np.clip(a, 0, 1) * 255 + 0.5 if a.size and a.max() <= 1.0 else np.clip(a / 257 + 0.5, 0, 255)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


def fit(im: Image.Image, size: int, resize: str = "crop") -> Image.Image:
    """Square `size` x `size`: crop = short side to size then centre crop; pad = long side to size, black
    borders; stretch = ignore the aspect ratio."""
    w, h = im.size
    bicubic = Image.Resampling.BICUBIC
    if resize == "crop":
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        return im.resize((size, size), bicubic, box=box, reducing_gap=3.0)
    if resize == "stretch":
        return im.resize((size, size), bicubic, reducing_gap=3.0)
    if resize == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new("RGB", (size, size))
        canvas.paste(im.resize((nw, nh), bicubic, reducing_gap=3.0), ((size - nw) // 2, (size - nh) // 2))
        return canvas
    raise ValueError(f"unknown resize mode '{resize}'; choose from: {', '.join(RESIZE_MODES)}")


def square_rgb(im: Image.Image, size: int, resize: str = "crop") -> np.ndarray:
    """Any PIL image as uint8 (3, size, size): made 8-bit RGB, then `fit`."""
    return np.asarray(fit(_to_rgb(im), size, resize), dtype=np.uint8).transpose(2, 0, 1)


def decode_image(path: str | Path, size: int, resize: str = "crop") -> np.ndarray:
    """Decode one image file (any size; JPEG/PNG/...; RGB, grey, RGBA, CMYK, palette, 8 or 16 bit) to uint8
    (3, size, size). EXIF orientation is applied. Raises DataError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the result stays >= 2x the target size.
                im.draft(None, (2 * size, 2 * size))
            im.load()
            arr = square_rgb(ImageOps.exif_transpose(im), size, resize)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Exception as e:  # PIL raises many types for corrupt data (OSError, SyntaxError, ValueError, ...)
        raise DataError(f"cannot decode image {path}: {e}") from None
    if arr.shape != (3, size, size):
        raise DataError(f"cannot decode image {path}: got an array of shape {arr.shape}")
    return arr
