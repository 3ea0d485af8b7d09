"""Chronos-2 input handling against chronos-forecasting's ``preprocess`` / ``Chronos2Dataset``
(TEST mode): the same arrays, group ids, future covariates and target ranges for every input
form, and one clear ``ValueError`` for each malformed input that upstream rejects."""

import numpy as np
import pandas as pd
import pytest
import torch
from chronos.chronos2 import preprocess as ref_preprocess
from chronos.chronos2.dataset import Chronos2Dataset, DatasetMode
from chronos.df_utils import make_future_df as ref_make_future_df
from chronos.df_utils import validate_and_normalize_df as ref_validate_and_normalize_df

from jaxts.pipelines import chronos2_df
from jaxts.pipelines.chronos2_df import from_data_frame
from jaxts.pipelines.chronos2_inputs import (
    from_list_of_dicts,
    inference_batches,
    prepare_inputs,
)

H = 5  # prediction_length
RNG = np.random.default_rng(0)


def _series(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _with_nans(x, idx):
    x = x.copy()
    x[..., idx] = np.nan
    return x


def _dicts(n_targets=1, categorical=True, future=True, lengths=(12, 20, 7)):
    """List-of-dicts input: a numeric past-only, a numeric known-future and (optionally) a
    categorical known-future covariate with a NaN category and a future value never seen."""
    out = []
    for i, n in enumerate(lengths):
        target = _series(n) if n_targets == 1 else _series(n_targets, n)
        d = {"target": _with_nans(target, [1]), "past_covariates": {
            "price": _series(n), "promo": _series(n)}}  # fmt: skip
        if categorical:
            cats = RNG.choice(["a", "b", "c"], size=n).astype(object)
            cats[0] = None if i == 0 else cats[0]
            d["past_covariates"]["weather"] = cats
        if future:
            d["future_covariates"] = {"promo": _series(H)}
            if categorical:
                d["future_covariates"]["weather"] = np.array(["a", "zzz", None, "c", "b"], object)
        out.append(d)
    return out


CASES = {
    "3d_array": _with_nans(_series(5, 2, 40), [0, 3, 17]),
    "3d_array_int": RNG.integers(0, 9, (3, 1, 20)),
    "ragged_1d_2d": [_series(30), _with_nans(_series(3, 50), [4, 5]), _series(8), _series(2, 64)],
    "dicts_target_encoded": _dicts(),
    "dicts_ordinal_multi_target": _dicts(n_targets=2),
    "dicts_past_only": _dicts(categorical=False, future=False),
    "dicts_torch_tensors": [
        {
            "target": torch.randn(15),
            "past_covariates": {"x": torch.randn(15)},
            "future_covariates": {"x": torch.randn(H)},
        }
    ],  # fmt: skip
    "dicts_unavailable_future": [
        {
            "target": _series(9),
            "past_covariates": {"x": _series(9)},
            "future_covariates": {"x": None},
        }
    ],
}


def _reference_batches(inputs, context_length, batch_size):
    ds = Chronos2Dataset(inputs, context_length=context_length, prediction_length=H,
                         batch_size=batch_size, output_patch_size=16, mode=DatasetMode.TEST)  # fmt: skip
    return list(ds)


def _assert_same_batches(ours, ref):
    assert len(ours) == len(ref)
    for b, r in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(b.context, r["context"].numpy())
        np.testing.assert_array_equal(b.group_ids, r["group_ids"].numpy())
        np.testing.assert_array_equal(b.future_covariates, r["future_covariates"].numpy())
        assert b.target_idx_ranges == r["target_idx_ranges"]
        assert b.context.dtype == np.float32 and b.future_covariates.dtype == np.float32


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("context_length", "batch_size"), [(64, 256), (16, 4), (10, 1)])
def test_batches_match_upstream(case, context_length, batch_size):
    inputs = CASES[case]
    ours = list(inference_batches(prepare_inputs(inputs, H), context_length, batch_size))
    _assert_same_batches(ours, _reference_batches(inputs, context_length, batch_size))


def test_prepared_inputs_pass_through():
    """Upstream's own PreparedInput dicts (torch tensors) are accepted as they are."""
    prepared = ref_preprocess.from_list_of_dicts(_dicts(), prediction_length=H)
    ours = list(inference_batches(prepare_inputs(prepared, H), 16, 8))
    _assert_same_batches(ours, _reference_batches(prepared, 16, 8))


@pytest.mark.parametrize("use_target_encoding", [True, False])
def test_known_covariates_names_match_upstream(use_target_encoding):
    data = _dicts(future=False)
    kw = dict(prediction_length=H, known_covariates_names=["weather"],
              use_target_encoding=use_target_encoding)  # fmt: skip
    ours, ref = from_list_of_dicts(data, **kw), ref_preprocess.from_list_of_dicts(data, **kw)
    for o, r in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(o["context"], r["context"].numpy())
        np.testing.assert_array_equal(o["future_covariates"], r["future_covariates"].numpy())
        assert (o["n_targets"], o["n_covariates"], o["n_future_covariates"]) == (
            r["n_targets"], r["n_covariates"], r["n_future_covariates"])  # fmt: skip


def _frames():
    """An unsorted long frame (3 items, ragged, a bool, a categorical and numeric covariates)
    and its future frame (shuffled) with the known covariates."""
    rows, future_rows = [], []
    for item, n in (("b", 9), ("a", 14), ("c", 6)):
        ts = pd.date_range("2024-01-01", periods=n + H, freq="h")
        for t in range(n):
            rows.append({"item_id": item, "timestamp": ts[t], "target": RNG.normal(),
                         "y2": RNG.normal(), "temp": RNG.normal(), "hol": bool(t % 3 == 0),
                         "kind": RNG.choice(["x", "y", None])})  # fmt: skip
        for t in range(n, n + H):
            future_rows.append({"item_id": item, "timestamp": ts[t], "temp": RNG.normal(),
                                "kind": RNG.choice(["x", "y", "new"])})  # fmt: skip
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)
    future = pd.DataFrame(future_rows).sample(frac=1.0, random_state=1).reset_index(drop=True)
    return df, future


@pytest.mark.parametrize("targets", [["target"], ["target", "y2"]])
@pytest.mark.parametrize("with_future", [True, False])
def test_data_frame_matches_upstream(targets, with_future):
    df, future = _frames()
    future = future if with_future else None
    kw = dict(target_columns=targets, prediction_length=H, future_df=future)
    ours, ref = from_data_frame(df, **kw), ref_preprocess.from_data_frame(df, **kw)
    for o, r in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(o["context"], r["context"].numpy())
        np.testing.assert_array_equal(o["future_covariates"], r["future_covariates"].numpy())
        assert o["n_future_covariates"] == r["n_future_covariates"]
    norm, norm_future = chronos2_df.validate_and_normalize_df(df, future, targets, H)
    ref_norm, ref_future = ref_validate_and_normalize_df(df, future, targets, H)
    pd.testing.assert_frame_equal(norm, ref_norm)
    pd.testing.assert_frame_equal(
        chronos2_df.make_future_df(norm, H), ref_make_future_df(ref_norm, H)
    )
    if with_future:
        pd.testing.assert_frame_equal(norm_future, ref_future)


def _bad_dicts():
    good = {"target": _series(10), "past_covariates": {"x": _series(10)}}
    return {
        "unknown_key": ([{**good, "static": 1}], "invalid keys"),
        "no_target": ([{"past_covariates": {}}], "'target'"),
        "target_3d": ([{"target": _series(1, 1, 10)}], "1-d or 2-d"),
        "past_wrong_length": (
            [{"target": _series(10), "past_covariates": {"x": _series(9)}}],
            "length equal to the length of `target`",
        ),  # fmt: skip
        "future_wrong_length": (
            [{**good, "future_covariates": {"x": _series(H + 1)}}],
            f"prediction_length={H}",
        ),  # fmt: skip
        "future_not_in_past": ([{**good, "future_covariates": {"z": _series(H)}}], "subset"),
        "past_not_dict": ([{"target": _series(10), "past_covariates": [1, 2]}], "Expected dict"),
        "n_targets_differ": ([good, {"target": _series(2, 10)}], "same n_targets"),
        "past_keys_differ": ([good, {"target": _series(10)}], "same keys"),
        "availability_differs": (
            [
                {**good, "future_covariates": {"x": None}},
                {**good, "future_covariates": {"x": _series(H)}},
            ],
            "agree on whether",
        ),
    }


BAD_INPUTS = {
    **_bad_dicts(),
    "2d_array": (_series(3, 10), "3-d"),
    "4d_list_element": ([_series(1, 2, 10)], "1-d or 2-d"),
    "empty_list": ([], "empty"),
    "empty_array": (np.zeros((0, 1, 5), np.float32), "empty"),
    "list_of_lists": ([[1.0, 2.0], [3.0]], "list of 1-d/2-d arrays"),
    "mixed_list": ([_series(5), {"target": _series(5)}], "element 1"),
    "data_frame": (pd.DataFrame({"target": [1.0, 2.0]}), "predict_df"),
    "strings": (np.array([[["a", "b"]]]), "numeric"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_one_clear_error(case):
    inputs, match = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=match) as info:
        prepare_inputs(inputs, H)
    assert "\n" not in str(info.value)
    with pytest.raises(Exception):  # noqa: B017 - upstream rejects it too, in its own way
        _reference_batches(inputs, 16, 8)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda df, fut: from_data_frame(df, ["nope"], H), "Missing columns"),
        (lambda df, fut: from_data_frame(df.assign(target="s"), ["target"], H), "numeric"),
        (
            lambda df, fut: from_data_frame(df, ["target"], H, future_df=fut.iloc[1:]),
            "rows per item",
        ),
        (
            lambda df, fut: from_data_frame(df, ["target"], H, future_df=fut.assign(target=0.0)),
            "target columns",
        ),  # fmt: skip
        (
            lambda df, fut: from_data_frame(df, ["target"], H, future_df=fut.assign(q=0.0)),
            "Extra columns",
        ),  # fmt: skip
        (
            lambda df, fut: from_data_frame(df, ["target"], H, future_df=fut[fut.item_id != "a"]),
            "same time series IDs",
        ),  # fmt: skip
        (
            lambda df, fut: from_data_frame(
                df, ["target"], H, fut, known_covariates_names=["temp"]
            ),
            "Cannot provide both",
        ),  # fmt: skip
    ],
)
def test_bad_data_frames(call, match):
    df, future = _frames()
    with pytest.raises(ValueError, match=match):
        call(df, future)
