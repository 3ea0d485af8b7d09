"""Command-line pieces of ``eval.*`` and ``bench.*``: the shared ones of every jaxts CLI (from
:mod:`jaxts._cli`: ``--help`` with defaults, outputs never silently replaced) and list parsing."""

from __future__ import annotations

from jaxts._cli import HelpFormatter, check_output_dir, check_output_file, parser

__all__ = ["HelpFormatter", "check_output_dir", "check_output_file", "int_list", "parser"]


def int_list(text: str, flag: str) -> list[int]:
    """``"96,192"`` -> ``[96, 192]``: positive integers, else a ValueError naming ``flag``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise ValueError(f"{flag} must be comma-separated positive integers, got {text!r}")
    return values
