"""What one site does in a round, independent of Flower: load weights, train or evaluate, keep local groups.

Site-local parameter groups (FedBN-style) are written to the site's state directory after every round, keyed by
round, so a restarted node (or a resumed run) restores exactly the copy that belongs to the round it redoes.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fgssl.config import CROSS_SITE_EVALUATIONS, SITE_EVALUATIONS, Config
from fgssl.data.images import ImageSet, labelled_part
from fgssl.data.sources import Splits
from fgssl.metrics import headline
from fgssl.model import FGSSLNet, build_model
from fgssl.privacy.data_ledger import DataLedgerRef, copy_to_data_ledger, run_key
from fgssl.privacy.ledger import PrivacyLedger
from fgssl.privacy.node import Mirror, private_round, record_unprotected_round
from fgssl.rundir import RunDir, load_weights
from fgssl.train import evaluate, resolve_device, train_local
from strategies.groups import keys_matching, split_by_site
from strategies.wire import encode

NamedArrays = dict[str, np.ndarray]
_LOCAL_FILE = re.compile(r"local_r(\d+)\.safetensors$")


class SiteProvider(Protocol):
    """Where a site's data and state live (simulated partitions, or a hospital's own folder), and the ledger of the
    real data set a simulation's sites share (None: each site's ledger is the only one, as at a hospital)."""

    data_ledger: DataLedgerRef | None

    def splits(self, site: int) -> Splits: ...

    def state_dir(self, site: int) -> Path: ...


def site_seed(seed: int, site: int, rnd: int) -> int:
    """Independent, reproducible stream per (run seed, site, round), whatever process runs the site."""
    return int(np.random.SeedSequence([seed, site, rnd]).generate_state(1)[0])


def _model_with(cfg: Config, num_classes: int, received: NamedArrays, local: dict[str, torch.Tensor]) -> FGSSLNet:
    torch.manual_seed(cfg.seed)  # same initial values as the server's global model for keys not sent
    model = build_model(cfg.model, num_classes, cfg.train.frozen)
    state = model.state_dict()
    for k, v in received.items():
        if k not in state:
            raise KeyError(f"the server sent an unknown parameter '{k}'")
        state[k] = torch.from_numpy(np.array(v, copy=True))
    state.update(local)
    model.load_state_dict(state)
    return model


def load_local_groups(state_dir: Path, before_round: int) -> dict[str, torch.Tensor]:
    """The newest saved local groups from a round earlier than `before_round` ({} before the first)."""
    best = None
    for p in state_dir.glob("local_r*.safetensors"):
        m = _LOCAL_FILE.search(p.name)
        if m and int(m.group(1)) < before_round and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return load_weights(best[1]) if best else {}


def save_local_groups(state_dir: Path, rnd: int, model: FGSSLNet, patterns: tuple[str, ...], keep: int = 2,
                      also_keep: int | None = None) -> None:
    """Write this round's local groups; keep the last `keep` rounds' and round `also_keep`'s (the coordinator's
    selected round, whose model the cross-site evaluation needs)."""
    if not patterns:
        return
    state = model.state_dict()
    keys = keys_matching(list(state), patterns)
    RunDir(state_dir).save_weights({k: state[k] for k in keys}, f"local_r{rnd}.safetensors")
    rounds = sorted(int(m.group(1)) for p in state_dir.glob("local_r*.safetensors")
                    if (m := _LOCAL_FILE.search(p.name)))
    for old in rounds[:-keep]:
        if old == also_keep:
            continue
        (state_dir / f"local_r{old}.safetensors").unlink(missing_ok=True)


def site_labelled(cfg: Config, train: ImageSet, site: int) -> tuple[ImageSet, dict]:
    """The site's labelled training images (train.label_fraction, stratified, fixed per run seed and site) and
    their record (positions in its training split)."""
    return labelled_part(train, cfg.train.label_fraction, site_seed(cfg.seed, site, 0))


def labelled_train(cfg: Config, train: ImageSet, site: int, state_dir: Path) -> ImageSet:
    """`site_labelled`, recorded once in the site's state directory (labelled.json)."""
    part, record = site_labelled(cfg, train, site)
    path = state_dir / "labelled.json"
    if not path.is_file():
        path.write_text(json.dumps({"site": site, **record}))
    return part


def _apply_fault(cfg: Config, site: int, rnd: int, arrays: NamedArrays,
                 info: dict[str, Any]) -> tuple[NamedArrays, dict[str, Any]]:
    """Simulation-only fault injection (simulation.faults): lets tests and researchers play a hostile site."""
    for f in cfg.simulation.faults:
        if f.site != site or f.round != rnd:
            continue
        if f.kind == "raise":
            raise RuntimeError(f"injected crash of site {site} in round {rnd} (simulation.faults)")
        if f.kind == "huge_metric":
            info = {**info, "note": "x" * 2_000_000}
            continue
        if f.kind == "extra_array":
            arrays = {**arrays, "injected.weight": np.zeros(1000, np.float32)}
            continue
        key = next(k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating))
        arrays = dict(arrays)
        if f.kind == "nan":
            arrays[key] = np.full_like(arrays[key], np.nan)
        elif f.kind == "wrong_shape":
            arrays[key] = np.zeros(arrays[key].size + 1, dtype=arrays[key].dtype)
        elif f.kind == "scale":
            arrays = {k: (v * f.scale).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
                      for k, v in arrays.items()}
    return arrays, info


def _mirror(sites: SiteProvider, site: int, round_cfg: dict[str, Any]) -> Mirror | None:
    """How this site copies its ledger's new entries into its data set's ledger (None without one)."""
    ref = sites.data_ledger
    if ref is None:
        return None
    run = run_key(str(round_cfg.get("run_id", "run")), round_cfg.get("run_uid") or None)

    def mirror(ledger: PrivacyLedger) -> None:
        copy_to_data_ledger(ref, ledger, run=run, site=site)
    return mirror


def train_round(cfg: Config, sites: SiteProvider, site: int, received: NamedArrays,
                round_cfg: dict[str, Any]) -> tuple[NamedArrays, dict[str, Any]]:
    """Run the round's local training from the received weights; return the trained values of the same keys."""
    rnd, phase = int(round_cfg["round"]), str(round_cfg["phase"])
    torch.set_num_threads(cfg.simulation.client_cpus)
    splits = sites.splits(site)
    state_dir = sites.state_dir(site)
    model = _model_with(cfg, splits.train.num_classes, received, load_local_groups(state_dir, rnd))
    epochs, max_batches = int(round_cfg["local_epochs"]), int(round_cfg["max_local_batches"]) or None
    progress = (float(round_cfg["progress_start"]), float(round_cfg["progress_end"]))
    data = labelled_train(cfg, splits.train, site, state_dir) if phase == "finetune" else splits.train
    mirror = _mirror(sites, site, round_cfg)
    if "weights_sha256" in round_cfg:  # the public weights the run started from, as its coordinator declares them
        with PrivacyLedger(state_dir) as ledger:
            ledger.record_weights(run_id=str(round_cfg.get("run_id", "run")), sha256=str(round_cfg["weights_sha256"]),
                                  path=str(round_cfg["weights_path"]), source=str(round_cfg["weights_source"]))
    if cfg.privacy.mode == "sample":
        private = private_round(model, data, phase, cfg, state_dir, site=site,
                                run_id=str(round_cfg.get("run_id", "run")), rnd=rnd, epochs=epochs,
                                max_batches=max_batches, progress=progress, mirror=mirror)
        privacy = {k: v for k, v in (("epsilon", private.epsilon), ("delta", private.delta)) if math.isfinite(v)}
        if private.refused:
            return {}, {"refused": private.refused, **privacy}
        info: dict[str, Any] = {**private.metrics, **privacy}
    else:
        record_unprotected_round(state_dir, cfg, run_id=str(round_cfg.get("run_id", "run")), rnd=rnd, phase=phase,
                                 mirror=mirror)
        gen = torch.Generator().manual_seed(site_seed(int(round_cfg["seed"]), site, rnd))
        # On the site's GPU where it has one (train.device); DP-SGD rounds above stay on the CPU, where their
        # per-sample clipping and noise are tested.
        device = resolve_device(cfg.train.device)
        result = train_local(model.to(device), data, phase, cfg, epochs=epochs, max_batches=max_batches,
                             progress=progress, generator=gen, device=device)
        model.to("cpu", memory_format=torch.contiguous_format)
        info = {"num_examples": result.num_examples, "batches": result.batches, **result.losses}
    keep_round = round_cfg.get("keep_local_round")
    save_local_groups(state_dir, rnd, model, cfg.federation.local_groups,
                      also_keep=int(keep_round) if keep_round is not None else None)
    state = model.state_dict()
    arrays = {k: state[k].detach().cpu().numpy() for k in received}
    info = {k: v for k, v in info.items() if not isinstance(v, float) or math.isfinite(v)}
    arrays, info = _apply_fault(cfg, site, rnd, arrays, info)
    if round_cfg.get("upload_encoding") == "float16_delta":  # the coordinator's choice (Config.upload_encoding)
        arrays = encode(arrays, received) or arrays
    return arrays, info


def evaluate_global(cfg: Config, sites: SiteProvider, site: int, received: NamedArrays, rnd: int) -> dict[str, Any]:
    """Full metric set of the global model (with this site's local groups) on the site's val and test splits: what
    the site sends back, or, when its evaluation stays at the site, only that it does (the metrics go to
    SITE_EVALUATIONS in its state directory, for the hospital)."""
    torch.set_num_threads(cfg.simulation.client_cpus)
    splits, state = sites.splits(site), sites.state_dir(site)
    model = _model_with(cfg, splits.train.num_classes, received, load_local_groups(state, rnd + 1))
    model.to(resolve_device(cfg.train.device))
    metrics = {"val": evaluate(model, splits.val) if len(splits.val) else None,
               "test": evaluate(model, splits.test) if len(splits.test) else None}
    if not cfg.privacy.evaluation_stays_at_sites:
        return metrics
    with (state / SITE_EVALUATIONS).open("a", encoding="utf-8") as f:
        f.write(json.dumps({"round": rnd, **metrics}) + "\n")
    return {"kept_at_site": True}


def cross_site_evaluate(cfg: Config, sites: SiteProvider, site: int, received: NamedArrays,
                        request: dict[str, Any]) -> tuple[NamedArrays, dict[str, Any]]:
    """This site's part of the cross-site evaluation (server/cross_site.py) on its test split. Request "global": the
    federation's kept model as it is (every key received) and, where cfg.cross_site_models, this site's local groups
    of that model's round to pass on. Request "models": every site's model the coordinator carried (the shared
    weights plus site k's groups under 'site<k>/<key>'). Under sample-level DP the metrics go to
    CROSS_SITE_EVALUATIONS in the state directory and the reply says only that."""
    if any(f.kind == "cross_site_raise" and f.site == site for f in cfg.simulation.faults):
        raise RuntimeError(f"injected crash of site {site} in the cross-site evaluation (simulation.faults)")
    torch.set_num_threads(cfg.simulation.client_cpus)
    splits, state = sites.splits(site), sites.state_dir(site)
    device = resolve_device(cfg.train.device)
    model_round = int(request["model_round"])

    def scored(arrays: NamedArrays) -> dict[str, Any] | None:
        """The full metric set on the test split of the model `arrays` hold (None without test images)."""
        if not len(splits.test):
            return None
        return evaluate(_model_with(cfg, splits.train.num_classes, arrays, {}).to(device), splits.test)

    arrays: NamedArrays = {}
    if request["cross_site"] == "models":
        shared, groups = split_by_site(received)
        full = {owner: scored({**shared, **g}) for owner, g in sorted(groups.items())}
        kept = [{"model": owner, "test": m} for owner, m in full.items()]
        reply: dict[str, Any] = {"models": {owner: headline(m) if m else None for owner, m in full.items()}}
    else:
        metrics = scored(received)
        kept = [{"model": "global", "test": metrics}]
        reply = {"test": headline(metrics) if metrics else None}
        if cfg.cross_site_models:
            own = _model_with(cfg, splits.train.num_classes, received, load_local_groups(state, model_round + 1))
            values = own.state_dict()
            arrays = {k: values[k].numpy() for k in keys_matching(list(values), cfg.federation.local_groups)}
    if not cfg.privacy.evaluation_stays_at_sites:
        return arrays, reply
    with (state / CROSS_SITE_EVALUATIONS).open("a", encoding="utf-8") as f:
        for line in kept:
            f.write(json.dumps({**line, "model_round": model_round}) + "\n")
    return {}, {"kept_at_site": True}
