"""Thin conversions between Flower records and this project's named arrays / plain dicts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from .incoming import (ArraySpec, RejectedReply, ReplyBounds, check_array_meta, check_decoded, check_metric_count,
                       check_metric_value)
from .wire import DELTA, encoded_specs

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


def array_specs(named: NamedArrays) -> dict[str, ArraySpec]:
    """What a reply may send back for `named` (the arrays the round sent): the same keys, shapes and dtypes."""
    return {k: ArraySpec(tuple(np.shape(v)), str(np.asarray(v).dtype)) for k, v in named.items()}


def uploaded_bytes(content: RecordDict) -> int:
    """The bytes of a reply's arrays as they travel (values and their headers)."""
    return sum(len(a.data) for a in content["arrays"].values()) if "arrays" in content.keys() else 0


def screen_reply(content: RecordDict, expected: dict[str, ArraySpec], bounds: ReplyBounds = ReplyBounds(),
                 compact: bool = False) -> tuple[dict[str, Any], NamedArrays | None]:
    """A site's reply as (metrics, arrays or None), checked before decoding; RejectedReply names what is wrong.

    `compact`: the round asked for the compact upload (strategies/wire.py), so a reply may hold it instead of the
    values of `expected` (a site whose update does not fit it sends the values); the arrays are returned as sent.

    Only an "info" ConfigRecord, a numeric "metrics" MetricRecord (Flower's DP wrapper reads it) and, where arrays
    are expected, an "arrays" ArrayRecord may be present. Array shapes, dtypes and byte counts are read from the
    records' metadata first; JSON metrics are length-checked before json.loads and structure-checked after.
    """
    for name in content.keys():
        if name not in ("info", "arrays", "metrics"):
            raise RejectedReply(f"unexpected record {name[:40]!r} in the reply")
    if "metrics" in content.keys():
        numeric = content["metrics"]
        if not isinstance(numeric, MetricRecord):
            raise RejectedReply("'metrics' is not a metric record")
        check_metric_count(list(numeric.keys()), bounds)
        for k, v in numeric.items():
            if isinstance(v, list) or isinstance(v, bool) or not isinstance(v, (int, float)):
                raise RejectedReply(f"metric record entry {k[:40]!r} is not a number")
    info = content["info"] if "info" in content.keys() else None
    if not isinstance(info, ConfigRecord):
        raise RejectedReply("the reply has no 'info' config record")
    check_metric_count(list(info.keys()), bounds)
    for k, v in info.items():
        check_metric_value(k, v, bounds)  # lengths first: nothing oversized reaches json.loads
    try:
        metrics = from_config(info)
    except (TypeError, ValueError) as e:
        raise RejectedReply(f"a JSON metric is not valid JSON ({e})") from None
    for k in info.keys():
        if k.startswith("json:"):
            check_decoded(k[5:], metrics[k[5:]], bounds)
    arrays = None
    if "arrays" in content.keys():
        record = content["arrays"]
        if not isinstance(record, ArrayRecord):
            raise RejectedReply("'arrays' is not an array record")
        if compact and DELTA in record.keys():
            expected = encoded_specs(expected)
        check_array_meta({k: (tuple(a.shape), str(a.dtype), len(a.data)) for k, a in record.items()}, expected)
        arrays = from_record(record)
    return metrics, arrays
