"""Train/val/test borders and the train-only standard scaler (OpenLTM protocol)."""

from __future__ import annotations

import os

import numpy as np

from jaxts.data._io import DataError, _read_shared, dataset_name
from jaxts.data._paths import resolve_path

__all__ = ["SPLITS", "split_borders", "fit_scaler", "load_split", "scaler_stats"]

SPLITS = ("train", "val", "test")

# Fixed borders of the ETT benchmark: 12 / 4 / 4 months of 30 days (hourly rows); the 15-minute
# files use the same months (x4 rows). Rows after the test border are unused by the protocol.
_ETT_HOURS = (12 * 30 * 24, 16 * 30 * 24, 20 * 30 * 24)  # (8640, 11520, 14400)
_ETT_STEPS = {"ETTh1": 1, "ETTh2": 1, "ETTm1": 4, "ETTm2": 4}


def split_borders(name: str, n_rows: int, seq_len: int) -> tuple[list[int], list[int]]:
    """Row borders ``(border1s, border2s)`` for train / val / test.

    ``name`` is the dataset name (file stem, case-sensitive as in OpenLTM): ETTh1/ETTh2 and
    ETTm1/ETTm2 use the fixed ETT borders, anything else 70% / 10% / 20% of ``n_rows``. The val
    and test splits start ``seq_len`` rows early so that their first window ends at the border.

    Raises :class:`DataError` if the file is too short for the borders or ``seq_len`` reaches
    before row 0 (i.e. ``seq_len`` is longer than the train split).
    """
    n_rows, seq_len = int(n_rows), int(seq_len)
    if seq_len <= 0:
        raise DataError(f"seq_len must be positive, got {seq_len}")
    if name in _ETT_STEPS:
        k = _ETT_STEPS[name]
        b_train, b_val, b_test = (h * k for h in _ETT_HOURS)
        border1s = [0, b_train - seq_len, b_val - seq_len]
        border2s = [b_train, b_val, b_test]
        if n_rows < b_test:
            raise DataError(
                f"{name}: the fixed ETT borders need {b_test} rows, the file has {n_rows}"
            )
    else:
        num_train = int(n_rows * 0.7)
        num_test = int(n_rows * 0.2)
        num_vali = n_rows - num_train - num_test
        border1s = [0, num_train - seq_len, n_rows - num_test - seq_len]
        border2s = [num_train, num_train + num_vali, n_rows]
    if min(border1s) < 0:
        raise DataError(
            f"{name}: seq_len={seq_len} is longer than the train split ({border2s[0]} rows of "
            f"{n_rows}); borders would be {border1s}"
        )
    return border1s, border2s


def fit_scaler(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, scale)`` float64 ``[C]`` of ``train`` ``[T, C]``, as sklearn's StandardScaler.

    Population std (ddof=0). Constant columns get scale 1.0 using sklearn's own test
    (``var <= n*eps*var + (n*mean*eps)**2``), so a column whose float variance is a rounding
    residue (e.g. 1e-34) is not blown up to huge values.
    """
    x = np.asarray(train, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        raise DataError("cannot fit a scaler on zero rows")
    mean = x.mean(axis=0)
    var = ((x - mean) ** 2).mean(axis=0)
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scale = np.where(constant, 1.0, np.sqrt(var))
    return mean, scale


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def _prepared(
    path: str | os.PathLike, seq_len: int, data_dir: str | os.PathLike | None
) -> tuple[np.ndarray, list[int], list[int], np.ndarray, np.ndarray]:
    """Raw values [T, C] f64, borders, and the train-row scaler of one file."""
    p = resolve_path(path, data_dir)
    values, _ = _read_shared(p)  # [T, C] float64, read-only
    border1s, border2s = split_borders(dataset_name(p), values.shape[0], seq_len)
    # Fit on the train rows only: fitting on all rows would leak test statistics.
    mean, scale = fit_scaler(values[border1s[0] : border2s[0]])
    return values, border1s, border2s, mean, scale


def load_split(
    path: str | os.PathLike,
    split: str,
    seq_len: int,
    *,
    scale: bool = True,
    data_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Rows ``[border1, border2)`` of ``split`` as float32 ``[rows, C]``.

    ``path`` is a file path or a dataset name (see :func:`resolve_path`). With ``scale=True``
    the whole file is standardised with the train-row scaler (in float64, then cast to float32,
    as OpenLTM does); ``scale=False`` returns the raw values cast to float32.
    """
    i = _check_split(split)
    values, border1s, border2s, mean, sd = _prepared(path, seq_len, data_dir)
    rows = values[border1s[i] : border2s[i]]  # [rows, C] float64
    if scale:
        rows = (rows - mean) / sd
    return rows.astype(np.float32)


def scaler_stats(
    path: str | os.PathLike, seq_len: int, *, data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` float64 ``[C]`` of the train rows; std is the scale actually applied
    (1.0 for constant columns), so ``raw = scaled * std + mean`` inverts :func:`load_split`."""
    _, _, _, mean, sd = _prepared(path, seq_len, data_dir)
    return mean.copy(), sd.copy()
