import pytest
import torch
import torch.nn.functional as F

from fgssl.config import Config, ConfigError, config_from_dict
from fgssl.data.images import ImageSet
from fgssl.jigsaw import jigsaw
from fgssl.losses import barlow_twins_loss
from fgssl.model import BRANCHES, CONCAT, build_model
from fgssl.train import evaluate, finetune_batch, make_optimizer, ssl_batch, train_local

SMALL = {"model": {"block_mid_channels": 16, "block_out_channels": 32, "embed_dim": 16, "groups": 4}}


def small_cfg(**over) -> Config:
    raw = {k: dict(v) for k, v in SMALL.items()}
    for key, value in over.items():
        section, name = key.split("__")
        raw.setdefault(section, {})[name] = value
    return config_from_dict(raw)


@pytest.mark.parametrize("backbone", ["resnet10", "resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("norm", ["batch", "group"])
def test_shapes_of_every_branch(backbone, norm):
    cfg = small_cfg(model__backbone=backbone, model__norm=norm)
    model = build_model(cfg.model, num_classes=5)
    out = model(torch.randn(2, 3, 64, 64))
    for b in BRANCHES:
        assert out.embeddings[b].shape == (2, 16)
        assert out.logits[b].shape == (2, 5)
    assert out.combined_logits().shape == (2, 5)
    assert torch.allclose(out.combined_logits(), sum(out.logits[b] for b in BRANCHES))


@pytest.mark.parametrize("backbone, expansion", [("resnet10", 1), ("resnet50", 4)])
def test_a_narrow_backbone_has_width_2x_4x_8x_channels_and_refuses_full_width_weights(tmp_path, backbone, expansion):
    full = build_model(small_cfg(model__backbone=backbone, model__width=64).model, 3)
    narrow = build_model(small_cfg(model__backbone=backbone, model__width=16).model, 3)
    assert narrow.backbone.conv1.out_channels == 16
    feats = narrow._features(torch.randn(2, 3, 64, 64), 3)
    assert [f.shape[1] for f in feats] == [k * 16 * expansion for k in (2, 4, 8)]
    assert narrow(torch.randn(2, 3, 64, 64)).combined_logits().shape == (2, 3)
    count = lambda m: sum(p.numel() for p in m.backbone.parameters())  # noqa: E731
    assert count(narrow) < count(full) / 10  # convolution weights shrink with the square of the width
    path = tmp_path / "full.pth"
    torch.save(full.backbone.state_dict(), path)
    with pytest.raises(ValueError, match=r"conv1.weight is \(64, 3, 7, 7\) there but \(16, 3, 7, 7\)"):
        build_model(small_cfg(model__backbone=backbone, model__width=16, model__weights=str(path)).model, 3)
    with pytest.raises(ConfigError, match="model.width"):
        small_cfg(model__width=0)


def test_single_branch_forward_matches_full_forward():
    torch.manual_seed(0)
    model = build_model(small_cfg(model__norm="group").model, 3).eval()
    x = torch.randn(3, 3, 64, 64)
    full = model(x)
    for b in BRANCHES:
        part = model(x, (b,))
        assert set(part.embeddings) == {b}
        assert torch.allclose(part.logits[b], full.logits[b], atol=1e-5)


def test_group_norm_model_has_no_batchnorm_and_no_inplace_relu():
    model = build_model(small_cfg(model__norm="group").model, 3)
    for m in model.modules():
        assert not isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        if isinstance(m, torch.nn.ReLU):
            assert not m.inplace


def test_parameter_name_prefixes():
    model = build_model(small_cfg().model, 3)
    prefixes = {k.split(".")[0] for k in model.state_dict()}
    assert prefixes == {"backbone", "blocks", "heads", "classifiers"}


def _fixed_batch(n=16, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.arange(n) % classes
    x = x + y.view(-1, 1, 1, 1).float()  # a learnable signal
    return x, y


def test_one_finetune_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = small_cfg(model__norm="group", optim__lr_new=0.01, optim__lr_backbone=0.01)
    model = build_model(cfg.model, 3)
    x, y = _fixed_batch()

    def loss():
        # the objective finetune_batch optimises, with the same jigsaw permutations it will draw
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            total = 0.0
            for b, n in enumerate(cfg.model.granularities):
                total += F.cross_entropy(model(jigsaw(x, n, g)[0], (b,)).logits[b], y).item()
            return total + 2 * F.cross_entropy(model(x, (CONCAT,)).logits[CONCAT], y).item()

    before = loss()
    finetune_batch(model, x, y, cfg, make_optimizer(model, cfg, "finetune"), torch.Generator().manual_seed(1))
    assert loss() < before


def test_one_ssl_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = small_cfg(model__norm="group", optim__lr_new=0.001, optim__lr_backbone=0.001)
    model = build_model(cfg.model, 3)
    x, _ = _fixed_batch(n=32)
    v1, v2 = x + 0.5 * torch.randn_like(x), x.flip(-1)

    def loss():
        # the objective ssl_batch optimises, with the same jigsaw permutations it will draw
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            total = 0.0
            for b, n in enumerate(cfg.model.granularities):
                z1 = model(jigsaw(v1, n, g)[0], (b,), with_logits=False).embeddings[b]
                z2 = model(v2, (b,), with_logits=False).embeddings[b]
                total += barlow_twins_loss(z1, z2).item()
            out1, out2 = model(v1, (CONCAT,), with_logits=False), model(v2, (CONCAT,), with_logits=False)
            return total + 2 * barlow_twins_loss(out1.embeddings[CONCAT], out2.embeddings[CONCAT]).item()

    before = loss()
    ssl_batch(model, v1, v2, cfg, make_optimizer(model, cfg, "ssl"), torch.Generator().manual_seed(1))
    assert loss() < before


def test_ssl_phase_leaves_classifiers_untouched():
    cfg = small_cfg(model__norm="group", train__batch_size=8)
    model = build_model(cfg.model, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = ImageSet(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), torch.arange(16) % 3, ("a", "b", "c"))
    train_local(model, data, "ssl", cfg, max_batches=1, generator=torch.Generator().manual_seed(0))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("classifiers."))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("backbone."))


def _run(seed):
    torch.manual_seed(seed)
    cfg = small_cfg(model__norm="group", train__batch_size=8)
    model = build_model(cfg.model, 3)
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=g)
    data = ImageSet(imgs, torch.arange(24) % 3, ("a", "b", "c"))
    train_local(model, data, "ssl", cfg, max_batches=2, generator=g)
    res = train_local(model, data, "finetune", cfg, max_batches=2, generator=g)
    return model.state_dict(), res, evaluate(model, data)


def test_same_seed_same_result():
    (a, ra, ea), (b, rb, eb) = _run(3), _run(3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ra.losses == rb.losses and ea == eb
    c, _, _ = _run(4)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("raw,key", [
    ({"model": {"backbone": "resnet19"}}, "model.backbone"),
    ({"model": {"granularities": [8, 0, 2]}}, "model.granularities[1]"),
    ({"data": {"image_size": 16}, "model": {"granularities": [32, 4, 2]}}, "data.image_size"),
    ({"model": {"norm": "layer"}}, "model.norm"),
    ({"train": {"batch_size": "big"}}, "train.batch_size"),
    ({"trian": {}}, "trian"),
    ({"model": {"backbon": "resnet18"}}, "model.backbon"),
])
def test_bad_config_names_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert err.value.key == key
    assert key in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_the_backbone_is_torchvisions_resnet_with_its_names_and_for_a_seed_its_initial_weights(backbone):
    import torchvision
    from fgssl.config import ModelConfig
    from fgssl.model import FGSSLNet

    torch.manual_seed(3)
    reference = getattr(torchvision.models, backbone)().state_dict()
    torch.manual_seed(3)
    own = FGSSLNet(ModelConfig(backbone=backbone, norm="batch", width=64), 7).backbone.state_dict()
    assert list(own) == [k for k in reference if not k.startswith("fc.")]
    for k, v in own.items():
        assert torch.equal(v, reference[k]), k


def test_the_model_does_not_import_torchvision():
    import subprocess
    import sys

    code = "import sys, fgssl.model, client.app; print('torchvision' in sys.modules, 'torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], out


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_imagenet_weights_file_is_loaded_into_the_backbone(tmp_path, suffix):
    import torchvision
    from safetensors.torch import save_file

    reference = torchvision.models.resnet18(num_classes=1000).state_dict()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(reference, path)
    else:
        save_file({k: v.contiguous() for k, v in reference.items()}, str(path))
    cfg = small_cfg(model__weights=str(path), model__width=64)  # ImageNet files are full width
    model = build_model(cfg.model, 3)
    own = model.backbone.state_dict()
    assert torch.equal(own["layer3.1.conv2.weight"], reference["layer3.1.conv2.weight"])
    assert torch.equal(own["bn1.running_var"], reference["bn1.running_var"])
    # with GroupNorm the convolutions still load; BatchNorm statistics have nowhere to go and are skipped
    gmodel = build_model(small_cfg(model__weights=str(path), model__width=64, model__norm="group").model, 3)
    assert torch.equal(gmodel.backbone.state_dict()["conv1.weight"], reference["conv1.weight"])


def test_weights_file_that_does_not_fit_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="no tensor matches"):
        build_model(small_cfg(model__weights=str(path)).model, 3)
    with pytest.raises(ConfigError, match="model.weights"):
        small_cfg(model__weights=str(tmp_path / "missing.pth"))


def test_a_project_model_file_fills_backbone_and_blocks_but_not_heads(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    public = build_model(small_cfg(model__norm="group").model, 3)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in public.state_dict().items()}, str(path))
    torch.manual_seed(6)
    model = build_model(small_cfg(model__norm="group", model__weights=str(path)).model, 3)
    mine, theirs = model.state_dict(), public.state_dict()
    assert torch.equal(mine["backbone.layer4.1.conv2.weight"], theirs["backbone.layer4.1.conv2.weight"])
    assert torch.equal(mine["blocks.2.conv.1.0.weight"], theirs["blocks.2.conv.1.0.weight"])
    assert not torch.equal(mine["heads.3.net.1.weight"], theirs["heads.3.net.1.weight"])
    assert not torch.equal(mine["classifiers.0.weight"], theirs["classifiers.0.weight"])


def test_batch_norm_weights_for_a_frozen_group_norm_part_are_refused_and_train_refuses_them_too(tmp_path):
    """GroupNorm layers holding BatchNorm's affine weights compute features the weights never learned; frozen, they
    would stay wrong for the whole run (the DP sweep once did this to the DP example)."""
    from safetensors.torch import save_file
    from .conftest import run_cli

    def model(norm, weights=None, frozen=()):
        return build_model(config_from_dict({"model": {"norm": norm, "weights": weights}}).model, 3, frozen)

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model("batch").state_dict().items()}, str(path))
    with pytest.raises(ConfigError, match=r"model.weights.*its backbone was trained with BatchNorm"):
        model("group", str(path), ("backbone",))
    # the same file fits a frozen BatchNorm part, and a GroupNorm part that trains
    model("batch", str(path), ("backbone", "blocks"))
    model("group", str(path))

    proc = run_cli("train", "--set", "data.num_samples=40", "--set", "data.image_size=32", "--set", "model.norm=group",
                   "--set", f"model.weights={path}", "--set", "train.frozen=[backbone,blocks]",
                   "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "fgssl train: error: config key 'model.weights'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_frozen_parts_do_not_train_and_do_not_travel():
    from fgssl.train import trained_prefixes
    from strategies.fgssl_strategy import FGSSLStrategy

    cfg = small_cfg(train__frozen=["backbone", "blocks"])
    model = build_model(cfg.model, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(8, 3, 32, 32)
    data = ImageSet((x * 255).to(torch.uint8), torch.arange(8) % 3, ["a", "b", "c"])
    train_local(model, data, "finetune", cfg, max_batches=2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("backbone.", "blocks.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("classifiers."))
    assert trained_prefixes("finetune", cfg.train.frozen) == ("heads.", "classifiers.")
    sent = FGSSLStrategy(cfg.federation, list(before), frozen=cfg.train.frozen).keys_to_send("finetune")
    assert sent and all(k.startswith(("heads.", "classifiers.")) for k in sent)
    with pytest.raises(ConfigError, match="train.frozen"):
        small_cfg(train__frozen=["heads"])


def test_bfloat16_precision_trains_under_autocast_and_float32_stays_exact():
    from fgssl.train import autocast_dtype

    x, y = _fixed_batch()
    results = {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        cfg = small_cfg(model__norm="group", train__precision=precision)
        model = build_model(cfg.model, 3)
        losses = finetune_batch(model, x, y, cfg, make_optimizer(model, cfg, "finetune"), torch.Generator().manual_seed(1))
        assert all(torch.isfinite(torch.tensor(losses))) and all(p.dtype == torch.float32 for p in model.parameters())
        results[precision] = losses
    # autocast did run in bfloat16 (its 8-bit significand changes the losses), and only when asked
    assert results["float32"] != results["bfloat16"]
    assert abs(results["float32"][0] - results["bfloat16"][0]) < 0.05 * abs(results["float32"][0])
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(small_cfg(), cpu) is None  # auto: float32 on the CPU
    assert autocast_dtype(small_cfg(train__precision="bfloat16"), cpu) == torch.bfloat16
    dp = small_cfg(model__norm="group", privacy__mode="sample")
    assert autocast_dtype(dp, gpu) is None  # auto never autocasts DP-SGD, not even on a GPU
    with pytest.raises(ConfigError, match="train.precision"):
        small_cfg(model__norm="group", privacy__mode="sample", train__precision="bfloat16")


def test_a_gpu_share_per_site_without_a_gpu_is_a_clear_error():
    from simulations.run import backend_config

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert backend_config(small_cfg())["client_resources"]["num_gpus"] == 0.0
    with pytest.raises(ConfigError, match="simulation.client_gpus.*no GPU"):
        backend_config(small_cfg(simulation__client_gpus=0.25))
    with pytest.raises(ConfigError, match="simulation.client_gpus"):
        small_cfg(simulation__client_gpus=1.5)


@pytest.mark.parametrize("name, kind, decay, ssl_scale", [("sgd", torch.optim.SGD, 5e-4, 0.02),
                                                          ("adamw", torch.optim.AdamW, 0.05, 0.5)])
def test_the_optimizer_and_its_usual_decay_and_ssl_rate(name, kind, decay, ssl_scale):
    cfg = small_cfg(model__norm="group", optim__optimizer=name, optim__lr_new=0.01, optim__lr_backbone=0.001)
    model = build_model(cfg.model, 3)
    for phase, scale in (("finetune", 1.0), ("ssl", ssl_scale)):
        opt = make_optimizer(model, cfg, phase)
        assert type(opt) is kind
        assert [g["base_lr"] for g in opt.param_groups] == pytest.approx([0.001 * scale, 0.01 * scale])
        assert all(g["weight_decay"] == decay for g in opt.param_groups)
    own = make_optimizer(model, small_cfg(optim__optimizer=name, optim__weight_decay=0.0, optim__ssl_lr_scale=1.0,
                                          optim__lr_new=0.03, optim__lr_backbone=0.03), "ssl")
    assert all(g["weight_decay"] == 0.0 for g in own.param_groups)
    assert [g["base_lr"] for g in own.param_groups] == pytest.approx([0.03, 0.03])
    # a step under either optimiser trains: the loss of a fixed batch goes down
    x, y = _fixed_batch()
    torch.manual_seed(0)
    model = build_model(cfg.model, 3)
    opt = make_optimizer(model, cfg, "finetune")
    first = finetune_batch(model, x, y, cfg, opt, torch.Generator().manual_seed(1))
    for _ in range(3):
        last = finetune_batch(model, x, y, cfg, opt, torch.Generator().manual_seed(1))
    assert sum(last) < sum(first)
    with pytest.raises(ConfigError, match="optim.optimizer"):
        small_cfg(optim__optimizer="lamb")


def test_the_plain_baseline_is_a_pooled_layer4_head_trained_one_unshuffled_step_a_batch():
    from fgssl.model import PLAIN

    torch.manual_seed(0)
    cfg = small_cfg(model__architecture="plain", model__norm="group", train__batch_size=8)
    model = build_model(cfg.model, 3)
    names = {k.split(".")[0] for k in model.state_dict()}
    assert names == {"backbone", "heads", "classifiers"} and len(model.heads) == len(model.classifiers) == 1
    x, y = _fixed_batch()
    out = model(x)
    assert list(out.logits) == [PLAIN] and out.combined_logits().shape == (16, 3)
    pooled = model.backbone.layer4(model.backbone.layer3(model._features(x, 1)[0])).mean(dim=(2, 3))
    torch.testing.assert_close(out.logits[PLAIN], model.classifiers[0](model.heads[0](pooled)))
    with pytest.raises(ValueError, match="one branch"):
        model(x, (CONCAT,))

    data = ImageSet(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), torch.arange(16) % 3, ("a", "b", "c"))
    gen = torch.Generator().manual_seed(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ssl = train_local(model, data, "ssl", cfg, max_batches=2, generator=gen)
    assert ssl.optimizer_steps == 2 and set(ssl.losses) == {"loss_plain", "loss"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k.startswith("classifiers."))
    ft = train_local(model, data, "finetune", cfg, max_batches=2, generator=gen)
    assert ft.optimizer_steps == 2 and ft.losses["loss"] == ft.losses["loss_plain"]
    assert evaluate(model, data)["num_examples"] == 16


def test_the_plain_baseline_refuses_sample_level_dp():
    with pytest.raises(ConfigError, match="model.architecture"):
        config_from_dict({"model": {"architecture": "plain", "norm": "group"}, "privacy": {"mode": "sample",
                                                                                         "noise_multiplier": 1.0}})
