"""The report's jigsaw views from a real data set's prepared cache (the synthetic case is in test_report.py)."""

import shutil

import numpy as np
import pytest
import yaml

from cli.reports.jigsaw_figure import JIGSAW_FIGSIZE, ViewsUnavailable, load_examples, save_jigsaw_views
from cli.reports.plots import REPORT_DPI
from fgssl.config import config_from_dict
from fgssl.data.cache import cache_path, load_cache, prepare
from simulations.shift import apply_site_shift

from .conftest import TINY, merge
from .test_official_data import make_aptos
from .test_report import png_size


def test_jigsaw_views_from_a_prepared_cache_and_why_not_without_it(tmp_path):
    root = tmp_path / "aptos"
    make_aptos(root)
    raw = merge(TINY, {"data": {"dataset": "aptos2019", "root": str(root), "cache_dir": str(tmp_path / "cache"),
                                "image_size": 32, "site_shift": 1.0}})
    cfg = config_from_dict(raw)
    prepare(cfg.data, progress=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    partition = {"sites": [{"site": 0, "indices": [0, 2, 4, 6, 8]}, {"site": 1, "indices": [1, 3, 5, 7, 9]}]}

    ex = load_examples(run, partition)
    assert ex.images.shape == (4, 3, 32, 32) and ex.images.dtype == np.uint8
    assert [c.split("\n")[0] for c in ex.captions] == ["site 0", "site 1", "site 0", "site 1"]
    assert ex.granularities == (4, 2, 1) and "prepared cache" in ex.source
    # each image as its site sees it: the cached row through that site's simulated camera
    cache = load_cache(cache_path(cfg.data))
    index = int(ex.captions[1].split("\n")[1].split()[1])
    expected = apply_site_shift(np.ascontiguousarray(cache.images[index:index + 1]), 1, 1.0, cfg.seed)[0]
    assert np.array_equal(ex.images[1], expected)

    png = save_jigsaw_views(tmp_path / "jigsaw.png", ex, "test")
    assert png.stat().st_size > 5000
    assert png_size(png) == (round(JIGSAW_FIGSIZE[0] * REPORT_DPI), round(JIGSAW_FIGSIZE[1] * REPORT_DPI))

    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(ViewsUnavailable, match="no prepared cache at .*fgssl prepare"):
        load_examples(run, partition)
