"""User-facing forecasting pipelines (upstream-compatible call signatures)."""

from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline
from jaxts.pipelines.distance_aware_chronos import DistanceAwareChronosPipeline

__all__ = ["ChronosT5Pipeline", "DistanceAwareChronosPipeline"]
