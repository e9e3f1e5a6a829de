import json

from safetensors.torch import load_file

from .conftest import run_cli


def test_train_writes_a_complete_run_directory(tiny_config, tmp_path):
    cfg = tiny_config(train={"batch_size": 16, "ssl_epochs": 1, "finetune_epochs": 2}, data={"num_samples": 120})
    out = tmp_path / "run"
    proc = run_cli("train", "--config", str(cfg), "--out", str(out), "--seed", "5", "--quiet")
    assert f"writing to {out}" in proc.stdout and "balanced_accuracy" in proc.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r.get("epoch")) for r in records] == [("ssl", 1), ("finetune", 1), ("finetune", 2),
                                                               ("final", None)]
    assert "balanced_accuracy" in records[-1] and "balanced_accuracy" in records[1]["val"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 5 and 0.0 <= summary["test"]["balanced_accuracy"] <= 1.0
    assert "seed: 5" in (out / "config.yaml").read_text()
    weights = load_file(str(out / "model.safetensors"))
    assert any(k.startswith("classifiers.") for k in weights)
    from fgssl.model_card import load_model
    model, card = load_model(out)
    assert card["training"]["command"] == "train" and card["training"]["seed"] == 5
    assert card["class_names"] == summary["class_names"]
    assert card["metrics"]["balanced_accuracy"] == summary["test"]["balanced_accuracy"]


def test_train_bad_value_is_one_line_naming_the_key(tmp_path):
    proc = run_cli("train", "--set", "model.granularities=[8,4,0]", "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("fgssl train: error: config key 'model.granularities[2]': "
                                   "must be an integer >= 1, got 0")
    proc = run_cli("train", "--set", "data.image_size=12", "--set", "model.granularities=[16,4,2]", "--out", str(tmp_path / "r"), check=False)
    assert "'data.image_size'" in proc.stderr and "smaller than" in proc.stderr
