"""What a site may send back, checked before anything large is decoded: arrays against the model, metrics by type.

A broken or hostile node can put anything in a reply: an array of another shape or dtype, a billion-entry array,
a metric that is a 1 GB string or a deeply nested structure, records nobody asked for. Every such reply is refused
with a reason (the coordinator names the site and drops it like any bad update); nothing of it reaches the
aggregate, `metrics.jsonl` or the report. Pure Python over descriptions of the payload, so it is testable without
Flower; strategies/flower.py feeds it the records' metadata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

NPY_HEADER_SLACK = 4096  # bytes an array's serialised form may hold beyond its values (the .npy header)


class RejectedReply(ValueError):
    """A reply that does not fit what the round asked for; the message says what and where."""


@dataclass(frozen=True)
class ArraySpec:
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)


def _itemsize(dtype: str) -> int:
    digits = "".join(c for c in dtype if c.isdigit())
    return max(1, int(digits) // 8) if digits else 1  # float32 -> 4, int64 -> 8, bool -> 1


@dataclass(frozen=True)
class ReplyBounds:
    """Limits on one reply's metrics; arrays are bounded by the round's expected specs."""

    max_metric_keys: int = 64
    max_key_chars: int = 80
    max_string_chars: int = 1000
    max_json_chars: int = 256 * 1024  # a K x K confusion matrix and per-class figures fit easily
    max_depth: int = 4
    max_items: int = 20_000  # leaves in one decoded structure


def check_array_meta(meta: dict[str, tuple[tuple[int, ...], str, int]], expected: dict[str, ArraySpec]) -> None:
    """`meta`: key -> (shape, dtype, serialised bytes) as declared by the reply. Raises RejectedReply."""
    unknown = sorted(set(meta) - set(expected))
    if unknown:
        raise RejectedReply(f"unexpected array {unknown[0]!r}" + (f" (+{len(unknown) - 1} more)" if len(unknown) > 1
                                                                    else "") + ": the round did not ask for it")
    for key, (shape, dtype, size) in meta.items():
        want = expected[key]
        if tuple(shape) != want.shape:
            raise RejectedReply(f"array {key!r} has shape {tuple(shape)}, the model's is {want.shape}")
        if str(dtype) != want.dtype:
            raise RejectedReply(f"array {key!r} has dtype {dtype}, the model's is {want.dtype}")
        if size > want.nbytes + NPY_HEADER_SLACK:
            raise RejectedReply(f"array {key!r} carries {size} bytes for {want.nbytes} bytes of values")


def check_metric_value(key: str, value: Any, bounds: ReplyBounds) -> None:
    """A scalar metric as it arrives (before any JSON decoding). Raises RejectedReply."""
    if len(key) > bounds.max_key_chars:
        raise RejectedReply(f"metric name of {len(key)} characters (at most {bounds.max_key_chars})")
    limit = bounds.max_json_chars if key.startswith("json:") else bounds.max_string_chars
    if isinstance(value, (str, bytes)):
        if len(value) > limit:
            raise RejectedReply(f"metric {key!r} is {len(value)} characters long (at most {limit})")
    elif isinstance(value, list):
        if len(value) > bounds.max_items:
            raise RejectedReply(f"metric {key!r} is a list of {len(value)} values (at most {bounds.max_items})")
        for v in value:
            check_metric_value(key, v, bounds)
    elif not isinstance(value, (bool, int, float)) and value is not None:
        raise RejectedReply(f"metric {key!r} has type {type(value).__name__}")


def check_decoded(key: str, value: Any, bounds: ReplyBounds, depth: int = 0, count: list[int] | None = None) -> None:
    """A decoded JSON metric (e.g. a confusion matrix): bounded depth and size, numbers and short strings only."""
    count = [0] if count is None else count
    count[0] += 1
    if count[0] > bounds.max_items:
        raise RejectedReply(f"metric {key!r} holds more than {bounds.max_items} values")
    if depth > bounds.max_depth:
        raise RejectedReply(f"metric {key!r} is nested deeper than {bounds.max_depth} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if len(k) > bounds.max_key_chars:
                raise RejectedReply(f"metric {key!r} has a key of {len(k)} characters")
            check_decoded(key, v, bounds, depth + 1, count)
    elif isinstance(value, list):
        for v in value:
            check_decoded(key, v, bounds, depth + 1, count)
    elif isinstance(value, str):
        if len(value) > bounds.max_string_chars:
            raise RejectedReply(f"metric {key!r} holds a string of {len(value)} characters")
    elif not isinstance(value, (bool, int, float)) and value is not None:
        raise RejectedReply(f"metric {key!r} holds a {type(value).__name__}")


def check_metric_count(keys: list[str], bounds: ReplyBounds) -> None:
    if len(keys) > bounds.max_metric_keys:
        raise RejectedReply(f"{len(keys)} metrics (at most {bounds.max_metric_keys})")


def error_line(error: str) -> str:
    """The line of a node's error that says what happened: a traceback's last, without the wording Flower wraps a
    ClientApp's exception in."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last.rpartition("Message: ")[2].rstrip("'>\"") if "ClientAppException" in last else last
