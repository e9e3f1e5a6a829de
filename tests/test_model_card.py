"""model.json beside model.safetensors: a trained model travels with its description, and a weights file that does
not fit it is refused, naming the tensor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fgssl.config import load_config
from fgssl.data.images import ImageSet
from fgssl.model import build_model
from fgssl.model_card import MODEL_CARD, ModelFileError, describe, load_model, write_model_card
from fgssl.train import predict

from .conftest import TINY, merge


def _saved(tmp_path, names=("nv", "mel", "bkl"), **model):
    """A run folder with an untrained tiny model for the classes `names`: its model.safetensors and model.json."""
    cfg = load_config(None, [], base=merge(TINY, {"model": model} if model else {}))
    torch.manual_seed(3)
    net = build_model(cfg.model, len(names))
    run = tmp_path / "run"
    run.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(run / "model.safetensors"))
    summary = {"command": "train", "test": {"balanced_accuracy": 0.5, "accuracy": 0.6, "per_class_recall": {}}}
    write_model_card(run, describe(cfg, names, summary))
    return run, net, cfg


def test_a_saved_model_loads_from_its_folder_its_card_or_its_weights(tmp_path):
    run, net, cfg = _saved(tmp_path)
    card = json.loads((run / MODEL_CARD).read_text())
    assert card["class_names"] == ["nv", "mel", "bkl"] and card["architecture"]["backbone"] == cfg.model.backbone
    assert card["preprocessing"]["image_size"] == cfg.data.image_size and len(card["preprocessing"]["mean"]) == 3
    assert card["metrics"] == {"balanced_accuracy": 0.5, "accuracy": 0.6}
    assert card["privacy"]["guarantee"] == "none"
    images = ImageSet(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.arange(4) % 3,
                      ("nv", "mel", "bkl"))
    _, want = predict(net, images)
    for where in (run, run / MODEL_CARD, run / "model.safetensors"):
        model, loaded = load_model(where)
        assert loaded["class_names"] == ["nv", "mel", "bkl"] and not model.training
        np.testing.assert_allclose(predict(model, images)[1], want, rtol=1e-5, atol=1e-6)


def test_a_starting_point_on_the_training_machine_is_not_needed(tmp_path):
    run, _, _ = _saved(tmp_path)
    card = json.loads((run / MODEL_CARD).read_text())
    card["architecture"]["weights"] = str(tmp_path / "gone" / "public.safetensors")
    (run / MODEL_CARD).write_text(json.dumps(card))
    model, _ = load_model(run)
    assert model is not None


@pytest.mark.parametrize("change, message", [
    ("shape", "tensor 'classifiers.0.weight' is (4, 16)"),
    ("missing", "tensor 'classifiers.0.weight' missing"),
    ("extra", "unexpected tensor 'sneaky'"),
])
def test_weights_that_do_not_fit_the_description_are_refused_naming_the_tensor(tmp_path, change, message):
    run, _, _ = _saved(tmp_path)
    state = load_file(str(run / "model.safetensors"))
    key = "classifiers.0.weight"
    assert key in state, sorted(state)[:5]
    if change == "shape":
        state[key] = torch.zeros(4, state[key].shape[1])
    elif change == "missing":
        del state[key]
    else:
        state["sneaky"] = torch.zeros(2)
    save_file(state, str(run / "model.safetensors"))
    with pytest.raises(ModelFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(run)


def test_a_missing_or_broken_description_is_named(tmp_path):
    run, _, _ = _saved(tmp_path)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run / "model.safetensors", alone / "model.safetensors")
    with pytest.raises(ModelFileError, match="model.json not found"):
        load_model(alone / "model.safetensors")
    (run / MODEL_CARD).write_text("{not json")
    with pytest.raises(ModelFileError, match="not a readable JSON"):
        load_model(run)
    (run / MODEL_CARD).write_text(json.dumps({"format": 1, "class_names": "nv", "architecture": {}}))
    with pytest.raises(ModelFileError, match="'class_names' must be a non-empty list"):
        load_model(run)
    (run / MODEL_CARD).write_text(json.dumps({"format": 1, "class_names": ["a"], "architecture": {"width": -3}}))
    with pytest.raises(ModelFileError, match="'architecture' is not a valid model section.*width"):
        load_model(run)
    (run / "model.safetensors").write_bytes(b"garbage")
    (run / MODEL_CARD).write_text(json.dumps({"format": 1, "class_names": ["a", "b", "c"],
                                              "architecture": json.loads(json.dumps(TINY["model"]))}))
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        load_model(run)
