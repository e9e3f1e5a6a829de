"""A deployed node's settings and data, without Flower processes: node config round trip, the federation's config
with the node's data and budget, real-data folders, and the checks that stop a node from training on wrong data."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from cli.deploy.federation import DeployError, node_config_arg
from client.local_site import LocalSite, NodeConfigError, NodeSettings, local_config
from fgssl.config import load_config

from .conftest import TINY
from .test_official_data import make_aptos, make_isic2018


def test_node_settings_survive_flowers_node_config_parsing(tmp_path):
    state = tmp_path / "state with spaces"
    node = NodeSettings(site=3, dataset="folder", state_dir=state, root=tmp_path / "data", max_epsilon=2.5,
                        delta=1e-7, csv="labels.csv", label_column="dx", skip_bad_images=True)
    text = node_config_arg(node.to_node_config())
    assert NodeSettings.from_node_config(parse_config_args([text])) == node


def test_node_config_errors_name_the_key(tmp_path):
    with pytest.raises(NodeConfigError, match="'data-root'"):
        NodeSettings(site=0, dataset="isic2018", state_dir=tmp_path)
    with pytest.raises(NodeConfigError, match="'state-dir'.*absolute"):
        NodeSettings(site=0, dataset="synthetic", state_dir=Path("relative"))
    with pytest.raises(NodeConfigError, match="'partition-id'"):
        NodeSettings.from_node_config({"dataset": "synthetic", "state-dir": str(tmp_path)})
    with pytest.raises(NodeConfigError, match="'max-epsilon'"):
        NodeSettings.from_node_config({"partition-id": 0, "dataset": "synthetic", "state-dir": str(tmp_path),
                                       "max-epsilon": "lots"})
    with pytest.raises(NodeConfigError, match="'delta'"):
        NodeSettings(site=0, dataset="synthetic", state_dir=tmp_path, delta=0.0)
    with pytest.raises(DeployError, match="quote"):
        node_config_arg({"data-root": "/data/it's here"})


def test_the_nodes_own_delta_reaches_its_config_and_the_coordinator_cannot_set_it(tmp_path):
    run = load_config(None, ["privacy.mode=sample", "privacy.noise_multiplier=1.0", "model.norm=group",
                             "privacy.site_delta=0.5"])  # a coordinator's attempt to speak for the node
    own = NodeSettings(site=0, dataset="synthetic", state_dir=tmp_path, delta=1e-7)
    assert local_config(run, own).privacy.site_delta == 1e-7
    assert local_config(run, NodeSettings(site=0, dataset="synthetic", state_dir=tmp_path)).privacy.site_delta is None


def test_the_stricter_budget_wins_and_no_dp_means_no_training(tmp_path):
    node = NodeSettings(site=0, dataset="synthetic", state_dir=tmp_path, max_epsilon=4.0)
    dp = load_config(None, ["privacy.mode=sample", "privacy.noise_multiplier=1.0", "model.norm=group",
                            "privacy.max_epsilon=8"])
    assert local_config(dp, node).privacy.max_epsilon == 4.0
    assert local_config(dp, NodeSettings(site=0, dataset="synthetic", state_dir=tmp_path, max_epsilon=20.0)
                        ).privacy.max_epsilon == 8.0
    with pytest.raises(NodeConfigError, match="privacy.mode=none"):
        local_config(load_config(None), node)
    client_dp = load_config(None, ["privacy.mode=client", "privacy.noise_multiplier=1.0", "model.norm=group"])
    with pytest.raises(NodeConfigError, match="privacy.mode=client"):
        local_config(client_dp, node)


def test_a_node_reads_its_own_dataset_into_its_state_dir(tmp_path):
    root = tmp_path / "ISIC2018"
    make_isic2018(root, per_class=4)
    federation = load_config(None, ["data.dataset=isic2018", "data.root=(each node's --root)", "data.image_size=32",
                                    "data.val_fraction=0.2", "data.test_fraction=0.2"])
    node = NodeSettings(site=2, dataset="isic2018", state_dir=tmp_path / "state", root=root)
    site = LocalSite(federation, node)
    splits = site.splits(2)
    assert sum(splits.sizes().values()) == 28 and splits.train.images.shape[-1] == 32
    assert (tmp_path / "state" / "cache").is_dir() and not (root / ".fgssl-cache").exists()
    assert site.state_dir(2) == tmp_path / "state"
    with pytest.raises(ValueError, match="site 2"):
        site.splits(0)


def test_a_state_directory_keeps_to_its_data_set(tmp_path):
    """A node's ledger belongs to the data it was first used with: another data set in the same state directory is
    refused, naming the flag that says it is the same patients' data changed; then the ledger takes it on."""
    from fgssl.privacy.ledger import PrivacyLedger

    root = tmp_path / "ISIC2018"
    make_isic2018(root, per_class=4)
    federation = load_config(None, ["data.dataset=isic2018", "data.root=x", "data.image_size=32"])
    node = NodeSettings(site=0, dataset="isic2018", state_dir=tmp_path / "state", root=root)
    LocalSite(federation, node).splits(0)
    LocalSite(federation, node).splits(0)  # the same data again: fine
    grown = tmp_path / "ISIC2018-grown"
    make_isic2018(grown, per_class=5)  # the hospital's data set now holds more images
    moved = NodeSettings(site=0, dataset="isic2018", state_dir=tmp_path / "state", root=grown)
    with pytest.raises(NodeConfigError, match="'data-changed'.*first used with another data set.*--data-changed"):
        LocalSite(federation, moved).splits(0)
    changed = NodeSettings(site=0, dataset="isic2018", state_dir=tmp_path / "state", root=grown, data_changed=True)
    assert NodeSettings.from_node_config(changed.to_node_config()) == changed
    LocalSite(federation, changed).splits(0)
    LocalSite(federation, moved).splits(0)  # now bound to the new data set
    with PrivacyLedger(tmp_path / "state", readonly=True) as ledger:
        assert ledger.meta("data_key").startswith("images-")


def test_a_node_with_other_classes_than_the_federation_is_refused(tmp_path):
    root = tmp_path / "APTOS"
    make_aptos(root)
    federation = load_config(None, ["data.dataset=isic2018", "data.root=x", "data.image_size=32"])
    site = LocalSite(federation, NodeSettings(site=0, dataset="aptos2019", state_dir=tmp_path / "s", root=root))
    with pytest.raises(NodeConfigError, match="aptos2019 data has classes no_dr.*isic2018 with classes MEL"):
        site.splits(0)


def test_synthetic_node_gets_the_simulated_sites_data(tmp_path):
    from simulations.flower_app import _local_site
    from simulations.sites import build_sites

    cfg = load_config(None, [f"{k}={v}" for k, v in (("data.num_samples", TINY["data"]["num_samples"]),
                                                     ("data.image_size", 32), ("federation.sites", 3))])
    node = NodeSettings(site=1, dataset="synthetic", state_dir=tmp_path / "node")
    mine = _local_site(cfg, node).splits(1)
    simulated = build_sites(cfg, tmp_path / "sim", save=False).splits(1)
    for a, b in zip((mine.train, mine.val, mine.test), (simulated.train, simulated.val, simulated.test)):
        assert (a.images == b.images).all() and (a.labels == b.labels).all()
    with pytest.raises(NodeConfigError, match="ids 0..2"):
        _local_site(cfg, NodeSettings(site=3, dataset="synthetic", state_dir=tmp_path / "n3"))
