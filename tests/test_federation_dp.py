"""Sample-level DP in the federation: per-site ε from the ledger, and a site over budget sits rounds out."""

import json
from pathlib import Path

import pytest

from fgssl.privacy.accounting import Mechanism, epsilon
from fgssl.privacy.ledger import PrivacyLedger

from .conftest import run_cli


@pytest.mark.slow
def test_dp_run_reports_ledger_epsilon_an_exhausted_site_refuses_and_a_lost_reply_is_paid_once(tiny_config, tmp_path):
    out = tmp_path / "run"
    # Site 1 already spent its lifetime budget in an earlier study: its ledger lives in its state directory.
    with PrivacyLedger(out / "sites" / "site_1") as ledger:
        ledger.commit(ledger.reserve(Mechanism(sample_rate=1.0, noise_multiplier=0.5, steps=50, label="earlier"),
                                     run_id="earlier", round=1, phase="finetune", delta=1e-5))
    cfg = tiny_config(privacy={"mode": "sample", "noise_multiplier": 1.5, "max_epsilon": 50.0},
                      # no timer re-asks: site 1 refuses at once, and a slow machine must not make site 0 look late
                      federation={"sites": 2, "ssl_rounds": 1, "finetune_rounds": 1, "min_nodes": 1,
                                  "reask_after_s": None},
                      # site 0's round-2 reply is lost on its way: asked again, it answers from its cached reply
                      simulation={"faults": [{"site": 0, "round": 2, "kind": "lost_reply"}]})
    proc = run_cli("simulate", "--config", str(cfg), "--out", str(out))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    site0 = [r for r in records if r["site"] == "0"]
    site1 = [r for r in records if r["site"] == "1"]
    assert [r["status"] for r in site0] == ["accepted", "accepted"]
    assert "asks" not in site0[0] and site0[1]["asks"] == 2
    assert [r["status"] for r in site1] == ["refused", "refused"]
    assert "max_epsilon 50" in site1[0]["reason"]
    assert 0 < site0[0]["epsilon"] < site0[1]["epsilon"] <= 50

    # The reported ε is the ledger's, recomputed independently from its recorded history.
    with PrivacyLedger(out / "sites" / "site_0") as ledger:
        history = ledger.history()
        # the example count once (SSL and fine-tuning use the same images), then one charge per round, the re-asked
        # round included
        assert [(e.phase, e.round) for e in history] == [("count", 1), ("ssl", 1), ("finetune", 2)]
        assert all(e.status == "committed" for e in history)
        assert site0[1]["epsilon"] == pytest.approx(epsilon([e.mechanism for e in history], site0[1]["delta"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["privacy"]["guarantee"] == "sample-level"
    assert summary["final"]["0"]["epsilon"] == pytest.approx(site0[1]["epsilon"])
    assert "Sample-level (ε, δ)-DP" in proc.stdout and "epsilon" in proc.stdout
    # No site metric left a site: the run keeps its last round, each site's evaluation is in its state directory
    for site in ("0", "1"):
        assert summary["final"][site]["kept_at_site"] is True and "balanced_accuracy" not in summary["final"][site]
        assert not any(k.startswith(("val_", "accuracy", "balanced", "macro", "confusion")) for r in records
                       if r["site"] == site for k in r)
    assert summary["final_round"] == 2 and summary["selected"]["round"] is None
    assert "balanced_accuracy" in summary["final"]["pooled"]  # the simulation's own copy of the test images
    kept = [json.loads(line) for line in (out / "sites" / "site_0" / "evaluations.jsonl").read_text().splitlines()]
    assert [r["round"] for r in kept] == [2] and "confusion_matrix" in kept[0]["test"]
    assert "stay at the site" in summary["privacy"]["text"] and "copy of the sites' test" in summary["privacy"]["text"]
    assert "evaluations.jsonl" in proc.stdout
    # The cross-site evaluation: the global row only, every cell kept at its site, which holds the row itself
    cross = summary["cross_site"]
    assert cross["models"] == ["global"] and cross["model_round"] == 2
    assert cross["cells"]["global"] == {s: {"kept_at_site": True} for s in ("0", "1", "mean")}
    assert "'kept at the site'" in cross["note"] and "cross_site.jsonl" in cross["note"]
    assert "kept at the site" in proc.stdout and "cross-site evaluation" in proc.stdout
    for site in ("0", "1"):
        [row] = [json.loads(line) for line in (out / "sites" / f"site_{site}" / "cross_site.jsonl").read_text().splitlines()]
        assert (row["model"], row["model_round"]) == ("global", 2) and "balanced_accuracy" in row["test"]
    assert (out / "cross_site.csv").read_text().count("kept at the site") == 3


def test_a_site_refuses_a_coordinator_delta_above_its_limit(tmp_path):
    """δ = 1e-2 on a site of a few hundred images (> 1/(10 n)) hollows out any ε: the site refuses the round before it
    solves σ or trains, and says why without revealing n. Its refusal depends on its released count, which it has
    paid for (the only entry)."""
    import torch

    from fgssl.config import load_config
    from fgssl.data.images import ImageSet
    from fgssl.model import build_model
    from fgssl.privacy.node import private_round

    from .conftest import TINY, merge

    data = ImageSet(torch.randint(0, 256, (400, 3, 32, 32), dtype=torch.uint8), torch.arange(400) % 3, ("a", "b", "c"))
    raw = merge(TINY, {"privacy": {"mode": "sample", "target_epsilon": 8.0, "delta": 1e-2}, "model": {"norm": "group"}})
    cfg = load_config(None, [], base=raw)
    model = build_model(cfg.model, 3)
    out = private_round(model, data, "finetune", cfg, tmp_path, site=0, run_id="r", rnd=1, epochs=1, max_batches=1,
                        progress=(0.0, 1.0))
    assert out.refused and "privacy.delta=0.01 is above this site's limit 1/(10·n)" in out.refused
    assert "400" not in out.refused and out.metrics == {}
    with PrivacyLedger(tmp_path) as ledger:
        assert [e.phase for e in ledger.history()] == ["count"]
    ok = load_config(None, [], base=merge(raw, {"privacy": {"delta": 1e-5}}))
    assert private_round(build_model(ok.model, 3), data, "finetune", ok, tmp_path, site=0, run_id="r", rnd=1,
                         epochs=1, max_batches=1, progress=(0.0, 1.0)).refused is None


def test_a_target_epsilon_below_what_the_fixed_noise_releases_spend_is_refused_with_the_keys_to_change(tmp_path):
    """ε = 1 with an SSL round: the example count and the SSL statistic, whose noise other keys fix, spend more than
    that at any σ (1.14 here, 1.45 in the DP example), so no σ meets the target. The site refuses the round (after
    paying for its count) naming the keys, where it used to crash with "cannot be met by this plan"; without SSL
    rounds the same target is met."""
    import torch

    from fgssl.config import load_config
    from fgssl.data.images import ImageSet
    from fgssl.model import build_model
    from fgssl.privacy.node import private_round

    from .conftest import TINY, merge

    data = ImageSet(torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8), torch.arange(300) % 3, ("a", "b", "c"))

    def round_with(ssl_rounds: int, where: str):
        cfg = load_config(None, [], base=merge(TINY, {"privacy": {"mode": "sample", "target_epsilon": 1.0},
                                                      "federation": {"ssl_rounds": ssl_rounds, "finetune_rounds": 2,
                                                                     "max_local_batches": None}}))
        return private_round(build_model(cfg.model, 3), data, "finetune", cfg, tmp_path / where, site=0,
                             run_id="r", rnd=1, epochs=1, max_batches=1, progress=(0.0, 1.0))

    refused = round_with(1, "ssl")
    assert refused.refused and refused.metrics == {}, refused
    assert "config key 'privacy.target_epsilon': 1 cannot be met at this site" in refused.refused
    for key in ("privacy.count_noise=20", "privacy.statistic_noise_multiplier=2", "federation.ssl_rounds=0"):
        assert key in refused.refused, refused.refused
    floor = float(refused.refused.split("spend ε=")[1].split()[0])
    assert 1.0 < floor < 2.0
    with PrivacyLedger(tmp_path / "ssl") as ledger:
        assert [e.phase for e in ledger.history()] == ["count"]
    met = round_with(0, "plain")
    assert met.refused is None and met.epsilon <= 1.0


def test_a_node_computes_its_epsilon_at_its_own_delta_and_refuses_a_larger_one(tmp_path):
    import torch

    from fgssl.config import load_config
    from fgssl.data.images import ImageSet
    from fgssl.model import build_model
    from fgssl.privacy.node import private_round

    from .conftest import TINY, merge

    data = ImageSet(torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8), torch.arange(300) % 3, ("a", "b", "c"))

    def round_with(privacy: dict, where: str):
        cfg = load_config(None, [], base=merge(TINY, {"privacy": {"mode": "sample", "noise_multiplier": 1.0,
                                                                  **privacy}}))
        return private_round(build_model(cfg.model, 3), data, "finetune", cfg, tmp_path / where, site=0,
                             run_id="r", rnd=1, epochs=1, max_batches=1, progress=(0.0, 1.0))

    refused = round_with({"delta": 1e-5, "site_delta": 1e-7}, "a")
    assert refused.refused and "above this node's own δ=1e-07" in refused.refused and refused.metrics == {}
    own = round_with({"site_delta": 1e-7}, "b")
    stricter_run = round_with({"site_delta": 1e-7, "delta": 1e-8}, "c")
    plain = round_with({}, "d")
    assert own.refused is None and own.delta == stricter_run.delta == 1e-7
    assert plain.delta == pytest.approx(min(1e-5, 1 / (10 * plain.metrics["num_examples"])))
    assert own.epsilon > plain.epsilon  # the same mechanism, a smaller δ: a larger ε
    with PrivacyLedger(tmp_path / "b") as ledger:
        assert own.epsilon == pytest.approx(ledger.spent(1e-7))
    careless = round_with({"site_delta": 0.01}, "e")  # a node's own δ above 1/(10 n) protects nobody either
    assert careless.refused and "this node's --delta=0.01" in careless.refused


def test_a_dp_reply_tells_nothing_of_n_beyond_the_released_count(tmp_path, monkeypatch):
    """Two data sets that differ in one image: given the same released count, every value the site sends besides the
    noised weights is identical, and its true n appears nowhere."""
    import torch

    from fgssl.config import load_config
    from fgssl.data.images import ImageSet
    from fgssl.model import build_model
    from fgssl.privacy import node

    from .conftest import TINY, merge

    full = ImageSet(torch.randint(0, 256, (400, 3, 32, 32), dtype=torch.uint8), torch.arange(400) % 3, ("a", "b", "c"))
    sets = {"full": full, "one_less": full.subset(torch.arange(399))}
    cfg = load_config(None, [], base=merge(TINY, {"privacy": {"mode": "sample", "target_epsilon": 8.0,
                                                              "count_noise": 20.0}}))
    released = 437
    replies = {}
    for name, data in sets.items():
        monkeypatch.setattr(node, "_gaussian", lambda n=len(data): (released - n) / 20.0)
        out = node.private_round(build_model(cfg.model, 3), data, "finetune", cfg, tmp_path / name, site=0,
                                 run_id="r", rnd=1, epochs=1, max_batches=1, progress=(0.0, 1.0))
        assert out.refused is None
        replies[name] = {**out.metrics, "epsilon": out.epsilon, "delta": out.delta}
    assert replies["full"] == replies["one_less"]
    assert replies["full"]["num_examples"] == released
    assert 400 not in replies["full"].values() and 399 not in replies["one_less"].values()
    assert replies["full"]["dp_sample_rate"] == pytest.approx(cfg.train.batch_size / released)
    # the count is charged once per data set: a second round on the same images reuses it
    monkeypatch.setattr(node, "_gaussian", lambda: 5.0)
    again = node.private_round(build_model(cfg.model, 3), full, "finetune", cfg, tmp_path / "full", site=0,
                               run_id="r", rnd=2, epochs=1, max_batches=1, progress=(0.0, 1.0))
    assert again.metrics["num_examples"] == released
    with PrivacyLedger(tmp_path / "full") as ledger:
        assert [e.phase for e in ledger.history()] == ["count", "finetune", "finetune"]
        count = ledger.history()[0]
        assert (count.sample_rate, count.steps, count.noise_multiplier) == (1.0, 1, 20.0)


def _images(n: int, seed: int):
    import torch

    from fgssl.data.images import ImageSet

    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 3,
                    ("a", "b", "c"))


class _Site:
    """A SiteProvider of one site with fixed splits."""

    def __init__(self, splits, state: Path) -> None:
        self._splits, self._state = splits, state

    def splits(self, site: int):
        return self._splits

    def state_dir(self, site: int) -> Path:
        self._state.mkdir(parents=True, exist_ok=True)
        return self._state


def test_a_dp_site_keeps_its_evaluation_and_sends_nothing_that_depends_on_its_images(tmp_path):
    """Under sample-level DP the evaluation reply is the same for two sites whose val and test splits differ in one
    image (and whose models see them differently); the metrics go to the site's own evaluations.jsonl. Without DP
    the reply carries the full metric sets."""
    import torch

    from client.site import evaluate_global
    from fgssl.config import SITE_EVALUATIONS, load_config
    from fgssl.data.sources import Splits
    from fgssl.model import build_model

    from .conftest import TINY, merge

    val, test = _images(30, 1), _images(40, 2)
    variants = {"full": Splits(_images(60, 0), val, test),
                "one_less": Splits(_images(60, 0), val.subset(torch.arange(29)), test)}
    dp = load_config(None, [], base=merge(TINY, {"privacy": {"mode": "sample", "target_epsilon": 8.0}}))
    received = {k: v.numpy() for k, v in build_model(dp.model, 3).state_dict().items()}
    replies = {name: evaluate_global(dp, _Site(sp, tmp_path / name), 0, received, rnd=2)
               for name, sp in variants.items()}
    assert replies["full"] == replies["one_less"] == {"kept_at_site": True}
    kept = {name: [json.loads(line) for line in (tmp_path / name / SITE_EVALUATIONS).read_text().splitlines()]
            for name in variants}
    assert [r["round"] for r in kept["full"]] == [2]
    assert kept["full"][0]["val"]["num_examples"] == 30 and kept["one_less"][0]["val"]["num_examples"] == 29
    assert kept["full"][0]["test"]["confusion_matrix"] == kept["one_less"][0]["test"]["confusion_matrix"]

    plain = dp.replace(privacy=dp.privacy.__class__())
    reply = evaluate_global(plain, _Site(variants["full"], tmp_path / "plain"), 0, received, rnd=2)
    assert reply["val"]["num_examples"] == 30 and "confusion_matrix" in reply["test"]
    assert not (tmp_path / "plain" / SITE_EVALUATIONS).exists()


def test_a_dp_sites_cross_site_reply_is_the_same_for_test_sets_that_differ_in_one_image(tmp_path):
    """The cross-site evaluation under sample-level DP: two sites whose test splits differ in one image send the same
    reply, no arrays (their local groups stay home) and no metric; each keeps its row in cross_site.jsonl. Without DP
    the same request returns the site's local groups and its test metrics."""
    import torch

    from client.site import cross_site_evaluate
    from fgssl.config import CROSS_SITE_EVALUATIONS, load_config
    from fgssl.data.sources import Splits
    from fgssl.metrics import HEADLINE_METRICS
    from fgssl.model import build_model
    from strategies.groups import keys_matching, tag_by_site

    from .conftest import TINY, merge

    test = _images(40, 2)
    variants = {"full": Splits(_images(60, 0), _images(30, 1), test),
                "one_less": Splits(_images(60, 0), _images(30, 1), test.subset(torch.arange(39)))}
    dp = load_config(None, [], base=merge(TINY, {"privacy": {"mode": "sample", "target_epsilon": 8.0},
                                                 "federation": {"local_groups": ["*bn*"]}}))
    received = {k: v.numpy() for k, v in build_model(dp.model, 3).state_dict().items()}
    request = {"round": 3, "model_round": 2, "cross_site": "global"}
    replies = {name: cross_site_evaluate(dp, _Site(sp, tmp_path / name), 0, received, request)
               for name, sp in variants.items()}
    assert replies["full"] == replies["one_less"] == ({}, {"kept_at_site": True})
    kept = {name: [json.loads(line) for line in (tmp_path / name / CROSS_SITE_EVALUATIONS).read_text().splitlines()]
            for name in variants}
    assert [(r["model"], r["model_round"]) for r in kept["full"]] == [("global", 2)]
    assert kept["full"][0]["test"]["num_examples"] == 40 and kept["one_less"][0]["test"]["num_examples"] == 39
    # a request for other sites' models (never sent under DP) gets no more out of a site
    local = keys_matching(list(received), ["*bn*"])
    carried = {**received, **tag_by_site({1: {k: received[k] for k in local}})}
    again = cross_site_evaluate(dp, _Site(variants["full"], tmp_path / "full"), 0, carried,
                                {**request, "cross_site": "models"})
    assert again == ({}, {"kept_at_site": True})

    plain = dp.replace(privacy=dp.privacy.__class__())
    arrays, reply = cross_site_evaluate(plain, _Site(variants["full"], tmp_path / "plain"), 0, received, request)
    assert sorted(arrays) == sorted(local) and set(reply["test"]) == set(HEADLINE_METRICS)
    assert reply["test"]["num_examples"] == 40 and not (tmp_path / "plain" / CROSS_SITE_EVALUATIONS).exists()


def test_training_without_dp_is_remembered_and_a_later_dp_run_refuses(tiny_config, tmp_path):
    """A node that once trained without sample-level DP has released its data unprotected: its ledger says so (ε = ∞),
    and a later DP run on the same state directory refuses instead of printing a finite lifetime ε."""
    import numpy as np

    from client.site import train_round
    from fgssl.config import load_config
    from server.app import initial_global
    from simulations.sites import SimulatedSites
    from strategies.fgssl_strategy import FGSSLStrategy

    def one_round(privacy: dict) -> dict:
        cfg = load_config(tiny_config(privacy=privacy, federation={"sites": 1, "ssl_rounds": 0}))
        sites = SimulatedSites(cfg, [np.arange(240)], tmp_path / "state")
        global_ = initial_global(cfg, cfg.data.num_classes)
        strategy = FGSSLStrategy(cfg.federation, list(global_))
        rc = {**strategy.round_config(1, cfg.seed), "run_id": "r1"}
        keys = strategy.keys_to_send(rc["phase"])
        return train_round(cfg, sites, 0, {k: global_[k] for k in keys}, rc)[1]

    assert "refused" not in one_round({"mode": "none"})
    with PrivacyLedger(tmp_path / "state" / "site_0") as ledger:
        [entry] = ledger.unprotected()
        assert entry.run_id == "r1" and "privacy.mode=none" in entry.label
        assert ledger.spent(1e-5) == float("inf")
    info = one_round({"mode": "sample", "noise_multiplier": 1.0})
    assert "training without sample-level DP" in info["refused"] and "epsilon" not in info
    with PrivacyLedger(tmp_path / "state" / "site_0") as ledger:
        assert [e.kind for e in ledger.history()] == ["unprotected"]  # nothing released, nothing charged
