"""model.json: what a trained model is, written beside its model.safetensors so that the pair can travel alone.

A hospital that receives a federation's model needs more than weights: the architecture to build, the classes in
the order of the logits, how images were decoded and scaled, where the model came from, what privacy guarantee its
training had and how well it did. `load_model` rebuilds the model from the description and refuses a weights file
that does not fit it, naming the tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .config import Config, config_from_dict
from .data.images import MEAN, STD
from .model import FGSSLNet, build_model

MODEL_CARD = "model.json"
WEIGHTS = "model.safetensors"
FORMAT = 1


class ModelFileError(ValueError):
    """A model description or weights file that cannot be used; the message names the file and the key or tensor."""


def describe(cfg: Config, class_names: list[str] | tuple[str, ...], summary: dict[str, Any]) -> dict[str, Any]:
    """The description of the model a run just saved, from its resolved config and its summary."""
    privacy = summary.get("privacy") or {}
    metrics = summary.get("test") if summary.get("command") == "train" else (summary.get("final") or {}).get("pooled")
    return {
        "format": FORMAT,
        "weights": WEIGHTS,
        "architecture": cfg.to_dict()["model"],
        "class_names": list(class_names),
        "preprocessing": {
            "image_size": cfg.data.image_size, "resize": cfg.data.resize, "color": "RGB",
            "scale": "pixel / 255, then (x - mean) / std per channel",
            "mean": [round(float(v), 6) for v in MEAN.flatten()], "std": [round(float(v), 6) for v in STD.flatten()],
            "prediction": "argmax of the sum of the four branches' logits",
        },
        "training": {
            "command": summary.get("command"), "run": summary.get("run_id"), "dataset": cfg.data.dataset,
            # which images, and under which privacy: a DP run refuses these weights as "public" when they were trained
            # on its own images without sample-level DP (fgssl/privacy/provenance.py)
            "data_key": privacy.get("data_key"), "privacy_mode": cfg.privacy.mode, "seed": cfg.seed,
            "splits": summary.get("splits"), "sites": summary.get("sites"),
            "kept": (summary.get("selected") or {}).get("text"),
        },
        "privacy": {"guarantee": privacy.get("guarantee", "none"),
                    "text": privacy.get("text", "No differential privacy: trained on the images as they are."),
                    "max_epsilon_spent": privacy.get("max_epsilon_spent")},
        "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        "config": cfg.to_dict(),
    }


def write_model_card(run_dir: Path, card: dict[str, Any]) -> Path:
    path = Path(run_dir) / MODEL_CARD
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return path


def read_model_card(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The description and the weights file it names, from a run directory, a model.json or a model.safetensors
    with its model.json beside it."""
    path = Path(path)
    card_path = path / MODEL_CARD if path.is_dir() else path if path.suffix == ".json" else path.with_name(MODEL_CARD)
    if not card_path.is_file():
        raise ModelFileError(f"{card_path} not found: a model travels as model.safetensors with its model.json "
                             "(written by fgssl train, simulate and serve)")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{card_path}: not a readable JSON model description ({e})") from None
    if not isinstance(card, dict):
        raise ModelFileError(f"{card_path}: a model description is a JSON object")
    for key in ("format", "class_names", "architecture"):
        if key not in card:
            raise ModelFileError(f"{card_path}: key '{key}' missing")
    if card["format"] != FORMAT:
        raise ModelFileError(f"{card_path}: format {card['format']!r}, this version reads format {FORMAT}")
    names = card["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelFileError(f"{card_path}: 'class_names' must be a non-empty list of strings")
    weights = path if path.suffix == ".safetensors" else card_path.with_name(str(card.get("weights", WEIGHTS)))
    return card, weights


def load_model(path: str | Path) -> tuple[FGSSLNet, dict[str, Any]]:
    """The model, in eval mode, and its description. Refuses weights that do not fit the described architecture:
    a missing, unexpected or differently shaped tensor is named."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card, weights_path = read_model_card(path)
    arch = card.get("architecture")
    if not isinstance(arch, dict):
        raise ModelFileError(f"{weights_path.with_name(MODEL_CARD)}: key 'architecture' missing")
    # The trained weights replace whatever the run started from (model.weights names a file on the training machine).
    try:
        model_cfg = config_from_dict({"model": {**arch, "weights": None, "weights_source": None}}).model
    except ValueError as e:
        raise ModelFileError(f"{weights_path.with_name(MODEL_CARD)}: 'architecture' is not a valid model section: "
                             f"{e}") from None
    model = build_model(model_cfg, len(card["class_names"]))
    if not weights_path.is_file():
        raise ModelFileError(f"{weights_path} not found (named by {weights_path.with_name(MODEL_CARD)})")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise ModelFileError(f"{weights_path}: not a readable safetensors file ({e})") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        which = f"tensor '{missing[0]}' missing" if missing else f"unexpected tensor '{unexpected[0]}'"
        raise ModelFileError(f"{weights_path} does not fit its description: {which} "
                             f"({len(missing)} missing, {len(unexpected)} unexpected in all)")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape) or state[k].dtype != v.dtype:
            raise ModelFileError(f"{weights_path} does not fit its description: tensor '{k}' is "
                                 f"{tuple(state[k].shape)} {state[k].dtype}, the model needs "
                                 f"{tuple(v.shape)} {v.dtype}")
    with torch.no_grad():
        model.load_state_dict(state)
    return model.eval(), card
