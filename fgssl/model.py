"""Hierarchical FG-SSL network: a torchvision ResNet with blocks on layer2/3/4 and a concat branch (Park & Ryu 2024).

Parameter names are grouped by prefix, which the federation relies on to decide what a phase trains and what stays
local: `backbone.*` (the ResNet), `blocks.{0,1,2}.*` (hierarchical conv blocks), `heads.{0..3}.*` (embedding
heads; 3 = concat), `classifiers.{0..3}.*`. No in-place activations or residual adds, so Opacus' hooks work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from .config import ModelConfig

BRANCHES = (0, 1, 2, 3)  # 0..2: blocks on layer2..layer4; 3: the concat branch
CONCAT = 3


class _OutOfPlaceReLU:
    """torchvision's blocks with a ReLU that does not write into its input (per-sample gradient hooks need it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.relu = nn.ReLU(inplace=False)


class _BasicBlock(_OutOfPlaceReLU, tv_resnet.BasicBlock):
    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _Bottleneck(_OutOfPlaceReLU, tv_resnet.Bottleneck):
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


def _resnet(block: type[nn.Module], layers: list[int], norm: Callable[[int], nn.Module], width: int) -> nn.Module:
    """torchvision's ResNet with `width` channels after the stem (64 in torchvision) and 2x, 4x, 8x in layer2-4."""
    net = tv_resnet.ResNet(block, layers, norm_layer=norm)
    if width == 64:
        return net
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = norm(width)
    for i, (n, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
        setattr(net, f"layer{i + 1}", net._make_layer(block, width * 2 ** i, n, stride=stride))
    for m in net.modules():  # torchvision's initialisation, for the layers made again here
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


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
        """Inference rule of PMG/FG-SSL: the sum of the four branches' logits."""
        return torch.stack([self.logits[b] for b in BRANCHES]).sum(0)


class FGSSLNet(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        block, layers = _ARCH[cfg.backbone]
        norm = norm_factory(cfg.norm, cfg.groups)
        backbone = _resnet(block, layers, norm, cfg.width)
        backbone.relu = nn.ReLU(inplace=False)
        if cfg.stem == "small":
            # Stride 2 instead of 4 before layer1: textures with periods of a few pixels survive on small images.
            backbone.maxpool = nn.Identity()
        del backbone.fc, backbone.avgpool
        self.backbone = backbone
        widths = [k * cfg.width * block.expansion for k in (2, 4, 8)]
        self.blocks = nn.ModuleList(
            HierarchicalBlock(w, cfg.block_mid_channels, cfg.block_out_channels, norm) for w in widths)
        head_inputs = [cfg.block_out_channels] * 3 + [3 * cfg.block_out_channels]
        # On vectors, GroupNorm with few channels per group throws the values away (a group of two normalises to
        # ±1): the heads normalise each vector as one group (layer-norm style, still per sample).
        head_norm = cfg.head_norm or cfg.norm
        vector_norm = norm_factory("group", 1) if head_norm == "group" else norm_factory("batch", cfg.groups)
        self.heads = nn.ModuleList(EmbeddingHead(c, cfg.embed_dim, vector_norm) for c in head_inputs)
        self.classifiers = nn.ModuleList(nn.Linear(cfg.embed_dim, num_classes) for _ in BRANCHES)
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

    def forward(self, x: Tensor, branches: tuple[int, ...] = BRANCHES, with_logits: bool = True) -> Outputs:
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


def build_model(cfg: ModelConfig, num_classes: int) -> FGSSLNet:
    model = FGSSLNet(cfg, num_classes)
    if cfg.weights:
        load_backbone_weights(model, cfg.weights)
    return model


def load_backbone_weights(model: FGSSLNet, path: str | Path) -> list[str]:
    """Load pretrained feature-extractor weights from a local file; returns the keys loaded.

    A torchvision ImageNet file fills the backbone. A model.safetensors written by this project (e.g. public
    pretraining) fills the backbone and the hierarchical blocks; heads and classifiers always start fresh, so what
    a federation later learns about its labels comes from its own data. Keys this model lacks (e.g. BatchNorm
    statistics when the model uses GroupNorm) are skipped; a convolution of another shape is refused.
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
            raise ValueError(f"{path}: {k} is {tuple(v.shape)} there but {tuple(own[k].shape)} in this model: the "
                             "weights were made for another model.backbone or model.width")
    usable = {k: v for k, v in state.items()
              if k.startswith(("backbone.", "blocks.")) and k in own and own[k].shape == v.shape}
    if not any(v.dim() > 0 for v in usable.values()):
        raise ValueError(f"{path}: no tensor matches the {type(model.backbone).__name__} backbone's keys and shapes")
    model.load_state_dict(usable, strict=False)
    return sorted(usable)
