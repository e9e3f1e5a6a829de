"""Decode and resize a real dataset once into a compact uint8 cache; training reads only the cache.

A cache is one folder ``<cache_dir>/<dataset>-<size>px-<resize>-<root hash>/`` holding

    images.npy      uint8 (N, 3, S, S), read as a memory map
    labels.npy      int64 (N,)
    ids.npy         str   (N,)  image ids (file stems; the CSV path for `folder`; `<split>_<row>` for `medmnist`)
    groups.npy      str   (N,)  lesion / patient ids ("" when unknown)
    partitions.npy  int8  (N,)  index into manifest["partition_names"] (-1 = none)
    sites.npy       str   (N,)  acquisition site ("" when unknown)
    digests.npy     str   (N,)  SHA-256 of each image's source file, first 32 hex digits ("" for MedMNIST rows)
    manifest.json   format version, the settings that shaped the cache, class names and counts, the size and
                    mtime of every source file, skipped images with reasons, notes, build time
    skipped.csv     (only when images were skipped) id,file,reason

Only `.npy` files without object arrays and JSON are written; everything is read with ``allow_pickle=False``.
The folder is built under a temporary name and renamed into place when complete, so a killed build never leaves a
cache that looks valid. A cache is reused when its manifest matches the current settings and every source file
(label CSVs, metadata, images) still has the recorded size and mtime; otherwise it is rebuilt.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from ..config import DataConfig
from . import official
from .errors import DataError
from .medmnist import scan_medmnist
from .official import Index, Skip

FORMAT = "fgssl-image-cache"
# 2: ISIC 2018 images carry the official part they came from (Training, Validation, Test), as ISIC 2017 ones do.
# 3: digests, so that a data ledger knows the same files read through another loader (fgssl.privacy.data_ledger).
VERSION = 3
MANIFEST = "manifest.json"
ARRAYS = ("images", "labels", "ids", "groups", "partitions", "sites", "digests")
# True: a tqdm bar on stderr; False: silent; a callable: told (images decoded, total) after each image.
ProgressArg = Union[bool, Callable[[int, int], None]]


@dataclass
class CachedData:
    """A loaded cache: images stay on disk (memory map) until indexed."""
    path: Path
    images: np.ndarray  # uint8 memmap (N, 3, S, S)
    labels: np.ndarray
    ids: np.ndarray
    groups: np.ndarray
    partitions: np.ndarray
    sites: np.ndarray
    digests: np.ndarray
    manifest: dict[str, Any]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["class_names"])

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class PrepareResult:
    path: Path
    built: bool
    reason: str  # why it was (re)built; "" when a valid cache was reused
    manifest: dict[str, Any]
    seconds: float  # this call's wall time
    removed_leftovers: list[str] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return int(self.manifest["num_images"])

    @property
    def skipped(self) -> list[dict[str, str]]:
        return list(self.manifest.get("skipped", []))

    @property
    def notes(self) -> list[str]:
        return list(self.manifest.get("notes", []))

    @property
    def images_per_s(self) -> float:
        """Build speed (decoded images per second) of the build that made this cache."""
        return float(self.manifest.get("images_per_s", 0.0))


# ------------------------------------------------------------------------------------------------------- naming


def _settings(cfg: DataConfig) -> dict[str, Any]:
    """Everything besides the source files that decides a cache's content."""
    s: dict[str, Any] = {"dataset": cfg.dataset, "root": str(Path(cfg.root).resolve()) if cfg.root else None,
                         "image_size": cfg.image_size, "resize": cfg.resize}
    if cfg.dataset == "folder":
        s.update(csv=cfg.csv, path_column=cfg.path_column, label_column=cfg.label_column,
                 group_column=cfg.group_column, class_names=list(cfg.class_names))
        if cfg.site_column:  # only when set, so that the caches built before the key existed keep their names
            s["site_column"] = cfg.site_column
    return s


def cache_base(cfg: DataConfig) -> Path:
    """The folder that holds caches: data.cache_dir, else <root>/.fgssl-cache."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    if not cfg.root:
        raise DataError(f"data.root is required for data.dataset={cfg.dataset}", "data.root")
    root = Path(cfg.root)
    root = root.parent if root.is_file() else root  # a MedMNIST root may be the .npz itself
    base = root / ".fgssl-cache"
    # A dataset folder marked read-only (no write bit at all) is not written into, even by a superuser.
    if not base.exists() and root.is_dir() and not root.stat().st_mode & 0o222:
        raise DataError(f"the dataset folder {root} is read-only, so the cache cannot go to {base}: set "
                        "data.cache_dir (or `fgssl prepare --out DIR`) to a writable folder", "data.cache_dir")
    return base


def cache_path(cfg: DataConfig) -> Path:
    s = _settings(cfg)
    digest = hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:10]
    return cache_base(cfg) / f"{cfg.dataset}-{cfg.image_size}px-{cfg.resize}-{digest}"


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _sources(index: Index) -> list[list[Any]]:
    """[relative path, size, mtime_ns] of every label file and image (-1, -1 for a missing image)."""
    out = []
    # dict.fromkeys: one entry per file, also when many records live in one file (MedMNIST's npz)
    for p in dict.fromkeys([*index.label_files, *(r.path for r in index.records)]):
        st = p.stat()
        out.append([_rel(p, index.root), st.st_size, st.st_mtime_ns])
    for s in index.missing:
        out.append([_rel(Path(s.file), index.root), -1, -1])
    return out


# ------------------------------------------------------------------------------------------------------ validity


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _first_difference(old: list[list[Any]], new: list[list[Any]]) -> str:
    old_map = {e[0]: tuple(e[1:]) for e in old}
    new_map = {e[0]: tuple(e[1:]) for e in new}
    for name, stat in new_map.items():
        if name not in old_map:
            return f"new source file {name}"
        if old_map[name] != stat:
            return f"source file changed: {name}"
    gone = [n for n in old_map if n not in new_map]
    if gone:
        return f"source file no longer used: {gone[0]}"
    return "the order of the labelled images changed"


def stale_reason(path: Path, settings: dict[str, Any], sources: list[list[Any]], skip_bad_images: bool) -> str | None:
    """None when the cache at `path` is complete and matches; otherwise why it must be (re)built."""
    m = read_manifest(path)
    if m is None:
        return "no cache yet" if not path.exists() else "no readable manifest"
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        return f"cache format changed (found version {m.get('version')}, need {VERSION})"
    if m.get("settings") != settings:
        changed = sorted(k for k in settings.keys() | m.get("settings", {}).keys()
                         if settings.get(k) != m.get("settings", {}).get(k))
        return f"settings changed: {', '.join(changed)}"
    if m.get("sources") != sources:
        return _first_difference(m.get("sources", []), sources)
    if m.get("skipped") and not skip_bad_images:
        return f"the cache skipped {len(m['skipped'])} bad image(s) but data.skip_bad_images is false"
    n, size = m.get("num_images"), settings["image_size"]
    try:
        shapes = {a: np.load(path / f"{a}.npy", mmap_mode="r", allow_pickle=False).shape for a in ARRAYS}
    except (OSError, ValueError):
        return "cache files missing or unreadable"
    if shapes["images"] != (n, 3, size, size) or any(shapes[a] != (n,) for a in ARRAYS if a != "images"):
        return "cache files do not match the manifest"
    return None


# ------------------------------------------------------------------------------------------------------- build


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # cannot tell safely: keep it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_leftovers(base: Path, name: str) -> list[str]:
    """Delete partial builds of this cache left by killed processes (their pid is part of the folder name)."""
    removed = []
    for p in list(base.glob(f".tmp-{name}-*")) + list(base.glob(f".old-{name}-*")):
        try:
            pid = int(p.name[len(f".tmp-{name}-"):].split("-")[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(str(p))
    return removed


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive advisory lock (POSIX), so that processes sharing a cache folder build it once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking; the atomic rename still keeps every cache whole
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_digest(path: Path) -> str:
    """What identifies an image file's content whatever its name or loader: SHA-256 of its bytes, 32 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:32]


def _decode_all(index: Index, images: np.ndarray, digests: list[str], size: int, resize: str, skip: bool,
                workers: int, progress: ProgressArg) -> list[tuple[int, Skip]]:
    """Decode every record into `images[i]` and hash its file into `digests[i]` (records of one array file, as
    MedMNIST's, keep ""); returns (position, skip) for undecodable files when skipping."""
    bad: list[tuple[int, Skip]] = []
    decode = index.decode or (lambda r, s, m: official.decode_image(r.path, s, m))

    def work(i: int) -> tuple[int, Skip] | None:
        r = index.records[i]
        try:
            images[i] = decode(r, size, resize)
            if index.decode is None:
                digests[i] = file_digest(r.path)
        except OSError as e:  # the file went away or became unreadable between decoding and hashing
            unreadable = DataError(f"cannot read image {r.path}: {e.strerror or e}")
            if not skip:
                raise unreadable from None
            return i, Skip(r.id, str(r.path), str(unreadable))
        except DataError as e:
            if not skip:
                raise
            return i, Skip(r.id, str(r.path), str(e))
        return None

    n = len(index.records)
    # Not a terminal (CI, nohup): a frame every 10 s, not one per image.
    bar = tqdm(total=n, desc=f"prepare {index.dataset} {size}px", unit="img", disable=progress is not True,
               dynamic_ncols=True, leave=False, mininterval=0.1 if sys.stderr.isatty() else 10.0)
    report = progress if callable(progress) else None
    done = 0

    def advance() -> None:
        nonlocal done
        done += 1
        bar.update(1)
        if report is not None:
            report(done, n)
    try:
        if workers <= 1:
            for i in range(n):
                res = work(i)
                if res:
                    bad.append(res)
                advance()
        else:
            with ThreadPoolExecutor(workers) as pool:
                futures = [pool.submit(work, i) for i in range(n)]
                try:
                    for fut in futures:
                        res = fut.result()
                        if res:
                            bad.append(res)
                        advance()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
    return bad


def _build(index: Index, cfg: DataConfig, target: Path, settings: dict[str, Any], sources: list[list[Any]],
           workers: int, progress: ProgressArg) -> dict[str, Any]:
    size = cfg.image_size
    started = time.perf_counter()
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}-{secrets.token_hex(4)}"
    n = len(index.records)
    if n == 0:
        raise DataError(f"no images left in {index.root} after skipping {len(index.missing)} missing file(s)")
    tmp.mkdir(parents=True)
    try:
        images = open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
        digests = [""] * n
        bad = _decode_all(index, images, digests, size, cfg.resize, cfg.skip_bad_images, workers, progress)
        keep = np.ones(n, dtype=bool)
        keep[[i for i, _ in bad]] = False
        if bad:
            kept = int(keep.sum())
            if kept == 0:
                raise DataError(f"no decodable images left in {index.root} after skipping {len(bad)}")
            compact = open_memmap(tmp / "images.kept.npy", mode="w+", dtype=np.uint8, shape=(kept, 3, size, size))
            where = np.flatnonzero(keep)
            for start in range(0, kept, 256):
                compact[start:start + 256] = images[where[start:start + 256]]
            compact.flush()
            del compact, images
            os.replace(tmp / "images.kept.npy", tmp / "images.npy")
        else:
            images.flush()
            del images
        recs = [r for r, k in zip(index.records, keep) if k]
        arrays = {
            "digests": np.array([d for d, k in zip(digests, keep) if k], dtype=str),
            "labels": np.array([r.label for r in recs], dtype=np.int64),
            "ids": np.array([r.id for r in recs], dtype=str),
            "groups": np.array([r.group for r in recs], dtype=str),
            "partitions": np.array([r.partition for r in recs], dtype=np.int8),
            "sites": np.array([r.site for r in recs], dtype=str),
        }
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        skipped = [s.to_dict() for s in index.missing] + [s.to_dict() for _, s in bad]
        if skipped:
            with open(tmp / "skipped.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=["id", "file", "reason"])
                w.writeheader()
                w.writerows(skipped)
        seconds = time.perf_counter() - started
        counts = np.bincount(arrays["labels"], minlength=len(index.class_names)).tolist()
        manifest = {
            "format": FORMAT, "version": VERSION, "settings": settings,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "num_images": len(recs), "image_shape": [3, size, size],
            "class_names": list(index.class_names), "class_counts": counts,
            "partition_names": list(index.partition_names), "has_groups": index.has_groups,
            "build_seconds": round(seconds, 3), "images_per_s": round(n / seconds, 2) if seconds > 0 else 0.0,
            "skipped": skipped, "notes": list(index.notes), "sources": sources,
        }
        for name in ARRAYS:
            _fsync(tmp / f"{name}.npy")
        # The manifest goes last: a folder without one is never taken for a cache.
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync(tmp / MANIFEST)
        _fsync(tmp)
        _install(tmp, target)
        _fsync(target.parent)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, target: Path) -> None:
    """Rename the finished folder into place, moving an old (stale) cache aside first."""
    for _ in range(3):
        old = None
        if target.exists():
            old = target.parent / f".old-{target.name}-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                os.replace(target, old)
            except FileNotFoundError:
                old = None  # another process moved it meanwhile
        try:
            os.replace(tmp, target)
        except OSError:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            continue  # another process installed its build meanwhile: replace it with ours (same content)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return
    raise DataError(f"could not install the cache at {target}", "data.cache_dir")


def prepare(cfg: DataConfig, *, workers: int = 1, progress: ProgressArg = True) -> PrepareResult:
    """Build the cache for `cfg` (a real dataset), or reuse it when it is still valid.

    `progress`: True draws a bar on stderr, False nothing; a callable gets (images decoded, total) instead.
    """
    started = time.perf_counter()
    # MedMNIST is one array file, not an image layout (and its root may be the file itself)
    index = scan_medmnist(cfg.root or "") if cfg.dataset == "medmnist" else official.scan(cfg)
    settings = _settings(cfg)
    try:
        sources = _sources(index)
    except OSError as e:
        raise DataError(f"cannot read {e.filename}: {e.strerror}") from None
    target = cache_path(cfg)
    reason = stale_reason(target, settings, sources, cfg.skip_bad_images)
    if reason is None:
        manifest = read_manifest(target)
        assert manifest is not None
        return PrepareResult(target, False, "", manifest, time.perf_counter() - started)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _lock(target.parent / f".{target.name}.lock"):
            # another process may have built it while this one waited for the lock
            if stale_reason(target, settings, sources, cfg.skip_bad_images) is None:
                manifest = read_manifest(target)
                assert manifest is not None
                return PrepareResult(target, False, "", manifest, time.perf_counter() - started)
            removed = _remove_leftovers(target.parent, target.name)
            manifest = _build(index, cfg, target, settings, sources, workers, progress)
    except DataError:
        raise
    except OSError as e:
        where = e.filename or target.parent
        hint = "" if cfg.cache_dir else " (set data.cache_dir, or `fgssl prepare --out DIR`, to a writable folder)"
        raise DataError(f"cannot write the cache in {target.parent}: {e.strerror or e} ({where}){hint}",
                        "data.cache_dir") from None
    return PrepareResult(target, True, reason, manifest, time.perf_counter() - started, removed)


def content_key(data: CachedData) -> str:
    """What identifies a prepared data set's images and labels, whatever size or resize they were decoded at: a hash
    of its image ids (file stems; a folder's CSV paths) with their labels, in id order. Reading two small arrays, it
    costs milliseconds, not a pass over the pixels (which would also give the same images at another size another
    key). Two caches of the same images share it (`fgssl.privacy.data_ledger` keys a ledger by it)."""
    h = hashlib.sha256()
    order = np.argsort(data.ids, kind="stable")
    for i in order:
        h.update(f"{data.ids[i]}\0{int(data.labels[i])}\n".encode())
    return f"images-{h.hexdigest()[:32]}"


def load_cache(path: str | Path) -> CachedData:
    """Open a cache folder written by `prepare` (images memory-mapped, nothing unpickled)."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest is None or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not an fgssl image cache (no valid {MANIFEST})", "data.cache_dir")
    if manifest.get("version") != VERSION:
        raise DataError(f"{path}: an image cache of format version {manifest.get('version')}, this code reads "
                        f"{VERSION}; prepare the data set again (fgssl prepare, or any run on it, rebuilds it)",
                        "data.cache_dir")
    try:
        arrays = {a: np.load(path / f"{a}.npy", mmap_mode="r" if a == "images" else None, allow_pickle=False)
                  for a in ARRAYS}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable cache file ({e})", "data.cache_dir") from None
    return CachedData(path, manifest=manifest, **arrays)
