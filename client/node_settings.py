"""A SuperNode's own settings as Flower's --node-config carries them (no torch here: `fgssl node` imports it).

`fgssl node` turns its flags into `NodeSettings.to_node_config()`; every ClientApp process of that node reads them
back with `NodeSettings.from_node_config(context.node_config)`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from fgssl.config import DATASETS, ConfigError

# Node-config keys (Flower's convention for the site index is `partition-id`).
SITE_KEY = "partition-id"
DATASET_KEY = "dataset"


class NodeConfigError(ConfigError):
    """A SuperNode's --node-config value is missing or wrong; the message names the key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        ValueError.__init__(self, f"node config '{key}': {message}")


@dataclass(frozen=True)
class NodeSettings:
    """What one hospital node contributes to a run (everything else comes from the federation's config)."""

    site: int
    dataset: str
    state_dir: Path
    root: Path | None = None
    max_epsilon: float | None = None
    delta: float | None = None
    csv: str | None = None
    path_column: str | None = None
    label_column: str | None = None
    group_column: str | None = None
    skip_bad_images: bool = False
    # The node's data set changed since its state directory was first used (images added, removed, relabelled): its
    # ledger then takes the new data set's key and keeps counting (fgssl.privacy.data_ledger.check_node_data).
    data_changed: bool = False

    def __post_init__(self) -> None:
        if self.site < 0:
            raise NodeConfigError(SITE_KEY, f"the site id must be >= 0, got {self.site}")
        if self.dataset not in DATASETS:
            raise NodeConfigError(DATASET_KEY, f"unknown dataset '{self.dataset}'; choose from: {', '.join(DATASETS)}")
        if self.dataset != "synthetic" and self.root is None:
            raise NodeConfigError("data-root", f"dataset '{self.dataset}' needs the folder it was downloaded to")
        if self.dataset == "folder" and not self.csv:
            raise NodeConfigError("data-csv", "dataset 'folder' needs the CSV of image paths and labels")
        if self.max_epsilon is not None and not (self.max_epsilon > 0 and math.isfinite(self.max_epsilon)):
            raise NodeConfigError("max-epsilon", f"must be a positive number, got {self.max_epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise NodeConfigError("delta", f"must be in (0, 1), got {self.delta}")
        for p, key in ((self.state_dir, "state-dir"), (self.root, "data-root")):
            if p is not None and not p.is_absolute():
                # ClientApp processes do not run in the directory the node was started from.
                raise NodeConfigError(key, f"must be an absolute path, got '{p}'")

    def to_node_config(self) -> dict[str, str | int | float | bool]:
        """The flat values Flower's --node-config carries (None values are left out)."""
        out: dict[str, str | int | float | bool] = {SITE_KEY: self.site, DATASET_KEY: self.dataset,
                                                    "state-dir": str(self.state_dir)}
        for name, value in asdict(self).items():
            if name in ("site", "dataset", "state_dir") or value is None or value is False:
                continue
            out[_KEY_OF[name]] = str(value) if isinstance(value, Path) else value
        return out

    @classmethod
    def from_node_config(cls, values: Mapping[str, Any]) -> "NodeSettings":
        def text(key: str) -> str | None:
            v = values.get(key)
            if v is None or v == "":
                return None
            if not isinstance(v, str):
                raise NodeConfigError(key, f"expected text, got {v!r}")
            return v

        def number(key: str) -> float | None:
            v = values.get(key)
            if v is None or v == "":
                return None
            try:
                return float(v)
            except (TypeError, ValueError):
                raise NodeConfigError(key, f"expected a number, got {v!r}") from None

        for key in (SITE_KEY, DATASET_KEY, "state-dir"):
            if key not in values:
                raise NodeConfigError(key, "missing (start the SuperNode with `fgssl node`, which sets it)")
        try:
            site = int(values[SITE_KEY])
        except (TypeError, ValueError):
            raise NodeConfigError(SITE_KEY, f"expected a whole number, got {values[SITE_KEY]!r}") from None
        root = text("data-root")
        return cls(site=site, dataset=str(text(DATASET_KEY)), state_dir=Path(str(text("state-dir"))),
                   root=Path(root) if root else None, max_epsilon=number("max-epsilon"), delta=number("delta"),
                   csv=text("data-csv"),
                   path_column=text("data-path-column"), label_column=text("data-label-column"),
                   group_column=text("data-group-column"), skip_bad_images=bool(values.get("skip-bad-images", False)),
                   data_changed=bool(values.get("data-changed", False)))


_KEY_OF = {"root": "data-root", "max_epsilon": "max-epsilon", "delta": "delta", "csv": "data-csv",
           "path_column": "data-path-column", "label_column": "data-label-column", "group_column": "data-group-column",
           "skip_bad_images": "skip-bad-images", "data_changed": "data-changed"}


def is_deployed(node_config: Mapping[str, Any]) -> bool:
    """A SuperNode started by `fgssl node` names its dataset; a simulated or plain SuperNode does not."""
    return DATASET_KEY in node_config
