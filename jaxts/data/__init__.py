"""Benchmark data pipeline (OpenLTM / Time-Series-Library long-term-forecasting protocol).

Reading CSVs, locating files (``--data-dir`` / ``$JAXTS_DATA_DIR`` / vendored ETTh1), the
ETT and 70/10/20 split borders, the train-only standard scaler, and stride-1 windows.
See ``docs/data.md``.
"""

from jaxts.data._io import DataError, dataset_name, read_table
from jaxts.data._paths import resolve_path
from jaxts.data._splits import SPLITS, load_split, scaler_stats, split_borders
from jaxts.data._windows import NextPatchWindows, forecast_windows, n_windows, pad_batch

__all__ = [
    "DataError",
    "NextPatchWindows",
    "SPLITS",
    "dataset_name",
    "forecast_windows",
    "load_split",
    "n_windows",
    "pad_batch",
    "read_table",
    "resolve_path",
    "scaler_stats",
    "split_borders",
]
