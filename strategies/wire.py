"""The compact upload of a site's update: its change from the sent weights in float16, scaled per tensor.

A site's reply is a change of the weights it was sent, and both ends hold those weights bit for bit, so only the
change needs to travel. Each float tensor's change is divided by its own scale (its largest magnitude / 2**15, kept
in float32) and rounded to float16; the tensors go into one flat array, and the integer ones (BatchNorm's batch
counters) as they are into one int64 array, so a reply carries three array headers instead of one per tensor
(worth it from about ten tensors; the model has over a hundred). The decoded value
differs from the trained one by at most 2**-11 of that coordinate's change (float16's 11-bit significand) plus
the float32 rounding of adding it back; across the tensor that is at most scale * 2**-9 in absolute terms.

This is post-processing of what a site releases, so its ε is unchanged. Two paths keep float32 values because they
do their own exact arithmetic on them: secure aggregation (its own clipping and integer quantisation before
masking) and client-level DP (Flower's wrapper clips and noises the raw records). `Config.upload_encoding` says
which applies. Pure numpy, so it is testable without Flower.
"""

from __future__ import annotations

import numpy as np

from fgssl.config import UPLOAD_ENCODINGS

from .incoming import ArraySpec

NamedArrays = dict[str, np.ndarray]
DELTA = "update.float16_delta"  # every float tensor's scaled change, in sorted key order, flattened
SCALE = "update.float32_scale"  # one scale per float tensor, same order
COUNTS = "update.int64_values"  # every integer tensor's values, in sorted key order, flattened
ENCODINGS = UPLOAD_ENCODINGS
_RANGE = 2.0 ** 15  # a tensor's largest change maps here: well inside float16's 65504, above its subnormals


def _float_keys(sent: NamedArrays) -> list[str]:
    return sorted(k for k, v in sent.items() if np.issubdtype(np.asarray(v).dtype, np.floating))


def _other_keys(sent: NamedArrays) -> list[str]:
    return sorted(k for k, v in sent.items() if not np.issubdtype(np.asarray(v).dtype, np.floating))


def encode(trained: NamedArrays, sent: NamedArrays) -> NamedArrays | None:
    """The compact form of `trained`, or None where it does not fit `sent` (other keys, shapes or dtypes: such a
    reply goes as it is, and the coordinator's checks name what is wrong with it)."""
    if set(trained) != set(sent) or any(np.shape(trained[k]) != np.shape(sent[k])
                                        or np.asarray(trained[k]).dtype != np.asarray(sent[k]).dtype for k in sent):
        return None
    keys = _float_keys(sent)
    parts, scales = [], np.ones(len(keys), dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # a NaN update stays NaN and is refused
        for i, k in enumerate(keys):
            delta = np.asarray(trained[k], dtype=np.float32).ravel() - np.asarray(sent[k], dtype=np.float32).ravel()
            peak = float(np.max(np.abs(delta))) if delta.size else 0.0
            if peak > 0:
                scales[i] = peak / _RANGE
            parts.append((delta / scales[i]).astype(np.float16))
    others = [np.asarray(trained[k]).astype(np.int64).ravel() for k in _other_keys(sent)]
    return {DELTA: np.concatenate(parts) if parts else np.zeros(0, np.float16), SCALE: scales,
            COUNTS: np.concatenate(others) if others else np.zeros(0, np.int64)}


def is_encoded(arrays: NamedArrays) -> bool:
    return DELTA in arrays


def encoded_specs(sent: dict[str, ArraySpec]) -> dict[str, ArraySpec]:
    """What a compact reply to a request of `sent` holds: the screening of replies checks it before decoding."""
    floats = [k for k in sent if np.issubdtype(np.dtype(sent[k].dtype), np.floating)]
    size = {k: int(np.prod(s.shape)) for k, s in sent.items()}
    return {DELTA: ArraySpec((sum(size[k] for k in floats),), "float16"), SCALE: ArraySpec((len(floats),), "float32"),
            COUNTS: ArraySpec((sum(n for k, n in size.items() if k not in floats),), "int64")}


def decode(arrays: NamedArrays, sent: NamedArrays) -> NamedArrays:
    """The trained values of a compact reply (already screened against `encoded_specs`), in the sent dtypes."""
    keys = _float_keys(sent)
    delta, scales = arrays[DELTA], arrays[SCALE]
    out: NamedArrays = {}
    offset = 0
    for i, k in enumerate(keys):
        ref = np.asarray(sent[k])
        part = delta[offset:offset + ref.size].astype(np.float32) * scales[i]
        out[k] = (ref.astype(np.float32) + part.reshape(ref.shape)).astype(ref.dtype)
        offset += ref.size
    offset = 0
    for k in _other_keys(sent):
        ref = np.asarray(sent[k])
        out[k] = arrays[COUNTS][offset:offset + ref.size].reshape(ref.shape).astype(ref.dtype)
        offset += ref.size
    return {k: out[k] for k in sent}
