"""Aggregation of site updates over named arrays (no Flower import).

Every site sends full trained values (not deltas) for the same keys; updates are
assumed validated already (see ``validation.validate_update``). Float math is done in
float64 and cast back to the arrays' own dtype. Integer arrays (BatchNorm's
``num_batches_tracked``) are counters: they get the example-weighted mean rounded to
the nearest integer in every method, and are never clipped or trimmed.
"""

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strategies.validation import is_float

NamedArrays = dict[str, np.ndarray]


@dataclass
class SiteUpdate:
    """One site's reply: trained values for the keys it was asked to train."""

    site: str
    arrays: NamedArrays
    num_examples: int
    metrics: dict = field(default_factory=dict)


def _check(updates: Sequence[SiteUpdate]) -> list[str]:
    """The common keys (first site's order); rejects empty input, bad weights, key mismatch."""
    if not updates:
        raise ValueError("no updates to aggregate")
    keys = list(updates[0].arrays)
    for u in updates:
        if u.num_examples < 0:
            raise ValueError(f"site {u.site!r}: negative num_examples {u.num_examples}")
        if set(u.arrays) != set(keys):
            raise ValueError(f"site {u.site!r}: keys differ from site {updates[0].site!r}")
    if sum(u.num_examples for u in updates) <= 0:
        raise ValueError("total num_examples is 0: cannot weight the updates")
    return keys


def _weights(updates: Sequence[SiteUpdate]) -> np.ndarray:
    counts = np.array([u.num_examples for u in updates], dtype=np.float64)
    return counts / counts.sum()


def _cast(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    # Rounding first: a plain astype would truncate 2.9 to 2 for counters.
    if not np.issubdtype(dtype, np.floating):
        value = np.rint(value)
    return value.astype(dtype)


def _weighted_sum(arrays: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    total = np.zeros(arrays[0].shape, dtype=np.float64)
    for a, w in zip(arrays, weights, strict=True):
        total += w * a.astype(np.float64)
    return total


def weighted_mean(updates: Sequence[SiteUpdate]) -> NamedArrays:
    """Example-weighted mean of the sites' values (FedAvg)."""
    keys = _check(updates)
    w = _weights(updates)
    out = {}
    for key in keys:
        arrays = [u.arrays[key] for u in updates]
        out[key] = _cast(_weighted_sum(arrays, w), arrays[0].dtype)
    return out


def norm_bounded_mean(
    updates: Sequence[SiteUpdate], reference: NamedArrays, max_norm: float,
    exempt: Collection[str] = (),
) -> NamedArrays:
    """Clip each site's delta (over its float keys jointly) to ``max_norm``, then FedAvg the deltas.

    The result is a convex combination of clipped deltas, so it lies within ``max_norm``
    of ``reference`` whatever any single site sends. ``exempt`` keys (running statistics such
    as BatchNorm's, whose scale is not a learning step) are averaged without clipping.
    """
    if not max_norm >= 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    keys = _check(updates)
    exempt = set(exempt)
    float_keys = [k for k in keys if is_float(reference[k]) and k not in exempt]
    w = _weights(updates)
    total = {k: np.zeros(reference[k].shape, dtype=np.float64) for k in float_keys}
    for u, weight in zip(updates, w, strict=True):
        delta = {
            k: u.arrays[k].astype(np.float64) - reference[k].astype(np.float64) for k in float_keys
        }
        norm = math.sqrt(sum(float(np.dot(d.ravel(), d.ravel())) for d in delta.values()))
        scale = 1.0 if norm <= max_norm else max_norm / norm
        for k in float_keys:
            total[k] += (weight * scale) * delta[k]
    out = {}
    for key in keys:
        if key in total:
            out[key] = _cast(reference[key].astype(np.float64) + total[key], reference[key].dtype)
        else:
            counters = _weighted_sum([u.arrays[key] for u in updates], w)
            out[key] = _cast(counters, reference[key].dtype)
    return out


def trimmed_mean(
    updates: Sequence[SiteUpdate], reference: NamedArrays, trim_fraction: float
) -> NamedArrays:
    """Coordinate-wise trimmed mean over sites.

    Per coordinate, drops the floor(trim_fraction * n) largest and smallest values and
    averages the rest, unweighted (a hostile site could otherwise claim many examples).
    ``reference`` gives the output dtypes.
    """
    if not 0 <= trim_fraction < 1:
        raise ValueError(f"trim_fraction must be in [0, 1), got {trim_fraction}")
    keys = _check(updates)
    n = len(updates)
    cut = math.floor(trim_fraction * n)
    if n - 2 * cut < 1:
        raise ValueError(
            f"trim_fraction {trim_fraction} drops all {n} updates ({cut} from each end)"
        )
    w = _weights(updates)
    out = {}
    for key in keys:
        arrays = [u.arrays[key] for u in updates]
        if is_float(reference[key]):
            stacked = np.sort(np.stack([a.astype(np.float64) for a in arrays]), axis=0)
            value = stacked[cut : n - cut].mean(axis=0)
        else:
            value = _weighted_sum(arrays, w)
        out[key] = _cast(value, reference[key].dtype)
    return out


def aggregate(
    updates: Sequence[SiteUpdate], reference: NamedArrays, method: str, **params: Any
) -> NamedArrays:
    """Aggregate with ``method``.

    "fedavg" (no params), "norm_bounded" (``max_norm``) or "trimmed_mean" (``trim_fraction``).
    """
    if method == "fedavg":
        return weighted_mean(updates, **params)
    if method == "norm_bounded":
        return norm_bounded_mean(updates, reference, **params)
    if method == "trimmed_mean":
        return trimmed_mean(updates, reference, **params)
    raise ValueError(
        f"unknown aggregation method {method!r}; expected one of {', '.join(AGGREGATION_METHODS)}"
    )


AGGREGATION_METHODS = ("fedavg", "norm_bounded", "trimmed_mean")
