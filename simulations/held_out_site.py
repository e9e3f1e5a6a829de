"""Hold one acquisition site of HAM10000 out of the federation as the public source of pretraining.

DP-SGD needs a feature extractor trained on PUBLIC images: images disjoint from every site's images and lesions, so
that the weights carry nothing about the patients the ε protects. On HAM10000 one acquisition site can be that public
source when no lesion of it has images at another site (rosendahl and vienna_dias qualify; 9 lesions have images at
both vidir_molemax and vidir_modern). This writes two folder data sets over the official layout (no image is
copied): `public.csv` (the held-out site) and `federation.csv` (the other sites, with their site in a column for
`partition.method: natural`). Being two data sets with no image in common, each has its own data ledger and content
key: training the public one without DP leaves the federation's lifetime ε finite, and its weights pass the
provenance check of a DP run on the other (fgssl.privacy.provenance).

    python -m simulations.held_out_site --root ../shared/realdata/isic2018_task3_full --public rosendahl \
        --out runs/ham10000-held-out
    fgssl train --config simulations/configs/ham10000_public.yaml --out runs/ham10000-public
    fgssl simulate --config simulations/configs/ham10000_dp.yaml
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from fgssl.config import config_from_dict
from fgssl.data.official import ISIC2018_CLASSES, scan_isic2018

from .partition import cached_sites

COLUMNS = ("image", "label", "lesion", "site")


def split_by_site(root: Path, public: str) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """The rows (image path relative to root, class, lesion, site) of the held-out site and of the others; raises
    ValueError naming the lesions when the held-out site shares a lesion with another site."""
    index = scan_isic2018(root, False)
    # where `partition.method: natural` reads them: HAM10000_metadata.csv's `dataset` column, else the sites table
    sites = cached_sites(config_from_dict({"data": {"dataset": "isic2018", "root": str(root)}}),
                         np.array([r.id for r in index.records]), np.array([r.site for r in index.records]))
    rows = []
    for r, site in zip(index.records, sites):
        if not r.group:
            raise ValueError(f"{r.where}: image {r.id} has no lesion id (HAM10000_metadata.csv), so lesion-disjointness "
                             "cannot be checked")
        rows.append((str(r.path.relative_to(root)), ISIC2018_CLASSES[r.label], r.group, str(site)))
    names = Counter(row[3] for row in rows)
    if public not in names:
        raise ValueError(f"no site {public!r} in {root} (sites: {', '.join(sorted(names))})")
    held = [row for row in rows if row[3] == public]
    rest = [row for row in rows if row[3] != public]
    shared = sorted({row[2] for row in held} & {row[2] for row in rest})
    if shared:
        raise ValueError(f"site {public!r} shares {len(shared)} lesion(s) with other sites (e.g. {shared[0]}): its "
                         "images would not be disjoint from the federation's lesions; hold out another site")
    return held, rest


def write_rows(path: Path, rows: list[tuple[str, ...]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(rows)


CONFIGS = Path(__file__).parent / "configs"


def write_configs(out: Path, root: Path) -> tuple[Path, Path]:
    """`ham10000_public.yaml` and `ham10000_dp.yaml` as `out/public.yaml` and `out/dp.yaml`, pointing at the two CSVs,
    the images and the public run's weights (out/public) by absolute paths."""
    import yaml

    written = []
    for name, csv_name, target in (("ham10000_public.yaml", "public.csv", "public.yaml"),
                                   ("ham10000_dp.yaml", "federation.csv", "dp.yaml")):
        cfg = yaml.safe_load((CONFIGS / name).read_text(encoding="utf-8"))
        cfg["data"].update(root=str(root), csv=str((out / csv_name).resolve()))
        if "weights" in cfg.get("model", {}):
            cfg["model"]["weights"] = str((out / "public" / "model.safetensors").resolve())
        path = out / target
        path.write_text(f"# written by python -m simulations.held_out_site from simulations/configs/{name}\n"
                        + yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        written.append(path)
    return written[0], written[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="the ISIC 2018 Task 3 training set, official layout")
    ap.add_argument("--public", default="rosendahl", help="the acquisition site to hold out (default: rosendahl)")
    ap.add_argument("--out", type=Path, default=Path("runs/ham10000-held-out"), help="where the two CSVs go")
    args = ap.parse_args(argv)
    try:
        held, rest = split_by_site(args.root.resolve(), args.public)
    except (OSError, ValueError) as e:
        print(f"held_out_site: {e}", file=sys.stderr)
        return 2
    write_rows(args.out / "public.csv", held)
    write_rows(args.out / "federation.csv", rest)
    public_cfg, dp_cfg = write_configs(args.out, args.root.resolve())
    counts = Counter(row[3] for row in rest)
    print(f"public.csv: {len(held)} images of {args.public} ({len({r[2] for r in held})} lesions); federation.csv: "
          f"{len(rest)} images of {len(counts)} sites ({', '.join(f'{s} {n}' for s, n in counts.most_common())}); "
          f"no lesion in both; in {args.out}\nnext: fgssl train --config {public_cfg} --out {args.out / 'public'}\n"
          f"then: fgssl simulate --config {dp_cfg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
