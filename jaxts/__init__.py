"""jaxts: JAX/Flax time-series foundation models with exact PyTorch checkpoint bridges.

``import jaxts`` never imports torch; torch is only needed by ``bridges`` to read ``.pth`` files.
"""

from jaxts.checkpoint import load_model, save_model
from jaxts.models.chronos_t5 import ChronosT5, ChronosT5Config
from jaxts.models.timer_xl import TimerXL, TimerXLConfig, rolling_forecast
from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline

__version__ = "0.1.0"
__all__ = [
    "ChronosT5",
    "ChronosT5Config",
    "ChronosT5Pipeline",
    "TimerXL",
    "TimerXLConfig",
    "load_model",
    "rolling_forecast",
    "save_model",
]
