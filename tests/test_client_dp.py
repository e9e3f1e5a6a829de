"""Client-level DP: FGSSLStrategy inside Flower's server-side fixed-clipping wrapper, without a network."""

import json

import numpy as np
import pytest
from flwr.app import Message, MessageType, RecordDict

from fgssl.config import ConfigError, FederationConfig, load_config
from fgssl.privacy.accounting import Mechanism, default_delta, epsilon
from fgssl.privacy.client_level import ClientLevelAccount
from strategies.client_dp import client_dp_aggregate
from strategies.fgssl_strategy import FGSSLStrategy, RoundFailed
from strategies.flower import to_config, to_record

from .conftest import run_cli

KEYS = ["backbone.w", "blocks.0.w", "heads.0.w", "classifiers.0.w"]
SERVER = 1
CLIENT = ["privacy.mode=client", "model.norm=group"]


def _global(size: int = 2000) -> dict[str, np.ndarray]:
    return {k: np.full(size, 0.5, dtype=np.float64) for k in KEYS}


def _replies(nodes: dict[int, int], updates: dict[int, dict[str, np.ndarray]],
             examples: dict[int, int]) -> dict[int, Message]:
    out = {}
    for site, arrays in updates.items():
        sent = Message(RecordDict(), dst_node_id=nodes[site], message_type=MessageType.TRAIN)
        out[site] = Message(RecordDict({"arrays": to_record(arrays),
                                        "info": to_config({"site": site, "num_examples": examples[site]})}),
                            reply_to=sent)
    return out


def _strategy(min_nodes: int = 1) -> FGSSLStrategy:
    return FGSSLStrategy(FederationConfig(sites=4, ssl_rounds=0, finetune_rounds=3, min_nodes=min_nodes), KEYS)


def _setup(deltas: dict[int, float]):
    nodes = {s: 100 + s for s in deltas}
    g = _global()
    updates = {s: {k: v + d for k, v in g.items()} for s, d in deltas.items()}
    return nodes, g, updates


def test_equal_weight_mean_of_clipped_updates_without_noise(flower_identity):
    # Site 3 changed every weight by 1 (norm √8000): clipped to C = 1; the others stay below C.
    nodes, g, updates = _setup({0: 0.001, 1: -0.002, 2: 0.003, 3: 1.0})
    examples = {0: 10, 1: 1000, 2: 10, 3: 10}  # equal weights regardless of the reported counts
    out = client_dp_aggregate(_strategy(), nodes, 1, g, g, _replies(nodes, updates, examples), {},
                              noise_multiplier=0.0, clipping_norm=1.0, grid=None)
    norm3 = np.sqrt(len(KEYS) * 2000) * 1.0
    expected = (0.001 - 0.002 + 0.003 + 1.0 / norm3) / 4
    for k in KEYS:
        np.testing.assert_allclose(out.new_global[k], 0.5 + expected, rtol=0, atol=1e-12)
    assert sorted(out.accepted) == ["0", "1", "2", "3"] and not out.rejected


def test_noise_has_the_stated_std_and_is_not_drawn_from_the_public_seed(flower_identity):
    nodes, g, updates = _setup({0: 1e-3, 1: 1e-3, 2: 1e-3, 3: 1e-3})
    sigma, clip = 2.0, 3.0
    results = []
    for _ in range(2):
        np.random.seed(1234)  # what `fgssl simulate` does with the run's public seed
        out = client_dp_aggregate(_strategy(), nodes, 1, g, g, _replies(nodes, updates, dict.fromkeys(nodes, 5)),
                                  {}, noise_multiplier=sigma, clipping_norm=clip, grid=None)
        results.append(np.concatenate([out.new_global[k] - 0.501 for k in KEYS]))
    expected_std = sigma * clip / 4  # σ·C/m over m = 4 equal-weight sites
    for noise in results:
        # 8000 draws: the sample std is within 5% of the true one with overwhelming probability.
        assert np.std(noise) == pytest.approx(expected_std, rel=0.05)
        assert abs(np.mean(noise)) < 5 * expected_std / np.sqrt(noise.size)
    assert not np.allclose(results[0], results[1])


def test_the_public_global_generator_is_left_as_it_was(flower_identity):
    nodes, g, updates = _setup({0: 0.01, 1: 0.0})
    np.random.seed(99)
    client_dp_aggregate(_strategy(), nodes, 1, g, g, _replies(nodes, updates, dict.fromkeys(nodes, 5)), {},
                        noise_multiplier=1.0, clipping_norm=1.0, grid=None)
    after = np.random.random()
    np.random.seed(99)
    assert after == np.random.random()


def test_a_bad_update_is_refused_before_the_noise_is_sized(flower_identity):
    nodes, g, updates = _setup({0: 0.01, 1: 0.01, 2: 0.01, 3: 0.01})
    updates[2]["heads.0.w"] = np.full(2000, np.nan)
    updates[3].pop("blocks.0.w")
    nodes[4], updates[4] = 104, dict(g)
    out = client_dp_aggregate(_strategy(), nodes, 1, g, g, _replies(nodes, updates, dict.fromkeys(nodes, 5)), {},
                              noise_multiplier=0.0, clipping_norm=100.0, grid=None)
    assert sorted(out.accepted) == ["0", "1"]
    assert "non-finite" in out.rejected["2"] and "blocks.0.w" in out.rejected["3"]
    assert "unchanged" in out.rejected["4"]
    np.testing.assert_allclose(out.new_global["heads.0.w"], 0.51)  # mean over the two good sites only


def test_too_few_good_updates_fail_the_round(flower_identity):
    nodes, g, updates = _setup({0: 0.01, 1: 0.01})
    updates[1]["heads.0.w"] = np.full(2000, np.inf)
    with pytest.raises(RoundFailed, match="min_nodes=2"):
        client_dp_aggregate(_strategy(min_nodes=2), nodes, 1, g, g,
                            _replies(nodes, updates, dict.fromkeys(nodes, 5)), {"2": "client error: boom"},
                            noise_multiplier=1.0, clipping_norm=1.0, grid=None)


def test_client_level_accounting_matches_the_accountant(tmp_path):
    cfg = load_config(None, [*CLIENT, "privacy.target_epsilon=5", "federation.sites=4", "federation.ssl_rounds=1",
                             "federation.finetune_rounds=4"])
    account = ClientLevelAccount(cfg)
    assert account.delta == default_delta(4)
    spent = [account.release("0")["epsilon"] for _ in range(5)]
    assert spent == sorted(spent) and spent[-1] <= 5.0
    assert spent[-1] == pytest.approx(
        epsilon([Mechanism(sample_rate=1.0, noise_multiplier=account.noise_multiplier, steps=5)], account.delta))
    assert account.release("1")["epsilon"] == pytest.approx(spent[0])  # each site composes its own rounds


def test_client_mode_refuses_configs_whose_noise_would_not_cover_the_release():
    with pytest.raises(ConfigError, match="federation.strategy"):
        load_config(None, [*CLIENT, "privacy.noise_multiplier=1", "federation.strategy=trimmed_mean"])
    with pytest.raises(ConfigError, match="model.norm"):
        load_config(None, ["privacy.mode=client", "privacy.noise_multiplier=1", "model.norm=batch"])
    with pytest.raises(ConfigError, match="federation.server_optimizer"):
        load_config(None, [*CLIENT, "privacy.noise_multiplier=1", "federation.server_optimizer=fedadam"])
    cfg = load_config(None, [*CLIENT, "privacy.noise_multiplier=0.5", "privacy.max_epsilon=1"])
    with pytest.raises(ConfigError, match="budget"):
        ClientLevelAccount(cfg)


@pytest.mark.slow
def test_client_level_dp_simulation_counts_a_round_redone_after_a_crash_twice(tiny_config, tmp_path):
    """The coordinator dies after round 2's noised global went out for evaluation and before its checkpoint: the
    resumed run redoes round 2 with fresh noise, a second release over the same updates, and ε must count both."""
    out = tmp_path / "run"
    cfg = tiny_config(privacy={"mode": "client", "noise_multiplier": 1.0, "client_clip_norm": 0.5},
                      simulation={"faults": [{"site": 0, "round": 2, "kind": "coordinator_crash"}]})
    crashed = run_cli("simulate", "--config", str(cfg), "--out", str(out), check=False)
    assert crashed.returncode != 0 and "injected coordinator crash in round 2" in crashed.stdout + crashed.stderr
    assert json.loads((out / "checkpoint" / "client_releases.json").read_text()) == {"0": 2, "1": 2}
    proc = run_cli("simulate", "--resume", str(out))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    sites = [r for r in records if r["site"] != "pooled"]
    assert {r["status"] for r in sites} == {"accepted"}
    by_round = {r["round"]: r["epsilon"] for r in sites if r["site"] == "0"}
    delta = sites[0]["delta"]

    def eps(releases: int) -> float:
        return epsilon([Mechanism(sample_rate=1.0, noise_multiplier=1.0, steps=releases)], delta)

    assert by_round[1] == pytest.approx(eps(1)) and by_round[2] == pytest.approx(eps(3))  # 1, 2 crashed, 2 redone
    summary = json.loads((out / "summary.json").read_text())
    assert summary["privacy"]["guarantee"] == "client-level"
    assert summary["final"]["0"]["epsilon"] == pytest.approx(eps(3))
    assert json.loads((out / "checkpoint" / "client_releases.json").read_text()) == {"0": 3, "1": 3}
    assert "Client-level (ε, δ)-DP" in proc.stdout
