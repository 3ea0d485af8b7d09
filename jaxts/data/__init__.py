"""Benchmark data pipeline (OpenLTM / Time-Series-Library long-term-forecasting protocol).

Reading CSVs, locating files (``--data-dir`` / ``$JAXTS_DATA_DIR`` / vendored ETTh1), the
ETT and 70/10/20 split borders, the train-only standard scaler, and stride-1 windows. See
``docs/data.md``. M4 Hourly (vendored): ``load_m4_hourly`` (``docs/chronos_training.md``).
UCI-HAR test windows (vendored): ``load_har`` / ``split_har`` (``docs/data.md``).
"""

from jaxts.data._har import (
    HAR_FS,
    HAR_LABEL_NAMES,
    HAR_WINDOW,
    HarData,
    har_paths,
    load_har,
    split_har,
)
from jaxts.data._io import DataError, dataset_name, read_table
from jaxts.data._m4 import (
    M4_HOURLY_HORIZON,
    M4_HOURLY_SEASONALITY,
    load_m4_hourly,
    m4_hourly_paths,
)
from jaxts.data._paths import resolve_path
from jaxts.data._splits import SPLITS, load_split, scaler_stats, split_borders
from jaxts.data._windows import NextPatchWindows, forecast_windows, n_windows, pad_batch

__all__ = [
    "DataError",
    "HAR_FS",
    "HAR_LABEL_NAMES",
    "HAR_WINDOW",
    "HarData",
    "M4_HOURLY_HORIZON",
    "M4_HOURLY_SEASONALITY",
    "NextPatchWindows",
    "SPLITS",
    "dataset_name",
    "forecast_windows",
    "har_paths",
    "load_har",
    "load_m4_hourly",
    "load_split",
    "m4_hourly_paths",
    "n_windows",
    "pad_batch",
    "read_table",
    "resolve_path",
    "scaler_stats",
    "split_borders",
    "split_har",
]
