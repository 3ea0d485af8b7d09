"""Chronos-Bolt parity against chronos-forecasting (float32): the pieces, the whole model, the
pipeline (ragged and NaN contexts, truncation, long-horizon unrolling, quantile interpolation)
and the training loss, on tiny random models saved with ``save_pretrained``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
chronos = pytest.importorskip("chronos")

import jax.numpy as jnp  # noqa: E402

from bridges.chronos_bolt import from_hf  # noqa: E402
from bridges.reference.chronos_bolt_hf import tiny_chronos_bolt  # noqa: E402
from jaxts.models.chronos_bolt import ChronosBolt  # noqa: E402
from jaxts.pipelines import chronos_bolt as pipeline_module  # noqa: E402
from jaxts.pipelines.chronos_bolt import ChronosBoltPipeline  # noqa: E402
from tests.helpers import LAYER_TOL, MODEL_TOL  # noqa: E402

CONTEXT_LENGTH, HORIZON = 256, 16


def contexts(seed=0) -> np.ndarray:
    """[5, 300] float32 (longer than context_length): left padding, gaps, a fully-NaN series,
    a constant one (scale 0 -> eps)."""
    rng = np.random.default_rng(seed)
    t = np.arange(300)
    x = 10 + 4 * np.sin(t / 6.0)[None] + rng.normal(size=(5, 300))
    x[0, :230] = np.nan  # a short series, 70 steps observed
    x[1, 100:140] = np.nan
    x[1, -5:] = np.nan  # the last patch partly missing
    x[2] = np.nan
    x[3] = 4.0
    return x.astype(np.float32)


def close(got, want, tol=MODEL_TOL):
    """≤ tol in absolute terms, or relative to the magnitude (outputs of a random model reach
    ~50 in value)."""
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.fixture(scope="module", params=[True, False], ids=["reg", "no-reg"])
def pipes(request, tmp_path_factory):
    """(upstream ChronosBoltPipeline, jaxts ChronosBoltPipeline) on the same saved directory."""
    directory = tmp_path_factory.mktemp("bolt")
    tiny_chronos_bolt(
        directory,
        chronos=dict(
            context_length=CONTEXT_LENGTH, prediction_length=HORIZON,
            use_reg_token=request.param,
        ),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' eos_token_id note without REG token
        upstream = chronos.ChronosBoltPipeline.from_pretrained(directory)
    return upstream, ChronosBoltPipeline.from_pretrained(directory)


def upstream_model(pipes):
    return pipes[0].model


# ---- pieces -------------------------------------------------------------------------------


def test_encoder_matches_upstream(pipes):
    up, jp = pipes
    x = contexts()
    with torch.no_grad():
        enc_t, (loc_t, scale_t), emb_t, mask_t = up.model.encode(torch.from_numpy(x))
    enc, (loc, scale), keep = jp.model.encode(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(keep), mask_t.numpy() > 0)
    np.testing.assert_allclose(np.asarray(loc), loc_t.numpy(), rtol=LAYER_TOL)
    np.testing.assert_allclose(np.asarray(scale), scale_t.numpy(), rtol=LAYER_TOL)
    close(np.asarray(enc), enc_t.numpy(), LAYER_TOL)


def test_decoder_step_and_head_match_upstream(pipes):
    up, jp = pipes
    x = contexts()
    with torch.no_grad():
        enc_t, _, emb_t, mask_t = up.model.encode(torch.from_numpy(x))
        dec_t = up.model.decode(emb_t, mask_t, enc_t)  # [B, 1, D]
        head_t = up.model.output_patch_embedding(dec_t)
    enc = jnp.asarray(enc_t.numpy())
    keep = jnp.asarray(mask_t.numpy() > 0)
    got = jp.model.normalized_quantiles(enc, keep)
    close(np.asarray(got).reshape(head_t.shape), head_t.numpy(), LAYER_TOL)


# ---- whole model and pipeline --------------------------------------------------------------


def test_model_matches_upstream_quantile_preds(pipes):
    up, jp = pipes
    x = contexts()
    with torch.no_grad():
        want = up.model(context=torch.from_numpy(x)).quantile_preds.numpy()
    got = np.asarray(jp.model(jnp.asarray(x)))
    assert got.shape == (5, 9, HORIZON)
    assert np.isfinite(got).all()
    close(got, want)


def test_explicit_mask_matches_upstream(pipes):
    up, jp = pipes
    x = np.nan_to_num(contexts()[:2], nan=7.0)
    mask = (np.random.default_rng(3).uniform(size=x.shape) > 0.3).astype(np.float32)
    with torch.no_grad():
        want = up.model(torch.from_numpy(x), torch.from_numpy(mask)).quantile_preds.numpy()
    close(np.asarray(jp.model(jnp.asarray(x), jnp.asarray(mask))), want)


def ragged_list(seed=1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [(5 + rng.normal(size=n)).astype(np.float32) for n in (20, 131, 400, 64)]
    out[1][30:50] = np.nan
    out[3][:] = np.nan  # nothing observed
    return out


@pytest.mark.parametrize("horizon", [HORIZON, 5, HORIZON + 4], ids=["model", "short", "unrolled"])
def test_predict_matches_upstream(pipes, horizon):
    up, jp = pipes
    series = ragged_list()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the long-horizon recommendation
        want = up.predict([torch.from_numpy(s) for s in series], prediction_length=horizon)
        got = jp.predict(series, prediction_length=horizon)
    assert got.shape == (4, 9, horizon) and got.dtype == np.float32
    close(got, want.numpy())


def test_unrolling_equals_upstreams_given_the_same_model_calls(pipes, monkeypatch):
    """Three unrolled chunks. Each chunk feeds the previous chunk's quantiles back as context,
    which amplifies float32 rounding: on the fully-NaN series upstream's own float32 result
    moves 1e-3 away from its float64 one by the fourth chunk (jaxts stays closer). So the loop
    (context append, truncation, Q*Q -> Q reduction) is checked here with upstream's model
    behind both pipelines, and the model itself by the tests above."""
    up, jp = pipes

    def torch_forecast(context):
        with torch.no_grad():
            return up.model(context=torch.from_numpy(np.asarray(context))).quantile_preds.numpy()

    monkeypatch.setattr(jp, "_quantile_preds", torch_forecast)
    series = ragged_list()
    horizon = 3 * HORIZON + 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = up.predict([torch.from_numpy(s) for s in series], prediction_length=horizon)
        got = jp.predict(series, prediction_length=horizon)
    close(got, want.numpy(), LAYER_TOL)


def test_predict_on_a_2d_batch_longer_than_context_matches_upstream(pipes):
    up, jp = pipes
    x = contexts()
    want = up.predict(torch.from_numpy(x)).numpy()
    got = jp.predict(x)
    close(got, want)
    # what lies before the last context_length steps is ignored
    y = x.copy()
    y[:, : x.shape[1] - CONTEXT_LENGTH] = 1e6
    np.testing.assert_array_equal(jp.predict(y), got)


@pytest.mark.filterwarnings("ignore:We recommend keeping prediction length")
@pytest.mark.parametrize(
    "levels",
    [(0.1, 0.5, 0.9), (0.05, 0.25, 0.5, 0.77, 0.95)],
    ids=["trained-levels", "unseen-levels"],
)
def test_predict_quantiles_matches_upstream(pipes, levels):
    up, jp = pipes
    series = ragged_list()
    want_q, want_mean = up.predict_quantiles(
        [torch.from_numpy(s) for s in series], prediction_length=HORIZON + 4,
        quantile_levels=list(levels),
    )  # fmt: skip
    got_q, got_mean = jp.predict_quantiles(
        series, prediction_length=HORIZON + 4, quantile_levels=levels
    )
    assert got_q.shape == (4, HORIZON + 4, len(levels))
    close(got_q, want_q.numpy())
    close(got_mean, want_mean.numpy())


def test_levels_outside_the_trained_range_take_the_extremes_with_a_warning(pipes, caplog):
    """With ordered quantiles (a trained model's), levels below 0.1 / above 0.9 get the 0.1 /
    0.9 forecast: upstream pads the grid with its first and last value."""
    _, jp = pipes
    x = contexts()[:2]
    ordered = np.sort(jp.predict(x), axis=1)  # the random model's quantiles cross
    jp_predict = jp.predict
    try:
        jp.predict = lambda *a, **k: ordered
        q, mean = jp.predict_quantiles(x, quantile_levels=[0.01, 0.5, 0.99])
    finally:
        del jp.predict
    assert jp.predict == jp_predict
    np.testing.assert_array_equal(q[..., 0], ordered[:, 0])
    np.testing.assert_array_equal(q[..., 1], mean)
    np.testing.assert_array_equal(q[..., 2], ordered[:, -1])
    assert "not within the range" in caplog.text


def test_input_forms_are_equivalent(pipes):
    _, jp = pipes
    series = ragged_list()[:3]
    width = max(len(s) for s in series)
    stacked = np.stack([np.pad(s, (width - len(s), 0), constant_values=np.nan) for s in series])
    want = jp.predict(stacked)
    np.testing.assert_array_equal(jp.predict(series), want)
    np.testing.assert_array_equal(jp.predict([torch.from_numpy(s) for s in series]), want)
    np.testing.assert_array_equal(jp.predict(torch.from_numpy(stacked)), want)
    close(jp.predict(series[1]), want[1:2], LAYER_TOL)  # another batch size: another program


def test_bucket_padding_leaves_the_forecast_unchanged(pipes):
    _, jp = pipes
    x = contexts()[[0, 1, 3], -70:]  # 70 steps: 5 patches, the first one partial
    padded = np.pad(x, ((0, 0), (58, 0)), constant_values=np.nan)  # the 128 bucket
    close(np.asarray(jp.model(jnp.asarray(padded))), np.asarray(jp.model(jnp.asarray(x))), 1e-5)


def test_one_compile_per_length_bucket(pipes):
    _, jp = pipes
    rng = np.random.default_rng(0)
    jp.predict(rng.normal(size=(2, 70)).astype(np.float32))
    before = pipeline_module.TRACES[0]
    for n in (65, 100, 128):  # the same 128 bucket
        jp.predict(rng.normal(size=(2, n)).astype(np.float32))
    assert pipeline_module.TRACES[0] == before


def test_forecasts_follow_weight_updates_and_a_replaced_model(pipes, tmp_path):
    """The compiled forecaster is bound to the model once, yet reads its current weights, and
    a new ``pipe.model`` gets its own."""
    _, jp = pipes
    x = contexts()[:2, -64:]
    before = jp.predict(x)
    bias = jp.model.output_patch_embedding.output_layer.bias
    old = bias[...]
    bias[...] = old + 1.0
    try:
        assert not np.allclose(jp.predict(x), before)
    finally:
        bias[...] = old
    np.testing.assert_array_equal(jp.predict(x), before)
    model = jp.model
    tiny_chronos_bolt(tmp_path, seed=5, chronos=dict(context_length=CONTEXT_LENGTH,
                                                     prediction_length=HORIZON))  # fmt: skip
    try:
        jp.model = ChronosBoltPipeline.from_pretrained(tmp_path).model
        assert not np.allclose(jp.predict(x), before)
    finally:
        jp.model = model


def test_long_horizon_warns_and_limit_raises(pipes):
    _, jp = pipes
    x = contexts()[:1]
    with pytest.warns(UserWarning, match=f"prediction length <= {HORIZON}"):
        jp.predict(x, prediction_length=HORIZON + 1)
    with pytest.raises(ValueError, match="limit_prediction_length=False"):
        jp.predict(x, prediction_length=HORIZON + 1, limit_prediction_length=True)


@pytest.mark.parametrize(
    "inputs, kwargs, match",
    [
        (np.zeros((2, 3, 4)), {}, "1-D"),
        (np.array([1.0, np.inf]), {}, "inf"),
        (np.ones(10), {"prediction_length": 0}, "positive"),
        (np.ones(10), {"quantile_levels": [1.5]}, r"\[0, 1\]"),
    ],
    ids=["rank", "inf", "horizon", "levels"],
)
def test_bad_input_raises_value_error(pipes, inputs, kwargs, match):
    _, jp = pipes
    with pytest.raises(ValueError, match=match):
        jp.predict_quantiles(inputs, **kwargs)


def test_embed_matches_upstream(pipes):
    up, jp = pipes
    x = contexts()
    emb_t, (loc_t, scale_t) = up.embed(torch.from_numpy(x))
    emb, (loc, scale) = jp.embed(x)
    close(emb, emb_t.numpy(), LAYER_TOL)
    np.testing.assert_allclose(loc, loc_t.numpy(), rtol=LAYER_TOL)
    np.testing.assert_allclose(scale, scale_t.numpy(), rtol=LAYER_TOL)


# ---- training loss and dropout -------------------------------------------------------------


@pytest.mark.parametrize("target_steps", [HORIZON, 10])
def test_loss_matches_upstream(pipes, target_steps):
    up, jp = pipes
    x = contexts()
    target = np.random.default_rng(2).normal(10, 3, (5, target_steps)).astype(np.float32)
    target[1, 3:6] = np.nan
    with torch.no_grad():
        want = up.model(
            context=torch.from_numpy(x), target=torch.from_numpy(target.copy())
        ).loss.item()
    got = float(jp.model.loss(jnp.asarray(x), jnp.asarray(target)))
    np.testing.assert_allclose(got, want, rtol=MODEL_TOL)


def test_dropout_is_active_only_in_train_mode(tmp_path):
    tiny_chronos_bolt(tmp_path, chronos=dict(context_length=64, prediction_length=16))
    model: ChronosBolt = from_hf(tmp_path)
    x = jnp.asarray(contexts()[:2, -64:])
    first = np.asarray(model(x))
    np.testing.assert_array_equal(np.asarray(model(x)), first)  # eval: deterministic
    model.train()
    assert not np.allclose(np.asarray(model(x)), first)
