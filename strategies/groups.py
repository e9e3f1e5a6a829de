"""Named parameter groups: which keys a phase trains and which stay local.

Key lists keep the original order of ``all_keys`` (the model's ``state_dict``
order), so that every party iterating them sees the same, deterministic order.
"""

from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase

import numpy as np

NamedArrays = dict[str, np.ndarray]

# The pattern `norm` in federation.local_groups stands for every normalisation layer of fgssl.model.FGSSLNet (weights,
# biases and running statistics): FedBN. Its layers are named by torchvision's ResNet (bn1, bn2, downsample.1) and by
# the method's own modules (each hierarchical block's conv.<i>.1, each embedding head's net.0 and net.2), which a
# glob like "*bn*" alone misses; tests/test_aggregation.py checks these against the modules of built models.
NORM = "norm"
NORM_PATTERNS = ("*.bn*", "*.downsample.1.*", "blocks.*.conv.*.1.*", "heads.*.net.0.*", "heads.*.net.2.*")


def expand(patterns: Sequence[str]) -> list[str]:
    """`patterns` with the alias `norm` replaced by NORM_PATTERNS."""
    return [q for p in patterns for q in (NORM_PATTERNS if p == NORM else (p,))]


def _check_patterns(patterns: Sequence[str]) -> None:
    # A bare string would be iterated character by character and match nearly everything.
    if isinstance(patterns, str):
        raise TypeError(f"patterns must be a sequence of strings, not the string {patterns!r}")


def keys_matching(all_keys: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """Keys matching any fnmatch-style pattern (case-sensitive; `norm`: every normalisation layer), in original order.

    ``*`` also matches dots, so ``"*.bn*"`` matches ``"backbone.layer1.0.bn1.weight"``.
    """
    _check_patterns(patterns)
    globs = expand(patterns)
    return [k for k in all_keys if any(fnmatchcase(k, p) for p in globs)]


def shared_keys(
    all_keys: Iterable[str],
    trainable_patterns: Sequence[str],
    local_patterns: Sequence[str],
) -> list[str]:
    """Keys the phase trained minus those that stay local to each site, in original order."""
    _check_patterns(local_patterns)
    keys = list(all_keys)
    local = set(keys_matching(keys, local_patterns))
    return [k for k in keys_matching(keys, trainable_patterns) if k not in local]


def select(named: Mapping[str, np.ndarray], keys: Iterable[str]) -> NamedArrays:
    """The sub-dict of ``named`` for ``keys`` (in the order of ``keys``)."""
    missing = [k for k in keys if k not in named]
    if missing:
        raise KeyError(f"not in the named arrays: {', '.join(missing)}")
    return {k: named[k] for k in keys}


def tag_by_site(groups: Mapping[int | str, NamedArrays]) -> NamedArrays:
    """Several sites' arrays under one set of names, ``site<k>/<key>``, for a message that carries them all (model
    keys never hold a slash)."""
    return {f"site{site}/{k}": v for site, arrays in groups.items() for k, v in arrays.items()}


def split_by_site(named: Mapping[str, np.ndarray]) -> tuple[NamedArrays, dict[str, NamedArrays]]:
    """The inverse of ``tag_by_site``: (the untagged arrays, site id -> that site's arrays under their own keys)."""
    shared: NamedArrays = {}
    by_site: dict[str, NamedArrays] = {}
    for name, v in named.items():
        owner, slash, key = name.partition("/")
        if slash and owner.startswith("site"):
            by_site.setdefault(owner[len("site"):], {})[key] = v
        else:
            shared[name] = v
    return shared, by_site
