"""`fgssl prepare`: decode and resize a real dataset once into the cache that training reads.

    fgssl prepare --dataset isic2018 --root ~/data/ISIC2018 [--size 64] [--out DIR] [--skip-bad-images] [--quiet|--json]

Reuses a valid cache (same settings, source files unchanged) and rebuilds a stale one. Prints one summary line;
bad input ends with one line `fgssl prepare: error: ...` and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from fgssl.config import DATASETS, ConfigError, load_config
from fgssl.data.cache import prepare

from cli.progress import Output


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=[d for d in DATASETS if d != "synthetic"],
                   help="layout of --root (default: data.dataset of --config)")
    p.add_argument("--root", help="the folder the dataset was downloaded to, unchanged")
    p.add_argument("--size", type=int, help="side of the cached square images in px (default: data.image_size, 64)")
    p.add_argument("--out", help="cache folder (default: data.cache_dir, else <root>/.fgssl-cache)")
    p.add_argument("--resize", choices=["crop", "pad", "stretch"],
                   help="crop: short side to size + centre crop (default); pad: long side, black borders; stretch")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip and list missing or undecodable images instead of stopping")
    p.add_argument("--csv", help="folder datasets: the CSV of image paths and labels, relative to --root")
    p.add_argument("--path-column", help="folder datasets: CSV column with image paths (default: image)")
    p.add_argument("--label-column", help="folder datasets: CSV column with labels (default: label)")
    p.add_argument("--group-column", help="folder datasets: CSV column with patient/lesion ids (optional)")
    p.add_argument("--site-column", help="folder datasets: CSV column with each image's acquisition site, for "
                                         "partition.method=natural (optional)")
    p.add_argument("--classes", help="folder datasets: comma-separated class order (default: sorted labels)")
    p.add_argument("--workers", type=int, default=0,
                   help="decoding threads (default: 0 = one per CPU core, at most 8)")
    p.add_argument("--config", help="YAML config whose `data` section to prepare (flags override it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set data.resize=pad (repeatable)")
    from cli.arguments import add_output_arguments
    add_output_arguments(p)


def _data_config(args: argparse.Namespace):
    cfg = load_config(args.config, args.overrides)
    flags = {"dataset": args.dataset, "root": args.root, "image_size": args.size, "cache_dir": args.out,
             "resize": args.resize, "csv": args.csv, "path_column": args.path_column,
             "label_column": args.label_column, "group_column": args.group_column,
             "site_column": args.site_column}
    changes = {k: v for k, v in flags.items() if v is not None}
    if args.skip_bad_images:
        changes["skip_bad_images"] = True
    if args.classes is not None:
        changes["class_names"] = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    data = dataclasses.replace(cfg.data, **changes)
    if data.dataset == "synthetic":
        raise ConfigError("data.dataset", "the synthetic data is generated on the fly and needs no preparing; "
                          f"give --dataset ({', '.join(d for d in DATASETS if d != 'synthetic')})")
    return cfg.replace(data=data).data  # validated as a whole


def run(args: argparse.Namespace) -> int:
    out = Output.from_args(args, "prepare")
    data = _data_config(args)
    workers = args.workers if args.workers > 0 else min(8, os.cpu_count() or 1)
    out.emit("start", command="prepare", dataset=data.dataset, root=data.root, size=data.image_size)
    if out.json:
        with out.bar(f"prepare {data.dataset} {data.image_size}px", 0) as bar:
            result = prepare(data, workers=workers, progress=lambda done, total: bar.update(done, total))
    else:
        result = prepare(data, workers=workers, progress=out.shows_progress)
    m = result.manifest
    if out.json:
        out.emit("done", command="prepare", dataset=data.dataset, cache=str(result.path), built=result.built,
                 reason=result.reason, num_images=m["num_images"], image_size=data.image_size,
                 class_names=m["class_names"], class_counts=m["class_counts"], seconds=result.seconds,
                 notes=list(result.notes), skipped=len(result.skipped))
        return 0
    classes = ", ".join(f"{c} {n}" for c, n in zip(m["class_names"], m["class_counts"]))
    if result.built:
        how = (f"built in {m['build_seconds']:.1f} s ({m['images_per_s']:.1f} images/s, {workers} worker"
               f"{'s' if workers != 1 else ''}; {result.reason})")
    else:
        how = (f"reused the valid cache built {m['created']} (checked in {result.seconds:.2f} s; "
               f"its build ran at {m['images_per_s']:.1f} images/s)")
    skipped = f", skipped {len(result.skipped)} (see skipped.csv)" if result.skipped else ""
    print(f"fgssl prepare: {data.dataset}: {m['num_images']} images of {data.image_size} px{skipped}, "
          f"{len(m['class_names'])} classes ({classes}); {how}; cache: {result.path}")
    for note in result.notes:
        print(f"note: {note}")
    for s in result.skipped[:10]:
        print(f"skipped: {s['reason'] if s['file'] in s['reason'] else s['file'] + ': ' + s['reason']}")
    if len(result.skipped) > 10:
        print(f"skipped: ... {len(result.skipped) - 10} more in {result.path / 'skipped.csv'}")
    return 0
