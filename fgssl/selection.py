"""Model selection on validation data: which epoch's or round's weights a run keeps as its model.

The test split never chooses. A model less accurate than always answering the majority class, or one that is that
baseline (the same class for every image), is only chosen when no candidate beats it (`train.select_above_majority`):
balanced accuracy alone would happily keep a model that calls most naevi melanoma, and accuracy alone one that calls
everything a naevus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .metrics import below_majority, no_better_than_majority

@dataclass
class Selection:
    metric: str = "balanced_accuracy"
    above_majority: bool = True
    best_step: int | None = None
    best_val: dict[str, Any] | None = None
    best_state: Any = None
    history: list[tuple[int, float | None, bool]] = field(default_factory=list)  # (step, score, below majority)

    def _key(self, val: dict[str, Any]) -> tuple[bool, float]:
        score = val.get(self.metric)
        return (not (self.above_majority and no_better_than_majority(val)), float("-inf") if score is None else score)

    def offer(self, step: int, val: dict[str, Any], state: Callable[[], Any]) -> bool:
        """Consider the weights after `step` with validation metrics `val`; `state()` copies them if they win."""
        self.history.append((step, val.get(self.metric) if self.metric != "last" else None, below_majority(val)))
        wins = (self.best_step is None or self.metric == "last"
                or self._key(val) > self._key(self.best_val or {}))
        if wins:
            self.best_step, self.best_val, self.best_state = step, val, state()
        return wins

    def describe(self, unit: str) -> str:
        if self.best_step is None:
            return "no validated model"
        if self.metric == "last":
            return f"the last {unit} ({self.best_step})"
        guard = "" if not self.above_majority else " among those above the majority-class rate"
        if self.above_majority and self.best_val is not None and no_better_than_majority(self.best_val):
            guard = " (none beat the majority-class rate)"
        return (f"{unit} {self.best_step}: best validation {self.metric} "
                f"{self.best_val.get(self.metric, float('nan')):.3f}{guard}")

    def summary(self, unit: str) -> dict[str, Any]:
        return {"metric": self.metric, "above_majority": self.above_majority, unit: self.best_step,
                "text": self.describe(unit), "history": [list(h) for h in self.history]}
