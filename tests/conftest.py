import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# A model and data small enough for a Flower round in seconds on 2 CPU cores.
TINY = {
    "seed": 1,
    "data": {"num_samples": 240, "image_size": 32, "site_shift": 1.0},
    "model": {"backbone": "resnet10", "width": 16, "granularities": [4, 2, 1], "block_mid_channels": 16,
              "block_out_channels": 32, "embed_dim": 16,
              "norm": "group", "groups": 4},
    "train": {"batch_size": 16},
    "partition": {"method": "iid"},
    "federation": {"sites": 2, "ssl_rounds": 1, "finetune_rounds": 1, "max_local_batches": 2, "min_nodes": 1},
    # One Ray actor: each actor imports torch and Flower (about 7 CPU seconds), far more than the tiny sites' work.
    "simulation": {"total_cpus": 1},
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture
def tiny_config(tmp_path):
    def make(**sections) -> Path:
        path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
        path.write_text(yaml.safe_dump(merge(TINY, sections)))
        return path
    return make


def run_cli(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"fgssl {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def flower_identity():
    """Flower stamps every message with the identity of the running task (node 1 here); a unit test has none."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """One finished 3-round simulation of two sites (1 SSL + 2 fine-tune rounds), shared by the tests that read a
    run directory; they copy it before changing anything."""
    root = tmp_path_factory.mktemp("finished")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(merge(TINY, {"federation": {"sites": 2, "ssl_rounds": 1, "finetune_rounds": 2}})))
    run_cli("simulate", "--config", str(cfg), "--out", str(root / "run"), "--quiet")
    return root / "run"


# The files that take longest, first: three xdist workers take whole files in collection order, so starting with the
# long ones leaves the short ones to fill the gaps at the end instead of one long file running alone. (Adding the
# newer long files to the front, 2026-12-07, measured 910 s against 859 s without: within the noise, not kept.)
LONG_FILES = ("test_federation.py", "test_deployment.py", "test_deployment_load.py", "test_sweep.py",
              "test_secagg.py", "test_study.py", "test_client_dp.py", "test_progress.py",
              "test_simulate_real_data.py", "test_federation_dp.py", "test_ray_cluster.py", "test_flwr_run.py",
              "test_report.py", "test_cli_train.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))
