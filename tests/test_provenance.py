"""Public weights (`model.weights`): their SHA-256 and declared source reach the ledgers; weights a run trained on
the same images without sample-level DP are refused when a DP run starts, weights from disjoint images are not."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from fgssl.config import ConfigError, config_from_dict
from fgssl.privacy.data_ledger import lifetime, open_data_ledger
from fgssl.privacy.provenance import check_public_weights, public_weights

from .conftest import run_cli
from .test_data_ledger import folder_config, make_folder, ref_of

DP = {"mode": "sample", "noise_multiplier": 1.0}


def central_run(tmp_path: Path, root: Path, name: str) -> Path:
    """`fgssl train` (no DP) on the folder data set at `root`; returns its model.safetensors."""
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(folder_config(root, tmp_path / "cache",
                                                train={"batch_size": 8, "ssl_epochs": 0, "finetune_epochs": 1})))
    run_cli("train", "--config", str(cfg), "--out", str(tmp_path / name), "--quiet")
    return tmp_path / name / "model.safetensors"


def test_weights_trained_on_the_same_images_without_dp_are_refused_and_disjoint_ones_accepted(tmp_path):
    same, other = make_folder(tmp_path / "a"), make_folder(tmp_path / "b", n=30, prefix="b", tone=1)
    weights = central_run(tmp_path, same, "central-a")
    card = json.loads(weights.with_name("model.json").read_text())
    assert card["training"]["data_key"] == ref_of(folder_config(same, tmp_path / "cache")).key
    assert card["training"]["privacy_mode"] == "none" and card["training"]["run"].startswith("central-a@")

    dp_same = tmp_path / "dp-same.yaml"
    dp_same.write_text(yaml.safe_dump(folder_config(same, tmp_path / "cache", privacy=DP,
                                                    model={"weights": str(weights)})))
    proc = run_cli("simulate", "--config", str(dp_same), "--out", str(tmp_path / "refused"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "config key 'model.weights'" in proc.stderr and str(weights) in proc.stderr
    assert card["training"]["run"] in proc.stderr and "these very images" in proc.stderr
    assert not (tmp_path / "refused" / "summary.json").exists()

    # the same weights for a DP run on disjoint images: accepted, with what model.json says as their source
    cfg_other = config_from_dict(folder_config(other, tmp_path / "cache", privacy=DP, model={"weights": str(weights)}))
    accepted = check_public_weights(cfg_other, ref_of(folder_config(other, tmp_path / "cache")).key)
    assert accepted.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert accepted.source.startswith("model.json: fgssl train run central-a@") and "privacy none" in accepted.source
    # and a run without DP on the same images may start from them (it claims nothing)
    plain = config_from_dict(folder_config(same, tmp_path / "cache", model={"weights": str(weights)}))
    assert check_public_weights(plain, card["training"]["data_key"]) is not None


def test_the_sites_ledgers_record_the_weights_hash_and_declared_source(tmp_path):
    from client.site import train_round
    from server.app import initial_global
    from simulations.sites import build_sites
    from strategies.fgssl_strategy import FGSSLStrategy

    root = make_folder(tmp_path / "data")
    weights = central_run(tmp_path, make_folder(tmp_path / "public", n=20, prefix="p", tone=1), "public")
    cfg = config_from_dict(folder_config(root, tmp_path / "cache", privacy=DP,
                                         model={"weights": str(weights), "weights_source": "hospital X archive 2019"},
                                         federation={"sites": 2, "ssl_rounds": 0, "finetune_rounds": 1}))
    declared = public_weights(cfg)
    assert declared.source == "hospital X archive 2019"
    (tmp_path / "run").mkdir()
    sites = build_sites(cfg, tmp_path / "run")
    global_ = initial_global(cfg, 2)
    strategy = FGSSLStrategy(cfg.federation, list(global_))
    rc = {**strategy.round_config(1, cfg.seed), "run_id": "run", "run_uid": "u1", **declared.to_round_config()}
    info = train_round(cfg, sites, 0, {k: global_[k] for k in strategy.keys_to_send(rc["phase"])}, rc)[1]
    assert "refused" not in info
    from fgssl.privacy.ledger import PrivacyLedger

    with PrivacyLedger(sites.state_dir(0)) as own:
        [record] = own.weights()
    assert (record["sha256"], record["source"], record["path"]) == (declared.sha256, "hospital X archive 2019",
                                                                    str(weights.resolve()))
    with open_data_ledger(sites.data_ledger) as ledger:  # copied with the site's entries
        assert [w["sha256"] for w in ledger.weights()] == [declared.sha256]
    assert lifetime(sites.data_ledger).epsilon < float("inf")
    proc = run_cli("ledger", str(sites.data_ledger.path))
    assert f"sha256 {declared.sha256} (source: hospital X archive 2019)" in proc.stdout


def test_weights_source_needs_weights_and_a_bad_model_json_is_named(tmp_path):
    with pytest.raises(ConfigError, match="model.weights_source"):
        config_from_dict({"model": {"weights_source": "somewhere"}})
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    (tmp_path / "model.json").write_text("{not json")
    cfg = config_from_dict({"model": {"weights": str(weights), "norm": "group"},
                            "privacy": {"mode": "sample", "noise_multiplier": 1.0}})
    with pytest.raises(ConfigError, match=r"model.json beside .*w.safetensors is not readable JSON"):
        check_public_weights(cfg, "synthetic-seed0-classes7")
    (tmp_path / "model.json").unlink()
    assert public_weights(cfg).source.startswith("undeclared")


@pytest.mark.parametrize("seed,refused", [(0, True), (1000, False)])
def test_built_in_images_are_known_by_their_seed(tmp_path, seed, refused):
    """The DP example's public pretraining draws the built-in lesions of another seed: accepted; a run without DP on
    the federation's own seed: refused."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    (tmp_path / "model.json").write_text(json.dumps({"training": {
        "command": "train", "run": "pre@1", "dataset": "synthetic", "data_key": f"synthetic-seed{seed}-classes7"},
        "privacy": {"guarantee": "none"}}))
    cfg = config_from_dict({"seed": 0, "model": {"weights": str(weights), "norm": "group"}, "privacy": DP})
    from fgssl.data.sources import synthetic_key

    if refused:
        with pytest.raises(ConfigError, match="run pre@1 on these very images"):
            check_public_weights(cfg, synthetic_key(cfg.data, cfg.seed))
    else:
        assert check_public_weights(cfg, synthetic_key(cfg.data, cfg.seed)).data_key == "synthetic-seed1000-classes7"
