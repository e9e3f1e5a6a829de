"""The class names a data config implies without reading any file.

A federation's server holds no images, yet it must build the model (its classifier width) and label the metrics;
each hospital node checks that its own data has exactly these classes before it trains.
"""

from __future__ import annotations

from ..config import DataConfig
from . import synthetic
from .errors import DataError
from .official import APTOS2019_CLASSES, ISIC2017_CLASSES, ISIC2018_CLASSES

FIXED_CLASSES: dict[str, tuple[str, ...]] = {
    "isic2018": ISIC2018_CLASSES,
    "isic2017": ISIC2017_CLASSES,
    "aptos2019": APTOS2019_CLASSES,
}


def class_names_of(cfg: DataConfig) -> tuple[str, ...]:
    """Class names of `cfg`'s dataset; `folder` data must list them in ``data.class_names``."""
    if cfg.dataset == "synthetic":
        return tuple(synthetic.class_names(cfg.num_classes))
    if cfg.dataset in FIXED_CLASSES:
        return FIXED_CLASSES[cfg.dataset]
    if cfg.dataset == "medmnist":  # the subset, named by the file
        from .medmnist import class_names_for
        return class_names_for(str(cfg.root))  # a validated config has one
    if not cfg.class_names:
        raise DataError("a federation on 'folder' data needs data.class_names in its config: the server reads no "
                        "CSV, and every hospital's labels must map to the same classifier outputs",
                        "data.class_names")
    return tuple(cfg.class_names)
