"""Aggregation math over named arrays: groups, validation, robust means, server optimisers."""

import math

import numpy as np
import pytest

from strategies import (
    FedAdam,
    FedAvgM,
    FedAvgServer,
    SiteUpdate,
    UpdateBounds,
    aggregate,
    keys_matching,
    make_server_optimizer,
    norm_bounded_mean,
    select,
    shared_keys,
    trimmed_mean,
    validate_update,
    weighted_mean,
)

KEYS = [
    "backbone.conv1.weight",
    "backbone.bn1.weight",
    "backbone.bn1.running_mean",
    "backbone.bn1.num_batches_tracked",
    "backbone.layer1.0.conv1.weight",
    "backbone.layer1.0.bn1.bias",
    "projector.0.weight",
    "classifiers.0.weight",
    "classifiers.1.bias",
]


def model(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "w": (scale * rng.normal(size=(3, 4))).astype(np.float32),
        "b": (scale * rng.normal(size=(4,))).astype(np.float32),
        "n": np.array(rng.integers(0, 100), dtype=np.int64),
    }


def sites(rng: np.random.Generator, counts: list[int]) -> list[SiteUpdate]:
    return [SiteUpdate(f"site{i}", model(rng), n) for i, n in enumerate(counts)]


# ---- groups ------------------------------------------------------------------------------------


def test_keys_matching_globs_keep_original_order():
    assert keys_matching(KEYS, ["classifiers.*", "*.bn*"]) == [
        "backbone.bn1.weight",
        "backbone.bn1.running_mean",
        "backbone.bn1.num_batches_tracked",
        "backbone.layer1.0.bn1.bias",
        "classifiers.0.weight",
        "classifiers.1.bias",
    ]
    assert keys_matching(KEYS, []) == []


@pytest.mark.parametrize("backbone,norm,head_norm", [("resnet18", "batch", "batch"), ("resnet50", "group", "group"),
                                                    ("resnet10", "batch", "group")])
def test_the_norm_group_is_every_normalisation_layer_and_nothing_else(backbone, norm, head_norm):
    """`local_groups: [norm]` (FedBN) names the weights, biases and running statistics of every normalisation module
    of a built model: ResNet's bn/downsample.1, the hierarchical blocks' and the embedding heads' own."""
    import torch

    from fgssl.config import ModelConfig
    from fgssl.model import build_model

    cfg = ModelConfig(backbone=backbone, width=8, norm=norm, head_norm=head_norm, groups=2)
    model = build_model(cfg, 5)
    norm_types = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    layers = [name for name, m in model.named_modules() if isinstance(m, norm_types)]
    expected = [k for k in model.state_dict() if k.rsplit(".", 1)[0] in layers]
    assert len(layers) > 10 and keys_matching(list(model.state_dict()), ["norm"]) == expected
    # "*bn*" alone (the pattern documented before the alias) leaves the blocks' and heads' layers shared
    assert len(keys_matching(list(model.state_dict()), ["*bn*", "*downsample.1*"])) < len(expected)


def test_keys_matching_rejects_bare_string():
    with pytest.raises(TypeError):
        keys_matching(KEYS, "classifiers.*")


def test_shared_keys_excludes_local_and_untrained():
    got = shared_keys(KEYS, ["backbone.*", "projector.*"], ["*.bn*"])
    assert got == ["backbone.conv1.weight", "backbone.layer1.0.conv1.weight", "projector.0.weight"]
    assert shared_keys(KEYS, ["backbone.*"], []) == [k for k in KEYS if k.startswith("backbone.")]


def test_select():
    named = {k: np.zeros(1) for k in KEYS}
    assert list(select(named, ["classifiers.1.bias", "projector.0.weight"])) == [
        "classifiers.1.bias",
        "projector.0.weight",
    ]
    with pytest.raises(KeyError, match="nope"):
        select(named, ["nope"])


# ---- validation --------------------------------------------------------------------------------


@pytest.fixture
def ref():
    return model(np.random.default_rng(0))


def test_validate_good_update(ref):
    update = {k: v.copy() for k, v in ref.items()}
    update["w"] += 0.01
    bounds = UpdateBounds(max_update_norm=1.0, max_abs_value=100)
    assert validate_update(update, ref, bounds) is None
    assert validate_update(update, ref) is None


@pytest.mark.parametrize(
    "corrupt, words",
    [
        (lambda u: u.pop("b"), ["missing", "'b'"]),
        (lambda u: u.update(extra=np.zeros(2, np.float32)), ["unexpected", "'extra'"]),
        (lambda u: u.update(w=np.zeros((4, 3), np.float32)), ["shape", "'w'", "(3, 4)", "(4, 3)"]),
        (lambda u: u.update(w=u["w"].astype(np.float64)), ["dtype", "'w'", "float32", "float64"]),
        (lambda u: u["b"].__setitem__(1, np.nan), ["non-finite", "'b'", "1"]),
        (lambda u: u["w"].__setitem__((0, 0), -np.inf), ["non-finite", "'w'"]),
        (lambda u: u["w"].__setitem__((2, 3), 1e9), ["norm", "exceeds", "'w'"]),
    ],
    ids=["missing", "extra", "shape", "dtype", "nan", "inf", "norm"],
)
def test_validate_reports_reason_and_key(ref, corrupt, words):
    update = {k: v.copy() for k, v in ref.items()}
    corrupt(update)
    reason = validate_update(update, ref, UpdateBounds(max_update_norm=10.0))
    assert reason is not None
    for word in words:
        assert word in reason, (word, reason)


def test_validate_norm_is_joint_over_keys(ref):
    update = {k: v.copy() for k, v in ref.items()}
    update["w"][0, 0] += 3.0
    update["b"][0] += 4.0  # joint norm 5, each key alone < 5
    assert validate_update(update, ref, UpdateBounds(max_update_norm=5.01)) is None
    assert "norm" in validate_update(update, ref, UpdateBounds(max_update_norm=4.99))


def test_validate_max_abs_value(ref):
    update = {k: v.copy() for k, v in ref.items()}
    update["b"][2] = -50.0
    reason = validate_update(update, ref, UpdateBounds(max_abs_value=10.0))
    assert reason is not None and "'b'" in reason


# ---- aggregation -------------------------------------------------------------------------------


def test_weighted_mean_matches_explicit_loop():
    updates = sites(np.random.default_rng(1), [10, 30, 5])
    got = weighted_mean(updates)
    total = sum(u.num_examples for u in updates)
    for key in ("w", "b"):
        expected = sum(u.num_examples * u.arrays[key].astype(np.float64) for u in updates) / total
        assert got[key].dtype == np.float32
        np.testing.assert_allclose(got[key], expected, rtol=1e-6)
    expected_n = sum(u.num_examples * int(u.arrays["n"]) for u in updates) / total
    assert got["n"].dtype == np.int64 and int(got["n"]) == round(expected_n)


def test_weighted_mean_single_site_is_identity():
    (update,) = sites(np.random.default_rng(2), [7])
    got = weighted_mean([update])
    for key, value in update.arrays.items():
        assert got[key].dtype == value.dtype
        np.testing.assert_array_equal(got[key], value)


def test_weighted_mean_rejects_bad_input():
    updates = sites(np.random.default_rng(3), [1, 1])
    with pytest.raises(ValueError):
        weighted_mean([])
    with pytest.raises(ValueError, match="site1"):
        weighted_mean([updates[0], SiteUpdate("site1", {"w": updates[1].arrays["w"]}, 1)])
    with pytest.raises(ValueError):
        weighted_mean([SiteUpdate(u.site, u.arrays, 0) for u in updates])


def _distance(a: dict, b: dict) -> float:
    return math.sqrt(sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in ("w", "b")))


def test_norm_bounded_mean_bounds_a_huge_update():
    rng = np.random.default_rng(4)
    ref = model(rng)
    updates = [SiteUpdate(f"s{i}", {k: v + 0.01 for k, v in ref.items()}, 10) for i in range(3)]
    updates.append(SiteUpdate("evil", {k: v * 1e6 for k, v in ref.items()}, 1000))
    got = norm_bounded_mean(updates, ref, max_norm=0.5)
    assert _distance(got, ref) <= 0.5 + 1e-5
    assert _distance(weighted_mean(updates), ref) > 1e3  # the unbounded mean is ruined
    assert got["w"].dtype == np.float32


def test_norm_bounded_mean_with_large_bound_equals_weighted_mean():
    rng = np.random.default_rng(5)
    ref = model(rng)
    updates = sites(rng, [3, 8, 1])
    got = norm_bounded_mean(updates, ref, max_norm=1e9)
    want = weighted_mean(updates)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6)


def test_trimmed_mean_ignores_one_hostile_site():
    rng = np.random.default_rng(6)
    ref = model(rng)
    honest = sites(rng, [5, 5, 5, 5])
    hostile = SiteUpdate("evil", {k: v * 1e6 for k, v in honest[0].arrays.items()}, 5)
    got = trimmed_mean([*honest, hostile], ref, trim_fraction=0.2)  # floor(0.2 * 5) = 1
    for key in ("w", "b"):
        stacked = np.stack([u.arrays[key] for u in honest]).astype(np.float64)
        assert np.all(got[key] >= stacked.min(axis=0) - 1e-6)
        assert np.all(got[key] <= stacked.max(axis=0) + 1e-6)


def test_trimmed_mean_exact_values_and_trim_zero():
    ref = {"x": np.zeros(2, np.float32)}
    values = [[1.0, 10.0], [2.0, -5.0], [3.0, 0.0], [100.0, 1.0]]
    updates = [
        SiteUpdate(f"s{i}", {"x": np.array(v, np.float32)}, i + 1) for i, v in enumerate(values)
    ]
    np.testing.assert_allclose(trimmed_mean(updates, ref, 0.25)["x"], [2.5, 0.5])
    np.testing.assert_allclose(trimmed_mean(updates, ref, 0.0)["x"], np.mean(values, axis=0))
    with pytest.raises(ValueError):
        trimmed_mean(updates, ref, 0.5)  # drops 2 + 2 of 4


def test_aggregate_dispatch():
    rng = np.random.default_rng(7)
    ref = model(rng)
    updates = sites(rng, [2, 3, 4])
    want = weighted_mean(updates)
    params_of = {
        "fedavg": {},
        "norm_bounded": {"max_norm": 1e9},
        "trimmed_mean": {"trim_fraction": 0.0},
    }
    for method, params in params_of.items():
        got = aggregate(updates, ref, method, **params)
        assert set(got) == set(want)
    np.testing.assert_allclose(aggregate(updates, ref, "fedavg")["w"], want["w"])
    with pytest.raises(ValueError, match="krum"):
        aggregate(updates, ref, "krum")


# ---- server optimisers -------------------------------------------------------------------------


def test_fedavg_server_returns_aggregate():
    global_ = {"a": np.array([1.0, 2.0], np.float32), "b": np.array([3.0], np.float32)}
    agg = {"a": np.array([1e-30, 7.0], np.float32)}
    new = FedAvgServer().step(global_, agg)
    np.testing.assert_array_equal(new["a"], agg["a"])
    assert new["b"] is global_["b"]


def test_fedavg_server_learning_rate_lengthens_the_step_but_not_statistics():
    # federation.server_lr with server_optimizer fedavg reached FedAvgServer as a keyword it did not take (TypeError)
    opt = make_server_optimizer("fedavg", server_lr=2.5)
    global_ = {"w": np.array([1.0, -1.0], np.float32), "bn.running_mean": np.array([0.0], np.float32),
               "bn.num_batches_tracked": np.array(3, np.int64)}
    agg = {"w": np.array([1.5, -2.0], np.float32), "bn.running_mean": np.array([0.4], np.float32),
           "bn.num_batches_tracked": np.array(5, np.int64)}
    new = opt.step(global_, agg, statistics={"bn.running_mean", "bn.num_batches_tracked"})
    np.testing.assert_allclose(new["w"], [1.0 + 2.5 * 0.5, -1.0 + 2.5 * -1.0])
    np.testing.assert_array_equal(new["bn.running_mean"], agg["bn.running_mean"])
    assert int(new["bn.num_batches_tracked"]) == 5
    assert opt.state_dict() == {"t": 1}


def test_fedavgm_two_steps_by_hand():
    opt = FedAvgM(server_lr=0.5, momentum=0.9)
    x = opt.step({"p": np.array([1.0])}, {"p": np.array([2.0])})
    # d = 1, m = 1, x = 1 + 0.5 * 1
    np.testing.assert_allclose(x["p"], [1.5])
    x = opt.step(x, {"p": np.array([2.5])})
    # d = 1, m = 0.9 * 1 + 1 = 1.9, x = 1.5 + 0.5 * 1.9
    np.testing.assert_allclose(x["p"], [2.45])


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedavg"])
def test_running_statistics_take_the_aggregate_under_every_server_optimiser(name):
    opt = make_server_optimizer(name)
    global_ = {"w": np.array([0.0], np.float32), "bn.running_var": np.array([1.0], np.float32)}
    for target in (0.2, 0.05, 0.01):  # a variance shrinking fast: momentum would overshoot it below zero
        agg = {"w": np.array([1.0], np.float32), "bn.running_var": np.array([target], np.float32)}
        global_ = opt.step(global_, agg, statistics={"bn.running_var"})
        np.testing.assert_array_equal(global_["bn.running_var"], np.array([target], np.float32))
    assert "m/bn.running_var" not in opt.state_dict()
    if name != "fedavg":  # the weights themselves are still stepped by the optimiser
        assert global_["w"][0] != 1.0


def test_fedadam_two_steps_by_hand():
    opt = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    x = {"p": np.array([0.0, 0.0], np.float32)}
    x = opt.step(x, {"p": np.array([1.0, -2.0], np.float32)})
    # coordinate 0: d = 1, m = 0.1, v = 0.01, x = 0.1 * 0.1 / (0.1 + 0.001)
    np.testing.assert_allclose(x["p"], [0.0990099, -0.0995025], rtol=1e-5)
    x = opt.step(x, {"p": np.array([1.0, 1.0], np.float32)})
    # coordinate 0: d = 0.9009901, m = 0.1800990, v = 0.0180178, x = 0.0990099 + 0.1331793
    np.testing.assert_allclose(x["p"], [0.2321892, -0.1301787], rtol=1e-5)
    assert x["p"].dtype == np.float32
    state = opt.state_dict()
    assert state["t"] == 2
    np.testing.assert_allclose(state["m/p"], [0.1800990, -0.0700498], rtol=1e-5)
    np.testing.assert_allclose(state["v/p"], [0.0180178, 0.0516891], rtol=1e-5)


@pytest.mark.parametrize(
    "name, params", [("fedavgm", {"momentum": 0.7}), ("fedadam", {}), ("fedavg", {})]
)
def test_state_round_trip_gives_identical_steps(name, params):
    rng = np.random.default_rng(8)
    x = model(rng)
    opt = make_server_optimizer(name, **params)
    for _ in range(2):
        x = opt.step(x, model(rng))
    later = [model(rng) for _ in range(3)]
    resumed = make_server_optimizer(name, **params)
    resumed.load_state_dict(opt.state_dict())
    x_a, x_b = x, dict(x)
    for agg in later:
        x_a, x_b = opt.step(x_a, agg), resumed.step(x_b, agg)
    for key in x_a:
        np.testing.assert_array_equal(x_a[key], x_b[key])


def test_state_dict_is_a_copy():
    opt = FedAvgM()
    opt.step({"p": np.zeros(2)}, {"p": np.ones(2)})
    state = opt.state_dict()
    state["m/p"][:] = 99.0
    np.testing.assert_array_equal(opt.state_dict()["m/p"], [1.0, 1.0])


@pytest.mark.parametrize("make", [FedAvgM, FedAdam, FedAvgServer])
def test_keys_absent_from_aggregate_are_untouched(make):
    opt = make()
    global_ = {"a": np.ones(3, np.float32), "b": np.full(2, 5.0, np.float32), "n": np.array(4)}
    new = opt.step(global_, {"a": np.zeros(3, np.float32)})
    assert new["b"] is global_["b"] and new["n"] is global_["n"]
    assert not np.array_equal(new["a"], global_["a"])
    moments_before = {k: v for k, v in opt.state_dict().items() if k != "t"}
    assert not any(k.endswith("/b") for k in moments_before)
    a_after_round1 = new["a"]
    new = opt.step(new, {"b": np.zeros(2, np.float32), "n": np.array(9)})
    assert int(new["n"]) == 9  # integer counters take the aggregate as is
    assert new["a"] is a_after_round1
    for key, value in moments_before.items():
        np.testing.assert_array_equal(opt.state_dict()[key], value)


def test_make_server_optimizer_unknown_name():
    with pytest.raises(ValueError, match="fedyogi"):
        make_server_optimizer("fedyogi")
    with pytest.raises(TypeError):
        make_server_optimizer("fedadam", lr=0.1)


def test_load_state_dict_rejects_unknown_entries():
    with pytest.raises(ValueError, match="w/p"):
        FedAdam().load_state_dict({"t": 1, "w/p": np.zeros(1)})
