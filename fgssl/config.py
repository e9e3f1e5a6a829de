"""The run's one configuration object: built from YAML/dicts, validated once, frozen.

Every error names the dotted key that is wrong, so a user can fix their YAML or `--set` flag
without reading a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

BACKBONES = ("resnet10", "resnet18", "resnet34", "resnet50")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range. `key` is the dotted path."""

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"config key '{key}': {message}")


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


DATASETS = ("synthetic", "isic2018", "isic2017", "aptos2019", "medmnist", "folder")
# The datasets that ship their own train / validation / test parts (data.split: official).
OFFICIAL_SPLITS = ("isic2017", "isic2018", "medmnist")


@dataclass(frozen=True)
class DataConfig:
    # synthetic (built in) | isic2018 | isic2017 | aptos2019 (official download layouts) | medmnist (a *mnist*.npz)
    # | folder (images + a CSV)
    dataset: str = "synthetic"
    # Side of the square images the model sees; real images are resized to it once, into the cache.
    image_size: int = 64
    # Synthetic data only (real datasets take their classes from the label files).
    num_classes: int = 7
    # Synthetic data only: how many images to generate in total (before the train/val/test split).
    num_samples: int = 2400
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # Strength of the per-site acquisition shift in simulations (0 = none); real datasets get simulations/shift.py.
    site_shift: float = 0.0
    # Real datasets: the folder as downloaded (see fgssl/data/official.py for each layout); medmnist: the .npz file
    # or a folder holding one (fgssl/data/medmnist.py).
    root: str | None = None
    # Where decoded, resized images are cached (null = <root>/.fgssl-cache; must be writable).
    cache_dir: str | None = None
    # crop: short side to image_size, centre crop | pad: long side to image_size, black borders | stretch
    resize: Literal["crop", "pad", "stretch"] = "crop"
    # Skip (and list in the cache's manifest) images that are missing or cannot be decoded, instead of stopping.
    # Label and CSV errors always stop.
    skip_bad_images: bool = False
    # auto: the official splits when the dataset ships all of them (ISIC 2017 Training/Validation/Test_v2, ISIC 2018
    # Training/Validation/Test, MedMNIST train/val/test), else stratified by val_fraction/test_fraction (grouped by lesion/patient id when
    # known) | official | stratified
    split: Literal["auto", "official", "stratified"] = "auto"
    # dataset=folder only: the CSV (relative to root), its image-path and label columns, an optional group column
    # (patient/lesion id: its images never straddle splits) and an optional fixed class order (else sorted labels).
    csv: str | None = None
    path_column: str = "image"
    label_column: str = "label"
    group_column: str | None = None
    # dataset=folder only: an optional column naming each image's acquisition site (hospital, scanner), which
    # partition.method=natural makes one simulated site each.
    site_column: str | None = None
    class_names: tuple[str, ...] = ()

    def validate(self, p: str) -> None:
        _require(self.dataset in DATASETS, f"{p}.dataset",
                 f"unknown dataset '{self.dataset}'; choose from: {', '.join(DATASETS)}")
        _require(self.image_size >= 8, f"{p}.image_size", f"must be >= 8, got {self.image_size}")
        _require(self.num_classes >= 2, f"{p}.num_classes", f"must be >= 2, got {self.num_classes}")
        _require(self.num_samples >= 10, f"{p}.num_samples", f"must be >= 10, got {self.num_samples}")
        for k in ("val_fraction", "test_fraction"):
            v = getattr(self, k)
            _require(0.0 <= v < 1.0, f"{p}.{k}", f"must be in [0, 1), got {v}")
        _require(self.val_fraction + self.test_fraction < 1.0, f"{p}.test_fraction",
                 "val_fraction + test_fraction must leave some training data")
        _require(self.site_shift >= 0.0, f"{p}.site_shift", f"must be >= 0, got {self.site_shift}")
        if self.dataset != "synthetic":
            _require(bool(self.root), f"{p}.root", f"required for dataset '{self.dataset}': the folder it was "
                     "downloaded to")
        _require(self.split != "official" or self.dataset in OFFICIAL_SPLITS, f"{p}.split",
                 f"'official' splits exist only for {', '.join(OFFICIAL_SPLITS)}, not '{self.dataset}'; use auto or "
                 "stratified")
        if self.dataset == "folder":
            _require(bool(self.csv), f"{p}.csv", "required for dataset 'folder': the CSV of image paths and labels")
            _require(bool(self.path_column), f"{p}.path_column", "must not be empty")
            _require(bool(self.label_column), f"{p}.label_column", "must not be empty")
            _require(self.path_column != self.label_column, f"{p}.label_column",
                     f"must differ from data.path_column ('{self.path_column}')")
            _require(self.group_column is None or self.group_column not in (self.path_column, self.label_column),
                     f"{p}.group_column", "must differ from data.path_column and data.label_column")
            _require(self.site_column is None or self.site_column not in (self.path_column, self.label_column,
                                                                          self.group_column),
                     f"{p}.site_column", "must differ from data.path_column, data.label_column and data.group_column")
        else:
            _require(self.site_column is None, f"{p}.site_column", f"only used by dataset 'folder' ('{self.dataset}' "
                     "reads its sites from its own metadata, if it has any)")
            _require(not self.class_names, f"{p}.class_names", f"only used by dataset 'folder' ('{self.dataset}' "
                     "has fixed classes)")
        for i, c in enumerate(self.class_names):
            _require(bool(c), f"{p}.class_names[{i}]", "must not be empty")
        _require(len(set(self.class_names)) == len(self.class_names), f"{p}.class_names", "repeats a class")
        _require(not self.class_names or len(self.class_names) >= 2, f"{p}.class_names", "needs at least 2 classes")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet18"
    # 'fgssl': hierarchical blocks on layer2/3/4, a concat branch, one jigsaw step per branch (the method). 'plain': the
    # baseline the method is measured against: layer4 average-pooled into one embedding head and a linear classifier,
    # one unshuffled step per batch (plain Barlow Twins in the SSL stage, cross-entropy in fine-tuning; granularities
    # unused).
    architecture: Literal["fgssl", "plain"] = "fgssl"
    norm: Literal["batch", "group"] = "batch"
    # Norm of the embedding heads (null = norm). 'group' with a frozen BatchNorm backbone and blocks is how DP
    # trains on public features: the frozen BatchNorm is a fixed function in eval mode, the trained part is per-sample.
    head_norm: Literal["batch", "group"] | None = None
    # 'imagenet': torchvision's stem (stride 4: conv + max-pool); 'small': no max-pool (stride 2), for small images.
    stem: Literal["imagenet", "small"] = "imagenet"
    # Channels after the stem (torchvision: 64; layer2-4 have 2x, 4x, 8x). The default half width keeps the built-in
    # demo within minutes on 2 CPU cores (docs/RESULTS.md, E3); ImageNet weights and the paper's setting need 64.
    width: int = 32
    # Jigsaw grid size n (n x n tiles) for the blocks on layer2, layer3, layer4.
    granularities: tuple[int, int, int] = (8, 4, 2)
    # Paper: 512 / 1024 / 512. Smaller defaults keep the CPU demo in minutes; see README.
    block_mid_channels: int = 128
    block_out_channels: int = 256
    embed_dim: int = 128
    groups: int = 16
    # Optional local file with torchvision ImageNet weights (.pth state dict or .safetensors). Never downloaded.
    weights: str | None = None
    # Where model.weights come from, in words (recorded with the file's SHA-256 in the sites' privacy ledgers); null =
    # what the model.json beside the file says (data set and privacy of the run that wrote it), else "undeclared".
    weights_source: str | None = None

    def validate(self, p: str) -> None:
        _require(self.backbone in BACKBONES, f"{p}.backbone",
                 f"unknown backbone '{self.backbone}'; choose from: {', '.join(BACKBONES)}")
        _require(len(self.granularities) == 3, f"{p}.granularities", "needs exactly three values (layer2, layer3, layer4)")
        for i, g in enumerate(self.granularities):
            _require(isinstance(g, int) and g >= 1, f"{p}.granularities[{i}]", f"must be an integer >= 1, got {g!r}")
        for k in ("width", "block_mid_channels", "block_out_channels", "embed_dim", "groups"):
            _require(getattr(self, k) >= 1, f"{p}.{k}", f"must be >= 1, got {getattr(self, k)}")
        if self.weights is not None:
            _require(Path(self.weights).is_file(), f"{p}.weights",
                     f"file not found: {self.weights} (a local torchvision state dict, or the model.safetensors of "
                     f"an `fgssl train` run, e.g. on public data: simulations/configs/public_pretrain.yaml; "
                     f"nothing is downloaded)")
        _require(self.weights_source is None or (self.weights is not None and bool(self.weights_source.strip())),
                 f"{p}.weights_source", "declares where model.weights come from: needs model.weights, and not empty")


@dataclass(frozen=True)
class LossConfig:
    # Off-diagonal weight of the Barlow Twins loss.
    bt_lambda: float = 5e-3
    # 'standard': sum (1-C_kk)^2 + lambda sum_{k!=l} C_kl^2.  'authors': lambda^2 * ||C - I||_F^2 (FG-SSL code).
    bt_variant: Literal["standard", "authors"] = "standard"
    concat_weight: float = 2.0

    def validate(self, p: str) -> None:
        _require(self.bt_lambda > 0, f"{p}.bt_lambda", f"must be > 0, got {self.bt_lambda}")
        _require(self.concat_weight > 0, f"{p}.concat_weight", f"must be > 0, got {self.concat_weight}")


OPTIMIZERS = ("sgd", "adamw")
# What weight_decay and ssl_lr_scale mean when left null: each optimiser's own usual value. AdamW's decay is decoupled
# from the gradient (Loshchilov & Hutter), so it is two orders larger for the same pull towards zero. AdamW normalises
# the gradient's scale, so the SSL stage needs no large cut of its rate; plain SGD at fine-tuning rates wrecks the
# backbone there, as Barlow Twins gradients grow with the embedding size.
OPTIMIZER_DEFAULTS = {"sgd": {"weight_decay": 5e-4, "ssl_lr_scale": 0.02},
                      "adamw": {"weight_decay": 0.05, "ssl_lr_scale": 0.5}}


@dataclass(frozen=True)
class OptimConfig:
    # adamw: AdamW with β1 = momentum, which trains the from-scratch CPU demo to a far better model in the same epochs
    # (docs/RESULTS.md, E3); sgd: the authors' SGD with momentum (with ImageNet weights they use lr_new 2e-3 and
    # lr_backbone 2e-4; from scratch this project's SGD runs used 0.02-0.05). A rate means little without its optimiser.
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr_new: float = 0.002
    lr_backbone: float = 0.002
    momentum: float = 0.9
    # null: the optimiser's usual value (OPTIMIZER_DEFAULTS).
    weight_decay: float | None = None
    schedule: Literal["cosine", "constant"] = "cosine"
    # Both rates are multiplied by this in the SSL stage (null: the optimiser's usual value, OPTIMIZER_DEFAULTS).
    ssl_lr_scale: float | None = None

    @property
    def decay(self) -> float:
        return OPTIMIZER_DEFAULTS[self.optimizer]["weight_decay"] if self.weight_decay is None else self.weight_decay

    @property
    def ssl_scale(self) -> float:
        return OPTIMIZER_DEFAULTS[self.optimizer]["ssl_lr_scale"] if self.ssl_lr_scale is None else self.ssl_lr_scale

    def validate(self, p: str) -> None:
        _require(self.optimizer in OPTIMIZERS, f"{p}.optimizer",
                 f"unknown optimizer '{self.optimizer}'; choose from: {', '.join(OPTIMIZERS)}")
        for k in ("lr_new", "lr_backbone"):
            _require(getattr(self, k) > 0, f"{p}.{k}", f"must be > 0, got {getattr(self, k)}")
        _require(0 <= self.momentum < 1, f"{p}.momentum", f"must be in [0, 1), got {self.momentum}")
        _require(self.ssl_lr_scale is None or self.ssl_lr_scale > 0, f"{p}.ssl_lr_scale",
                 f"must be > 0 or null, got {self.ssl_lr_scale}")
        _require(self.weight_decay is None or self.weight_decay >= 0, f"{p}.weight_decay",
                 f"must be >= 0 or null, got {self.weight_decay}")


FREEZABLE = ("backbone", "blocks")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64
    ssl_epochs: int = 1
    finetune_epochs: int = 10
    # How fine-tuning copes with skewed classes. 'sampler': batches drawn with replacement, each image with weight
    # (1 / n_k)^class_weight_power (1: every class equally often; 0.5: class k in proportion to sqrt(n_k)); 'loss':
    # plain shuffling, cross-entropy weighted per class by (1 / n_k)^class_weight_power (normalised to mean 1 over
    # the training images); 'logit_adjust': plain shuffling, cross-entropy on logits + class_weight_power·log(p_k),
    # p_k the class's share of these training images (Menon et al.'s logit adjustment: the plain logits then answer
    # for balanced classes, no image is replayed, and a class a site lacks is neither learned nor pushed down
    # there); 'none': plain shuffling and loss.
    class_balance: Literal["sampler", "loss", "logit_adjust", "none"] = "sampler"
    class_weight_power: float = 1.0
    # logit_adjust only: a PUBLIC class prior (one share per class, in the data set's class order; normalised) used
    # instead of the site's own class counts, e.g. a published prevalence. It depends on no site's images, so it is
    # also how logit adjustment applies under sample-level DP, where the counts are private; a class the site lacks
    # is then not singled out.
    class_prior: tuple[float, ...] = ()
    # Per-channel colour gain of the random views: each channel's intensity times U(1 - c, 1 + c), per image (0 = off).
    # Sites' cameras differ in colour response (data.site_shift imitates it); the jitter keeps the model from telling
    # a site, and with label skew a class, by its colour cast.
    colour_jitter: float = 0.0
    # Scarce labels: fine-tuning keeps this stratified, seeded fraction of each site's training labels (every class
    # keeps at least one); the SSL phase still uses every training image. The run records which were kept.
    label_fraction: float = 1.0
    # `fgssl train` only: train on the union of the simulated sites' splits (federation.sites, partition.*,
    # data.site_shift: the very images, labels and camera shifts `fgssl simulate` gives its sites), so a centralized
    # run is the federation's pooled baseline; it also reports each site's own test split. false: one split of the
    # whole data set, without site shift.
    pooled_sites: bool = False
    # With pooled_sites: train and select on this one site's splits only (the site-alone baseline); every site's test
    # split is still reported, and `test` is still their union.
    only_site: int | None = None
    # Which weights become model.safetensors: the best epoch (train) or round (simulate) by this validation
    # metric, or 'last'; the last weights are kept as model_last.safetensors either way. With
    # select_above_majority, a candidate less accurate than "always the majority class", or that is it (one class
    # for every image), only wins if all are.
    select_metric: Literal["balanced_accuracy", "accuracy", "macro_f1", "last"] = "balanced_accuracy"
    select_above_majority: bool = True
    device: str = "auto"
    # Arithmetic of the forward passes: 'bfloat16' (autocast; weights, gradients and losses stay float32), 'float32',
    # or 'auto' (bfloat16 on a GPU that supports it, float32 on the CPU and always under sample-level DP, whose
    # per-sample gradient norms are only tested in float32).
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    # Torch intra-op threads; null = torch's default.
    threads: int | None = None
    # Parts kept at their initial weights (model.weights, e.g. public pretraining): they neither train nor travel.
    # Any of: backbone, blocks. Training only the rest is how DP-SGD learns on small data (docs/privacy.md).
    frozen: tuple[str, ...] = ()

    def validate(self, p: str) -> None:
        _require(self.batch_size >= 2, f"{p}.batch_size", f"must be >= 2, got {self.batch_size}")
        _require(0 < self.label_fraction <= 1, f"{p}.label_fraction",
                 f"must be in (0, 1], got {self.label_fraction}")
        _require(0 <= self.colour_jitter < 1, f"{p}.colour_jitter", f"must be in [0, 1), got {self.colour_jitter}")
        _require(0 <= self.class_weight_power <= 2, f"{p}.class_weight_power",
                 f"must be in [0, 2], got {self.class_weight_power}")
        if self.class_prior:
            _require(self.class_balance == "logit_adjust", f"{p}.class_prior",
                     f"is used only by class_balance: logit_adjust (here '{self.class_balance}')")
            for i, v in enumerate(self.class_prior):
                _require(math.isfinite(v) and v > 0, f"{p}.class_prior[{i}]", f"must be a share > 0, got {v}")
        for k in ("ssl_epochs", "finetune_epochs"):
            _require(getattr(self, k) >= 0, f"{p}.{k}", f"must be >= 0, got {getattr(self, k)}")
        _require(self.device in ("auto", "cpu") or self.device.startswith("cuda"), f"{p}.device",
                 f"must be 'auto', 'cpu' or 'cuda[:N]', got '{self.device}'")
        _require(self.threads is None or self.threads >= 1, f"{p}.threads", f"must be >= 1, got {self.threads}")
        for i, g in enumerate(self.frozen):
            _require(g in FREEZABLE, f"{p}.frozen[{i}]", f"unknown part '{g}'; choose from: {', '.join(FREEZABLE)}")


@dataclass(frozen=True)
class PartitionConfig:
    """How simulated sites split the data pool (simulations/partition.py; `fgssl partition` shows the result)."""
    # 'iid': uniform random; 'dirichlet': per-class site shares ~ Dir(alpha) (small alpha = strong label skew);
    # 'pathological': every site holds exactly classes_per_site classes; 'quantity': site sizes follow a power law
    # (site s gets a share ~ (s+1)^-quantity_exponent), labels otherwise IID; 'natural': one site per acquisition
    # site of the data set (e.g. HAM10000's `dataset` column; federation.sites must equal their number).
    method: Literal["iid", "dirichlet", "pathological", "quantity", "natural"] = "dirichlet"
    alpha: float = 0.5
    classes_per_site: int = 2
    # 0 = equal sizes; 1 = Zipf (site 0 twice site 1, three times site 2, ...); larger = more skewed.
    quantity_exponent: float = 1.0
    # Dirichlet and quantity skew: the fewest samples any site may get.
    min_per_site: int = 2

    def validate(self, p: str) -> None:
        methods = ("iid", "dirichlet", "pathological", "quantity", "natural")
        _require(self.method in methods, f"{p}.method",
                 f"unknown method '{self.method}'; choose from: {', '.join(methods)}")
        _require(self.alpha > 0, f"{p}.alpha", f"must be > 0, got {self.alpha}")
        _require(self.classes_per_site >= 1, f"{p}.classes_per_site", f"must be >= 1, got {self.classes_per_site}")
        _require(0 <= self.quantity_exponent < float("inf"), f"{p}.quantity_exponent",
                 f"must be a finite number >= 0, got {self.quantity_exponent}")
        _require(self.min_per_site >= 1, f"{p}.min_per_site", f"must be >= 1, got {self.min_per_site}")


@dataclass(frozen=True)
class FaultConfig:
    """A deliberately faulty or hostile site, for testing the strategy's defences in simulation."""
    site: int
    round: int
    # raise: the site's client crashes; nan / wrong_shape / scale: it sends a corrupted update; huge_metric /
    # extra_array: a hostile reply (a 2 MB metric string, an array the round did not ask for); lost_reply: the
    # coordinator throws the site's first training reply of the round away, as when Flower fails to upload it (the
    # site has trained and paid for it), so the round must ask it again; coordinator_crash: the coordinator stops
    # after the round's global went out for evaluation and before its checkpoint (a fresh run only, not a resumed
    # one; `site` is not used); cross_site_raise: the site's client crashes in the cross-site evaluation after the
    # last round (`round` is not used).
    kind: Literal["raise", "nan", "wrong_shape", "scale", "huge_metric", "extra_array", "lost_reply",
                  "coordinator_crash", "cross_site_raise"]
    scale: float = 1e6


AGGREGATIONS = ("fedavg", "norm_bounded", "trimmed_mean")
# A site's own evaluations of the global model when they may not leave it (PrivacyConfig.evaluation_stays_at_sites):
# one line per evaluation, {"round", "val", "test"} with the full metric sets, in the site's state directory.
SITE_EVALUATIONS = "evaluations.jsonl"
# Likewise for the cross-site evaluation after the last round: one line per model evaluated, {"model",
# "model_round", "test"}.
CROSS_SITE_EVALUATIONS = "cross_site.jsonl"
SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam")
# How a site uploads its update (strategies/wire.py): its change in float16, scaled per tensor, or float32 values.
UPLOAD_ENCODINGS = ("float16_delta", "float32")
SECAGG_MODULUS = 2**32  # Flower's SecAgg+ modulus_range default, kept as it is


@dataclass(frozen=True)
class FederationConfig:
    sites: int = 4
    ssl_rounds: int = 1
    finetune_rounds: int = 4
    local_epochs: int = 1
    # Local epochs in SSL rounds (null = local_epochs); SSL batches cost about twice as much as fine-tuning ones.
    ssl_local_epochs: int | None = None
    # Cap on local batches per round (null = full local epochs); keeps rounds short on large sites.
    max_local_batches: int | None = None
    # fedavg (example-weighted mean) | norm_bounded (clip each site's change) | trimmed_mean (coordinate-wise)
    strategy: str = "fedavg"
    clip_norm: float = 10.0
    trim_fraction: float = 0.25
    server_optimizer: str = "fedavg"
    # null = the optimiser's usual default (1.0 for fedavg/fedavgm, 0.01 for fedadam)
    server_lr: float | None = None
    server_momentum: float = 0.9
    # Glob patterns of parameter names that never leave a site in training rounds; "norm" stands for every
    # normalisation layer (FedBN; strategies.groups.NORM_PATTERNS). Under privacy.mode 'none' the cross-site
    # evaluation passes them to the other sites at the end.
    local_groups: tuple[str, ...] = ()
    # Updates are dropped when their change from the global weights exceeds this L2 norm (null = no bound).
    max_update_norm: float | None = 1000.0
    min_nodes: int = 2
    round_timeout_s: float = 3600.0
    # A site silent this long after a request, and twice as long as the others' typical reply, is sent it again
    # (then after twice as long, and so on); it answers from its cached reply, so a lost upload arrives late instead
    # of never (null = only replies the SuperLink reports lost are asked again).
    reask_after_s: float | None = 60.0
    # float16_delta: a site uploads its change of the weights it was sent in float16, scaled per tensor (half the
    # bytes; each coordinate within 2**-11 of its change); float32: the trained values as they are. Secure
    # aggregation and privacy.mode 'client' always upload float32 (their own exact arithmetic): see
    # Config.upload_encoding.
    upload_encoding: str = "float16_delta"
    # After the last round, every site evaluates the selected global model on its test split and, where site-local
    # groups exist and privacy.mode is 'none', every site's own model too (server/cross_site.py).
    cross_site: bool = True
    # Secure aggregation (Flower's SecAgg+, see README "Secure aggregation"): each site sends its change of the weights
    # it was sent, clipped per coordinate to [-secagg_clipping_range, secagg_clipping_range], quantised to
    # secagg_quantization_range levels and masked; the server only learns the equal-weight mean of the changes, exact
    # up to 2 * clipping_range / quantization_range per coordinate. The server never sees one site's update, so it
    # cannot validate, clip or trim it: needs strategy 'fedavg', no privacy.mode 'client', and model.norm 'group'.
    secure_aggregation: bool = False
    # Sites each site's key is shared with, itself included (null = all sites); more tolerates more dropouts.
    secagg_num_shares: int | None = None
    # Shares needed to rebuild a key (null = num_shares // 2 + 1); a site's update stays hidden unless this many
    # holders of its shares collude with the server; each site needs this many live share holders for the round.
    secagg_reconstruction_threshold: int | None = None
    secagg_clipping_range: float = 1.0
    secagg_quantization_range: int = 4194304

    @property
    def secagg_shares(self) -> int:
        return self.secagg_num_shares if self.secagg_num_shares is not None else self.sites

    @property
    def secagg_threshold(self) -> int:
        t = self.secagg_reconstruction_threshold
        return t if t is not None else self.secagg_shares // 2 + 1

    def _validate_secagg(self, p: str) -> None:
        _require(self.sites >= 3, f"{p}.sites", f"secure aggregation needs at least 3 sites (with 2, the sum reveals "
                                                f"each site's update to the other), got {self.sites}")
        _require(self.min_nodes >= 2, f"{p}.min_nodes",
                 "must be >= 2 under secure aggregation (the 'sum' of one site is that site's update)")
        _require(self.strategy == "fedavg", f"{p}.strategy",
                 f"'{self.strategy}' needs every site's own update (to clip or trim it), but under secure aggregation "
                 "the server only sees their sum; use 'fedavg' (secagg_clipping_range bounds each site instead)")
        shares = self.secagg_shares
        _require(3 <= shares <= self.sites, f"{p}.secagg_num_shares",
                 f"must be between 3 and federation.sites={self.sites}, got {shares}")
        _require(2 <= self.secagg_threshold < shares, f"{p}.secagg_reconstruction_threshold",
                 f"must be >= 2 and less than secagg_num_shares={shares}, got {self.secagg_threshold}")
        _require(self.secagg_clipping_range > 0, f"{p}.secagg_clipping_range",
                 f"must be > 0, got {self.secagg_clipping_range}")
        q = self.secagg_quantization_range
        _require(q >= 2, f"{p}.secagg_quantization_range", f"must be >= 2, got {q}")
        # Each site adds an integer in [0, q]; the masked sum lives modulo 2**32 and must not wrap.
        _require(self.sites * q < SECAGG_MODULUS, f"{p}.secagg_quantization_range",
                 f"federation.sites * secagg_quantization_range must be < 2**32, got {self.sites} * {q}")

    def validate(self, p: str) -> None:
        _require(self.sites >= 1, f"{p}.sites", f"must be >= 1, got {self.sites}")
        for k in ("ssl_rounds", "finetune_rounds"):
            _require(getattr(self, k) >= 0, f"{p}.{k}", f"must be >= 0, got {getattr(self, k)}")
        _require(self.ssl_rounds + self.finetune_rounds >= 1, f"{p}.finetune_rounds", "the run needs at least one round")
        _require(self.local_epochs >= 1, f"{p}.local_epochs", f"must be >= 1, got {self.local_epochs}")
        _require(self.ssl_local_epochs is None or self.ssl_local_epochs >= 1, f"{p}.ssl_local_epochs",
                 f"must be >= 1 or null, got {self.ssl_local_epochs}")
        _require(self.max_local_batches is None or self.max_local_batches >= 1, f"{p}.max_local_batches",
                 f"must be >= 1 or null, got {self.max_local_batches}")
        _require(self.strategy in AGGREGATIONS, f"{p}.strategy",
                 f"unknown strategy '{self.strategy}'; choose from: {', '.join(AGGREGATIONS)}")
        _require(self.server_optimizer in SERVER_OPTIMIZERS, f"{p}.server_optimizer",
                 f"unknown server optimizer '{self.server_optimizer}'; choose from: {', '.join(SERVER_OPTIMIZERS)}")
        _require(self.clip_norm > 0, f"{p}.clip_norm", f"must be > 0, got {self.clip_norm}")
        _require(0 <= self.trim_fraction < 0.5, f"{p}.trim_fraction", f"must be in [0, 0.5), got {self.trim_fraction}")
        _require(self.server_lr is None or self.server_lr > 0, f"{p}.server_lr", f"must be > 0, got {self.server_lr}")
        _require(0 <= self.server_momentum < 1, f"{p}.server_momentum", f"must be in [0, 1), got {self.server_momentum}")
        _require(self.max_update_norm is None or self.max_update_norm > 0, f"{p}.max_update_norm",
                 f"must be > 0 or null, got {self.max_update_norm}")
        _require(self.min_nodes >= 1, f"{p}.min_nodes", f"must be >= 1, got {self.min_nodes}")
        _require(self.min_nodes <= self.sites, f"{p}.min_nodes",
                 f"min_nodes={self.min_nodes} is more than the {self.sites} sites of the federation")
        _require(self.round_timeout_s > 0, f"{p}.round_timeout_s", f"must be > 0, got {self.round_timeout_s}")
        _require(self.reask_after_s is None or self.reask_after_s > 0, f"{p}.reask_after_s",
                 f"must be > 0 or null, got {self.reask_after_s}")
        _require(self.upload_encoding in UPLOAD_ENCODINGS, f"{p}.upload_encoding",
                 f"unknown encoding '{self.upload_encoding}'; choose from: {', '.join(UPLOAD_ENCODINGS)}")
        if self.secure_aggregation:
            self._validate_secagg(p)

    @property
    def total_rounds(self) -> int:
        return self.ssl_rounds + self.finetune_rounds

    def epochs_of(self, phase: str) -> int:
        if phase == "ssl" and self.ssl_local_epochs is not None:
            return self.ssl_local_epochs
        return self.local_epochs

    def phase_of(self, rnd: int) -> str:
        """Phase of round `rnd` (1-based): SSL rounds first, then fine-tuning."""
        return "ssl" if rnd <= self.ssl_rounds else "finetune"

    def phase_progress(self, rnd: int) -> tuple[float, float]:
        """The slice [start, end) of its phase's learning-rate schedule that round `rnd` covers."""
        if rnd <= self.ssl_rounds:
            k, n = rnd - 1, self.ssl_rounds
        else:
            k, n = rnd - 1 - self.ssl_rounds, self.finetune_rounds
        return k / n, (k + 1) / n


@dataclass(frozen=True)
class SimulationConfig:
    # CPUs each virtual site's client gets; sites run concurrently when total_cpus allows.
    client_cpus: int = 1
    # CPUs Ray may use (null = all of this machine's). Ignored when attaching to ray_address.
    total_cpus: int | None = None
    # Address of an existing Ray cluster to attach to (e.g. "10.0.0.5:6379"); null = start a local one.
    ray_address: str | None = None
    # The share of a GPU each virtual site's client gets (0.25: four sites train on one GPU at once); 0 = none.
    # With a share, set train.device: auto (or cuda) so that the sites' training uses it.
    client_gpus: float = 0.0
    faults: tuple[FaultConfig, ...] = ()

    def validate(self, p: str) -> None:
        _require(self.client_cpus >= 1, f"{p}.client_cpus", f"must be >= 1, got {self.client_cpus}")
        _require(0 <= self.client_gpus <= 1 or float(self.client_gpus).is_integer(), f"{p}.client_gpus",
                 f"must be a share in [0, 1] or a whole number of GPUs, got {self.client_gpus}")
        _require(self.total_cpus is None or self.total_cpus >= self.client_cpus, f"{p}.total_cpus",
                 f"must be >= simulation.client_cpus ({self.client_cpus})")
        for i, f in enumerate(self.faults):
            _require(f.round >= 1, f"{p}.faults[{i}].round", f"must be >= 1, got {f.round}")
            _require(f.site >= 0, f"{p}.faults[{i}].site", f"must be >= 0, got {f.site}")


DEFAULT_TARGET_EPSILON = 8.0  # per site over the whole run, the figure DP practice quotes for useful models
GradSampleMode = Literal["hooks", "functorch", "ew"]  # Opacus' per-sample gradient engines
BatchReuse = Literal["fresh", "shared"]


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy of local training (see docs/privacy.md for what each guarantee protects)."""
    # none: no DP. sample: DP-SGD at every site, (ε, δ) per patient image of that site, composed over all rounds.
    # client: each site's whole update is clipped and the server adds noise to the average (Flower's central-DP
    # wrapper); (ε, δ) per site, for many-site federations. Local training is then non-private.
    mode: Literal["none", "sample", "client"] = "none"
    # σ: noise std / max_grad_norm. Give this or target_epsilon.
    noise_multiplier: float | None = None
    # Derive σ so that each site's planned run (all its rounds) spends at most this ε. With neither this nor
    # noise_multiplier, a private mode targets DEFAULT_TARGET_EPSILON (written into the run's config.yaml).
    target_epsilon: float | None = None
    # A site refuses to train when its next round would exceed this (null = target_epsilon, else no limit).
    max_epsilon: float | None = None
    # null = min(1e-5, 1/(10 n)) for a site with n training images; a site refuses rounds with a δ above 1/(10 n).
    delta: float | None = None
    # The hospital's own δ (`fgssl node --delta`; written by the node over whatever the run says): its ε is always
    # computed at this δ, and a run whose privacy.delta is larger is refused. null = the rule above.
    site_delta: float | None = None
    max_grad_norm: float = 1.0
    # sample mode: a site never sends its true number of training images n (which tells two data sets that differ in
    # one image apart). It releases once per data set round(n + count_noise·z), z ~ N(0, 1), charged to its ledger as
    # a Gaussian mechanism of sensitivity 1, and uses that value for q, the step count and the aggregation weight.
    count_noise: float = 20.0
    # client mode: L2 bound on each site's update (its change of the weights it sends) per round.
    client_clip_norm: float = 10.0
    # σ_s of the SSL cross-correlation statistic (noise std / embedding size).
    statistic_noise_multiplier: float = 2.0
    # Expected Poisson batch size (null = train.batch_size).
    expected_batch_size: int | None = None
    accountant: Literal["rdp", "prv"] = "rdp"
    grad_sample_mode: GradSampleMode = "hooks"
    # fresh: each progressive step draws its own Poisson batch; shared: one batch for all four (accounted σ/2).
    batch_reuse: BatchReuse = "fresh"
    # Real data sets: the folder of their data ledgers (one per data set, over every run on its images; see
    # fgssl/privacy/data_ledger.py). null = privacy-ledgers/ in the cache folder (data.cache_dir, else
    # <root>/.fgssl-cache). Keep it: deleting a data ledger resets its images' lifetime ε to 0.
    ledger_dir: str | None = None

    def __post_init__(self) -> None:
        if self.mode != "none" and self.noise_multiplier is None and self.target_epsilon is None:
            object.__setattr__(self, "target_epsilon", DEFAULT_TARGET_EPSILON)

    def validate(self, p: str) -> None:
        _require(self.mode in ("none", "sample", "client"), f"{p}.mode",
                 f"unknown mode '{self.mode}'; choose from: none, sample, client")
        if self.mode != "none":
            _require((self.noise_multiplier is None) != (self.target_epsilon is None), f"{p}.noise_multiplier",
                     "give privacy.noise_multiplier or privacy.target_epsilon, not both")
        for k in ("noise_multiplier", "target_epsilon", "max_epsilon", "max_grad_norm", "statistic_noise_multiplier",
                  "client_clip_norm", "count_noise"):
            v = getattr(self, k)
            _require(v is None or v > 0, f"{p}.{k}", f"must be > 0, got {v}")
        for k in ("delta", "site_delta"):
            v = getattr(self, k)
            _require(v is None or 0 < v < 1, f"{p}.{k}", f"must be in (0, 1), got {v}")
        _require(self.expected_batch_size is None or self.expected_batch_size >= 1, f"{p}.expected_batch_size",
                 f"must be >= 1, got {self.expected_batch_size}")
        if self.ledger_dir is not None:
            _require(bool(self.ledger_dir.strip()), f"{p}.ledger_dir", "must not be empty (null = the cache folder)")
            _require(not Path(self.ledger_dir).exists() or Path(self.ledger_dir).is_dir(), f"{p}.ledger_dir",
                     f"{self.ledger_dir} exists and is not a folder")

    @property
    def budget(self) -> float | None:
        return self.max_epsilon if self.max_epsilon is not None else self.target_epsilon

    @property
    def evaluation_stays_at_sites(self) -> bool:
        """Sample-level DP covers what a site sends; its evaluation metrics are exact functions of its images, so
        they stay at the site (its state directory) instead of going out without noise."""
        return self.mode == "sample"


@dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    @property
    def private_norms(self) -> bool:
        """Whether the model's normalisation can train under sample-level DP: GroupNorm throughout, or a frozen
        BatchNorm backbone and blocks (a fixed function of each image in eval mode) under GroupNorm heads."""
        m = self.model
        frozen_batch_norm = {"backbone", "blocks"} <= set(self.train.frozen) and m.head_norm == "group"
        return m.norm == "group" and m.head_norm in (None, "group") or frozen_batch_norm

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if dataclasses.is_dataclass(sub):
                sub.validate(f.name)
        min_size = max(self.model.granularities)
        _require(self.data.image_size >= min_size, "data.image_size",
                 f"{self.data.image_size} px is smaller than the largest jigsaw grid ({min_size}x{min_size} tiles)")
        _require(self.model.architecture == "fgssl" or self.privacy.mode != "sample", "model.architecture",
                 "'plain' is a non-private baseline: the DP loop and its accounting are written for the four "
                 "progressive steps of 'fgssl'")
        if self.privacy.mode == "sample":
            _require(self.private_norms, "model.norm",
                     "must be 'group' under differential privacy (BatchNorm mixes samples; Opacus rejects it), or "
                     "'batch' only for a frozen backbone and blocks (train.frozen: [backbone, blocks]) with "
                     "model.head_norm: group")
        _require(self.privacy.mode != "sample" or self.train.precision != "bfloat16", "train.precision",
                 "must be 'float32' or 'auto' under sample-level DP (DP-SGD's per-sample clipping is only tested in "
                 "float32)")
        if self.privacy.mode == "client":
            _require(self.model.norm == "group" and self.model.head_norm in (None, "group"), "model.norm",
                     "must be 'group' under client-level privacy (the noise would land on BatchNorm's running "
                     "statistics, e.g. make variances negative)")
        if self.privacy.mode == "client":
            # The noise is sized for an equal-weight mean of clipped updates, released as it is.
            fed = self.federation
            _require(fed.strategy == "fedavg", "federation.strategy",
                     f"privacy.mode 'client' needs 'fedavg' (averaged with equal weights), got '{fed.strategy}'")
            _require(fed.server_optimizer == "fedavg" and fed.server_lr in (None, 1.0), "federation.server_optimizer",
                     "privacy.mode 'client' needs server_optimizer 'fedavg' with server_lr 1 (the noised mean is "
                     "applied as it is; a stateful server optimiser would carry un-noised updates across rounds)")
        if self.federation.secure_aggregation:
            _require(self.privacy.mode != "client", "privacy.mode",
                     "'client' cannot be combined with federation.secure_aggregation: client-level DP clips and noises "
                     "each site's update on the server, which under secure aggregation never sees one (use 'sample')")
            _require(self.model.norm == "group", "model.norm",
                     "must be 'group' under secure aggregation (BatchNorm's counters and running statistics are not "
                     "small bounded changes, so they would be clipped away)")
        if self.train.only_site is not None:
            _require(self.train.pooled_sites, "train.only_site", "needs train.pooled_sites: true (it picks one of them)")
            _require(0 <= self.train.only_site < self.federation.sites, "train.only_site",
                     f"site {self.train.only_site} does not exist (federation.sites={self.federation.sites})")
        if self.privacy.ledger_dir is not None:
            _require(self.data.dataset != "synthetic", "privacy.ledger_dir",
                     "only real data sets keep a data ledger (synthetic images have per-run ledgers); leave it null")
            root = Path(self.data.root).resolve() if self.data.root else None
            _require(root is None or not Path(self.privacy.ledger_dir).resolve().is_relative_to(root),
                     "privacy.ledger_dir", f"must be outside the data folder data.root={self.data.root} (often "
                     "read-only, and shared with whoever copies the images)")
        for i, f in enumerate(self.simulation.faults):
            _require(f.site < self.federation.sites, f"simulation.faults[{i}].site",
                     f"site {f.site} does not exist (federation.sites={self.federation.sites})")
        return self

    @property
    def cross_site_models(self) -> bool:
        """Whether the cross-site evaluation covers each site's own model (the global one plus its local groups) at
        the other sites: its local groups then travel there through the coordinator, a release that only
        privacy.mode 'none' allows."""
        return self.federation.cross_site and bool(self.federation.local_groups) and self.privacy.mode == "none"

    @property
    def upload_encoding(self) -> str:
        """How sites upload updates in this run: float32 under secure aggregation (it clips and quantises the change
        itself) and client-level DP (Flower's wrapper clips and noises the float32 records), else the configured one."""
        if self.federation.secure_aggregation or self.privacy.mode == "client":
            return "float32"
        return self.federation.upload_encoding

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections).validate()


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting lists to tuples and ints to floats."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in get_args(tp):
            try:
                return _coerce(value, alt, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(key, f"invalid value {value!r}: " + "; or ".join(e.message for e in errors))
    if tp is type(None):
        _require(value is None, key, f"expected null, got {value!r}")
        return None
    if origin is Literal:
        _require(value in get_args(tp), key, f"must be one of {', '.join(map(str, get_args(tp)))}; got {value!r}")
        return value
    if origin is tuple:
        args = get_args(tp)
        _require(isinstance(value, (list, tuple)), key, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        _require(len(value) == len(args), key, f"expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        _require(isinstance(value, dict), key, f"expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        _require(isinstance(value, dict), key, f"expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if tp is bool:
        _require(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        _require(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported type {tp}")


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(key, f"unknown key{hint}")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ['model.backbone=resnet34', 'train.ssl_epochs=3'] into a nested dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(pair, "an override must look like key=value")
        key, text = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(pair, "empty key in override")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(key, "conflicts with another override")
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Defaults <- base dict <- YAML file <- `key=value` overrides; validated once."""
    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("--config", f"file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError("--config", f"{p} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError("--config", f"{p} must hold a mapping at the top level")
        raw = _merge(raw, loaded)
    raw = _merge(raw, parse_overrides(overrides or []))
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> Config:
    return _build(Config, raw, "").validate()
