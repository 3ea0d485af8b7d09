"""jaxts: JAX/Flax time-series foundation models with exact PyTorch checkpoint bridges.

``import jaxts`` never imports torch; torch is only needed by ``bridges`` to read ``.pth`` files.
"""

from jaxts.checkpoint import load_model, save_model
from jaxts.models.chronos2 import Chronos2Config, Chronos2Model
from jaxts.models.chronos_bolt import ChronosBolt, ChronosBoltConfig
from jaxts.models.chronos_t5 import ChronosT5, ChronosT5Config
from jaxts.models.distance_head import DistanceAwareChronos, DistanceHead, DistanceHeadConfig
from jaxts.models.llama import Llama, LlamaConfig
from jaxts.models.timer_hf import TimerHF, TimerHFConfig
from jaxts.models.timer_xl import TimerXL, TimerXLConfig, rolling_forecast
from jaxts.models.timer_xl_cache import cached_forecast
from jaxts.pipelines.chronos2 import Chronos2Pipeline
from jaxts.pipelines.chronos_bolt import ChronosBoltPipeline
from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline
from jaxts.pipelines.distance_aware_chronos import DistanceAwareChronosPipeline
from jaxts.pipelines.llama import LlamaPipeline
from jaxts.pipelines.timer import TimerPipeline
from jaxts.soft_mask import SoftGroupMask

__version__ = "0.1.0"
__all__ = [
    "Chronos2Config",
    "Chronos2Model",
    "Chronos2Pipeline",
    "ChronosBolt",
    "ChronosBoltConfig",
    "ChronosBoltPipeline",
    "ChronosT5",
    "ChronosT5Config",
    "ChronosT5Pipeline",
    "DistanceAwareChronos",
    "DistanceAwareChronosPipeline",
    "DistanceHead",
    "DistanceHeadConfig",
    "Llama",
    "LlamaConfig",
    "LlamaPipeline",
    "TimerHF",
    "TimerHFConfig",
    "TimerPipeline",
    "TimerXL",
    "TimerXLConfig",
    "SoftGroupMask",
    "cached_forecast",
    "load_model",
    "rolling_forecast",
    "save_model",
]
