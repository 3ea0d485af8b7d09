"""Command-line pieces of ``eval.*`` and ``bench.*``: the shared ones of every jaxts CLI (from
:mod:`jaxts._cli`: ``--help`` with defaults, outputs never silently replaced), list parsing and
JSON-safe results."""

from __future__ import annotations

import math

import numpy as np

from jaxts._cli import HelpFormatter, check_output_dir, check_output_file, parser

__all__ = [
    "HelpFormatter",
    "check_output_dir",
    "check_output_file",
    "int_list",
    "json_safe",
    "parser",
]


def int_list(text: str, flag: str) -> list[int]:
    """``"96,192"`` -> ``[96, 192]``: positive integers, else a ValueError naming ``flag``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise ValueError(f"{flag} must be comma-separated positive integers, got {text!r}")
    return values


def json_safe(x):
    """JSON has no NaN/inf: undefined values (nested in dicts, lists, tuples) become null."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x
