"""User-facing forecasting pipelines (upstream-compatible call signatures)."""

from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline

__all__ = ["ChronosT5Pipeline"]
