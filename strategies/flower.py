"""Thin conversions between Flower records and this project's named arrays / plain dicts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

NamedArrays = dict[str, np.ndarray]


def to_record(named: NamedArrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in named.items()})


def from_record(record: ArrayRecord) -> NamedArrays:
    return {k: a.numpy() for k, a in record.items()}


def to_config(values: dict[str, Any]) -> ConfigRecord:
    """Scalars go in as they are; anything nested (metric dicts, lists of lists) as a JSON string under 'json:<key>'."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, (bool, int, float, str, bytes)):
            out[k] = v
        else:
            out[f"json:{k}"] = json.dumps(v)
    return ConfigRecord(out)


def from_config(record: ConfigRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in record.items():
        if k.startswith("json:"):
            out[k[5:]] = json.loads(v)
        else:
            out[k] = v
    return out
