"""Chronos-2 inputs -> model batches, as chronos-forecasting 2.x's ``chronos2.preprocess`` and
``Chronos2Dataset`` in TEST mode (numpy and pandas only: no torch).

Input forms (detected as upstream):

1. a 3-d array ``(n_series, n_variates, history_length)`` or a list of 1-d / 2-d arrays (numpy,
   torch or jax): every variate a target, no covariates;
2. a list of dicts ``{"target", "past_covariates", "future_covariates"}`` sharing one schema:
   numeric and categorical covariates, categoricals target-encoded per item (a single target) or
   ordinal-encoded (several targets), as upstream's ``_encode_categorical``;
3. prepared inputs: dicts with ``context``, ``future_covariates``, ``n_targets``,
   ``n_covariates``, ``n_future_covariates`` (upstream's ``PreparedInput``; tensors accepted);
4. (``chronos2_df.from_data_frame``) a long-format DataFrame.

Each task is one group: its targets first, then past-only covariates, then known-future
covariates. :func:`inference_batches` packs whole tasks into batches of at least ``batch_size`` rows
(a batch closes once it holds ``batch_size`` rows or more), keeps the last ``context_length``
steps and left-pads with NaN, exactly as upstream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypedDict

import numpy as np
import pandas as pd

__all__ = [
    "Batch",
    "PreparedInput",
    "from_list_of_dicts",
    "from_list_of_tensors",
    "from_tensor",
    "prepare_inputs",
    "inference_batches",
]

_PREPARED_KEYS = (
    "context",
    "future_covariates",
    "n_targets",
    "n_covariates",
    "n_future_covariates",
)
_DICT_KEYS = {"target", "past_covariates", "future_covariates"}
_FORMS = (
    "a 3-d array (n_series, n_variates, history_length), a list of 1-d/2-d arrays, or a list of "
    "dicts with 'target' and optional 'past_covariates'/'future_covariates'"
)


class PreparedInput(TypedDict):
    """One task: its rows (targets, past-only covariates, known-future covariates)."""

    context: np.ndarray  # [n_rows, history_length] float32
    future_covariates: np.ndarray  # [n_rows, prediction_length] float32, NaN = unknown
    n_targets: int
    n_covariates: int
    n_future_covariates: int


@dataclasses.dataclass(frozen=True)
class Batch:
    """What the model sees for a batch of whole tasks (one group each)."""

    context: np.ndarray  # [B, T] float32, left-padded with NaN
    group_ids: np.ndarray  # [B] int64, the task's index within the batch
    future_covariates: np.ndarray  # [B, H] float32, NaN where unknown (targets, past-only)
    target_idx_ranges: list[tuple[int, int]]  # rows [start, end) of each task's targets


def _is_array(x: Any) -> bool:
    """numpy, torch and jax arrays (anything with a shape and ``__array__``), not lists."""
    return isinstance(x, np.ndarray) or (hasattr(x, "__array__") and hasattr(x, "ndim"))


def _float32(x: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be numeric: {e}") from None


def _targets_only(context: np.ndarray, prediction_length: int) -> PreparedInput:
    n = context.shape[0]
    return PreparedInput(
        context=context,
        future_covariates=np.full((n, prediction_length), np.nan, np.float32),
        n_targets=n,
        n_covariates=0,
        n_future_covariates=0,
    )


def from_tensor(data: Any, prediction_length: int) -> list[PreparedInput]:
    """A 3-d array ``(n_series, n_variates, history_length)``: one task per series."""
    arr = _float32(data, "inputs")
    if arr.ndim != 3:
        raise ValueError(
            "Expected 3-d tensor with shape (n_series, n_variates, history_length), "
            f"got shape {tuple(arr.shape)}."
        )
    return [_targets_only(arr[i].copy(), prediction_length) for i in range(arr.shape[0])]


def from_list_of_tensors(data: Sequence[Any], prediction_length: int) -> list[PreparedInput]:
    """1-d ``(history_length,)`` or 2-d ``(n_variates, history_length)`` arrays: one task each."""
    out = []
    for idx, item in enumerate(data):
        if not _is_array(item):
            raise ValueError(
                f"Expected {_FORMS}; element {idx} is a {type(item).__name__} while element 0 "
                "is an array."
            )
        arr = _float32(item, f"inputs[{idx}]")
        if arr.ndim not in (1, 2):
            raise ValueError(
                "Each element should be 1-d or 2-d, with shape (history_length,) or "
                f"(n_variates, history_length). Found element at index {idx} with shape "
                f"{tuple(arr.shape)}."
            )
        out.append(_targets_only(arr.reshape(-1, arr.shape[-1]), prediction_length))
    return out


def _is_unavailable(value: Any) -> bool:
    """A future covariate given as None or empty: known into the future, values unknown."""
    return value is None or (hasattr(value, "__len__") and len(value) == 0)


def _check_dict(idx: int, d: Any, prediction_length: int) -> None:
    """One dict's keys, ranks and lengths (upstream's first validation pass)."""
    if not isinstance(d, Mapping):
        raise ValueError(f"Expected {_FORMS}; element {idx} is a {type(d).__name__}.")
    keys = set(d.keys())
    if not keys <= _DICT_KEYS:
        raise ValueError(
            f"Found invalid keys in element at index {idx}. Allowed keys are "
            f"{sorted(_DICT_KEYS)}, but found {sorted(keys)}"
        )
    if "target" not in keys:
        raise ValueError(f"Element at index {idx} does not contain the required key 'target'")
    target = np.asarray(d["target"])
    if target.ndim not in (1, 2):
        raise ValueError(
            f"Target must be 1-d or 2-d (got shape {tuple(target.shape)} at index {idx}): "
            "(history_length,) or (n_variates, history_length)."
        )
    length = target.shape[-1]
    for group in ("past_covariates", "future_covariates"):
        if not isinstance(d.get(group, {}), Mapping):
            raise ValueError(
                f"Found invalid type for `{group}` in element at index {idx}. Expected dict "
                f'with {{"feat_1": tensor_1, ...}}, but found {type(d[group])}'
            )
    for key, val in d.get("past_covariates", {}).items():
        shape = np.shape(val)
        if len(shape) != 1 or shape[0] != length:
            raise ValueError(
                "Individual `past_covariates` must be 1-d with length equal to the length of "
                f"`target` (= {length}), found: {key} with shape {shape} in element at index {idx}"
            )
    for key, val in d.get("future_covariates", {}).items():
        shape = () if _is_unavailable(val) else np.shape(val)
        if shape and (len(shape) != 1 or shape[0] != prediction_length):
            raise ValueError(
                "Individual `future_covariates` must be 1-d with length equal to the "
                f"prediction_length={prediction_length}, got shape {shape} for {key} at index {idx}"
            )


def _check_schema(data: Sequence[Mapping], known_covariates_names: Sequence[str] | None) -> None:
    """All dicts share the first one's schema (upstream's second validation pass)."""
    first = data[0]

    def schema(d):
        future = d.get("future_covariates", {})
        return (
            np.asarray(d["target"]).reshape(-1, np.shape(d["target"])[-1]).shape[0],
            sorted(d.get("past_covariates", {})),
            sorted(future),
            {k: _is_unavailable(v) for k, v in future.items()},
        )

    n_targets, past_keys, future_keys, availability = schema(first)
    if not set(future_keys) <= set(past_keys):
        raise ValueError(
            f"Expected keys in `future_covariates` must be a subset of `past_covariates` "
            f"{past_keys}, but found {future_keys}"
        )
    if known_covariates_names is not None and set(known_covariates_names) - set(past_keys):
        raise ValueError(
            f"known_covariates_names must all be `past_covariates` keys {past_keys}, but found "
            f"unknown columns: {sorted(set(known_covariates_names) - set(past_keys))}"
        )
    for idx, d in enumerate(data):
        n, past, future, avail = schema(d)
        if n != n_targets:
            raise ValueError(
                f"All targets must have the same n_targets. Expected {n_targets}, got {n} at "
                f"index {idx}; call predict once per target shape."
            )
        if past != past_keys:
            raise ValueError(
                f"All past_covariates must have same keys. Expected {past_keys}, got {past} at "
                f"index {idx}. Heterogeneous lists are not supported."
            )
        if future != future_keys:
            raise ValueError(
                f"All future_covariates must have same keys. Expected {future_keys}, got "
                f"{future} at index {idx}. Heterogeneous lists are not supported."
            )
        for key in future_keys:
            if avail[key] != availability[key]:
                raise ValueError(
                    f"All dicts must agree on whether `future_covariates['{key}']` is available "
                    f"(None/empty) or provided. Mismatch at index {idx}."
                )


def _stack_column(data: Sequence[Mapping], group: str, key: str) -> pd.Series:
    """One covariate over all dicts: float32 when numeric (bool is not), else categorical."""
    values = np.concatenate([np.asarray(d[group][key]) for d in data])
    numeric = np.issubdtype(values.dtype, np.number)
    return pd.Series(values, dtype=np.float32 if numeric else "category")


def from_list_of_dicts(
    data: Sequence[Mapping],
    prediction_length: int,
    known_covariates_names: Sequence[str] | None = None,
    use_target_encoding: bool = True,
    validate_inputs: bool = True,
) -> list[PreparedInput]:
    """Dicts ``{"target", "past_covariates", "future_covariates"}``: one task each.

    ``known_covariates_names``: past covariates known into the future whose future values are
    not given (NaN-filled); excludes ``future_covariates`` in the dicts.
    """
    if len(data) == 0:
        return []
    if validate_inputs:
        for idx, d in enumerate(data):
            _check_dict(idx, d, prediction_length)
        _check_schema(data, known_covariates_names)
    first_future = data[0].get("future_covariates") or {}
    if first_future and known_covariates_names is not None:
        raise ValueError(
            "Cannot provide both known_covariates_names and future_covariates in dicts"
        )
    targets = [_float32(d["target"], "target") for d in data]
    targets = [t.reshape(-1, t.shape[-1]) for t in targets]
    past = {
        k: _stack_column(data, "past_covariates", k)
        for k in sorted(data[0].get("past_covariates", {}))
    }
    if known_covariates_names is not None:
        known, future = list(known_covariates_names), {}
    else:
        known = sorted(first_future)
        future = {
            k: _stack_column(data, "future_covariates", k)
            for k in known
            if not _is_unavailable(first_future[k])
        }
    return build_prepared_inputs(
        np.concatenate(targets, axis=1), past, future, known,
        [t.shape[-1] for t in targets], prediction_length, use_target_encoding,
    )  # fmt: skip


def _target_encode(items, codes, target, n_items, n_slots, future_items, future_codes, smooth=1.0):
    """Per-item smoothed target mean of each category slot:
    ``(smooth * item_mean + sum) / (smooth + count)`` over the observed target values."""
    observed = np.isfinite(target)
    y = np.where(observed, target, 0.0)
    item_sum = np.bincount(items, weights=y, minlength=n_items)
    item_count = np.bincount(items, weights=observed.astype(float), minlength=n_items)
    item_mean = np.divide(item_sum, item_count, out=np.zeros(n_items), where=item_count > 0)
    cell = items * n_slots + codes  # [rows] one (item, slot) cell each
    cell_sum = np.bincount(cell, weights=y, minlength=n_items * n_slots)
    cell_count = np.bincount(cell, weights=observed.astype(float), minlength=n_items * n_slots)
    table = (smooth * np.repeat(item_mean, n_slots) + cell_sum) / (smooth + cell_count)
    future = None
    if future_codes is not None:
        future = table[future_items * n_slots + future_codes].astype(np.float32)
    return table[cell].astype(np.float32), future


def _encode_categorical(past, future, target, items, future_items, n_items, target_encode):
    """Category codes of ``past`` (NaN is its own slot ``n_real``) and of ``future`` mapped onto
    the past's categories (unseen values -> slot ``n_real + 1``), then target-encoded (unseen:
    the item mean) or, without target encoding, ordinal codes as float (unseen: NaN)."""
    categories = past.dtype.categories
    nan_slot, unseen_slot = len(categories), len(categories) + 1
    past_codes = past.cat.codes.to_numpy(dtype=np.intp)
    past_codes = np.where(past_codes < 0, nan_slot, past_codes)
    future_codes = None
    if future is not None:
        codes = categories.get_indexer(future).astype(np.intp)
        missing = np.where(future.isna().to_numpy(), nan_slot, unseen_slot)
        future_codes = np.where(codes < 0, missing, codes)
    if target_encode:
        return _target_encode(
            items, past_codes, target[0], n_items, unseen_slot + 1,
            future_items if future_codes is not None else None, future_codes,
        )  # fmt: skip
    enc_future = None
    if future_codes is not None:
        enc_future = np.where(future_codes == unseen_slot, np.nan, future_codes).astype(np.float32)
    return past_codes.astype(np.float32), enc_future


def build_prepared_inputs(
    target: np.ndarray,
    past_covariates: dict[str, pd.Series],
    future_covariates: dict[str, pd.Series],
    known_future_columns: Sequence[str],
    series_lengths: Sequence[int],
    prediction_length: int,
    use_target_encoding: bool,
) -> list[PreparedInput]:
    """Tasks from stacked columns (item after item): ``target [n_targets, rows]`` and covariate
    Series (float32 or categorical) over the same rows; future Series over
    ``n_items * prediction_length`` rows. Row order per task: targets, past-only covariates,
    known-future covariates (NaN-filled where no future values are given)."""
    n_items, n_targets = len(series_lengths), target.shape[0]
    target_encode = use_target_encoding and n_targets == 1
    items = np.repeat(np.arange(n_items), series_lengths)
    future_items = np.repeat(np.arange(n_items), prediction_length)
    known = set(known_future_columns)
    columns = [c for c in past_covariates if c not in known] + [
        c for c in past_covariates if c in known
    ]
    past_rows, future_rows = [], []
    for col in columns:
        past, future = past_covariates[col], future_covariates.get(col)
        if isinstance(past.dtype, pd.CategoricalDtype):
            enc_past, enc_future = _encode_categorical(
                past, future, target, items, future_items, n_items, target_encode
            )
        else:
            enc_past = past.to_numpy(dtype=np.float32, na_value=np.nan)
            enc_future = None
            if future is not None:
                try:
                    enc_future = future.to_numpy(dtype=np.float32, na_value=np.nan)
                except (TypeError, ValueError) as e:
                    raise ValueError(
                        f"future values of the numeric covariate {col!r} must be numeric: {e}"
                    ) from None
        past_rows.append(enc_past)
        future_rows.append(
            np.full(n_items * prediction_length, np.nan, np.float32)
            if enc_future is None
            else enc_future
        )
    n_future = n_items * prediction_length
    rows = np.concatenate([target, *(r[None] for r in past_rows)])  # [n_rows, sum(lengths)]
    future_all = np.concatenate(
        [np.full((n_targets, n_future), np.nan, np.float32), *(r[None] for r in future_rows)]
    )  # [n_rows, n_items * H]
    bounds = np.concatenate([[0], np.cumsum(series_lengths)])
    return [
        PreparedInput(
            context=np.ascontiguousarray(rows[:, bounds[i] : bounds[i + 1]]),
            future_covariates=np.ascontiguousarray(
                future_all[:, i * prediction_length : (i + 1) * prediction_length]
            ),
            n_targets=n_targets,
            n_covariates=len(columns),
            n_future_covariates=len(known_future_columns),
        )
        for i in range(n_items)
    ]


def _check_prepared(idx: int, item: Any) -> PreparedInput:
    if not isinstance(item, Mapping) or set(_PREPARED_KEYS) - set(item.keys()):
        missing = (
            sorted(set(_PREPARED_KEYS) - set(item.keys())) if isinstance(item, Mapping) else []
        )
        raise ValueError(
            f"Prepared input {idx} must be a dict with keys {list(_PREPARED_KEYS)}; "
            f"missing {missing or type(item).__name__}"
        )
    context = _float32(item["context"], f"inputs[{idx}]['context']")
    future = _float32(item["future_covariates"], f"inputs[{idx}]['future_covariates']")
    if context.ndim != 2 or future.ndim != 2 or context.shape[0] != future.shape[0]:
        raise ValueError(
            f"Prepared input {idx}: 'context' [n_rows, T] and 'future_covariates' [n_rows, H] "
            f"must be 2-d with the same rows, got {context.shape} and {future.shape}"
        )
    n = {k: int(item[k]) for k in _PREPARED_KEYS[2:]}
    if n["n_targets"] < 1 or n["n_targets"] + n["n_covariates"] != context.shape[0]:
        raise ValueError(
            f"Prepared input {idx}: n_targets ({n['n_targets']}) + n_covariates "
            f"({n['n_covariates']}) must equal the {context.shape[0]} rows of 'context'"
        )
    return PreparedInput(context=context, future_covariates=future, **n)


def prepare_inputs(inputs: Any, prediction_length: int) -> list[PreparedInput]:
    """Any of the input forms (module docstring) -> one :class:`PreparedInput` per task."""
    if isinstance(inputs, (pd.DataFrame, pd.Series)):
        raise ValueError(f"Expected {_FORMS}; got a {type(inputs).__name__} (use predict_df).")
    if _is_array(inputs):
        if np.ndim(inputs) > 0 and len(inputs) == 0:
            raise ValueError("`inputs` is empty. Please provide at least one time series.")
        return from_tensor(inputs, prediction_length)
    if not isinstance(inputs, Sequence) or isinstance(inputs, (str, bytes)):
        raise ValueError(f"Expected {_FORMS}; got a {type(inputs).__name__}.")
    if len(inputs) == 0:
        raise ValueError("`inputs` is empty. Please provide at least one time series.")
    first = inputs[0]
    if _is_array(first):
        return from_list_of_tensors(inputs, prediction_length)
    if not isinstance(first, Mapping):
        raise ValueError(f"Expected {_FORMS}; element 0 is a {type(first).__name__}.")
    if "context" in first:
        return [_check_prepared(i, item) for i, item in enumerate(inputs)]
    return from_list_of_dicts(inputs, prediction_length)


def _left_pad(contexts: list[np.ndarray]) -> np.ndarray:
    width = max(c.shape[-1] for c in contexts)
    out = np.full((sum(c.shape[0] for c in contexts), width), np.nan, np.float32)  # [B, T]
    row = 0
    for c in contexts:
        out[row : row + c.shape[0], width - c.shape[-1] :] = c
        row += c.shape[0]
    return out


def inference_batches(
    prepared: Sequence[PreparedInput], context_length: int, batch_size: int
) -> Iterator[Batch]:
    """Upstream's TEST-mode batches: whole tasks in order, each its own group, a batch closed
    once it holds ``batch_size`` rows or more; contexts cut to the last ``context_length`` steps
    and left-padded with NaN."""
    start = 0
    while start < len(prepared):
        stop, rows = start, 0
        while stop < len(prepared) and rows < batch_size:
            rows += prepared[stop]["context"].shape[0]
            stop += 1
        tasks = prepared[start:stop]
        sizes = [t["context"].shape[0] for t in tasks]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        yield Batch(
            context=_left_pad([t["context"][:, -context_length:] for t in tasks]),
            group_ids=np.repeat(np.arange(len(tasks), dtype=np.int64), sizes),
            future_covariates=np.concatenate([t["future_covariates"] for t in tasks]),
            target_idx_ranges=[
                (int(offsets[i]), int(offsets[i] + t["n_targets"])) for i, t in enumerate(tasks)
            ],
        )
        start = stop
