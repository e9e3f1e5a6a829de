"""Where a run's public weights (`model.weights`) come from: the file's SHA-256 and its declared source, recorded in
the ledgers of the sites that train from them; weights a run of this project trained on the same images without
sample-level DP are refused for a DP run (docs/privacy.md, "Public weights").

"Public" is what makes a frozen, pretrained feature extractor free under DP. Weights trained on the very images a DP
run protects, without DP, carry those images in the clear: starting a DP run from them would print an ε that does
not hold. model.json beside a model.safetensors written by `fgssl train` / `simulate` records the data set's key and
the privacy guarantee of the run that wrote it (`fgssl.model_card.describe`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError

MODEL_CARD = "model.json"  # fgssl.model_card.MODEL_CARD, without importing torch here


@dataclass(frozen=True)
class PublicWeights:
    path: str
    sha256: str
    source: str  # model.weights_source, else what model.json says, else "undeclared"
    data_key: str | None = None  # the data set the weights were trained on (model.json), if known
    guarantee: str | None = None  # that run's privacy guarantee (model.json): none, sample-level, client-level
    run: str | None = None  # that run (model.json)

    def to_round_config(self) -> dict[str, str]:
        """What a coordinator tells its sites, which record it in their ledgers."""
        return {"weights_path": self.path, "weights_sha256": self.sha256, "weights_source": self.source}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _card(weights: Path) -> dict[str, Any] | None:
    """The model.json beside `weights` (None when there is none: e.g. torchvision's ImageNet weights)."""
    card = weights.with_name(MODEL_CARD)
    if not card.is_file():
        return None
    try:
        value = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError("model.weights", f"{card} beside {weights} is not readable JSON ({e}); the provenance of "
                                           "the weights cannot be told") from None
    if not isinstance(value, dict):
        raise ConfigError("model.weights", f"{card} beside {weights} is not a model description (a JSON object)")
    return value


def public_weights(cfg: Config) -> PublicWeights | None:
    """The public weights `cfg` starts from, hashed once, with their declared source (None without model.weights)."""
    if not cfg.model.weights:
        return None
    path = Path(cfg.model.weights).resolve()
    card = _card(path)
    training = (card or {}).get("training") or {}
    privacy = (card or {}).get("privacy") or {}
    guarantee = privacy.get("guarantee") if card else None
    if cfg.model.weights_source:
        source = cfg.model.weights_source
    elif card:
        source = (f"{MODEL_CARD}: fgssl {training.get('command', '?')} run {training.get('run', '?')} on "
                  f"{training.get('dataset', '?')} data {training.get('data_key') or '(key not recorded)'}, "
                  f"privacy {guarantee or '?'}")
    else:
        source = f"undeclared (no model.weights_source, no {MODEL_CARD} beside the file)"
    return PublicWeights(str(path), sha256_of(path), source, training.get("data_key"), guarantee, training.get("run"))


def check_public_weights(cfg: Config, data_key: str | None) -> PublicWeights | None:
    """`public_weights(cfg)`, refused (ConfigError naming model.weights, the file and the run) when a sample-level DP
    run on the data set `data_key` would start from weights a run trained on the same data set without
    sample-level DP."""
    weights = public_weights(cfg)
    if (weights is not None and cfg.privacy.mode == "sample" and data_key is not None
            and weights.data_key == data_key and weights.guarantee != "sample-level"):
        raise ConfigError("model.weights", f"{weights.path} was written by run {weights.run} on these very images "
                                           f"(data {data_key}) with privacy {weights.guarantee} (its "
                                           f"{MODEL_CARD}): they carry those images without a DP guarantee, so a DP "
                                           "run starting from them could not claim its ε. Use weights trained on "
                                           "data disjoint from every site's (or trained under sample-level DP)")
    return weights
