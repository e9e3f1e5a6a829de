"""Simulation: virtual hospitals on Flower's simulation engine, partitioners, and the shipped configs."""

from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"  # the built-in demo federation
