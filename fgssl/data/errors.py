"""The one exception type for bad input data, and the warning category for notes about the data.

`DataError` subclasses `ConfigError` (and so `ValueError`) on purpose: the data a run reads is chosen by the
`data.*` config keys, and every `fgssl` command already turns a `ConfigError` into one line
`fgssl <command>: error: ...` and exit status 2, without a traceback. Its message names the file and, where there
is one, the CSV line or the image id, e.g. `.../train.csv line 7: unknown APTOS grade '5' (expected 0-4)`.
"""

from __future__ import annotations

from ..config import ConfigError


class DataError(ConfigError):
    """A dataset on disk is missing, malformed or inconsistent. The message names the file and row or key."""

    def __init__(self, message: str, key: str = "data.root") -> None:
        self.key = key
        ValueError.__init__(self, message)


class DataWarning(UserWarning):
    """Something about the data a user should know (e.g. splits are per image because lesion ids are unknown)."""
