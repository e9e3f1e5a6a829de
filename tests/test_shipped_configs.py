"""The example configs in simulations/configs stay valid as the config schema changes."""

from pathlib import Path

import pytest
import yaml

from fgssl.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "simulations" / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_config_is_valid(name, tmp_path):
    path = CONFIGS / name
    overrides = []
    if yaml.safe_load(path.read_text()).get("model", {}).get("weights"):
        # The DP example points at the public pretraining's output, which the user makes first.
        weights = tmp_path / "model.safetensors"
        weights.write_bytes(b"")
        overrides.append(f"model.weights={weights}")
    load_config(path, overrides)


def test_the_dp_example_says_how_to_make_its_public_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/public here
    with pytest.raises(ConfigError, match="model.weights.*public_pretrain.yaml"):
        load_config(CONFIGS / "dp.yaml")
