"""The two phases of a run and which parameter groups each trains. Torch-free: the server and the CLI use it."""

from __future__ import annotations

PHASES = ("ssl", "finetune")
_TRAINED = {"ssl": ("backbone.", "blocks.", "heads."),
            "finetune": ("backbone.", "blocks.", "heads.", "classifiers.")}


def check_phase(phase: str) -> None:
    if phase not in _TRAINED:
        raise ValueError(f"unknown phase '{phase}'; choose from {', '.join(PHASES)}")


def trained_prefixes(phase: str, frozen: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Parameter-name prefixes a phase changes (the federation aggregates only these)."""
    check_phase(phase)
    return tuple(p for p in _TRAINED[phase] if p[:-1] not in frozen)
