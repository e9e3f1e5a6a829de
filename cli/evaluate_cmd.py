"""`fgssl evaluate MODEL_OR_RUN --dataset NAME --root DIR [--split train|val|test|all] [--tta] [--positive-class C]`:
the full metric set of a trained model on a labelled dataset, in evaluation.json, evaluation.md and evaluation.html.

MODEL_OR_RUN is a run directory, a model.json or a model.safetensors with its model.json beside it. The images are
read through the training cache at the model's image size; a dataset with other classes than the model's is refused.
"""

from __future__ import annotations

import argparse

from fgssl.config import DATASETS


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cli.arguments import add_output_arguments

    p.add_argument("model", metavar="MODEL_OR_RUN", help="run directory, model.json or model.safetensors")
    p.add_argument("--dataset", required=True, choices=DATASETS, help="the layout of --root (as for training)")
    p.add_argument("--root", metavar="DIR", help="the dataset folder as downloaded (medmnist: the .npz or its folder)")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default="all",
                   help="which images: a split as training makes it (the model's seed), or all (default)")
    p.add_argument("--tta", action="store_true",
                   help="also test-time augmentation: mean softmax over the image and its flips")
    p.add_argument("--positive-class", metavar="CLASS",
                   help="the class whose sensitivity at 80/90/95%% specificity is reported (default: MEL when "
                        "present, else the first class)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a data.* setting, e.g. --set data.cache_dir=/tmp/cache (repeatable)")
    p.add_argument("--out", help="folder to write (default: runs/<timestamp>-evaluate)")
    p.add_argument("--batch-size", type=int, default=128, metavar="N", help="images per forward pass (default: 128)")
    add_output_arguments(p)


def _table(record: dict) -> str:
    from cli.common import format_table

    keys = ["accuracy", "majority_rate", "balanced_accuracy", "macro_f1", "macro_auc", "quadratic_weighted_kappa",
            "expected_calibration_error"]
    rows = [{"prediction": v, **{k: record[v].get(k, "") for k in keys}} for v in ("plain", "tta") if v in record]
    return format_table(rows, ["prediction", *(k for k in keys if any(k in record[v] for v in ("plain", "tta")
                                                                      if v in record))])


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fgssl.evaluation import evaluate_model, evaluation_data, load_evaluation_images
    from fgssl.model_card import ModelFileError, load_model
    from fgssl.rundir import default_run_dir

    from cli.errors import UserError
    from cli.progress import Output
    from cli.reports.evaluation import write_evaluation

    out = Output.from_args(args, "evaluate")
    try:
        model, card = load_model(args.model)
    except ModelFileError as e:
        raise UserError(str(e)) from None
    data = evaluation_data(card, args.dataset, args.root, args.split, args.overrides)
    out_dir = Path(args.out or default_run_dir("evaluate"))
    out.emit("start", f"fgssl evaluate: {args.model} on {args.dataset} ({args.split}); writing to {out_dir}",
             result=True, command="evaluate", model=str(args.model), dataset=args.dataset, split=args.split,
             out=str(out_dir))
    with out.bar(f"images {data.cfg.dataset} {data.cfg.image_size}px", 0) as bar:
        images = load_evaluation_images(data, card["class_names"], progress=bar.update)
    for note in data.notes:
        out.emit("note", f"note: {note}", result=True, text=note)
    with out.bar("predict" + (" with flips" if args.tta else ""), len(images)) as bar:
        record = evaluate_model(model, card, data, images, tta=args.tta, positive=args.positive_class,
                                batch_size=args.batch_size, progress=bar.update)
    paths = write_evaluation(out_dir, record)
    if out.json:
        headline = {v: {k: x for k, x in record[v].items() if isinstance(x, (int, float)) or x is None}
                    for v in ("plain", "tta") if v in record}
        out.emit("done", command="evaluate", out=str(out_dir), num_images=len(images), metrics=headline,
                 positive_class=record["positive_class"],
                 sensitivity_at_specificity=record["plain"]["sensitivity_at_specificity"])
        return 0
    print(_table(record))
    for r in record["plain"]["sensitivity_at_specificity"]:
        if r["sensitivity"] is not None:
            print(f"{record['positive_class']}: sensitivity {r['sensitivity']:.3f} at specificity "
                  f"{r['specificity']:.3f} (target {r['target_specificity']:.0%}, threshold {r['threshold']:.4f})")
    print(f"note: {record['specificity_note']}")
    print(f"fgssl evaluate: {len(images)} images; wrote {paths.json}, {paths.markdown} and {paths.html}")
    return 0
