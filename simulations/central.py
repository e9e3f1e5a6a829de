"""Centralised training: FG-SSL pretraining then progressive fine-tuning on one pool of images (`fgssl train`).

The federation's yardstick. With `train.pooled_sites` the pool is the union of the very sites `fgssl simulate`
builds (same partition, splits, camera shifts, labelled parts), and each site's own test split is reported too.
"""

from __future__ import annotations

import json
import time
import warnings
from contextlib import AbstractContextManager
from typing import Any, Callable, Protocol

import torch

from fgssl.config import Config
from fgssl.data.cache import cache_path
from fgssl.data.errors import DataWarning
from fgssl.data.images import labelled_part
from fgssl.data.sources import load_splits, synthetic_key
from fgssl.metrics import below_majority
from fgssl.model import build_model
from fgssl.model_card import describe, write_model_card
from fgssl.privacy.data_ledger import data_ledger_ref, open_data_ledger, record_training_without_dp, run_key
from fgssl.privacy.provenance import public_weights
from fgssl.rundir import RunDir
from fgssl.selection import Selection
from fgssl.train import evaluate, resolve_device, train_local

from .sites import pool_sites


class Progress(Protocol):
    """Where the run reports itself (cli.progress.Output): events with a line of text, and one bar per epoch."""
    shows_progress: bool

    def emit(self, event: str, line: str | None = None, *, result: bool = False, **fields: Any) -> None: ...

    def bar(self, step: str, total: int) -> AbstractContextManager[Callable[..., None]]: ...


def _record_central_training(cfg: Config, run_dir: RunDir) -> dict[str, Any]:
    """Centralised training has no DP: on a real data set, its images' data ledger records an unprotected release
    (and the public weights it starts from) before the first step, so no later run on them prints a finite lifetime
    ε. Returns the summary's privacy statement, with the data set's key and the run's id for model.json."""
    run = run_key(run_dir.path.name, run_dir.uid(fresh=True)) or run_dir.path.name
    if cfg.data.dataset == "synthetic":
        return {"guarantee": "none", "data_key": synthetic_key(cfg.data, cfg.seed), "run_id": run,
                "text": "No differential privacy; the images are synthetic (no data ledger)."}
    ref = data_ledger_ref(cfg, cache_path(cfg.data))
    record_training_without_dp(ref, run=run, what="centralised training (fgssl train)")
    if (weights := public_weights(cfg)) is not None:
        with open_data_ledger(ref) as ledger:
            ledger.record_weights(run_id=run, sha256=weights.sha256, path=weights.path, source=weights.source)
    return {"guarantee": "none", "data_key": ref.key, "run_id": run,
            "text": f"No differential privacy: its images' data ledger {ref.path} records this run, so every run on "
                    "them states a lifetime ε = ∞."}


def train_central(cfg: Config, run_dir: RunDir, out: Progress) -> dict[str, Any]:
    """Train, select, test and save (summary.json, metrics.jsonl, metrics.csv, model.safetensors); returns the
    summary."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    started = time.time()
    pooled = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the same notes are printed and saved below
        if cfg.train.pooled_sites:
            pooled = pool_sites(cfg, run_dir.path)
            splits = pooled.splits
        else:
            splits = load_splits(cfg.data, cfg.seed, progress=out.shows_progress)
    privacy = _record_central_training(cfg, run_dir)
    out.emit("data", f"data: {cfg.data.dataset}, {splits.sizes()} images of {cfg.data.image_size} px, "
             f"{splits.train.num_classes} classes", result=True, dataset=cfg.data.dataset, sizes=splits.sizes(),
             num_classes=splits.train.num_classes)
    for note in splits.notes:
        out.emit("note", f"note: {note}", result=True, text=note)
    if pooled is not None:
        which = (f"site {cfg.train.only_site} alone of {cfg.federation.sites} simulated sites (tested on every site)"
                 if cfg.train.only_site is not None else f"the union of {cfg.federation.sites} simulated sites' splits")
        out.emit("sites", f"sites: {which} (partition.method={cfg.partition.method}, "
                 f"data.site_shift={cfg.data.site_shift:g}), as fgssl simulate builds them", result=True,
                 sites=cfg.federation.sites, only_site=cfg.train.only_site)
        labelled, record = pooled.labelled, pooled.labelled_record
    else:
        labelled, record = labelled_part(splits.train, cfg.train.label_fraction, cfg.seed)
    (run_dir.path / "labelled.json").write_text(json.dumps(record))
    if len(labelled) < len(splits.train):
        out.emit("labels", f"labels: fine-tuning on {len(labelled)} of {len(splits.train)} training images "
                 f"(train.label_fraction={cfg.train.label_fraction:g}, stratified); SSL on all of them",
                 result=True, labelled=len(labelled), train=len(splits.train))
    model = build_model(cfg.model, splits.train.num_classes, cfg.train.frozen).to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    plan = [("ssl", e, cfg.train.ssl_epochs) for e in range(cfg.train.ssl_epochs)]
    plan += [("finetune", e, cfg.train.finetune_epochs) for e in range(cfg.train.finetune_epochs)]
    val = None
    selection = Selection(cfg.train.select_metric, cfg.train.select_above_majority)
    for phase, epoch, epochs in plan:
        data = labelled if phase == "finetune" else splits.train
        with out.bar(f"{phase} epoch {epoch + 1}/{epochs}", data.num_batches(cfg.train.batch_size)) as bar:
            result = train_local(model, data, phase, cfg, epochs=1,
                                 progress=(epoch / epochs, (epoch + 1) / epochs), generator=gen, device=device,
                                 on_batch=bar)
        record = {"phase": phase, "epoch": epoch + 1, "elapsed_s": round(time.time() - started, 1),
                  "num_examples": result.num_examples,
                  **{k: v for k, v in result.losses.items()}}
        line = f"{phase} epoch {epoch + 1}/{epochs}: loss {result.losses['loss']:.4f}"
        if phase == "finetune":
            val = evaluate(model, splits.val, device=device)
            record["val"] = val
            line += (f"  val balanced_accuracy {val['balanced_accuracy']:.3f}  accuracy {val['accuracy']:.3f} "
                     f"(majority {val['majority_rate']:.3f})")
            if selection.offer(epoch + 1, val, lambda: {k: v.detach().clone() for k, v in model.state_dict().items()}):
                line += "  *"
        run_dir.log(record)
        out.emit("epoch", line, phase=phase, epoch=epoch + 1, total=epochs, seconds=record["elapsed_s"],
                 loss=result.losses["loss"], **({"val_balanced_accuracy": val["balanced_accuracy"],
                                                  "val_accuracy": val["accuracy"]} if phase == "finetune" else {}))
    test_last = test = evaluate(model, splits.test, device=device)
    run_dir.save_weights(model.state_dict(), "model_last.safetensors")
    if selection.best_step is not None:
        val = selection.best_val
        if selection.best_step != cfg.train.finetune_epochs:  # an earlier epoch won: its weights, its test
            model.load_state_dict(selection.best_state)
            test = evaluate(model, splits.test, device=device)
    site_tests = {str(s): evaluate(model, t, device=device) for s, t in enumerate(pooled.site_tests)} if pooled else {}
    summary = {"command": "train", "seed": cfg.seed, "elapsed_s": round(time.time() - started, 1),
               "splits": splits.sizes(), "class_names": list(splits.train.class_names),
               "chance_balanced_accuracy": 1.0 / splits.train.num_classes, "data_notes": splits.notes,
               "skipped_images": splits.skipped, "selected": selection.summary("epoch"), "val": val, "test": test,
               "test_last": test_last, "below_majority": below_majority(test),
               "run_id": privacy.pop("run_id"), "privacy": privacy,
               **({"site_tests": site_tests} if pooled else {})}
    run_dir.log({"phase": "final", "split": "test", **test})
    run_dir.write_metrics_csv()
    run_dir.write_summary(summary)
    run_dir.save_weights(model.state_dict())
    write_model_card(run_dir.path, describe(cfg, splits.train.class_names, summary))
    return summary
