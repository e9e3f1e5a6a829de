"""What the commands that read run directories share (the reading itself is fgssl.rundir.RunDir.open)."""

from __future__ import annotations

import math
from typing import Any


def is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def finite_or_none(v: Any) -> float | None:
    return float(v) if is_finite_number(v) else None
