"""Partitioners of virtual hospitals, the HAM10000 site table, per-site acquisition shift and `fgssl partition`."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from fgssl.config import ConfigError, PartitionConfig, load_config
from fgssl.data import synthetic
from simulations.partition import (
    HAM10000_SITES,
    HAM10000_SITES_FILE,
    PoolLabels,
    compute_partition,
    dirichlet,
    groups_for,
    label_divergence,
    natural,
    partition,
    partition_record,
    pathological,
    quantity,
    quantity_shares,
    read_ham10000_sites,
)
from simulations.shift import apply_site_shift

from .conftest import run_cli

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
HAM_SITES_CSV = REALDATA / "ham10000_isic2018_task3" / HAM10000_SITES_FILE
HAM_SIZES = {"vidir_molemax": 3954, "vidir_modern": 3363, "rosendahl": 2259, "vienna_dias": 439}

NUM_CLASSES = 7
LABELS = synthetic.labels_for(np.arange(3000), 0, NUM_CLASSES)  # ISIC-like skewed class frequencies
GROUPS = np.array(["a", "b", "c"])[np.random.default_rng(0).integers(0, 3, len(LABELS))]

CONFIGS = {
    "iid": PartitionConfig(method="iid"),
    "dirichlet": PartitionConfig(method="dirichlet", alpha=0.3),
    "pathological": PartitionConfig(method="pathological", classes_per_site=2),
    "quantity": PartitionConfig(method="quantity", quantity_exponent=1.5),
    "natural": PartitionConfig(method="natural"),
}


def _assert_exact_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n, "a sample is missing or assigned twice"
    assert np.array_equal(np.sort(allidx), np.arange(n))
    assert all(len(p) > 0 for p in parts), [len(p) for p in parts]


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("seed", [0, 7])
def test_every_sample_assigned_exactly_once_and_deterministic(method, seed):
    sites = 3 if method == "natural" else 6
    parts = partition(LABELS, sites, CONFIGS[method], seed, groups=GROUPS)
    assert len(parts) == sites
    _assert_exact_cover(parts, len(LABELS))
    again = partition(LABELS, sites, CONFIGS[method], seed, groups=GROUPS)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    if method != "natural":  # natural has no randomness
        other = partition(LABELS, sites, CONFIGS[method], seed + 1, groups=GROUPS)
        assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_dirichlet_skew_follows_alpha():
    """Mean total-variation distance of each site's label mix from the pool's, averaged over seeds."""
    def tv(alpha):
        return np.mean([label_divergence(LABELS, dirichlet(LABELS, 10, alpha, s), NUM_CLASSES) for s in range(5)])

    skewed, medium, flat = tv(0.1), tv(1.0), tv(100.0)
    iid = np.mean([label_divergence(LABELS, partition(LABELS, 10, CONFIGS["iid"], s), NUM_CLASSES)
                   for s in range(5)])
    assert skewed > 0.5, skewed
    assert skewed > medium > flat
    assert flat < 0.06 and flat < iid + 0.02, (flat, iid)


@pytest.mark.parametrize("sites,k", [(7, 1), (4, 2), (7, 3), (10, 2), (3, 7)])
def test_pathological_gives_exactly_k_classes_per_site(sites, k):
    for seed in range(3):
        parts = pathological(LABELS, sites, k, seed)
        _assert_exact_cover(parts, len(LABELS))
        held = [set(np.unique(LABELS[p]).tolist()) for p in parts]
        assert [len(h) for h in held] == [k] * sites
        assert set().union(*held) == set(range(NUM_CLASSES))


def test_quantity_skew_follows_the_power_law():
    n, sites = len(LABELS), 5
    for exponent in (0.5, 1.0, 2.0):
        sizes = np.array([len(p) for p in quantity(LABELS, sites, exponent, seed=3)])
        assert np.all(np.diff(sizes) <= 0) and sizes[0] > sizes[-1]
        expected = 1 + quantity_shares(sites, exponent) * (n - sites)  # min_per_site=1, the rest by power law
        assert np.all(np.abs(sizes - expected) < 1), (sizes, expected)
        assert sizes[0] / sizes[-1] == pytest.approx(sites ** exponent, rel=0.02)
    equal = [len(p) for p in quantity(LABELS, sites, 0.0, seed=3)]
    assert max(equal) - min(equal) <= 1
    # labels stay IID: each site's class mix is near the pool's
    assert label_divergence(LABELS, quantity(LABELS, sites, 1.0, seed=3), NUM_CLASSES) < 0.08
    # every site non-empty even under extreme skew
    tiny = quantity(LABELS[:40], 8, 4.0, seed=0, min_per_site=1)
    _assert_exact_cover(tiny, 40)


def test_natural_splits_by_group_largest_first():
    groups = np.array(["x"] * 5 + ["y"] * 9 + ["z"] * 2)
    parts = natural(groups, 3)
    assert [len(p) for p in parts] == [9, 5, 2]
    assert np.array_equal(parts[0], np.arange(5, 14))
    pool = PoolLabels(np.zeros(16, dtype=np.int64), ["only"], groups)
    record = partition_record(PartitionConfig(method="natural"), 0, pool, parts)
    assert [s["name"] for s in record["sites"]] == ["y", "x", "z"]


@pytest.mark.skipif(not HAM_SITES_CSV.is_file(), reason=f"real HAM10000 site table not present at {HAM_SITES_CSV}")
def test_natural_split_of_ham10000_gives_its_four_sites():
    site_of = read_ham10000_sites(HAM_SITES_CSV)
    assert len(site_of) == 10015
    ids = list(site_of)
    groups = groups_for(ids, site_of, HAM_SITES_CSV.name)
    labels = np.zeros(len(ids), dtype=np.int64)
    parts = partition(labels, 4, PartitionConfig(method="natural"), seed=0, groups=groups)
    _assert_exact_cover(parts, 10015)
    record = partition_record(PartitionConfig(method="natural"), 0, PoolLabels(labels, ["any"], groups), parts)
    assert {s["name"]: s["num_samples"] for s in record["sites"]} == HAM_SIZES
    assert [s["name"] for s in record["sites"]] == list(HAM10000_SITES)  # largest first
    with pytest.raises(ConfigError) as e:
        partition(labels, 5, PartitionConfig(method="natural"), seed=0, groups=groups)
    assert e.value.key == "federation.sites" and "4" in str(e.value)


def test_ham10000_site_table_errors_name_file_and_row(tmp_path):
    bad = tmp_path / "meta.csv"
    bad.write_text("lesion_id,image_id,dx\nHAM_1,ISIC_1,nv\n")
    with pytest.raises(ValueError, match="dataset"):
        read_ham10000_sites(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("lesion_id,image_id,dx,dx_type,age,sex,localization,dataset\n"
                   "HAM_1,ISIC_1,nv,histo,40,male,back,rosendahl\nHAM_1,ISIC_1,nv,histo,40,male,back,rosendahl\n")
    with pytest.raises(ValueError, match=r"row 3: duplicate image_id ISIC_1"):
        read_ham10000_sites(dup)
    with pytest.raises(ValueError, match="ISIC_2"):
        groups_for(["ISIC_2"], {"ISIC_1": "rosendahl"})


@pytest.mark.parametrize("call,key", [
    (lambda: dirichlet(LABELS, 4, 0.0, 0), "partition.alpha"),
    (lambda: dirichlet(LABELS, 4, -1.0, 0), "partition.alpha"),
    (lambda: pathological(LABELS, 4, NUM_CLASSES + 1, 0), "partition.classes_per_site"),
    (lambda: pathological(LABELS, 2, 2, 0), "partition.classes_per_site"),  # 2 x 2 slots cannot cover 7 classes
    # 3 classes with 2 samples each: at most 6 (site, class) pairs, but 10 sites x 1 class need 10
    (lambda: pathological(np.repeat(np.arange(3), 2), 10, 1, 0), "federation.sites"),
    (lambda: natural(GROUPS, 4), "federation.sites"),
    (lambda: partition(LABELS, 3, PartitionConfig(method="natural"), 0), "partition.method"),
    (lambda: quantity(LABELS, 4, -1.0, 0), "partition.quantity_exponent"),
    (lambda: partition(LABELS[:5], 6, PartitionConfig(method="iid"), 0), "federation.sites"),
])
def test_bad_inputs_name_the_key(call, key):
    with pytest.raises(ConfigError) as e:
        call()
    assert e.value.key == key
    assert key in str(e.value)


@pytest.mark.parametrize("override,key", [
    ("partition.alpha=0", "partition.alpha"),
    ("partition.classes_per_site=0", "partition.classes_per_site"),
    ("partition.quantity_exponent=-0.5", "partition.quantity_exponent"),
    ("partition.min_per_site=0", "partition.min_per_site"),
    ("partition.method=shards", "partition.method"),
])
def test_config_validation_names_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert e.value.key == key


def test_site_shift_is_deterministic_differs_between_sites_and_zero_is_identity():
    images, _ = synthetic.generate(np.arange(6), seed=0, image_size=32)
    a = apply_site_shift(images, site=1, strength=1.0, seed=5)
    assert a.dtype == np.uint8 and a.shape == images.shape
    assert np.array_equal(a, apply_site_shift(images, site=1, strength=1.0, seed=5))
    b = apply_site_shift(images, site=2, strength=1.0, seed=5)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 2.0
    assert not np.array_equal(a, apply_site_shift(images, site=1, strength=1.0, seed=6))
    same = apply_site_shift(images, site=3, strength=0.0, seed=5)
    assert np.array_equal(same, images) and same is not images
    change = [np.abs(apply_site_shift(images, 1, s, 5).astype(int) - images).mean() for s in (0.25, 1.0, 2.0)]
    assert change[0] < change[1] < change[2] and change[1] < 40, change  # visible, not destroyed
    with pytest.raises(ValueError):
        apply_site_shift(images.astype(np.float32), 0, 1.0, 0)
    with pytest.raises(ValueError):
        apply_site_shift(images, 0, -1.0, 0)


def test_build_sites_uses_the_dispatcher_and_saves_the_record(tmp_path):
    from simulations.sites import build_sites
    cfg = load_config(None, ["data.num_samples=300", "partition.method=pathological", "federation.sites=5",
                             "federation.min_nodes=1"])
    sites = build_sites(cfg, tmp_path)
    record = json.loads((tmp_path / "partition.json").read_text())
    assert record == compute_partition(cfg)[2]
    assert record["method"] == "pathological" and record["params"] == {"classes_per_site": 2}
    assert [len(p) for p in sites.parts] == [s["num_samples"] for s in record["sites"]]
    assert all(sum(1 for c in s["class_counts"] if c) == 2 for s in record["sites"])


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_partition_command_writes_json_table_and_chart(tiny_config, tmp_path):
    from cli.reports.plots import PARTITION_DPI, PARTITION_FIGSIZE
    cfg_path = tiny_config(partition={"method": "dirichlet", "alpha": 0.5}, federation={"sites": 3})
    out = tmp_path / "part"
    proc = run_cli("partition", "--config", str(cfg_path), "--out", str(out), "--seed", "4", "--set",
                   "partition.method=pathological", "--set", "partition.classes_per_site=3")
    record = json.loads((out / "partition.json").read_text())
    assert set(record) == {"method", "params", "seed", "class_names", "sites"}
    assert record["method"] == "pathological" and record["seed"] == 4
    assert record["class_names"] == list(synthetic.class_names(NUM_CLASSES))
    _assert_exact_cover([np.array(s["indices"]) for s in record["sites"]], 240)
    for s in record["sites"]:
        assert set(s) == {"site", "num_samples", "class_counts", "indices"}
        assert s["num_samples"] == len(s["indices"]) == sum(s["class_counts"])
    for name in record["class_names"]:
        assert name in proc.stdout
    assert "total" in proc.stdout
    png = out / "partition.png"
    assert png.stat().st_size > 10_000
    assert _png_size(png) == (round(PARTITION_FIGSIZE[0] * PARTITION_DPI), round(PARTITION_FIGSIZE[1] * PARTITION_DPI))

    bad = run_cli("partition", "--config", str(cfg_path), "--out", str(tmp_path / "bad"), "--set",
                  "partition.alpha=-1", check=False)
    assert bad.returncode == 2 and "partition.alpha" in bad.stderr
