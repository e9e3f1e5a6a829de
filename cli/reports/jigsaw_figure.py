"""What the model's blocks are trained on: a few of a run's images and their jigsaw views at each block's
granularity (model.granularities), drawn with fgssl.jigsaw itself.

The images are those of the run: synthetic ones are regenerated from config.yaml (a pure function of seed and
index, with the holding site's acquisition shift); a real data set's are read from its prepared cache, which is
never built here. When neither works, `ViewsUnavailable` says why, and the report says that instead of drawing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

JIGSAW_FIGSIZE = (8.0, 8.6)  # 800 x 860 px at plots.REPORT_DPI
ROWS = 4
CANDIDATES_PER_SITE = 64  # enough to find distinct classes without reading a site's whole share


class ViewsUnavailable(Exception):
    """The run's images cannot be loaded; the message says why, for the report."""


@dataclass
class Examples:
    images: np.ndarray  # (N, 3, H, W) uint8
    captions: list[str]
    granularities: tuple[int, ...]
    seed: int
    source: str  # where the images came from, in words


def _picks(partition: dict[str, Any] | None, labels_of, n_pool: int) -> list[tuple[int | None, int]]:
    """(site, pool index) of up to ROWS images: the sites in turn, preferring classes not shown yet."""
    if partition and partition.get("sites"):
        pools = [(int(s["site"]), [int(i) for i in s.get("indices", [])[:CANDIDATES_PER_SITE]])
                 for s in partition["sites"]]
    else:
        pools = [(None, list(range(min(n_pool, CANDIDATES_PER_SITE * ROWS))))]
    pools = [(site, idx) for site, idx in pools if idx]
    if not pools:
        return []
    labels = {i: int(l) for _, idx in pools for i, l in zip(idx, labels_of(np.asarray(idx, dtype=np.int64)))}
    picks: list[tuple[int | None, int]] = []
    shown: set[int] = set()
    for j in range(ROWS * len(pools)):
        if len(picks) == ROWS:
            break
        site, idx = pools[j % len(pools)]
        free = [i for i in idx if (site, i) not in picks]
        if not free:
            continue
        new_class = [i for i in free if labels[i] not in shown]
        pick = (new_class or free)[0]
        picks.append((site, pick))
        shown.add(labels[pick])
    return picks


def load_examples(run_path: Path, partition: dict[str, Any] | None) -> Examples:
    """A few images of the run, as their sites see them. Raises ViewsUnavailable with the reason."""
    from fgssl.config import ConfigError, load_config
    from fgssl.rundir import CONFIG

    cfg_path = run_path / CONFIG
    if not cfg_path.is_file():
        raise ViewsUnavailable(f"{cfg_path} not found, so the run's images cannot be regenerated")
    try:
        cfg = load_config(cfg_path)
    except ConfigError as e:
        raise ViewsUnavailable(f"{cfg_path} does not load ({e})") from None
    data = cfg.data
    if data.dataset == "synthetic":
        from fgssl.data import synthetic

        picks = _picks(partition, lambda idx: synthetic.labels_for(idx, cfg.seed, data.num_classes),
                       data.num_samples)
        names = synthetic.class_names(data.num_classes)
        images, captions = [], []
        for site, i in picks:
            img, lab = synthetic.generate(np.array([i]), cfg.seed, data.image_size, data.num_classes,
                                          site=site, site_shift=data.site_shift)
            images.append(img[0])
            captions.append(_caption(site, i, names[int(lab[0])]))
        source = f"synthetic images regenerated from config.yaml (seed {cfg.seed})"
    else:
        images, captions, source = _cached_images(cfg, partition)
    if not images:
        raise ViewsUnavailable("the partition holds no images")
    return Examples(np.stack(images), captions, tuple(cfg.model.granularities), cfg.seed, source)


def _caption(site: int | None, index: int, name: str) -> str:
    return (f"site {site}\n" if site is not None else "") + f"image {index}\n{name}"


def _cached_images(cfg, partition: dict[str, Any] | None) -> tuple[list[np.ndarray], list[str], str]:
    from fgssl.data.cache import cache_path, load_cache
    from fgssl.data.errors import DataError

    data = cfg.data
    try:
        path = cache_path(data)
    except DataError as e:
        raise ViewsUnavailable(str(e)) from None
    if not (path / "manifest.json").is_file():
        root = Path(str(data.root))
        why = f"data.root {root} does not exist" if not root.exists() else f"there is no prepared cache at {path}"
        raise ViewsUnavailable(f"the {data.dataset} images are not available here: {why} "
                               f"(`fgssl prepare --dataset {data.dataset} --root DIR` builds the cache)")
    try:
        cache = load_cache(path)
    except DataError as e:
        raise ViewsUnavailable(str(e)) from None
    n = len(cache.labels)
    if partition and any(int(i) >= n for s in partition.get("sites", []) for i in s.get("indices", [])[:1]):
        raise ViewsUnavailable(f"the cache {path} holds fewer images than the run's partition.json indexes "
                               "(rebuilt since the run?)")
    picks = _picks(partition, lambda idx: np.asarray(cache.labels)[idx], n)
    names = list(cache.manifest.get("class_names", []))
    images, captions = [], []
    for site, i in picks:
        img = np.ascontiguousarray(cache.images[i: i + 1])
        if site is not None and data.site_shift > 0:
            from simulations.shift import apply_site_shift
            img = apply_site_shift(img, site, data.site_shift, cfg.seed)
        label = int(cache.labels[i])
        images.append(img[0])
        captions.append(_caption(site, i, names[label] if label < len(names) else str(label)))
    return images, captions, f"read from the prepared cache {path}"


def save_jigsaw_views(path: Path, ex: Examples, title: str) -> Path:
    """One row per image: the image, then its jigsaw view J_n for each block's n, tile grid drawn in white."""
    import torch

    from fgssl.jigsaw import jigsaw

    from cli.reports.plots import REPORT_DPI, save_figure  # matplotlib only when drawing
    import matplotlib.pyplot as plt

    x = torch.from_numpy(ex.images)
    gen = torch.Generator().manual_seed(ex.seed)
    views = [jigsaw(x, n, generator=gen)[0].numpy() for n in ex.granularities]
    h, w = ex.images.shape[-2:]
    cols = 1 + len(views)
    fig, axes = plt.subplots(ROWS, cols, figsize=JIGSAW_FIGSIZE, dpi=REPORT_DPI, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    axes[0, 0].set_title("original\n(as its site sees it)", fontsize=9)
    for c, n in enumerate(ex.granularities, 1):
        th, tw = h // n, w // n
        block = f"block {c} (layer{c + 1})"
        axes[0, c].set_title(f"{block}\n{n}×{n} tiles of {th}×{tw} px" if n > 1
                             else f"{block}\nn = 1: not shuffled", fontsize=9)
    for r in range(min(ROWS, len(ex.images))):
        axes[r, 0].imshow(ex.images[r].transpose(1, 2, 0), interpolation="nearest")
        axes[r, 0].set_ylabel(ex.captions[r], rotation=0, ha="right", va="center", fontsize=8)
        for c, (n, view) in enumerate(zip(ex.granularities, views), 1):
            ax = axes[r, c]
            ax.imshow(view[r].transpose(1, 2, 0), interpolation="nearest")
            th, tw = h // n, w // n
            for k in range(1, n):  # tile borders over the shuffled n*th x n*tw core (a leftover border stays put)
                ax.plot([-0.5, n * tw - 0.5], [k * th - 0.5] * 2, color="white", linewidth=0.7, alpha=0.85)
                ax.plot([k * tw - 0.5] * 2, [-0.5, n * th - 0.5], color="white", linewidth=0.7, alpha=0.85)
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
