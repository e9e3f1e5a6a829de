"""`fgssl predict MODEL IMAGE_OR_FOLDER... --out predictions.csv`: class probabilities for new images.

MODEL is a run directory, a model.json or a model.safetensors with its model.json beside it. Images are decoded and
resized as the model's training data was. Unreadable images are listed (a row with an error, and on stderr) and the
rest are predicted; with --strict the first one stops the command.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="run directory, model.json or model.safetensors (with model.json)")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders of them")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    p.add_argument("--strict", action="store_true", help="stop at the first image that cannot be decoded")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass (default: 64)")


def run(args: argparse.Namespace) -> int:
    import csv
    import sys
    from pathlib import Path

    from fgssl.model_card import ModelFileError, load_model
    from fgssl.predict import image_files, predict_files

    from cli.errors import UserError

    try:
        model, card = load_model(args.model)
    except ModelFileError as e:
        raise UserError(str(e)) from None
    files = image_files(args.images)
    if not files:
        raise UserError(f"no image files in {', '.join(args.images)}")
    rows = predict_files(model, card, files, args.batch_size, strict=args.strict)  # before anything is written
    names = card["class_names"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "predicted", *(f"p_{n}" for n in names), "error"])
        for r in rows:
            if r.probabilities is None:
                w.writerow([str(r.path), "", *([""] * len(names)), r.error])
            else:
                w.writerow([str(r.path), names[int(r.probabilities.argmax())],
                            *(f"{p:.6f}" for p in r.probabilities), ""])
    bad = [r for r in rows if r.probabilities is None]
    for r in bad[:10]:
        print(f"fgssl predict: skipped {r.error}", file=sys.stderr)
    if len(bad) > 10:
        print(f"fgssl predict: skipped {len(bad) - 10} more (see the error column of {out})", file=sys.stderr)
    print(f"fgssl predict: {len(rows) - len(bad)} of {len(rows)} images predicted with {len(names)} classes "
          f"({', '.join(names)}) at {card['preprocessing']['image_size']} px; wrote {out}")
    return 0
