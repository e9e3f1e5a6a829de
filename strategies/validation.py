"""Checks an update from one site before it is aggregated."""

import math
from dataclasses import dataclass

import numpy as np

_MAX_LISTED = 3  # keys named in a reason before "(+N more)"


@dataclass(frozen=True)
class UpdateBounds:
    """Limits on one site's update; ``None`` switches a check off.

    max_update_norm: L2 norm of (update - reference) over all floating-point keys jointly.
    max_abs_value: largest allowed absolute value of any floating-point entry.
    norm_exempt: keys left out of the norm (running statistics, e.g. BatchNorm's running_var,
        legitimately move far in one round; they are still checked for shape, dtype and NaN).
    """

    max_update_norm: float | None = None
    max_abs_value: float | None = None
    norm_exempt: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name in ("max_update_norm", "max_abs_value"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value}")


def is_float(array: np.ndarray) -> bool:
    """Whether the array holds floating-point values (counters like num_batches_tracked do not)."""
    return np.issubdtype(array.dtype, np.floating)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" (+{more} more)" if more > 0 else "")


def validate_update(
    update: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    bounds: UpdateBounds | None = None,
) -> str | None:
    """None if ``update`` fits ``reference`` and ``bounds``, else a short reason naming the key.

    ``reference`` holds exactly the keys the site was asked to train (the global values).
    Integer arrays are checked for keys, shape and dtype only: they are counters, not weights,
    so they take no part in the norm and value bounds.
    """
    bounds = bounds or UpdateBounds()
    missing = [k for k in reference if k not in update]
    if missing:
        return f"missing key(s): {_listed(missing)}"
    extra = [k for k in update if k not in reference]
    if extra:
        return f"unexpected key(s): {_listed(extra)}"

    sq_norm, top_key, top_sq = 0.0, "", -1.0
    for key, ref in reference.items():
        value = update[key]
        if not isinstance(value, np.ndarray):
            return f"key {key!r}: expected a numpy array, got {type(value).__name__}"
        if value.shape != ref.shape:
            return f"key {key!r}: wrong shape, expected {ref.shape}, got {value.shape}"
        if value.dtype != ref.dtype:
            return f"key {key!r}: wrong dtype, expected {ref.dtype}, got {value.dtype}"
        if not is_float(value):
            continue
        bad = value.size - int(np.count_nonzero(np.isfinite(value)))
        if bad:
            return f"key {key!r}: {bad} non-finite value(s) (NaN/inf)"
        if bounds.max_abs_value is not None and value.size:
            biggest = float(np.max(np.abs(value)))
            if biggest > bounds.max_abs_value:
                limit = bounds.max_abs_value
                return f"key {key!r}: |value| {biggest:.4g} exceeds bound {limit:.4g}"
        if bounds.max_update_norm is not None and key not in bounds.norm_exempt:
            delta = value.astype(np.float64) - ref.astype(np.float64)
            key_sq = float(np.dot(delta.ravel(), delta.ravel()))
            sq_norm += key_sq
            if key_sq > top_sq:
                top_key, top_sq = key, key_sq

    if bounds.max_update_norm is not None:
        norm = math.sqrt(sq_norm)
        if norm > bounds.max_update_norm:
            return (
                f"update norm {norm:.4g} exceeds bound {bounds.max_update_norm:.4g} "
                f"(largest change in key {top_key!r})"
            )
    return None
