"""Scarce labels (train.label_fraction) and validation-based model selection."""

import json

import numpy as np
import pytest
import torch

from client.site import train_round
from fgssl.config import ConfigError, load_config
from fgssl.data.images import ImageSet, labelled_indices
from fgssl.selection import Selection
from server.app import initial_global
from simulations.sites import SimulatedSites
from strategies.fgssl_strategy import FGSSLStrategy

from .conftest import run_cli


def test_label_fraction_is_stratified_seeded_and_keeps_every_class():
    labels = torch.tensor([0] * 100 + [1] * 30 + [2] * 5 + [3] * 1)
    keep = labelled_indices(labels, 0.1, seed=7)
    counts = np.bincount(labels.numpy()[keep], minlength=4)
    assert counts.tolist() == [10, 3, 1, 1]  # round(0.1 n_k), at least one of each class
    assert np.array_equal(keep, np.sort(keep)) and len(set(keep.tolist())) == len(keep)
    assert np.array_equal(keep, labelled_indices(labels, 0.1, seed=7))
    assert not np.array_equal(keep, labelled_indices(labels, 0.1, seed=8))
    assert np.array_equal(labelled_indices(labels, 1.0, seed=7), np.arange(136))


def test_the_sampler_draws_classes_equally_at_power_1_and_by_sqrt_n_at_power_half():
    counts = [900, 100, 4]
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    data = ImageSet(torch.zeros(len(labels), 3, 2, 2, dtype=torch.uint8), labels, ("a", "b", "c"))
    g = torch.Generator().manual_seed(0)
    drawn = [np.bincount(labels[torch.cat([data.balanced_order(g, power) for _ in range(40)])].numpy(),
                         minlength=3) / (40 * len(labels)) for power in (1.0, 0.5, 0.0)]
    np.testing.assert_allclose(drawn[0], [1 / 3] * 3, atol=0.01)
    np.testing.assert_allclose(drawn[1], np.sqrt(counts) / np.sqrt(counts).sum(), atol=0.01)
    np.testing.assert_allclose(drawn[2], np.array(counts) / sum(counts), atol=0.01)


def test_a_declared_class_prior_replaces_the_site_counts_and_is_checked():
    from fgssl.config import ConfigError, config_from_dict
    from fgssl.train import logit_offset

    from .conftest import TINY

    labels = torch.tensor([0, 0, 0, 1])  # class 2 absent: its own counts would give -inf
    cfg = config_from_dict({**TINY, "train": {"class_balance": "logit_adjust", "class_weight_power": 0.5,
                                              "class_prior": [2, 1, 1]}})
    assert torch.allclose(logit_offset(cfg, labels, 3), 0.5 * torch.log(torch.tensor([0.5, 0.25, 0.25])))
    own = config_from_dict({**TINY, "train": {"class_balance": "logit_adjust"}})
    assert logit_offset(own, labels, 3)[2] == -float("inf")
    assert logit_offset(config_from_dict(TINY), labels, 3) is None  # the sampler: no offset
    with pytest.raises(ConfigError, match=r"train.class_prior.*3 shares for 4 classes"):
        logit_offset(cfg, labels, 4)
    with pytest.raises(ConfigError, match=r"train.class_prior.*only by class_balance: logit_adjust"):
        config_from_dict({**TINY, "train": {"class_prior": [1, 1, 1]}})
    with pytest.raises(ConfigError, match=r"train.class_prior\[1\].*share > 0"):
        config_from_dict({**TINY, "train": {"class_balance": "logit_adjust", "class_prior": [1, 0, 1]}})


def test_logit_adjustment_adds_tau_log_prior_and_leaves_a_class_the_site_lacks_untouched():
    """class_balance=logit_adjust: CE on logits + tau·log p_k. A class absent from the site's labels gets no gradient
    at all (its classifier rows only decay), where plain cross-entropy pushes it down."""
    from fgssl.config import config_from_dict
    from fgssl.model import build_model
    from fgssl.train import logit_adjustment, train_local

    from .conftest import TINY

    offset = logit_adjustment(torch.tensor([0, 0, 0, 1]), 3, 0.5)
    assert torch.allclose(offset[:2], 0.5 * torch.log(torch.tensor([0.75, 0.25]))) and offset[2] == -float("inf")

    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 12 + [1] * 4)  # class 2 absent at this site
    data = ImageSet(torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8), labels, ("a", "b", "c"))

    def rows_after(balance):
        cfg = config_from_dict({**TINY, "train": {"batch_size": 8, "class_balance": balance}})
        torch.manual_seed(0)
        model = build_model(cfg.model, 3)
        before = {k: v[2].clone() for k, v in model.state_dict().items() if k.startswith("classifiers.")}
        train_local(model, data, "finetune", cfg, epochs=2, generator=torch.Generator().manual_seed(1))
        after = model.state_dict()
        return [torch.nn.functional.cosine_similarity(before[k].reshape(1, -1), after[k][2].reshape(1, -1)).item()
                for k in before if k.endswith(".weight")]

    adjusted, plain = rows_after("logit_adjust"), rows_after("none")
    assert all(c > 1 - 1e-6 for c in adjusted), adjusted  # only weight decay: the same direction
    assert all(c < 1 - 1e-4 for c in plain), plain  # pushed down: turned away from where it started


@pytest.mark.slow
def test_train_fine_tunes_on_the_labelled_fraction_and_pretrains_on_all(tiny_config, tmp_path):
    cfg = tiny_config(train={"batch_size": 8, "label_fraction": 0.25, "ssl_epochs": 1, "finetune_epochs": 2})
    out = tmp_path / "run"
    proc = run_cli("train", "--config", str(cfg), "--out", str(out))
    record = json.loads((out / "labelled.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    n_train = summary["splits"]["train"]
    assert record["train_images"] == n_train and record["labelled_images"] == len(record["positions_in_train_split"])
    assert record["labelled_images"] == sum(record["class_counts"].values())
    assert abs(record["labelled_images"] - 0.25 * n_train) <= len(record["class_counts"])
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["num_examples"] for e in epochs if e.get("phase") == "ssl"] == [n_train]
    assert [e["num_examples"] for e in epochs if e.get("phase") == "finetune"] == [record["labelled_images"]] * 2
    assert f"fine-tuning on {record['labelled_images']} of {n_train}" in proc.stdout
    # model selection: the kept model is the best validation epoch; the last one is kept beside it
    sel = summary["selected"]
    scores = [h[1] for h in sel["history"]]
    assert sel["metric"] == "balanced_accuracy" and len(scores) == 2
    above = [h for h in sel["history"] if not h[2]] or sel["history"]
    assert sel["epoch"] == max(above, key=lambda h: h[1])[0]
    assert (out / "model.safetensors").is_file() and (out / "model_last.safetensors").is_file()
    assert "majority_rate" in summary["test"] and "model: epoch" in proc.stdout


def test_each_site_keeps_its_own_labelled_fraction_and_records_it(tiny_config, tmp_path):
    cfg = load_config(tiny_config(train={"label_fraction": 0.5}, federation={"sites": 2}))
    parts = [np.arange(0, 120), np.arange(120, 240)]
    sites = SimulatedSites(cfg, parts, tmp_path / "state")
    global_ = initial_global(cfg, cfg.data.num_classes)
    strategy = FGSSLStrategy(cfg.federation, list(global_))
    for phase_round in (1, 2):  # tiny config: round 1 ssl, round 2 finetune
        rc = strategy.round_config(phase_round, cfg.seed)
        keys = strategy.keys_to_send(rc["phase"])
        infos = [train_round(cfg, sites, s, {k: global_[k] for k in keys}, rc)[1] for s in range(2)]
        for s, info in enumerate(infos):
            n = len(sites.splits(s).train)
            if rc["phase"] == "ssl":
                assert info["num_examples"] == n
            else:
                rec = json.loads((tmp_path / "state" / f"site_{s}" / "labelled.json").read_text())
                assert info["num_examples"] == rec["labelled_images"] < n and rec["site"] == s
    a, b = (json.loads((tmp_path / "state" / f"site_{s}" / "labelled.json").read_text()) for s in range(2))
    assert a["positions_in_train_split"] != b["positions_in_train_split"]


def test_pooled_sites_are_the_federations_own_images_labels_and_labelled_parts(tiny_config, tmp_path):
    from client.site import site_labelled
    from simulations.sites import build_sites, pool_sites

    cfg = load_config(tiny_config(train={"label_fraction": 0.5, "pooled_sites": True},
                                  partition={"method": "dirichlet", "alpha": 0.5}))
    pooled = pool_sites(cfg, tmp_path)
    sites = build_sites(cfg, tmp_path, save=False)
    per_site = [sites.splits(s) for s in range(2)]
    assert (tmp_path / "partition.json").is_file()
    for k in ("train", "val", "test"):  # each site's split with its own camera shift, in site order
        assert torch.equal(getattr(pooled.splits, k).images, torch.cat([getattr(p, k).images for p in per_site]))
        assert torch.equal(getattr(pooled.splits, k).labels, torch.cat([getattr(p, k).labels for p in per_site]))
    assert torch.equal(pooled.splits.test.images, sites.pooled_test().images)
    assert [len(t) for t in pooled.site_tests] == [len(p.test) for p in per_site]
    for s, p in enumerate(per_site):  # labelled as the federation's site s labels, recorded per site
        part, record = site_labelled(cfg, p.train, s)
        assert pooled.labelled_record["sites"][s] == {"site": s, **record}
    assert len(pooled.labelled) == pooled.labelled_record["labelled_images"] < len(pooled.splits.train)
    # the site-alone baseline: site 1's training and validation data, every site's test
    alone = pool_sites(load_config(tiny_config(train={"label_fraction": 0.5, "pooled_sites": True, "only_site": 1},
                                               partition={"method": "dirichlet", "alpha": 0.5})), tmp_path)
    assert torch.equal(alone.splits.train.images, per_site[1].train.images)
    assert torch.equal(alone.splits.val.labels, per_site[1].val.labels)
    assert torch.equal(alone.splits.test.images, pooled.splits.test.images) and len(alone.site_tests) == 2
    assert [r["site"] for r in alone.labelled_record["sites"]] == [1]
    with pytest.raises(ConfigError, match="train.only_site"):
        load_config(tiny_config(train={"only_site": 0}))
    with pytest.raises(ConfigError, match="train.only_site"):
        load_config(tiny_config(train={"pooled_sites": True, "only_site": 2}))
    # without the site shift the pooled images differ: the shift is the sites' own
    plain = pool_sites(load_config(tiny_config(data={"site_shift": 0.0}, train={"pooled_sites": True})), tmp_path)
    assert not torch.equal(plain.splits.test.images, pool_sites(
        load_config(tiny_config(train={"pooled_sites": True})), tmp_path).splits.test.images)


@pytest.mark.slow
def test_train_on_pooled_sites_reports_each_sites_own_test_split(tiny_config, tmp_path):
    cfg = tiny_config(train={"pooled_sites": True, "ssl_epochs": 0, "finetune_epochs": 1})
    out = tmp_path / "run"
    proc = run_cli("train", "--config", str(cfg), "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    partition = json.loads((out / "partition.json").read_text())
    sizes = [summary["site_tests"][str(s)]["num_examples"] for s in range(2)]
    assert sum(sizes) == summary["test"]["num_examples"] == summary["splits"]["test"]
    assert sum(site["num_samples"] for site in partition["sites"]) == 240
    assert "union of 2 simulated sites" in proc.stdout and "site 1 test" in proc.stdout


def test_selection_prefers_a_model_above_the_majority_rate():
    sel = Selection("balanced_accuracy", above_majority=True)
    degenerate = {"balanced_accuracy": 0.70, "accuracy": 0.30, "majority_rate": 0.66}
    sound = {"balanced_accuracy": 0.60, "accuracy": 0.75, "majority_rate": 0.66}
    better = {"balanced_accuracy": 0.65, "accuracy": 0.70, "majority_rate": 0.66}
    assert sel.offer(1, degenerate, lambda: "w1")
    assert sel.offer(2, sound, lambda: "w2")  # lower balanced accuracy, but not below the majority rate
    assert not sel.offer(3, degenerate, lambda: "w3")
    assert sel.offer(4, better, lambda: "w4") and sel.best_state == "w4" and sel.best_step == 4
    plain = Selection("balanced_accuracy", above_majority=False)
    plain.offer(1, sound, lambda: "w1")
    assert plain.offer(2, degenerate, lambda: "w2") and plain.best_step == 2
    # always "the majority class": accuracy equals the majority rate, so only its constant answer gives it away
    constant = {"balanced_accuracy": 1 / 7, "accuracy": 0.66, "majority_rate": 0.66, "predicted_classes": 1}
    weak = {"balanced_accuracy": 0.50, "accuracy": 0.57, "majority_rate": 0.66, "predicted_classes": 7}
    guarded = Selection("balanced_accuracy", above_majority=True)
    assert guarded.offer(1, constant, lambda: "w1") and guarded.offer(2, weak, lambda: "w2")
    assert guarded.best_step == 2 and "none beat the majority-class rate" in guarded.describe("epoch")
    assert not guarded.offer(3, constant, lambda: "w3") and guarded.best_step == 2
    last = Selection("last")
    for step in (1, 2, 3):
        last.offer(step, sound, lambda: step)
    assert last.best_step == 3


@pytest.mark.slow
def test_simulate_keeps_the_round_with_the_best_pooled_validation(finished_run):
    from safetensors.numpy import load_file

    summary = json.loads((finished_run / "summary.json").read_text())
    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    pooled = {r["round"]: r for r in records if r["site"] == "pooled"}
    assert all("val_balanced_accuracy" in r and "val_majority_rate" in r for r in pooled.values())
    # the same rule, recomputed from the log: above the majority rate first, then the best balanced accuracy
    best = max(pooled, key=lambda n: (pooled[n]["val_accuracy"] >= pooled[n]["val_majority_rate"],
                                      pooled[n]["val_balanced_accuracy"], -n))
    assert summary["final_round"] == summary["selected"]["round"] == best
    assert summary["final"]["pooled"]["balanced_accuracy"] == pooled[best]["balanced_accuracy"]
    assert summary["final_last"]["pooled"]["balanced_accuracy"] == pooled[max(pooled)]["balanced_accuracy"]
    kept, last = load_file(str(finished_run / "model.safetensors")), load_file(str(finished_run / "model_last.safetensors"))
    same = all(np.array_equal(kept[k], last[k]) for k in kept)
    assert same == (best == max(pooled))
