"""DP-SGD in both local phases: per-sample independence of the SSL surrogate, clipping, noise scale, accounting.

Tiny GroupNorm model at 32 px; every test fixes its seeds.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fgssl.config import ConfigError, config_from_dict
from fgssl.data.images import ImageSet
from fgssl.jigsaw import jigsaw
from fgssl.losses import barlow_twins_loss
from fgssl.model import CONCAT, build_model
from fgssl.privacy.accounting import Mechanism
from fgssl.privacy.dp_train import (
    DPSettings,
    DPStepper,
    PerSampleGradients,
    check_dp_model,
    dp_train_local,
    plan_mechanism,
)
from fgssl.privacy.ssl_surrogate import (
    noise_bias,
    objective_gradient,
    per_sample_normalize,
    per_sample_normalized_bt_loss,
    release_direction,
    release_statistic,
    surrogate_per_sample,
)

TINY = {"model": {"block_mid_channels": 16, "block_out_channels": 32, "embed_dim": 16, "groups": 4, "norm": "group",
                  "granularities": [4, 2, 1]},
        "train": {"batch_size": 8}}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(**sections):
    raw = {k: dict(v) for k, v in TINY.items()}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


def tiny_model(cfg=None, seed=0):
    torch.manual_seed(seed)
    return build_model((cfg or tiny_cfg()).model, 3).train()


def images(n, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def per_sample_surrogate_grads(model, grads, v1, v2, g, branch):
    """{name: (N, ...)} per-sample gradients of Σ_i ⟨G, ẑ'_i ẑ''_iᵀ⟩ (both views in one backward)."""
    grads.clear()
    z1n = per_sample_normalize(grads(v1, (branch,), with_logits=False).embeddings[branch])
    z2n = per_sample_normalize(grads(v2, (branch,), with_logits=False).embeddings[branch])
    grads.backward(surrogate_per_sample(z1n, z2n, g).sum())
    out = {n: p.grad_sample.detach().clone() for n, p in model.named_parameters()
           if getattr(p, "grad_sample", None) is not None}
    grads.clear()
    return out


# ---------------------------------------------------------------------------------------------------------------
# (a) the SSL surrogate is per-sample, and exact without noise
# ---------------------------------------------------------------------------------------------------------------

def test_changing_one_sample_leaves_every_other_per_sample_gradient_unchanged():
    model = tiny_model()
    branch, n = 0, 4
    x = images(n)
    v1, _ = jigsaw(x, 4, torch.Generator().manual_seed(1))
    v2 = x.flip(-1)
    grads = PerSampleGradients(model, "hooks")
    try:
        with torch.no_grad():
            z1 = per_sample_normalize(model(v1, (branch,), with_logits=False).embeddings[branch])
            z2 = per_sample_normalize(model(v2, (branch,), with_logits=False).embeddings[branch])
        # G from the noisy statistic of the ORIGINAL batch, then held fixed
        release = release_direction(z1, z2, noise_multiplier=2.0, expected_batch_size=n,
                                    generator=torch.Generator().manual_seed(2))
        before = per_sample_surrogate_grads(model, grads, v1, v2, release.direction, branch)
        v1b, v2b = v1.clone(), v2.clone()
        v1b[2], v2b[2] = images(1, seed=9)[0], images(1, seed=10)[0]  # sample 2 replaced, both of its views
        after = per_sample_surrogate_grads(model, grads, v1b, v2b, release.direction, branch)
        others = [0, 1, 3]
        assert set(before) == set(after) and len(before) > 10
        diff = max((before[k][others] - after[k][others]).abs().max().item() for k in before)
        assert diff <= 1e-6
        assert max((before[k][2] - after[k][2]).abs().max().item() for k in before) > 1e-3  # sample 2 did change

        # Contrast: Opacus' "per-sample" gradients of the batch-standardised Barlow Twins loss are not per-sample.
        def bt_rows(a, b):
            grads.clear()
            za = grads(a, (branch,), with_logits=False).embeddings[branch]
            zb = grads(b, (branch,), with_logits=False).embeddings[branch]
            grads.backward(barlow_twins_loss(za, zb))
            rows = {k: p.grad_sample.detach().clone() for k, p in model.named_parameters()
                    if getattr(p, "grad_sample", None) is not None}
            grads.clear()
            return rows
        bt_before, bt_after = bt_rows(v1, v2), bt_rows(v1b, v2b)
        assert max((bt_before[k][others] - bt_after[k][others]).abs().max().item() for k in bt_before) > 1e-4
    finally:
        grads.close()


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ew"])
def test_surrogate_gradient_without_noise_equals_per_sample_normalised_bt_gradient(mode):
    model = tiny_model(seed=1)
    branch, n, b_exp, weight = 0, 4, 5.0, 2.0  # the divisor is the expected batch size, not n
    x = images(n, seed=3)
    v1, _ = jigsaw(x, 4, torch.Generator().manual_seed(4))
    v2 = x.flip(-2)
    names = [k for k, _ in model.named_parameters()]
    params = dict(model.named_parameters())

    # reference: plain autograd of weight·F(Σ ẑ'ẑ''ᵀ / b) through both views
    z1 = model(v1, (branch,), with_logits=False).embeddings[branch]
    z2 = model(v2, (branch,), with_logits=False).embeddings[branch]
    ref_loss = per_sample_normalized_bt_loss(z1, z2, divisor=b_exp, weight=weight)
    used = [k for k in names if k.startswith(("backbone.conv1", "backbone.layer1", "blocks.0", "heads.0"))]
    ref = dict(zip(used, torch.autograd.grad(ref_loss, [params[k] for k in used])))
    # G at the exact C (σ_s = 0)
    release = release_direction(per_sample_normalize(z1), per_sample_normalize(z2), noise_multiplier=0.0,
                                expected_batch_size=b_exp, weight=weight)
    assert release.objective == pytest.approx(ref_loss.item(), rel=1e-5)
    assert release.objective_debiased == release.objective

    grads = PerSampleGradients(model, mode)
    try:
        rows = per_sample_surrogate_grads(model, grads, v1, v2, release.direction, branch)
    finally:
        grads.close()
    for k in used:
        surrogate = rows[k].sum(0) / b_exp
        scale = ref[k].abs().max().item() + 1e-12
        assert (surrogate - ref[k]).abs().max().item() <= 1e-4 * scale + 1e-7, k

    # each row is sample i's own gradient through BOTH views (Opacus adds the rows of the two calls per sample)
    i = 1
    zi1 = per_sample_normalize(model(v1[i:i + 1], (branch,), with_logits=False).embeddings[branch])
    zi2 = per_sample_normalize(model(v2[i:i + 1], (branch,), with_logits=False).embeddings[branch])
    own = torch.autograd.grad(surrogate_per_sample(zi1, zi2, release.direction).sum(), [params[k] for k in used])
    for k, gk in zip(used, own):
        assert (rows[k][i] - gk).abs().max().item() <= 1e-4 * (gk.abs().max().item() + 1e-12) + 1e-7, k


def test_objective_gradient_and_noise_bias_match_closed_forms():
    torch.manual_seed(0)
    d, lam = 6, 5e-3
    c = torch.randn(d, d)
    g, f = objective_gradient(c, lam, "standard", weight=2.0)
    eye = torch.eye(d)
    expected = 2.0 * (2 * (c - eye) * eye + 2 * lam * c * (1 - eye))
    assert torch.allclose(g, expected, atol=1e-6)
    # F is quadratic in C: the noise adds a known constant in expectation. Antithetic pairs (C ± E) cancel the
    # linear term, so 4000 pairs estimate the constant to about 1 %; allow 5 %.
    s = 0.3
    gen = torch.Generator().manual_seed(1)
    base = objective_gradient(c, lam)[1].item()
    draws = []
    for _ in range(4000):
        e = s * torch.randn(d, d, generator=gen)
        draws.append((objective_gradient(c + e, lam)[1].item() + objective_gradient(c - e, lam)[1].item()) / 2)
    assert sum(draws) / len(draws) - base == pytest.approx(noise_bias(d, s, lam), rel=0.05)


# ---------------------------------------------------------------------------------------------------------------
# (c) the noise has the configured scale
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("phase", ["finetune", "ssl"])
def test_noise_of_a_zero_gradient_step_has_std_sigma_c_over_expected_batch(phase):
    model = tiny_model(seed=2)
    sigma, clip, b_exp = 0.7, 1.5, 6.0
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # Δθ = −noisy gradient exactly
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    dp = DPSettings(noise_multiplier=sigma, max_grad_norm=clip, statistic_noise_multiplier=3.0)
    stepper = DPStepper(model, opt, dp, phase=phase, expected_batch_size=b_exp,
                        generator=torch.Generator().manual_seed(5))
    x = images(4, seed=6)
    with stepper:
        # weight 0: every per-sample loss is 0, so every per-sample gradient is exactly 0; only the noise moves θ
        if phase == "finetune":
            stepper.finetune_step(0, x, torch.tensor([0, 1, 2, 0]), weight=0.0)
        else:
            stepper.ssl_step(0, x, x.flip(-1), weight=0.0)
        trained = {n for n, p in model.named_parameters() if any(p is q for q in stepper.branch_parameters(0, x.shape))}
    delta = torch.cat([(before[k] - v.detach()).flatten() for k, v in model.named_parameters() if k in trained])
    untouched = [k for k, v in model.named_parameters() if k not in trained]
    assert untouched and all(torch.equal(before[k], dict(model.named_parameters())[k]) for k in untouched)
    expected = sigma * clip / b_exp
    # ~1e6 draws: the sample std is within 0.2 % of the truth with overwhelming probability; allow 1 %
    assert delta.numel() > 100_000
    assert delta.std().item() == pytest.approx(expected, rel=0.01)
    assert abs(delta.mean().item()) < 5 * expected / math.sqrt(delta.numel())


def test_statistic_noise_has_std_sigma_s_times_d():
    d, sigma_s = 16, 1.3
    gen = torch.Generator().manual_seed(7)
    noise = torch.stack([release_statistic(torch.zeros(d, d), sigma_s, gen) for _ in range(200)])
    # 51,200 draws: sample std within 1 % of σ_s·D (≈ 3 standard errors)
    assert noise.std().item() == pytest.approx(sigma_s * d, rel=0.01)


# ---------------------------------------------------------------------------------------------------------------
# (b) clipping, (e) accounting, end to end
# ---------------------------------------------------------------------------------------------------------------

def tiny_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 3,
                    ("a", "b", "c"))


@pytest.mark.parametrize("phase,reuse", [("finetune", "fresh"), ("ssl", "shared")])
def test_one_dp_batch_end_to_end_clips_every_sample_and_reports_the_mechanism(phase, reuse):
    cfg = tiny_cfg()
    model = tiny_model(cfg, seed=3)
    data = tiny_data()
    dp = DPSettings(noise_multiplier=1.1, max_grad_norm=0.05, statistic_noise_multiplier=2.5, batch_reuse=reuse)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    records = []
    result = dp_train_local(model, data, phase, cfg, dp, max_batches=1, generator=torch.Generator().manual_seed(8),
                            observer=records.append)
    after = model.state_dict()

    # finite, changed weights; the model is left without Opacus' hooks and attributes
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("backbone."))
    assert not any(hasattr(p, "grad_sample") or hasattr(p, "_forward_counter") for p in model.parameters())
    if phase == "ssl":
        assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("classifiers."))

    # (b) every clipped per-sample gradient (jointly over the step's parameters) has norm ≤ C; clipping was active
    assert [r.branch for r in records] == [0, 1, 2, CONCAT]
    clipped_any = False
    for r in records:
        if r.batch_size == 0:
            continue
        norms = torch.stack([c.reshape(r.batch_size, -1).norm(dim=1) for c in r.clipped], 1).norm(dim=1)
        assert norms.max().item() <= dp.max_grad_norm * (1 + 1e-5)
        clipped_any |= bool((r.per_sample_norms > dp.max_grad_norm).any())
        assert r.noise_std == pytest.approx(dp.noise_multiplier * dp.max_grad_norm)
        assert r.expected_batch_size == pytest.approx(cfg.train.batch_size)
    assert clipped_any

    # (e) what was run, for the accountant
    q = cfg.train.batch_size / len(data)
    mech = result.mechanism
    assert isinstance(mech, Mechanism) and mech.sample_rate == pytest.approx(q)
    step_sigma = dp.noise_multiplier if phase == "finetune" else (2.5 ** -2 + 1.1 ** -2) ** -0.5
    if reuse == "fresh":
        # four optimizer steps, four independent Poisson draws
        draws = [tuple(r.indices.tolist()) for r in records]
        assert len(draws) == 4 and len(set(draws)) == 4
        assert (mech.noise_multiplier, mech.steps) == (pytest.approx(step_sigma), 4)
    else:
        assert all(torch.equal(r.indices, records[0].indices) for r in records)
        # one batch, four steps: ONE mechanism with σ/√4, never four independent steps with σ
        assert (mech.noise_multiplier, mech.steps) == (pytest.approx(step_sigma / 2), 1)
    assert mech == plan_mechanism(len(data), phase, cfg, dp, max_batches=1)
    metrics = result.metrics()
    assert metrics["dp_accounted_steps"] == mech.steps
    assert ("loss" in metrics) == (phase == "ssl")  # fine-tune losses are computed on raw batches: not sent


def test_a_public_class_prior_adjusts_the_dp_logits_and_the_site_counts_never_do():
    """Under DP, logit_adjust applies only with a declared prior (train.class_prior): the same Poisson draws then give
    other per-sample gradients, and the result says which class balance applied; from the site's own counts it does
    not apply at all (the same gradients as plain cross-entropy)."""
    data = tiny_data()
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=10.0)

    def norms(**train):
        cfg = tiny_cfg(train=train)
        records = []
        result = dp_train_local(tiny_model(cfg, seed=3), data, "finetune", cfg, dp, max_batches=1,
                                generator=torch.Generator().manual_seed(8), observer=records.append)
        return [r.per_sample_norms for r in records], result.details["class_balance"]

    plain, plain_text = norms(class_balance="none")
    own_counts, own_text = norms(class_balance="logit_adjust")
    prior, prior_text = norms(class_balance="logit_adjust", class_prior=[0.8, 0.15, 0.05])
    assert plain_text == own_text == "not applied under DP (Poisson sampling)"
    assert prior_text == "logit adjustment by the public prior train.class_prior"
    assert all(torch.equal(a, b) for a, b in zip(plain, own_counts))
    assert [len(a) for a in prior] == [len(a) for a in plain] and sum(len(a) for a in plain) > 0
    assert not all(torch.allclose(a, b) for a, b in zip(plain, prior))


@pytest.mark.parametrize("phase", ["finetune", "ssl"])
def test_four_steps_on_one_batch_are_never_four_independent_steps(phase):
    for sigma in (0.5, 1.0, 3.0):
        dp = DPSettings(noise_multiplier=sigma, statistic_noise_multiplier=2 * sigma, batch_reuse="shared")
        per_step = dp.step_noise_multiplier(phase)
        m = dp.mechanism(phase, 0.01, 250)
        assert (m.noise_multiplier, m.steps) == (pytest.approx(per_step / 2), 250)
        assert (m.noise_multiplier, m.steps) != (per_step, 1000)
        fresh = DPSettings(noise_multiplier=sigma, statistic_noise_multiplier=2 * sigma).mechanism(phase, 0.01, 250)
        assert (fresh.noise_multiplier, fresh.steps) == (pytest.approx(per_step), 1000)
    assert DPSettings(noise_multiplier=1.0, statistic_noise_multiplier=1.0).step_noise_multiplier("ssl") == \
        pytest.approx(1 / math.sqrt(2))


def test_batchnorm_model_is_refused_with_a_clear_message():
    cfg = tiny_cfg(model={"norm": "batch"})
    model = build_model(cfg.model, 3)
    with pytest.raises(ValueError, match=r"BatchNorm.*model.norm: group"):
        check_dp_model(model)
    with pytest.raises(ConfigError, match="model.norm"):
        tiny_cfg(model={"norm": "batch"}, privacy={"mode": "sample", "noise_multiplier": 1.0})
    # the loop checks the model itself, whatever config it came with
    with pytest.raises(ValueError, match="BatchNorm"):
        dp_train_local(model, tiny_data(), "finetune", tiny_cfg(), DPSettings(), max_batches=1)


@pytest.mark.parametrize("field,value", [("noise_multiplier", 0.0), ("max_grad_norm", -1.0),
                                         ("grad_sample_mode", "ghost"), ("batch_reuse", "twice"),
                                         ("expected_batch_size", 0)])
def test_bad_settings_name_the_privacy_key(field, value):
    """Validated once, in the config's privacy section; DPSettings is built from it."""
    with pytest.raises(ConfigError) as err:
        tiny_cfg(privacy={"mode": "sample", "noise_multiplier": 1.0, field: value})
    assert err.value.key == f"privacy.{field}"


def test_dp_settings_are_the_privacy_section_with_sigma_fixed():
    cfg = tiny_cfg(privacy={"mode": "sample", "target_epsilon": 8.0, "max_grad_norm": 0.5,
                            "statistic_noise_multiplier": 3.0, "expected_batch_size": 12, "batch_reuse": "shared"})
    dp = DPSettings.of(cfg.privacy, 1.7)
    assert dp == DPSettings(noise_multiplier=1.7, max_grad_norm=0.5, statistic_noise_multiplier=3.0,
                            expected_batch_size=12, grad_sample_mode="hooks", batch_reuse="shared")


def test_dp_loop_needs_noise():
    with pytest.raises(ValueError, match="noise multipliers > 0"):
        dp_train_local(tiny_model(), tiny_data(), "finetune", tiny_cfg(), DPSettings(noise_multiplier=0.0),
                       max_batches=1)


def test_a_frozen_batchnorm_feature_extractor_is_a_fixed_function_and_may_stay():
    """Public-pretrained BatchNorm backbone and blocks, frozen in eval mode; only GroupNorm heads train under DP."""
    cfg = tiny_cfg(model={"norm": "batch", "head_norm": "group"}, train={"frozen": ["backbone", "blocks"]})
    model = tiny_model(cfg, seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    records = []
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=0.05)
    dp_train_local(model, tiny_data(), "finetune", cfg, dp, max_batches=1,
                   generator=torch.Generator().manual_seed(2), observer=records.append)
    after = model.state_dict()
    # BatchNorm statistics and weights of the frozen parts are untouched (eval mode, no gradient)
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith(("backbone.", "blocks.")))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("classifiers."))
    assert all(not n.startswith(("backbone.", "blocks.")) for r in records for n in r.param_names)
    for r in records:
        if r.batch_size:
            norms = torch.stack([c.reshape(r.batch_size, -1).norm(dim=1) for c in r.clipped], 1).norm(dim=1)
            assert norms.max().item() <= dp.max_grad_norm * (1 + 1e-5)
    # only backbone frozen: the blocks' BatchNorm would train and couple samples
    with pytest.raises(ConfigError, match="model.norm"):
        tiny_cfg(model={"norm": "batch", "head_norm": "group"}, train={"frozen": ["backbone"]},
                 privacy={"mode": "sample", "noise_multiplier": 1.0})
    partly = tiny_cfg(model={"norm": "batch", "head_norm": "group"}, train={"frozen": ["backbone"]})
    with pytest.raises(ValueError, match="BatchNorm"):
        dp_train_local(tiny_model(partly), tiny_data(), "finetune", partly, dp, max_batches=1)


@pytest.mark.parametrize("phase", ["ssl", "finetune"])
def test_the_plain_and_the_dp_loop_run_the_same_recipe(phase, monkeypatch):
    """One progressive recipe (fgssl.recipe): the same steps (branch, granularity, weight) per batch, the same batch
    count and the same learning rate at every batch, in both loops."""
    import fgssl.recipe as recipe
    from fgssl.train import train_local

    seen: list[tuple] = []
    real_view, real_set_lr = recipe.Step.view, recipe.set_learning_rate

    def view(self, x, generator):
        seen.append(("step", self.branch, self.granularity, self.weight))
        return real_view(self, x, generator)

    def set_lr(optimizer, cfg, progress, done, total):
        real_set_lr(optimizer, cfg, progress, done, total)
        seen.append(("lr", done, total, tuple(round(g["lr"], 12) for g in optimizer.param_groups)))

    monkeypatch.setattr(recipe.Step, "view", view)
    monkeypatch.setattr("fgssl.train.set_learning_rate", set_lr)
    monkeypatch.setattr("fgssl.privacy.dp_train.set_learning_rate", set_lr)
    cfg = tiny_cfg(loss={"concat_weight": 2.0})
    runs = []
    for train in ("plain", "dp"):
        seen.clear()
        model, data = tiny_model(cfg, seed=3), tiny_data(48)
        if train == "plain":
            r = train_local(model, data, phase, cfg, max_batches=3, progress=(0.2, 0.6),
                            generator=torch.Generator().manual_seed(1))
        else:
            r = dp_train_local(model, data, phase, cfg, DPSettings(noise_multiplier=1.0), max_batches=3,
                               progress=(0.2, 0.6), generator=torch.Generator().manual_seed(1))
        runs.append((r.batches, r.optimizer_steps, list(seen)))
    assert runs[0] == runs[1]
    steps = [s[1:] for s in runs[0][2] if s[0] == "step"]
    assert steps[:4] == [(0, 4, 1.0), (1, 2, 1.0), (2, 1, 1.0), (CONCAT, None, 2.0)] and len(steps) == 12
    lrs = [s[3] for s in runs[0][2] if s[0] == "lr"]
    assert len(lrs) == 3 and lrs[0] > lrs[1] > lrs[2]  # cosine over the slice 0.2-0.6 of the run


def test_the_statistic_bound_holds_in_float32():
    """‖ẑ'_i‖·‖ẑ''_i‖ ≤ D for every computed row (the sensitivity the statistic's noise is sized on), also for rows
    whose variance dwarfs the normalisation eps, where float32 rounding used to overshoot by ~2e-7 relative."""
    g = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 1e3, 1e6):
        for dim in (8, 128, 512):
            z1 = torch.randn(256, dim, generator=g) * scale
            z2 = torch.randn(256, dim, generator=g) * scale + 3.0
            product = per_sample_normalize(z1).norm(dim=1) * per_sample_normalize(z2).norm(dim=1)
            assert product.max().item() <= dim, (scale, dim, product.max().item() / dim - 1)


def test_privacy_mode_alone_targets_the_stated_default_epsilon():
    from fgssl.config import DEFAULT_TARGET_EPSILON

    cfg = tiny_cfg(privacy={"mode": "sample"})
    assert cfg.privacy.target_epsilon == DEFAULT_TARGET_EPSILON == 8.0 and cfg.privacy.noise_multiplier is None
    assert cfg.to_dict()["privacy"]["target_epsilon"] == 8.0  # written into the run's config.yaml
    assert tiny_cfg(privacy={"mode": "sample", "noise_multiplier": 1.2}).privacy.target_epsilon is None
    with pytest.raises(ConfigError, match="not both"):
        tiny_cfg(privacy={"mode": "sample", "noise_multiplier": 1.2, "target_epsilon": 3.0})


def test_a_node_solves_its_sigma_once_per_plan_and_reads_it_back_after_one_check(tmp_path, monkeypatch):
    """A deployed node's tasks are fresh forks (no in-process cache survives): the solved σ is kept in its ledger and
    reused after one accountant evaluation; a stored value that no longer meets the target is solved again."""
    from fgssl.privacy import node
    from fgssl.privacy.ledger import PrivacyLedger

    calls = []
    real = node.epsilon
    monkeypatch.setattr(node, "epsilon", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = tiny_cfg(privacy={"mode": "sample", "target_epsilon": 8.0})
    with PrivacyLedger(tmp_path / "state") as ledger:
        node._solve_sigma.cache_clear()  # as in a fresh process
        sigma = node.noise_multiplier(cfg, 200, ledger)
        solved = len(calls)
        assert solved > 5 and node.epsilon(node.planned_history(cfg, 200, sigma), node.node_delta(cfg, 200)) <= 8.0
        node._solve_sigma.cache_clear()
        calls.clear()
        assert node.noise_multiplier(cfg, 200, ledger) == sigma and len(calls) == 1
        # another plan (more rounds) is another key; a stored σ too small for its target is not trusted
        longer = tiny_cfg(privacy={"mode": "sample", "target_epsilon": 8.0}, federation={"finetune_rounds": 5})
        assert node._sigma_key(longer, 200) != node._sigma_key(cfg, 200)
        ledger.bind(node._sigma_key(cfg, 200), "0.05", replace=True)
        node._solve_sigma.cache_clear()
        calls.clear()
        assert node.noise_multiplier(cfg, 200, ledger) == sigma and len(calls) > 5
        assert ledger.meta(node._sigma_key(cfg, 200)) == repr(sigma)
