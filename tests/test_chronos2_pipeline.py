"""``Chronos2Pipeline`` against chronos-forecasting's ``Chronos2Pipeline`` on one tiny random
Chronos-2 saved with ``save_pretrained``: every input form, cross-learning, several batches,
long horizons, quantiles, data frames; the soft-mask limits; compile reuse; errors."""

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from chronos import Chronos2Pipeline as UpstreamPipeline

from bridges.reference.chronos2_hf import tiny_chronos2
from jaxts.checkpoint import save_model
from jaxts.pipelines.chronos2 import Chronos2Pipeline, expand_bias_for_paths
from jaxts.soft_mask import MASK_VALUE, SoftGroupMask
from tests.helpers import MODEL_TOL

P = 16  # patch size
MAX_PATCHES = 2  # model_prediction_length 32: a horizon of 40 or 70 unrolls once or twice
RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("chronos2_tiny")
    tiny_chronos2(directory, context_length=64, max_output_patches=MAX_PATCHES)
    return UpstreamPipeline.from_pretrained(directory), Chronos2Pipeline.from_pretrained(directory)


def _series(*shape, nan_at=()):
    x = (np.cumsum(RNG.normal(size=shape), -1) + RNG.uniform(-3, 3, shape[:-1] + (1,))).astype(
        np.float32
    )
    x[..., list(nan_at)] = np.nan
    return x


def _dicts(h, lengths=(30, 50, 20)):
    """Tasks with a past-only numeric, a known-future numeric and a known-future categorical
    covariate (target-encoded, with a future value never seen in the past)."""
    out = []
    for n in lengths:
        out.append({
            "target": _series(n, nan_at=[2]),
            "past_covariates": {"past_only": _series(n), "promo": _series(n),
                                "kind": RNG.choice(["a", "b"], n)},
            "future_covariates": {"promo": _series(h), "kind": RNG.choice(["a", "b", "c"], h)},
        })  # fmt: skip
    return out


def _upstream(pipe, inputs, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [x.numpy() for x in pipe.predict(inputs, **kw)]


def _ours(pipe, inputs, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe.predict(inputs, **kw)


def assert_forecasts_close(got, want, unrolled=False):
    """Per task. A long horizon's weighted quantiles use probability masses normalised by a
    float32 sum whose rounding differs by an ulp between torch's vectorised order and numpy's;
    with masses ~1e-4 apart at the extreme levels this moves a quantile by up to ~1e-5 of the
    task's spread (this random model's forecasts span thousands), so unrolled horizons are
    compared relative to the task's scale. With torch's masses the results are identical."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert isinstance(g, np.ndarray) and g.dtype == np.float32 and g.shape == w.shape
        atol = MODEL_TOL * (max(1.0, float(np.abs(w).max())) if unrolled else 1.0)
        np.testing.assert_allclose(g, w, rtol=MODEL_TOL, atol=atol)


CASES = {
    "3d_array": (_series(3, 2, 40, nan_at=[0, 1, 7]), {}),
    "ragged_1d_2d": ([_series(40, nan_at=[5]), _series(3, 64), _series(10), _series(2, 90)], {}),
    "dicts_covariates": (_dicts(24), dict(prediction_length=24)),
    "cross_learning": ([_series(30), _series(2, 50)], dict(cross_learning=True)),
    "several_batches": (
        [_series(2, 40), _series(40), _series(3, 33), _series(20)],
        dict(batch_size=3, prediction_length=20),
    ),  # fmt: skip
    "context_length_cut": (_series(2, 1, 60), dict(context_length=24)),
}
LONG = {
    "long_3d_array": (_series(2, 2, 40, nan_at=[3]), dict(prediction_length=70)),
    "long_dicts_covariates": (_dicts(70), dict(prediction_length=70, batch_size=4)),
    "long_cross_learning": (
        [_series(30), _series(2, 50)],
        dict(prediction_length=40, cross_learning=True),
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", CASES)
def test_predict_matches_upstream(pipes, case):
    up, ours = pipes
    inputs, kw = CASES[case]
    assert_forecasts_close(_ours(ours, inputs, **kw), _upstream(up, inputs, **kw))


@pytest.mark.parametrize("case", LONG)
def test_long_horizon_matches_upstream(pipes, case):
    up, ours = pipes
    inputs, kw = LONG[case]
    got = _ours(ours, inputs, **kw)
    assert got[0].shape[-1] == kw["prediction_length"] > ours.model_prediction_length
    assert_forecasts_close(got, _upstream(up, inputs, **kw), unrolled=True)


def test_predict_quantiles_matches_upstream(pipes, caplog):
    up, ours = pipes
    inputs = [_series(40), _series(2, 50)]
    levels = [0.005, 0.1, 0.25, 0.5, 0.9, 0.995]  # 0.25 interpolated, 0.005/0.995 clamped
    with caplog.at_level(logging.WARNING, logger="jaxts.pipelines.chronos2"):
        q, mean = ours.predict_quantiles(inputs, prediction_length=20, quantile_levels=levels)
    assert "not within the range" in caplog.text
    q_up, mean_up = up.predict_quantiles(inputs, prediction_length=20, quantile_levels=levels)
    assert_forecasts_close(q, [x.numpy() for x in q_up])
    assert_forecasts_close(mean, [x.numpy() for x in mean_up])
    assert q[1].shape == (2, 20, len(levels))


def _frames():
    rows, future_rows = [], []
    for item, n in (("b", 40), ("a", 55)):
        ts = pd.date_range("2024-01-01", periods=n + 20, freq="D")
        y, temp = _series(2, n), _series(n + 20)
        for t in range(n):
            rows.append({"item_id": item, "timestamp": ts[t], "target": y[0, t], "y2": y[1, t],
                         "temp": temp[t], "kind": "xy"[t % 2], "past": RNG.normal()})  # fmt: skip
        for t in range(n, n + 20):
            future_rows.append({"item_id": item, "timestamp": ts[t], "temp": temp[t],
                                "kind": "xyz"[t % 3]})  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(future_rows)


@pytest.mark.parametrize("target", ["target", ["target", "y2"]])
def test_predict_df_matches_upstream(pipes, target):
    up, ours = pipes
    df, future = _frames()
    kw = dict(
        future_df=future, target=target, prediction_length=20, quantile_levels=[0.1, 0.5, 0.8]
    )
    got = ours.predict_df(df, **kw)
    want = up.predict_df(df, **kw)
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got.drop(columns=["predictions", "0.1", "0.5", "0.8"]),
                                  want.drop(columns=["predictions", "0.1", "0.5", "0.8"]))  # fmt: skip
    for col in ["predictions", "0.1", "0.5", "0.8"]:
        np.testing.assert_allclose(got[col], want[col], rtol=MODEL_TOL, atol=MODEL_TOL)


# ---- soft masking ---------------------------------------------------------------------------


@pytest.mark.parametrize("horizon", [20, 40])
def test_soft_mask_limits_equal_upstream_hard_and_cross_learning(pipes, horizon):
    """Similarity 1 everywhere: bias 0, the same as cross-learning; similarity 0: bias at the
    mask value, the same as hard groups. Past max_output_patches (40) through the unrolled
    paths, whose bias is expanded per path."""
    up, ours = pipes
    inputs = [_series(30), _series(2, 50), _series(40)]  # 4 series in 3 groups
    kw = dict(prediction_length=horizon)
    unrolled = horizon > ours.model_prediction_length
    full = SoftGroupMask(similarity=np.ones((4, 4)))
    assert_forecasts_close(_ours(ours, inputs, soft_mask=full, **kw),
                           _upstream(up, inputs, cross_learning=True, **kw), unrolled)  # fmt: skip
    hard = SoftGroupMask(similarity=np.zeros((4, 4)))
    assert_forecasts_close(_ours(ours, inputs, soft_mask=hard, **kw), _upstream(up, inputs, **kw),
                           unrolled)  # fmt: skip
    # and in between, a forecast that is neither
    half = _ours(ours, inputs, soft_mask=SoftGroupMask(similarity=np.full((4, 4), 0.5)), **kw)
    assert not np.allclose(half[0], _ours(ours, inputs, **kw)[0], atol=1e-3)


def test_bias_expansion_per_path():
    bias = np.array([[0.0, -1.0], [-2.0, 0.0]], np.float32)
    out = expand_bias_for_paths(bias, 3)  # rows b * 3 + path
    assert out.shape == (6, 6)
    assert out[0 * 3 + 1, 1 * 3 + 1] == -1.0 and out[1 * 3 + 2, 0 * 3 + 2] == -2.0
    assert out[0 * 3 + 1, 1 * 3 + 2] == MASK_VALUE and out[0, 1] == MASK_VALUE


# ---- compiles, loading, errors --------------------------------------------------------------


def test_one_compile_per_bucket(pipes):
    _, ours = pipes
    ours.predict(_series(5, 1, 40), prediction_length=16)
    before = ours.trace_count
    # 7 series of another length in the same buckets (8 rows, 64 steps): no new program
    ours.predict([_series(50) for _ in range(7)], prediction_length=10)
    ours.predict(_series(5, 1, 40), prediction_length=16)
    assert ours.trace_count == before
    ours.predict(_series(9, 1, 40), prediction_length=16)  # 16 rows: a new bucket
    assert ours.trace_count == before + 1


def test_jaxts_checkpoint_loads(pipes, tmp_path):
    _, ours = pipes
    save_model(ours.model, tmp_path / "ckpt")
    again = Chronos2Pipeline.from_pretrained(tmp_path / "ckpt")
    x = _series(2, 1, 40)
    np.testing.assert_array_equal(_ours(again, x)[0], _ours(ours, x)[0])
    assert (again.model_context_length, again.model_prediction_length) == (64, MAX_PATCHES * P)
    assert again.quantiles == ours.quantiles and len(again.quantiles) == 21


def test_warnings_as_upstream(pipes):
    _, ours = pipes
    with pytest.warns(UserWarning, match="prediction length <= 32"):
        ours.predict(_series(1, 1, 30), prediction_length=40)
    with pytest.warns(UserWarning, match="Resetting context_length to 64"):
        ours.predict(_series(1, 1, 30), prediction_length=16, context_length=100)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(prediction_length=0), "prediction_length must be a positive integer"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(context_length=-1), "context_length must be a positive integer"),
        (dict(prediction_length=40, limit_prediction_length=True), "limit_prediction_length"),
        (dict(unrolled_quantiles=[0.1, 0.33]), "subset of the model's quantiles"),
        (dict(soft_mask=SoftGroupMask(), cross_learning=True), "exclude each other"),
        (dict(max_output_patches=0), "max_output_patches must be a positive integer"),
    ],
)
def test_bad_arguments(pipes, kw, match):
    _, ours = pipes
    with pytest.raises(ValueError, match=match):
        _ours(ours, _series(2, 1, 30), **kw)


def test_bad_inputs(pipes):
    _, ours = pipes
    x = _series(2, 1, 30)
    x[0, 0, 3] = np.inf
    with pytest.raises(ValueError, match="inf"):
        ours.predict(x)
    with pytest.raises(ValueError, match="3-d"):
        ours.predict(_series(2, 30))
    with pytest.raises(ValueError, match="same n_targets"):
        ours.predict([{"target": _series(20)}, {"target": _series(2, 20)}])
    with pytest.raises(ValueError, match="quantile_levels"):
        ours.predict_quantiles(_series(1, 1, 30), quantile_levels=[1.5])
    with pytest.raises(TypeError):
        ours.predict(_series(1, 1, 30), num_samples=3)  # not an argument of Chronos-2


def test_torch_not_needed():
    """The pipeline module imports neither torch nor chronos (checked in a fresh process)."""
    from tests.helpers import run_on_devices

    code = (
        "import sys, jaxts.pipelines.chronos2\n"
        "assert 'torch' not in sys.modules and 'chronos' not in sys.modules\nprint('OK')"
    )
    run_on_devices(code, "OK", n_devices=1)
