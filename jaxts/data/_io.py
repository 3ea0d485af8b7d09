"""Reading benchmark CSV files into float64 arrays.

The parsing follows OpenLTM / Time-Series-Library (``pd.read_csv`` with default options, first
column dropped when it holds dates), but it fails loudly on inputs that those loaders would turn
into silent NaN losses.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

__all__ = ["DataError", "read_table", "dataset_name"]


class DataError(ValueError):
    """Bad input data, missing files or impossible split / window settings."""


def dataset_name(path: str | os.PathLike) -> str:
    """The dataset name used to pick split borders: the file name without ``.csv`` / ``.gz``.

    ``ETTh1.csv`` and ``ETTh1.csv.gz`` both give ``ETTh1`` (OpenLTM uses the text before the
    first dot of ``data_path``; stripping only known suffixes keeps dots inside other names).
    """
    name = Path(path).name
    for suffix in (".gz", ".csv"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _row_msg(row: int) -> str:
    # Data row 0 is on line 2 of the file (line 1 is the header).
    return f"row {row} (file line {row + 2})"


def _first_column_is_text(col: pd.Series) -> bool:
    # A date/time/id column is parsed by pandas as object/string; a numeric first column is kept
    # (OpenLTM keeps ``df.values`` whole when the first column is not a string).
    return not (ptypes.is_numeric_dtype(col) and not ptypes.is_bool_dtype(col))


def _to_float(df: pd.DataFrame, path: Path) -> np.ndarray:
    """Convert every column to float64, naming the column and row of the first bad value."""
    cols = []
    for name in df.columns:
        col = df[name]
        if ptypes.is_bool_dtype(col) or not ptypes.is_numeric_dtype(col):
            num = pd.to_numeric(col, errors="coerce")
            bad = np.flatnonzero(num.isna().to_numpy() & col.notna().to_numpy())
            if bad.size:
                r = int(bad[0])
                raise DataError(
                    f"{path}: column {name!r} is not numeric: value {col.iloc[r]!r} at "
                    f"{_row_msg(r)}"
                )
            col = num
        cols.append(col.to_numpy(dtype=np.float64, na_value=np.nan))
    values = np.stack(cols, axis=1)  # [T, C]
    finite = np.isfinite(values)
    if not finite.all():
        # Report the earliest bad row, and the first bad column on that row.
        r, c = (int(i) for i in np.argwhere(~finite)[0])
        kind = "NaN/missing" if np.isnan(values[r, c]) else "inf"
        raise DataError(
            f"{path}: column {df.columns[c]!r} has a {kind} value at {_row_msg(r)}; "
            "missing values are not filled or dropped, fix the file"
        )
    return values


def _read_uncached(path: Path) -> tuple[np.ndarray, list[str]]:
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    try:
        # encoding_errors="replace": the weather header is not clean text (U+FFFD where units
        # had special characters); a bad byte in a header must not stop the numbers loading.
        # CRLF line ends are handled by the C parser. Compression is inferred from ".gz".
        df = pd.read_csv(path, encoding="utf-8", encoding_errors="replace")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeError, OSError) as e:
        raise DataError(f"{path}: cannot parse as CSV: {e}") from e
    if df.shape[1] == 0 or df.shape[0] == 0:
        raise DataError(f"{path}: no data rows/columns (shape {df.shape})")
    if _first_column_is_text(df.iloc[:, 0]):
        df = df.iloc[:, 1:]
    if df.shape[1] == 0:
        raise DataError(f"{path}: no numeric columns (only a date/text column)")
    values = _to_float(df, path)
    return values, [str(c) for c in df.columns]


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, tuple[str, ...]]:
    # mtime/size are part of the key so that an edited file is re-read.
    values, cols = _read_uncached(Path(path))
    values.setflags(write=False)  # shared between callers: keep it immutable
    return values, tuple(cols)


def _read_shared(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Like :func:`read_table` but returns a cached read-only array (train/val/test reuse it)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise DataError(f"no such file: {p}") from e
    values, cols = _read_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)
    return values, list(cols)


def read_table(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Read a benchmark CSV (plain or ``.gz``).

    Returns ``(values, columns)``: ``values`` float64 ``[T, C]`` (a fresh, writable copy) and
    the ``C`` column names. A leading date/text column is dropped; rows are kept exactly as in
    the file (no de-duplication of repeated timestamps, no gap filling), as OpenLTM does.

    Raises :class:`DataError` for a missing/unparsable file, no numeric columns, a non-numeric
    value in a data column, or any NaN/inf (the message names the column and first row).
    """
    values, cols = _read_shared(path)
    return np.array(values, dtype=np.float64, copy=True), cols
