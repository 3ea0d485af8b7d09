"""Long-format DataFrames for Chronos-2, as chronos-forecasting 2.x's ``chronos.df_utils`` and
``preprocess.from_data_frame``: schema checks, grouping by item (first-appearance order) and
sorting by time, the shared frequency, the forecast timestamps, and the tasks of a frame."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pandas.api.types as ptypes

from jaxts.pipelines.chronos2_inputs import PreparedInput, build_prepared_inputs

__all__ = [
    "from_data_frame",
    "infer_freq_from_df",
    "make_future_df",
    "normalize_df",
    "validate_and_normalize_df",
    "validate_df",
]


def validate_df(
    df: pd.DataFrame,
    future_df: pd.DataFrame | None,
    target_columns: Sequence[str],
    known_covariates_names: Sequence[str] | None,
    prediction_length: int,
    id_column: str,
    timestamp_column: str,
) -> None:
    """Columns present, numeric targets, ``future_df`` with the same items and exactly
    ``prediction_length`` rows each, no target columns and no columns unknown to ``df``."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    missing = {id_column, timestamp_column, *target_columns} - set(df.columns)
    if missing:
        raise ValueError(f"df does not contain all expected columns. Missing columns: {missing}")
    for col in target_columns:
        if not ptypes.is_numeric_dtype(df[col]):
            raise ValueError(f"Target column '{col}' must be numeric, got dtype {df[col].dtype}")
    if known_covariates_names is not None:
        covariates = set(df.columns) - {id_column, timestamp_column, *target_columns}
        unknown = set(known_covariates_names) - covariates
        if unknown:
            raise ValueError(
                f"known_covariates_names contains columns not present in df: {unknown}"
            )
    if future_df is None:
        return
    if not isinstance(future_df, pd.DataFrame):
        raise ValueError(f"future_df must be a pandas DataFrame, got {type(future_df).__name__}")
    missing = {id_column, timestamp_column} - set(future_df.columns)
    if missing:
        raise ValueError(
            f"future_df does not contain all expected columns. Missing columns: {missing}"
        )
    targets = [c for c in future_df.columns if c in target_columns]
    if targets:
        raise ValueError(
            f"future_df cannot contain target columns. Target columns found: {targets}"
        )
    extra = [c for c in future_df.columns if c not in df.columns]
    if extra:
        raise ValueError(
            f"future_df cannot contain columns not present in df. Extra columns: {extra}"
        )
    if set(df[id_column].unique()) != set(future_df[id_column].unique()):
        raise ValueError("future_df must have the same time series IDs as df")
    sizes = future_df[id_column].value_counts(sort=False)
    wrong = int((sizes != prediction_length).sum())
    if wrong:
        raise ValueError(
            f"future_df must contain prediction_length={prediction_length} rows per item. "
            f"Found {wrong} items with a different number of rows."
        )


def normalize_df(
    df: pd.DataFrame,
    id_column: str = "item_id",
    timestamp_column: str = "timestamp",
    order: Sequence | None = None,
) -> pd.DataFrame:
    """Timestamps as datetimes; rows grouped by item (first appearance, or ``order``) and
    sorted by time within an item (a stable sort, so ties keep their order)."""
    if not ptypes.is_datetime64_any_dtype(df[timestamp_column]):
        df = df.assign(**{timestamp_column: pd.to_datetime(df[timestamp_column])})
    if order is None:
        codes, _ = pd.factorize(df[id_column])
    else:
        codes = pd.Index(order).get_indexer(df[id_column])
        if (codes < 0).any():
            missing = pd.unique(df[id_column][codes < 0])
            raise ValueError(f"future_df has ids not present in df: {list(missing)[:5]}")
    ts = df[timestamp_column].to_numpy().view("int64")
    step = np.diff(codes)
    if not (np.all(step >= 0) and np.all((np.diff(ts) >= 0) | (step > 0))):
        df = df.iloc[np.lexsort([ts, codes])].reset_index(drop=True)
    return df


def validate_and_normalize_df(
    df: pd.DataFrame,
    future_df: pd.DataFrame | None,
    target_columns: Sequence[str],
    prediction_length: int,
    known_covariates_names: Sequence[str] | None = None,
    id_column: str = "item_id",
    timestamp_column: str = "timestamp",
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """:func:`validate_df`, then :func:`normalize_df` of both (``future_df`` in ``df``'s item
    order)."""
    validate_df(
        df, future_df, list(target_columns), known_covariates_names, prediction_length,
        id_column, timestamp_column,
    )  # fmt: skip
    df = normalize_df(df, id_column, timestamp_column)
    if future_df is not None:
        future_df = normalize_df(future_df, id_column, timestamp_column, pd.unique(df[id_column]))
    return df, future_df


def _lengths(df: pd.DataFrame, id_column: str) -> list[int]:
    return df[id_column].value_counts(sort=False).tolist()


def infer_freq_from_df(
    df: pd.DataFrame, id_column: str = "item_id", timestamp_column: str = "timestamp"
) -> str:
    """The frequency shared by every item with at least 3 timestamps (``pd.infer_freq``);
    a ``ValueError`` when one is irregular, they disagree, or no item has 3 timestamps."""
    index = pd.DatetimeIndex(df[timestamp_column])
    ids = df[id_column].to_numpy()
    freqs, start = set(), 0
    for n in _lengths(df, id_column):
        if n >= 3:
            with warnings.catch_warnings():
                # pandas 3 announces offsets instead of strings: a string is what we return
                warnings.filterwarnings("ignore", message=".*infer_freq.*")
                freq = pd.infer_freq(index[start : start + n])
            freq = getattr(freq, "freqstr", freq)
            if freq is None:
                raise ValueError(f"Could not infer frequency for series {ids[start]}")
            freqs.add(freq)
        start += n
    if len(freqs) > 1:
        raise ValueError("All time series must have the same frequency")
    if not freqs:
        raise ValueError(
            "Could not infer frequency: no time series has at least 3 regularly-spaced "
            "observations. Please provide an explicit `freq`."
        )
    return freqs.pop()


def make_future_df(
    df: pd.DataFrame,
    prediction_length: int,
    freq: str | None = None,
    id_column: str = "item_id",
    timestamp_column: str = "timestamp",
) -> pd.DataFrame:
    """``[id_column, timestamp_column]`` rows of the next ``prediction_length`` steps after each
    item's last timestamp, items in ``df``'s order (``df`` normalised)."""
    if freq is None:
        freq = infer_freq_from_df(df, id_column, timestamp_column)
    ends = np.cumsum(_lengths(df, id_column))
    last = pd.DatetimeIndex(df[timestamp_column].to_numpy()[ends - 1])  # [n_items]
    ids = df[id_column].to_numpy()[np.concatenate([[0], ends[:-1]])]
    offset = pd.tseries.frequencies.to_offset(freq)
    with warnings.catch_warnings():
        # non-vectorised offsets (BusinessDay) warn about performance, harmlessly
        warnings.simplefilter("ignore", category=pd.errors.PerformanceWarning)
        steps = [last + k * offset for k in range(1, prediction_length + 1)]
    return pd.DataFrame(
        {
            id_column: np.repeat(ids, prediction_length),
            timestamp_column: pd.DatetimeIndex(np.stack(steps, axis=1).ravel()),
        }
    )


def from_data_frame(
    df: pd.DataFrame,
    target_columns: Sequence[str],
    prediction_length: int,
    future_df: pd.DataFrame | None = None,
    known_covariates_names: Sequence[str] | None = None,
    id_column: str = "item_id",
    timestamp_column: str = "timestamp",
    use_target_encoding: bool = True,
    validate_inputs: bool = True,
) -> list[PreparedInput]:
    """A long-format DataFrame: one task per item (first-appearance order); columns other than
    id, timestamp and targets are covariates, known into the future when in ``future_df``."""
    if future_df is not None and known_covariates_names is not None:
        raise ValueError("Cannot provide both future_df and known_covariates_names")
    target_columns = list(target_columns)
    if validate_inputs:
        df, future_df = validate_and_normalize_df(
            df, future_df, target_columns, prediction_length, known_covariates_names,
            id_column, timestamp_column,
        )  # fmt: skip
    skip = {id_column, timestamp_column, *target_columns}
    covariates = [c for c in df.columns if c not in skip]
    target = df[target_columns].to_numpy(dtype=np.float32, na_value=np.nan).T
    past = {
        c: df[c].astype(
            np.float32
            if ptypes.is_numeric_dtype(df[c]) and not ptypes.is_bool_dtype(df[c])
            else "category"
        )
        for c in covariates
    }
    if future_df is not None:
        known = [c for c in covariates if c in future_df.columns]
        future = {c: future_df[c] for c in known}
    else:
        known, future = list(known_covariates_names or []), {}
    lengths = df[id_column].value_counts(sort=False).tolist()
    return build_prepared_inputs(
        target, past, future, known, lengths, prediction_length, use_target_encoding
    )
