"""Keys and cell formatting shared by the flows' markdown artifacts."""

from __future__ import annotations

import math


def artifact_key(prefix: str, model: str) -> str:
    """A Prefect artifact key (lower-case letters, digits, dashes) for ``model``."""
    safe = "".join(c if c.isalnum() else "-" for c in model.lower())
    return f"{prefix}-{safe}"


def format_ms(value: float) -> str:
    """Milliseconds for a report table ("-" for NaN)."""
    return "-" if math.isnan(value) else f"{value:.2f}"


def format_percent(value: float) -> str:
    """A share as a percent for a report table ("-" for NaN)."""
    return "-" if math.isnan(value) else f"{value:.2%}"
