"""Hierarchical FG-SSL network: a ResNet with blocks on layer2/3/4 and a concat branch (Park & Ryu 2024).

Parameter names are grouped by prefix, which the federation relies on to decide what a phase trains and what stays
local: `backbone.*` (the ResNet), `blocks.{0,1,2}.*` (hierarchical conv blocks), `heads.{0..3}.*` (embedding
heads; 3 = concat), `classifiers.{0..3}.*`. No in-place activations or residual adds, so Opacus' hooks work.
`model.architecture: plain` is the baseline without blocks: `heads.0` on layer4's average-pooled features and
`classifiers.0`, branch PLAIN only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .config import ConfigError, ModelConfig

BRANCHES = (0, 1, 2, 3)  # 0..2: blocks on layer2..layer4; 3: the concat branch
CONCAT = 3
PLAIN = 0  # the one branch of model.architecture 'plain'


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=k // 2, bias=False)


# torchvision's ResNet layout (the same parameter names, so its ImageNet files load, and for a given seed the same
# initial weights at width 64), written here because importing torchvision costs a process 1.5 s more than torch
# (it imports all its models and torch._dynamo), and every node, Ray actor and command starts one. Unlike
# torchvision's, no ReLU or residual add writes into its input: per-sample gradient hooks need that.
class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None,
                 norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, planes, 3, stride), norm(planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv2, self.bn2 = _conv(planes, planes, 3), norm(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None,
                 norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, planes, 1), norm(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3, stride), norm(planes)
        self.conv3, self.bn3 = _conv(planes, planes * self.expansion, 1), norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_ARCH = {
    "resnet10": (_BasicBlock, [1, 1, 1, 1]),  # half of ResNet-18's weights: quick CPU runs and load checks
    "resnet18": (_BasicBlock, [2, 2, 2, 2]),
    "resnet34": (_BasicBlock, [3, 4, 6, 3]),
    "resnet50": (_Bottleneck, [3, 4, 6, 3]),
}


class ResNetBackbone(nn.Module):
    """Stem and layer1-4 with `width` channels after the stem (64 in torchvision) and 2x, 4x, 8x in layer2-4."""

    def __init__(self, block: type[_BasicBlock | _Bottleneck], layers: list[int], norm: Callable[[int], nn.Module],
                 width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False), norm(width)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = width
        for i, (n, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
            planes = width * 2 ** i
            downsample = None
            if stride != 1 or cin != planes * block.expansion:
                downsample = nn.Sequential(_conv(cin, planes * block.expansion, 1, stride),
                                           norm(planes * block.expansion))
            blocks = [block(cin, planes, stride, downsample, norm)]
            cin = planes * block.expansion
            blocks += [block(cin, planes, 1, None, norm) for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        # torchvision draws its ImageNet classifier here: drawn and dropped, so that the random stream, and with it
        # the initialisation below, is the one a seed gave with torchvision's ResNet.
        nn.Linear(8 * width * block.expansion, 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def norm_factory(kind: str, groups: int) -> Callable[[int], nn.Module]:
    """Return a constructor for a normalisation layer over `c` channels (works for 2-D maps and vectors)."""
    if kind == "batch":
        return lambda c: _BatchNormAny(c)
    if kind == "group":
        return lambda c: nn.GroupNorm(_largest_divisor_at_most(c, groups), c)
    raise ValueError(f"unknown norm '{kind}'")


def _largest_divisor_at_most(c: int, g: int) -> int:
    return max(d for d in range(1, min(c, g) + 1) if c % d == 0)


class _BatchNormAny(nn.BatchNorm2d):
    """BatchNorm that also accepts (N, C) vectors, so heads and blocks share one norm constructor."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 4):
            raise ValueError(f"expected 2D or 4D input (got {input.dim()}D input)")


def _conv_norm_relu(cin: int, cout: int, k: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), norm(cout), nn.ReLU(inplace=False))


class HierarchicalBlock(nn.Module):
    """1x1 conv -> norm -> ReLU -> 3x3 conv -> norm -> ReLU -> global max-pool: one vector per image."""

    def __init__(self, cin: int, mid: int, out: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv_norm_relu(cin, mid, 1, norm), _conv_norm_relu(mid, out, 3, norm))

    def forward(self, x: Tensor) -> Tensor:
        return torch.amax(self.conv(x), dim=(2, 3))


class EmbeddingHead(nn.Module):
    """norm -> Linear -> norm -> ELU, as in the authors' projector."""

    def __init__(self, cin: int, dim: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.net = nn.Sequential(norm(cin), nn.Linear(cin, dim), norm(dim), nn.ELU(inplace=False))

    def forward(self, v: Tensor) -> Tensor:
        return self.net(v)


@dataclass
class Outputs:
    """Per-branch embeddings and logits; only the branches that were asked for are present."""

    embeddings: dict[int, Tensor]
    logits: dict[int, Tensor]

    def combined_logits(self) -> Tensor:
        """Inference rule of PMG/FG-SSL: the sum of the branches' logits (four; one for the plain baseline)."""
        return torch.stack(list(self.logits.values())).sum(0)


class FGSSLNet(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        block, layers = _ARCH[cfg.backbone]
        norm = norm_factory(cfg.norm, cfg.groups)
        backbone = ResNetBackbone(block, layers, norm, cfg.width)
        if cfg.stem == "small":
            # Stride 2 instead of 4 before layer1: textures with periods of a few pixels survive on small images.
            backbone.maxpool = nn.Identity()
        self.backbone = backbone
        widths = [k * cfg.width * block.expansion for k in (2, 4, 8)]
        self.plain = cfg.architecture == "plain"
        self.branches = (PLAIN,) if self.plain else BRANCHES
        self.blocks = nn.ModuleList() if self.plain else nn.ModuleList(
            HierarchicalBlock(w, cfg.block_mid_channels, cfg.block_out_channels, norm) for w in widths)
        head_inputs = [widths[2]] if self.plain else [cfg.block_out_channels] * 3 + [3 * cfg.block_out_channels]
        # On vectors, GroupNorm with few channels per group throws the values away (a group of two normalises to
        # ±1): the heads normalise each vector as one group (layer-norm style, still per sample).
        head_norm = cfg.head_norm or cfg.norm
        vector_norm = norm_factory("group", 1) if head_norm == "group" else norm_factory("batch", cfg.groups)
        self.heads = nn.ModuleList(EmbeddingHead(c, cfg.embed_dim, vector_norm) for c in head_inputs)
        self.classifiers = nn.ModuleList(nn.Linear(cfg.embed_dim, num_classes) for _ in head_inputs)
        self.num_classes = num_classes

    def _features(self, x: Tensor, depth: int) -> list[Tensor]:
        """Feature maps of layer2..layer(2+depth-1); stops early so a jigsaw step on block 0 skips layer3/4."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer2(b.layer1(x))
        feats = [x]
        for layer in (b.layer3, b.layer4)[: depth - 1]:
            x = layer(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor, branches: tuple[int, ...] | None = None, with_logits: bool = True) -> Outputs:
        """The embeddings (and logits) of `branches`, by default every branch of this architecture."""
        branches = self.branches if branches is None else branches
        if self.plain:
            if tuple(branches) != (PLAIN,):
                raise ValueError(f"the plain architecture has one branch ({PLAIN}), asked for {branches}")
            emb = self.heads[0](self._features(x, 3)[-1].mean(dim=(2, 3)))
            return Outputs({PLAIN: emb}, {PLAIN: self.classifiers[0](emb)} if with_logits else {})
        need = max(2 if b == CONCAT else b for b in branches) + 1
        feats = self._features(x, need)
        vectors = {i: self.blocks[i](f) for i, f in enumerate(feats) if i in branches or CONCAT in branches}
        emb, logits = {}, {}
        for br in branches:
            v = torch.cat([vectors[0], vectors[1], vectors[2]], dim=1) if br == CONCAT else vectors[br]
            emb[br] = self.heads[br](v)
            if with_logits:
                logits[br] = self.classifiers[br](emb[br])
        return Outputs(emb, logits)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, newly added parameters): they get different learning rates."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if id(p) not in ids]


def _has_running_statistics(state: dict[str, Tensor], part: str) -> bool:
    return any(k.startswith(f"{part}.") and k.endswith(".running_mean") for k in state)


def build_model(cfg: ModelConfig, num_classes: int, frozen: tuple[str, ...] = ()) -> FGSSLNet:
    """The model of `cfg`, with `cfg.weights` loaded; `frozen`: the parts (train.frozen) that will never train."""
    model = FGSSLNet(cfg, num_classes)
    if cfg.weights:
        load_backbone_weights(model, cfg.weights, frozen)
    return model


def load_backbone_weights(model: FGSSLNet, path: str | Path, frozen: tuple[str, ...] = ()) -> list[str]:
    """Load pretrained feature-extractor weights from a local file; returns the keys loaded.

    A torchvision ImageNet file fills the backbone. A model.safetensors written by this project (e.g. public
    pretraining) fills the backbone and the hierarchical blocks; heads and classifiers always start fresh, so what
    a federation later learns about its labels comes from its own data. Keys this model lacks (e.g. BatchNorm
    statistics when the model uses GroupNorm) are skipped; a convolution of another shape is refused, and so is a
    BatchNorm-trained part that `frozen` keeps fixed in a GroupNorm model: its affine weights would scale features
    normalised another way than the ones they were learned on, and no training would ever correct them.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not any(k.startswith("backbone.") for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}
    own = model.state_dict()
    for k, v in state.items():
        if k in own and v.dim() == 4 and own[k].shape != v.shape:
            raise ConfigError("model.weights", f"{path}: {k} is {tuple(v.shape)} there but {tuple(own[k].shape)} in "
                              "this model: the weights were made for another model.backbone or model.width")
    for part in frozen:
        if _has_running_statistics(state, part) and not _has_running_statistics(own, part):
            raise ConfigError("model.weights", f"{path}: its {part} was trained with BatchNorm, but this model "
                              f"normalises its {part} with GroupNorm and train.frozen keeps it fixed, so it would "
                              f"compute other features than the ones the weights learned; set model.norm=batch (a "
                              f"frozen BatchNorm part is a fixed function in eval mode, fit for DP) or stop freezing "
                              f"the {part}")
    usable = {k: v for k, v in state.items()
              if k.startswith(("backbone.", "blocks.")) and k in own and own[k].shape == v.shape}
    if not any(v.dim() > 0 for v in usable.values()):
        raise ConfigError("model.weights", f"{path}: no tensor matches the {type(model.backbone).__name__} "
                          "backbone's keys and shapes")
    model.load_state_dict(usable, strict=False)
    return sorted(usable)
