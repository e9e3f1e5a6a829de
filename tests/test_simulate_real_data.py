"""`fgssl simulate` / `fgssl partition` on real data sets: label sources from the cache, per-site splits, natural sites.

A tiny ISIC 2018 layout (generated images, HAM10000 metadata with lesion ids and a `dataset` column) is written to a
tmp dir; every cache goes to a tmp dir. Where ../shared/realdata exists, its ISIC 2018 sample runs end to end.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fgssl.config import ConfigError, config_from_dict, load_config
from fgssl.data.cache import cache_path, load_cache
from fgssl.data.errors import DataWarning
from fgssl.data.official import HAM10000_METADATA, ISIC2018_CLASSES, ISIC2018_CSV, ISIC2018_IMAGES
from simulations.partition import HAM10000_SITES, HAM10000_SITES_FILE, compute_partition
from simulations.shift import apply_site_shift
from simulations.sites import build_sites

from .conftest import TINY, merge, run_cli

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
REAL_ISIC2018 = REALDATA / "ham10000_isic2018_task3"

# 60 images in 30 lesions of 1-3 images (one class per lesion); acquisition site by lesion: 30/20/10 images.
LESION_SIZES = [1, 2, 3] * 10
SITE_OF_LESION = ["vidir_molemax"] * 15 + ["rosendahl"] * 9 + ["vienna_dias"] * 6
META_HEADER = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]


def make_tiny_isic2018(root: Path, site_column: bool = True) -> list[dict]:
    """ISIC 2018 Task 3 layout with HAM10000_metadata.csv; returns one dict per image (id, label, lesion, site)."""
    rows = []
    for lesion, size in enumerate(LESION_SIZES):
        for _ in range(size):
            rows.append({"id": f"ISIC_{len(rows):07d}", "label": lesion % 7, "lesion": f"HAM_{lesion:07d}",
                         "site": SITE_OF_LESION[lesion]})
    (root / ISIC2018_IMAGES).mkdir(parents=True)
    (root / ISIC2018_CSV).parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for r in rows:
        # a noisy field whose tint depends on the class, at an odd size (cropped and resized into the cache)
        base = np.array([60 + 25 * r["label"], 120, 200 - 20 * r["label"]], dtype=np.float64)
        pixels = np.clip(base + rng.normal(0, 30, (30, 41, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / ISIC2018_IMAGES / f"{r['id']}.jpg", quality=90)
    with open(root / ISIC2018_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *ISIC2018_CLASSES])
        w.writerows([[r["id"], *("1.0" if k == r["label"] else "0.0" for k in range(7))] for r in rows])
    header = META_HEADER if site_column else META_HEADER[:-1]
    with open(root / HAM10000_METADATA, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            line = [r["lesion"], r["id"], ISIC2018_CLASSES[r["label"]].lower(), "histo", "50.0", "male", "back",
                    r["site"]]
            w.writerow(line[: len(header)])
    return rows


def _data(root: Path, tmp_path: Path, **kw) -> dict:
    return {"dataset": "isic2018", "root": str(root), "cache_dir": str(tmp_path / "cache"), "image_size": 32,
            "val_fraction": 0.2, "test_fraction": 0.2, **kw}


def _config(tmp_path: Path, name: str, **sections) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(merge(TINY, sections)))
    return path


def _cfg(**sections):
    return config_from_dict(merge(TINY, sections))


def _assert_lesions_stay_in_one_split(sites, num_sites: int) -> int:
    """No lesion id in two of a site's splits; returns how many lesions had several images on one site."""
    groups = load_cache(sites.cache).groups
    shared = 0
    for s in range(num_sites):
        split_groups = [set(groups[rows].tolist()) for rows in sites.split_rows(s)]
        for a in range(3):
            for b in range(a + 1, 3):
                assert not split_groups[a] & split_groups[b], (s, a, b, split_groups[a] & split_groups[b])
        site_groups = groups[sites.site_rows(s)]
        shared += int((np.unique(site_groups, return_counts=True)[1] > 1).sum())
    return shared


def _final(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    return summary["final"]


@pytest.mark.slow
def test_simulate_isic2018_iid_from_the_cache(tmp_path):
    root = tmp_path / "isic"
    rows = make_tiny_isic2018(root)
    cfg_path = _config(tmp_path, "iid", data=_data(root, tmp_path),
                       federation={"sites": 2, "ssl_rounds": 0, "finetune_rounds": 1})
    out = tmp_path / "run"
    run_cli("simulate", "--config", str(cfg_path), "--out", str(out), "--quiet")

    final = _final(out)
    assert set(final) == {"0", "1", "pooled"}
    for site in ("0", "1", "pooled"):
        assert 0.0 <= final[site]["accuracy"] <= 1.0 and final[site]["num_examples"] > 0
    record = json.loads((out / "partition.json").read_text())
    assert record["class_names"] == list(ISIC2018_CLASSES) == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    parts = [np.array(s["indices"]) for s in record["sites"]]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(rows)))
    assert [len(p) for p in parts] == [30, 30]
    for s, p in zip(record["sites"], parts):
        assert s["class_counts"] == np.bincount([rows[i]["label"] for i in p], minlength=7).tolist()
    # the cache went to data.cache_dir, nothing into the dataset folder
    assert not (root / ".fgssl-cache").exists() and any((tmp_path / "cache").iterdir())

    # Replay the run's sites outside Flower: same partition, lesion-grouped splits, pooled test = the sites' tests.
    cfg = load_config(out / "config.yaml")
    sites = build_sites(cfg, tmp_path / "replay", save=False)
    assert [p.tolist() for p in sites.parts] == [p.tolist() for p in parts]
    assert _assert_lesions_stay_in_one_split(sites, 2) > 0
    tests = [sites.splits(s).test for s in range(2)]
    assert [len(t) for t in tests] == [final["0"]["num_examples"], final["1"]["num_examples"]]
    assert final["pooled"]["num_examples"] == sum(len(t) for t in tests) == len(sites.pooled_test())


def test_real_sites_read_their_rows_shifted_deterministically_and_pickle_small(tmp_path):
    root = tmp_path / "isic"
    rows = make_tiny_isic2018(root)
    cfg = _cfg(data=_data(root, tmp_path, site_shift=1.0), federation={"sites": 3}, partition={"method": "dirichlet",
                                                                                               "alpha": 1.0})
    sites = build_sites(cfg, tmp_path / "run", save=False)
    assert sites.class_names() == list(ISIC2018_CLASSES)
    # small and picklable: paths and index arrays, no images
    blob = pickle.dumps(sites)
    assert len(blob) < 20_000, len(blob)
    clone = pickle.loads(blob)
    data = load_cache(cache_path(cfg.data))
    for s in range(3):
        a, b = sites.splits(s), clone.splits(s)
        for part in ("train", "val", "test"):
            assert np.array_equal(getattr(a, part).images.numpy(), getattr(b, part).images.numpy())
        train_rows, val_rows, test_rows = sites.split_rows(s)
        assert sorted(np.concatenate([train_rows, val_rows, test_rows]).tolist()) == sorted(sites.parts[s].tolist())
        assert a.train.labels.tolist() == [rows[i]["label"] for i in train_rows]
        # the site's camera: apply_site_shift over its rows (in row order), then split
        shifted = apply_site_shift(np.asarray(data.images[sites.site_rows(s)]), s, 1.0, cfg.seed)
        position = {r: k for k, r in enumerate(sites.site_rows(s))}
        assert np.array_equal(a.test.images.numpy(), shifted[[position[r] for r in test_rows]])
        assert not np.array_equal(a.test.images.numpy(), np.asarray(data.images[test_rows]))
    assert _assert_lesions_stay_in_one_split(sites, 3) > 0
    # without a shift the site sees the cached pixels as they are
    plain = build_sites(_cfg(data=_data(root, tmp_path, site_shift=0.0), federation={"sites": 3}),
                        tmp_path / "run0", save=False)
    test_rows = plain.split_rows(1)[2]
    assert np.array_equal(plain.splits(1).test.images.numpy(), np.asarray(data.images[test_rows]))


def test_natural_sites_are_the_dataset_column_groups(tmp_path):
    root = tmp_path / "isic"
    rows = make_tiny_isic2018(root)
    site_of = np.array([r["site"] for r in rows])
    cfg = _cfg(data=_data(root, tmp_path), partition={"method": "natural"}, federation={"sites": 3})
    sites = build_sites(cfg, tmp_path, save=True)
    record = json.loads((tmp_path / "partition.json").read_text())
    assert [s["name"] for s in record["sites"]] == ["vidir_molemax", "rosendahl", "vienna_dias"]
    assert [s["num_samples"] for s in record["sites"]] == [30, 18, 12]
    for s, name in enumerate(["vidir_molemax", "rosendahl", "vienna_dias"]):
        assert sites.parts[s].tolist() == np.flatnonzero(site_of == name).tolist()
    assert sum(len(sites.splits(s).train) + len(sites.splits(s).val) + len(sites.splits(s).test)
               for s in range(3)) == 60
    _assert_lesions_stay_in_one_split(sites, 3)

    # the number of sites must match the data set's
    with pytest.raises(ConfigError) as e:
        compute_partition(_cfg(data=_data(root, tmp_path), partition={"method": "natural"}, federation={"sites": 2}))
    assert e.value.key == "federation.sites" and "vienna_dias" in str(e.value)

    # without a `dataset` column: HAM10000_metadata_with_sites.csv in the root gives the same sites ...
    other = tmp_path / "other"
    make_tiny_isic2018(other, site_column=False)
    other_cfg = _cfg(data=_data(other, tmp_path), partition={"method": "natural"}, federation={"sites": 3})
    with pytest.raises(ConfigError) as e:  # ... and without either, the error says what is missing
        compute_partition(other_cfg)
    assert e.value.key == "partition.method" and HAM10000_SITES_FILE in str(e.value)
    with open(other / HAM10000_SITES_FILE, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(META_HEADER)
        w.writerows([[r["lesion"], r["id"], "nv", "histo", "50.0", "male", "back", r["site"]] for r in rows])
        w.writerow(["HAM_9999999", "ISIC_9999999", "nv", "histo", "50.0", "male", "back", "vienna_dias"])  # not ours
    _, parts, _ = compute_partition(other_cfg)
    assert [p.tolist() for p in parts] == [p.tolist() for p in sites.parts]
    # other partitioners ignore acquisition sites (no table needed)
    (other / HAM10000_SITES_FILE).unlink()
    _, parts, _ = compute_partition(_cfg(data=_data(other, tmp_path), partition={"method": "pathological",
                                                                                  "classes_per_site": 4},
                                         federation={"sites": 3}))
    assert all(len(set(rows[i]["label"] for i in p)) == 4 for p in parts)


def _write_images(folder: Path, ids: list[str], suffix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, iid in enumerate(ids):
        Image.new("RGB", (23 + k % 5, 19), (40 * (k % 6), 90, 160)).save(folder / f"{iid}{suffix}")


def test_other_real_datasets_register_label_sources(tmp_path):
    # ISIC 2017 with all official parts: each site trains on its Training rows, validates on its Validation rows and
    # tests on its Test_v2 rows (as `fgssl train` would), whatever the partitioner.
    root17 = tmp_path / "i17"
    labels17 = []
    for p, part in enumerate(("Training", "Validation", "Test_v2")):
        ids = [f"ISIC_{p}{j:05d}" for j in range(12)]
        _write_images(root17 / f"ISIC-2017_{part}_Data", ids, ".jpg")
        with open(root17 / f"ISIC-2017_{part}_Part3_GroundTruth.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image_id", "melanoma", "seborrheic_keratosis"])
            w.writerows([[i, float(j % 3 == 0), float(j % 3 == 1)] for j, i in enumerate(ids)])
        labels17 += [[0, 1, 2][j % 3] for j in range(12)]
    cfg17 = _cfg(data={"dataset": "isic2017", "root": str(root17), "cache_dir": str(tmp_path / "cache"),
                       "image_size": 16}, partition={"method": "iid"}, federation={"sites": 2})
    sites = build_sites(cfg17, tmp_path / "r17", save=False)
    assert sites.class_names() == ["melanoma", "seborrheic_keratosis", "nevus"]
    partitions = load_cache(sites.cache).partitions
    for s in range(2):
        for k, rows in enumerate(sites.split_rows(s)):
            assert len(rows) and (partitions[rows] == k).all()
        assert sites.splits(s).train.labels.tolist() == [labels17[i] for i in sites.split_rows(s)[0]]

    # APTOS 2019 grades under quantity skew
    root_aptos = tmp_path / "aptos"
    ids = [f"{k:012x}" for k in range(20)]
    _write_images(root_aptos / "train_images", ids, ".png")
    with open(root_aptos / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id_code", "diagnosis"], *[[i, k % 5] for k, i in enumerate(ids)]])
    cfg_aptos = _cfg(data={"dataset": "aptos2019", "root": str(root_aptos), "cache_dir": str(tmp_path / "cache"),
                           "image_size": 16}, partition={"method": "quantity"}, federation={"sites": 2})
    pool, parts, record = compute_partition(cfg_aptos)
    assert pool.labels.tolist() == [k % 5 for k in range(20)] and record["class_names"][0] == "no_dr"
    assert len(parts[0]) > len(parts[1]) and sorted(np.concatenate(parts).tolist()) == list(range(20))
    # a data set without acquisition sites cannot be split naturally
    with pytest.raises(ConfigError) as e:
        compute_partition(_cfg(data=dataclasses.asdict(cfg_aptos.data), partition={"method": "natural"}))
    assert e.value.key == "partition.method"


def test_partition_command_on_isic2018_natural(tmp_path):
    root = tmp_path / "isic"
    make_tiny_isic2018(root)
    cfg_path = _config(tmp_path, "natural", data=_data(root, tmp_path), partition={"method": "natural"},
                       federation={"sites": 3})
    proc = run_cli("partition", "--config", str(cfg_path), "--out", str(tmp_path / "part"))
    assert "isic2018 data, 60 images, natural over 3 sites" in proc.stdout
    for name in ("vidir_molemax", "rosendahl", "vienna_dias", "MEL", "VASC"):
        assert name in proc.stdout


def test_bad_real_data_config_fails_before_training_naming_the_key(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("simulate", "--set", "data.dataset=isic2018", "--out", str(out), check=False, timeout=120)
    assert proc.returncode == 2
    assert "'data.root'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
    missing = tmp_path / "nowhere"
    proc = run_cli("simulate", "--set", "data.dataset=isic2018", "--set", f"data.root={missing}", "--set",
                   f"data.cache_dir={tmp_path / 'cache'}", "--out", str(out), check=False, timeout=120)
    assert proc.returncode == 2 and str(missing) in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.skipif(not REAL_ISIC2018.is_dir(),
                    reason=f"real-data fixture not found at {REAL_ISIC2018} (see DESIGN.md section 6)")
def test_real_isic2018_sample_simulates_two_sites(tmp_path):
    cfg_path = _config(tmp_path, "real", data=_data(REAL_ISIC2018, tmp_path, val_fraction=0.15, test_fraction=0.25),
                       federation={"sites": 2, "ssl_rounds": 0, "finetune_rounds": 1})
    out = tmp_path / "run"
    run_cli("simulate", "--config", str(cfg_path), "--out", str(out), "--quiet")
    final = _final(out)
    assert set(final) == {"0", "1", "pooled"} and final["pooled"]["num_examples"] > 0
    record = json.loads((out / "partition.json").read_text())
    assert record["class_names"] == list(ISIC2018_CLASSES) and sum(s["num_samples"] for s in record["sites"]) == 49
    assert not (REAL_ISIC2018 / ".fgssl-cache").exists()
    # the real sample's sites come from HAM10000_metadata_with_sites.csv (its metadata has no `dataset` column)
    cfg = load_config(out / "config.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        sites = build_sites(cfg, tmp_path / "replay", save=False)
    _assert_lesions_stay_in_one_split(sites, 2)
    cache = load_cache(sites.cache)
    present = sorted(set(cache.sites.tolist()) - {""})
    groups_cfg = load_config(out / "config.yaml", ["partition.method=natural", "federation.sites=1"])
    with pytest.raises(ConfigError) as e:
        compute_partition(groups_cfg)
    names = [n for n in HAM10000_SITES if n in str(e.value)]
    assert e.value.key == "federation.sites" and names and not present
    pool, parts, record = compute_partition(load_config(out / "config.yaml", ["partition.method=natural",
                                                                              f"federation.sites={len(names)}"]))
    assert sum(len(p) for p in parts) == 49 and {s["name"] for s in record["sites"]} == set(names)


def test_a_held_out_site_is_a_data_set_of_its_own_whose_training_leaves_the_federation_finite(tmp_path, capsys):
    """simulations/held_out_site.py: the public source of DP pretraining is one acquisition site, written as its own
    folder data set: lesion-disjoint from the federation's, another content key and ledger, so its training without
    DP marks only itself unbounded and its weights pass the provenance check; a site sharing a lesion is refused.
    Training in the clear on the same files through the isic2018 loader marks both unbounded (file digests)."""
    from fgssl.privacy.data_ledger import data_ledger_ref, lifetime, record_training_without_dp
    from fgssl.data.cache import prepare
    from simulations.held_out_site import main

    root = tmp_path / "isic"
    rows = make_tiny_isic2018(root)
    out = tmp_path / "held-out"
    assert main(["--root", str(root), "--public", "vienna_dias", "--out", str(out)]) == 0
    public, federation = (list(csv.DictReader(open(out / name))) for name in ("public.csv", "federation.csv"))
    assert sorted(r["image"] for r in public) == sorted(f"{ISIC2018_IMAGES}/{r['id']}.jpg" for r in rows
                                                        if r["site"] == "vienna_dias")
    assert len(public) + len(federation) == len(rows) and {r["site"] for r in federation} == {"vidir_molemax",
                                                                                             "rosendahl"}
    assert not {r["lesion"] for r in public} & {r["lesion"] for r in federation}
    configs = {name: load_config(out / f"{name}.yaml", [f"model.weights={root / ISIC2018_CSV}"] if name == "dp" else
                                 []) for name in ("public", "dp")}
    assert configs["public"].data.csv == str((out / "public.csv").resolve())
    assert configs["dp"].data.csv == str((out / "federation.csv").resolve()) and configs["dp"].privacy.mode == "sample"
    assert "public/model.safetensors" in (out / "dp.yaml").read_text()

    refs = {}
    for name in ("public", "dp"):
        cfg = load_config(out / f"{name}.yaml", [f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=16",
                                                 "model.weights=null", "partition.method=natural",
                                                 "federation.sites=2"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            refs[name] = data_ledger_ref(cfg, prepare(cfg.data, progress=False).path)
    assert refs["public"].key != refs["dp"].key
    record_training_without_dp(refs["public"], run="public@1", what="centralised training (fgssl train)")
    assert lifetime(refs["public"]).unprotected is not None
    assert lifetime(refs["dp"]).unprotected is None and lifetime(refs["dp"]).related == []
    # the same files through the isic2018 loader (ids ISIC_..., not CSV paths) are the same images to the ledger:
    # training on them in the clear leaves neither folder data set a finite lifetime
    isic = load_config(out / "public.yaml", ["data.dataset=isic2018", "data.csv=null", "data.path_column=image",
                                             "data.label_column=label", "data.group_column=null",
                                             "data.site_column=null", "data.class_names=[]",
                                             f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=16"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        refs["isic"] = data_ledger_ref(isic, prepare(isic.data, progress=False).path)
    record_training_without_dp(refs["isic"], run="e1@2", what="centralised training (fgssl train)")
    for name in ("public", "dp"):
        life = lifetime(refs[name])
        assert refs["isic"].path in life.related and "e1@2" in {e.run_id for e in life.entries}, name
    assert lifetime(refs["dp"]).epsilon == float("inf") and lifetime(refs["dp"]).unprotected.run_id == "e1@2"

    # a lesion with images at two sites: holding either out is refused, naming the lesion
    meta = (root / HAM10000_METADATA).read_text().splitlines()
    moved = next(i for i, line in enumerate(meta) if line.startswith("HAM_0000002,"))  # lesion 2: 3 images
    meta[moved] = meta[moved].replace("vidir_molemax", "vienna_dias")
    (root / HAM10000_METADATA).write_text("\n".join(meta) + "\n")
    capsys.readouterr()
    assert main(["--root", str(root), "--public", "vienna_dias", "--out", str(tmp_path / "refused")]) == 2
    assert "shares 1 lesion(s) with other sites (e.g. HAM_0000002)" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "public.csv").exists()
