"""jaxts: JAX/Flax time-series foundation models with exact PyTorch checkpoint bridges.

``import jaxts`` never imports torch; torch is only needed by ``bridges`` to read ``.pth`` files.
"""

from jaxts.checkpoint import load_model, save_model
from jaxts.models.timer_xl import TimerXL, TimerXLConfig, rolling_forecast

__version__ = "0.1.0"
__all__ = ["TimerXL", "TimerXLConfig", "load_model", "rolling_forecast", "save_model"]
