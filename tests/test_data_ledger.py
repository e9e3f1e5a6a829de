"""The ledger of a real data set (fgssl/privacy/data_ledger.py): keyed by its images, continued by every run on
them, unbounded after training without DP, written before a site's update leaves, shared by parallel sites.

A tiny `data.dataset: folder` (PNGs and a CSV the tests write) is a real data set with a cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants.analysis import rdp as rdp_analysis
from PIL import Image

from fgssl.config import ConfigError, config_from_dict
from fgssl.data.cache import content_key, load_cache, prepare
from fgssl.privacy.accounting import RDP_ORDERS, Mechanism
from fgssl.privacy.data_ledger import (copy_to_data_ledger, data_ledger_ref, data_statement, lifetime,
                                       open_data_ledger, record_training_without_dp)
from fgssl.privacy.ledger import PrivacyLedger

from .conftest import REPO, TINY, merge

DELTA = 1e-5


def make_folder(root: Path, n: int = 40, drop: int | None = None, prefix: str = "", tone: int = 0) -> Path:
    """n small PNGs in two classes, with a lesion column (groups of 1-3 images); row `drop` left out of the CSV;
    `tone` shifts every pixel (other content, so other images to a ledger that compares files)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = ["image,label,lesion"]
    for i in range(n):
        path = root / "img" / f"{prefix}{i:03d}.png"
        if not path.exists():
            pixels = np.full((12, 12, 3), 40 + 5 * i + tone, dtype=np.uint8)
            pixels[..., i % 3] = 200 if i % 2 else 60
            Image.fromarray(pixels).save(path)
        if i != drop:
            rows.append(f"img/{prefix}{i:03d}.png,{'ab'[i % 2]},L{i // 3}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def folder_config(root: Path, cache: Path, **sections) -> dict:
    data = {"dataset": "folder", "root": str(root), "csv": "labels.csv", "group_column": "lesion",
            "cache_dir": str(cache), "image_size": 16, "site_shift": 0.0, "val_fraction": 0.2, "test_fraction": 0.2}
    return merge(merge(TINY, {"data": data, "partition": {"method": "iid"}}), sections)


def ref_of(cfg_dict: dict):
    cfg = config_from_dict(cfg_dict)
    return data_ledger_ref(cfg, prepare(cfg.data, progress=False).path)


def site_history(path: Path, mechanisms: list[Mechanism], run: str) -> PrivacyLedger:
    ledger = PrivacyLedger(path)
    for i, m in enumerate(mechanisms):
        ledger.commit(ledger.reserve(m, run_id=run, round=i + 1, phase="finetune", delta=DELTA))
    return ledger


def opacus_curve(mechanisms: list[Mechanism]) -> np.ndarray:
    return sum(rdp_analysis.compute_rdp(q=m.sample_rate, noise_multiplier=m.noise_multiplier, steps=m.steps,
                                        orders=list(RDP_ORDERS)) for m in mechanisms)


def test_the_key_names_the_images_and_labels_not_their_size(tmp_path):
    root = make_folder(tmp_path / "data")
    keys = {size: ref_of(folder_config(root, tmp_path / "cache", data={"image_size": size})).key for size in (16, 24)}
    assert keys[16] == keys[24]  # the same images decoded at another size are the same patients' images
    assert ref_of(folder_config(root, tmp_path / "cache")).path.parent == (tmp_path / "cache" / "privacy-ledgers")
    make_folder(root, drop=5)
    assert ref_of(folder_config(root, tmp_path / "cache")).key != keys[16]


def test_a_second_run_continues_and_each_run_counts_its_worst_site(tmp_path):
    """Lifetime ε = ε of Σ over runs of max over sites of the sites' RDP curves, computed here with Opacus."""
    ref = ref_of(folder_config(make_folder(tmp_path / "data"), tmp_path / "cache"))
    weak, strong = (Mechanism(sample_rate=0.2, noise_multiplier=s, steps=10) for s in (0.8, 2.0))
    runs = {"run-a@1": [[weak, weak], [strong]], "run-b@2": [[strong], [weak]]}
    for run, sites in runs.items():
        for site, mechanisms in enumerate(sites):
            with site_history(tmp_path / run / f"site_{site}", mechanisms, run.split("@")[0]) as own:
                copy_to_data_ledger(ref, own, run=run, site=site)
                copy_to_data_ledger(ref, own, run=run, site=site)  # copying again adds nothing
    life = lifetime(ref)
    assert life.runs == ["run-a@1", "run-b@2"] and life.delta == DELTA and life.unprotected is None
    bound = opacus_curve([weak, weak]) + np.maximum(opacus_curve([strong]), opacus_curve([weak]))
    expected, _ = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=bound, delta=DELTA)
    assert life.epsilon == pytest.approx(expected, rel=1e-9)
    every_site = opacus_curve([weak, weak, strong, strong, weak])  # composing all: the looser rule
    assert life.epsilon < rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=every_site, delta=DELTA)[0]
    with open_data_ledger(ref) as ledger:
        assert [(e.run_id, e.site) for e in ledger.history()] == [
            ("run-a@1", "0"), ("run-a@1", "0"), ("run-a@1", "1"), ("run-b@2", "0"), ("run-b@2", "1")]
    text = data_statement(config_from_dict(folder_config(tmp_path / "data", tmp_path / "cache")), ref)["text"]
    assert f"ε = {life.epsilon:.2f} at δ = 1e-05" in text and "2 run(s)" in text


def test_sites_that_may_share_images_compose_instead(tmp_path):
    cfg = config_from_dict(folder_config(make_folder(tmp_path / "data"), tmp_path / "cache"))
    cache = prepare(cfg.data, progress=False).path
    assert data_ledger_ref(cfg, cache, [[0, 1], [2, 3]]).holder(1) == "1"
    shared = data_ledger_ref(cfg, cache, [[0, 1], [1, 2]])
    assert shared.holder(0) == shared.holder(1) == "all"


def test_a_site_writes_the_data_ledger_before_it_trains_and_non_dp_training_makes_it_unbounded(tmp_path, monkeypatch):
    from client.site import train_round
    from fgssl.privacy import node
    from server.app import initial_global
    from simulations.sites import build_sites
    from strategies.fgssl_strategy import FGSSLStrategy

    root = make_folder(tmp_path / "data")
    seen = []

    def one_round(run_dir: Path, uid: str, privacy: dict) -> dict:
        cfg = config_from_dict(folder_config(root, tmp_path / "cache", privacy=privacy,
                                             federation={"sites": 2, "ssl_rounds": 0, "finetune_rounds": 1}))
        run_dir.mkdir(parents=True)
        sites = build_sites(cfg, run_dir)
        global_ = initial_global(cfg, 2)
        strategy = FGSSLStrategy(cfg.federation, list(global_))
        rc = {**strategy.round_config(1, cfg.seed), "run_id": run_dir.name, "run_uid": uid}
        keys = strategy.keys_to_send(rc["phase"])
        return train_round(cfg, sites, 0, {k: global_[k] for k in keys}, rc)[1]

    ref = ref_of(folder_config(root, tmp_path / "cache"))
    real_train = node.dp_train_local

    def spy(*args, **kwargs):  # what the data set's ledger holds when DP training begins
        with open_data_ledger(ref) as ledger:
            seen.append([(e.phase, e.status) for e in ledger.history()])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(node, "dp_train_local", spy)
    info = one_round(tmp_path / "dp-run", "aaaa", {"mode": "sample", "noise_multiplier": 1.0})
    assert "refused" not in info and info["epsilon"] > 0
    assert seen == [[("count", "committed"), ("finetune", "reserved")]]
    with open_data_ledger(ref) as ledger:  # after the round: the commit followed
        assert [(e.run_id, e.phase, e.status) for e in ledger.history()] == [
            ("dp-run@aaaa", "count", "committed"), ("dp-run@aaaa", "finetune", "committed")]
    assert lifetime(ref).epsilon == pytest.approx(info["epsilon"])  # one site so far: its own ε

    assert "refused" not in one_round(tmp_path / "plain-run", "bbbb", {"mode": "none"})
    life = lifetime(ref)
    assert life.epsilon == float("inf") and life.unprotected.run_id == "plain-run@bbbb"
    dp_cfg = config_from_dict(folder_config(root, tmp_path / "cache",
                                            privacy={"mode": "sample", "noise_multiplier": 1.0}))
    statement = data_statement(dp_cfg, ref)
    assert statement["epsilon"] is None and statement["unbounded_by"] == "plain-run@bbbb"
    assert "ε = ∞, because run plain-run@bbbb trained on them without sample-level DP" in statement["text"]
    assert "privacy.mode=none" in statement["text"]


def test_a_data_set_that_shares_images_with_another_inherits_its_history(tmp_path):
    root = make_folder(tmp_path / "data")
    full = ref_of(folder_config(root, tmp_path / "cache"))
    record_training_without_dp(full, run="central@1", what="centralised training (fgssl train)")
    make_folder(root, drop=7)  # one image fewer: another key, but 39 of its images were trained on in the clear
    smaller = ref_of(folder_config(root, tmp_path / "cache"))
    assert smaller.key != full.key and smaller.path != full.path
    life = lifetime(smaller)
    assert life.related == [full.path] and life.epsilon == float("inf") and life.unprotected.run_id == "central@1"
    # the same files under other names (another loader's ids) are the same images: known by their content too
    copy = tmp_path / "copy"
    (copy / "renamed").mkdir(parents=True)
    for png in sorted((root / "img").glob("*.png"))[:5]:
        (copy / "renamed" / f"r{png.name}").write_bytes(png.read_bytes())
    rows = "".join(f"renamed/r{i:03d}.png,{'ab'[i % 2]}\n" for i in range(5))
    (copy / "labels.csv").write_text("image,label\n" + rows)
    renamed = ref_of(merge(folder_config(copy, tmp_path / "cache"), {"data": {"group_column": None}}))
    assert lifetime(renamed).unprotected.run_id == "central@1" and full.path in lifetime(renamed).related
    # another data set with other files shares nothing
    other = ref_of(folder_config(make_folder(tmp_path / "other", n=10, prefix="x", tone=1), tmp_path / "cache"))
    with PrivacyLedger(tmp_path / "other-site") as own:  # a data set that shares nothing is not affected
        own.commit(own.reserve(Mechanism(sample_rate=0.5, noise_multiplier=2.0, steps=3), run_id="r", round=1,
                               phase="finetune", delta=DELTA))
        copy_to_data_ledger(other, own, run="r@3", site=0)
    assert content_key(load_cache(other.cache)) == other.key
    assert lifetime(other).related == [] and 0 < lifetime(other).epsilon < float("inf")
    with PrivacyLedger(other.path, readonly=True) as ledger:
        assert len(ledger.image_digests()) == 10 and len(ledger.image_ids()) == 10


def test_two_processes_write_the_same_data_ledger(tmp_path):
    """Simulated sites run in parallel processes: BEGIN IMMEDIATE with a timeout serialises their writes."""
    ref = ref_of(folder_config(make_folder(tmp_path / "data"), tmp_path / "cache"))
    script = (
        "import sys; from pathlib import Path\n"
        "from fgssl.privacy.accounting import Mechanism\n"
        "from fgssl.privacy.data_ledger import DataLedgerRef, copy_to_data_ledger\n"
        "from fgssl.privacy.ledger import PrivacyLedger\n"
        "site, path, key, cache = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])\n"
        "ref = DataLedgerRef(path, key, cache)\n"
        "own = PrivacyLedger(Path(sys.argv[5]))\n"
        "for r in range(30):\n"
        "    own.reserve(Mechanism(sample_rate=0.1, noise_multiplier=1.0 + site, steps=1), run_id='r', round=r,\n"
        "                phase='finetune', delta=1e-5)\n"
        "    copy_to_data_ledger(ref, own, run='r@1', site=site)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(s), str(ref.path), ref.key, str(ref.cache),
                               str(tmp_path / f"site_{s}")], cwd=REPO, stderr=subprocess.PIPE, text=True)
             for s in (0, 1)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    with open_data_ledger(ref) as ledger:
        history = ledger.history()
    assert sorted((e.site, e.round) for e in history) == sorted((str(s), r) for s in (0, 1) for r in range(30))


def test_synthetic_data_says_its_ledgers_are_per_run():
    cfg = config_from_dict(merge(TINY, {"privacy": {"mode": "sample", "noise_multiplier": 1.0}}))
    statement = data_statement(cfg, None)
    assert statement["scope"] == "run" and "synthetic" in statement["text"] and "per run" in statement["text"]


def test_ledger_dir_is_checked_once_in_the_config(tmp_path):
    root = make_folder(tmp_path / "data")

    def key_of_error(**privacy) -> str:
        with pytest.raises(ConfigError) as e:
            config_from_dict(folder_config(root, tmp_path / "cache", privacy=privacy))
        return e.value.key

    (tmp_path / "a-file").write_text("")
    assert key_of_error(ledger_dir=str(tmp_path / "a-file")) == "privacy.ledger_dir"
    assert key_of_error(ledger_dir=str(root / "ledgers")) == "privacy.ledger_dir"
    assert key_of_error(ledger_dir="  ") == "privacy.ledger_dir"
    with pytest.raises(ConfigError, match="synthetic"):
        config_from_dict(merge(TINY, {"privacy": {"ledger_dir": str(tmp_path / "l")}}))
    chosen = ref_of(folder_config(root, tmp_path / "cache", privacy={"ledger_dir": str(tmp_path / "l")}))
    assert chosen.path.parent == (tmp_path / "l").resolve()


def test_centralised_training_records_an_unprotected_release(tmp_path):
    from .conftest import run_cli
    import yaml

    root = make_folder(tmp_path / "data")
    cfg = tmp_path / "central.yaml"
    cfg.write_text(yaml.safe_dump(folder_config(root, tmp_path / "cache",
                                                train={"batch_size": 8, "ssl_epochs": 0, "finetune_epochs": 1})))
    run_cli("train", "--config", str(cfg), "--out", str(tmp_path / "central"), "--quiet")
    life = lifetime(ref_of(folder_config(root, tmp_path / "cache")))
    assert life.epsilon == float("inf") and life.unprotected.run_id.startswith("central@")
    assert "fgssl train" in life.unprotected.label and life.unprotected.site == "central"
    summary = json.loads((tmp_path / "central" / "summary.json").read_text())
    assert "lifetime ε = ∞" in summary["privacy"]["text"]


@pytest.mark.slow
def test_a_second_simulation_on_the_same_images_continues_their_ledger(tmp_path):
    from .conftest import run_cli
    import yaml

    root = make_folder(tmp_path / "data")
    cfg = tmp_path / "dp.yaml"
    cfg.write_text(yaml.safe_dump(folder_config(
        root, tmp_path / "cache", train={"batch_size": 4},
        privacy={"mode": "sample", "noise_multiplier": 1.0, "delta": 1e-5},
        federation={"sites": 2, "ssl_rounds": 0, "finetune_rounds": 1, "max_local_batches": 1})))
    statements = []
    for run in ("first", "second"):
        run_cli("simulate", "--config", str(cfg), "--out", str(tmp_path / run), "--quiet")
        statements.append(json.loads((tmp_path / run / "summary.json").read_text())["privacy"])
    first, second = (s["data_ledger"] for s in statements)
    assert first["ledger"] == second["ledger"] and (first["runs"], second["runs"]) == (1, 2)
    # one run: its worst site's ε; two runs: more than either run alone
    assert first["epsilon"] == pytest.approx(statements[0]["max_epsilon_spent"], rel=1e-6)
    assert second["epsilon"] > max(first["epsilon"], statements[1]["max_epsilon_spent"])
    assert "Lifetime of these images over all 2 run(s)" in statements[1]["text"]
    assert second["groups"]["largest_group"] == 3 and "The unit is one image" in statements[1]["text"]


def test_with_lesion_ids_the_statement_names_the_unit_and_the_group_bound(tmp_path):
    """Mironov 2017 Prop. 11, recomputed here with Opacus: (α, ε(α))-RDP gives (α/4, 9·ε(α))-RDP for groups of up to
    4 (so 3) images, from the orders α ≥ 8."""
    from fgssl.privacy.data_ledger import Groups
    from simulations.sites import build_sites

    root = make_folder(tmp_path / "data")  # lesions of 3 images (the last of 1)
    cfg = config_from_dict(folder_config(root, tmp_path / "cache", privacy={"mode": "sample", "noise_multiplier": 1}))
    (tmp_path / "run").mkdir()
    sites = build_sites(cfg, tmp_path / "run")
    groups = sites.groups()
    assert groups.data_set == 3 and set(groups.per_site) == {0, 1} and all(1 <= k <= 3 for k in groups.per_site.values())
    mechanisms = {0: [Mechanism(sample_rate=0.1, noise_multiplier=1.5, steps=20)],
                  1: [Mechanism(sample_rate=0.1, noise_multiplier=3.0, steps=20)]}
    for site, ms in mechanisms.items():
        with site_history(sites.state_dir(site), ms, "run") as own:
            copy_to_data_ledger(sites.data_ledger, own, run="run@1", site=site)
    chosen = Groups({0: 3, 1: 1}, 3, groups.site_ledgers)
    statement = data_statement(cfg, sites.data_ledger, chosen)["groups"]

    def by_prop_11(curve: np.ndarray) -> float:
        keep = np.array(RDP_ORDERS) >= 8
        return rdp_analysis.get_privacy_spent(orders=list(np.array(RDP_ORDERS)[keep] / 4), rdp=9 * curve[keep],
                                              delta=DELTA)[0]

    single = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=opacus_curve(mechanisms[1]), delta=DELTA)[0]
    assert statement["per_site"]["0"]["epsilon"] == pytest.approx(by_prop_11(opacus_curve(mechanisms[0])), rel=1e-9)
    assert statement["per_site"]["1"] == {"k": 1, "epsilon": pytest.approx(single, rel=1e-9), "delta": DELTA}
    worst = np.maximum(opacus_curve(mechanisms[0]), opacus_curve(mechanisms[1]))
    assert statement["lifetime_epsilon"] == pytest.approx(by_prop_11(worst), rel=1e-9)
    assert statement["lifetime_epsilon"] > lifetime(sites.data_ledger).epsilon
    assert "every ε above is for one image" in statement["text"] and "site 0: k = 3" in statement["text"]
    assert "largest group in the data set, k = 3" in statement["text"]


def test_a_data_ledger_with_nothing_recorded_says_so(tmp_path):
    cfg_dict = folder_config(make_folder(tmp_path / "data"), tmp_path / "cache")
    ref = ref_of(cfg_dict)
    statement = data_statement(config_from_dict(cfg_dict), ref)
    assert statement["runs"] == 0 and "No release about these images is recorded" in statement["text"]
