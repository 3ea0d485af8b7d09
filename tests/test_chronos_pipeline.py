"""``ChronosT5Pipeline`` against chronos-forecasting's ``ChronosPipeline`` on a tiny random model:
embeddings and greedy forecasts exactly, sampled forecasts in distribution, and input handling."""

import inspect
import logging

import jax
import numpy as np
import pandas as pd
import pytest
import torch
from chronos import ChronosPipeline
from chronos.utils import left_pad_and_stack_1D
from scipy.stats import ks_2samp

import jaxts.pipelines.chronos_t5 as pipeline_module
from bridges.reference.chronos_t5_hf import chronos_config, tiny_hf_chronos
from jaxts.checkpoint import save_model
from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline, prepare_context

CONTEXT_LENGTH = 128  # two length buckets (64, 128), so left padding is exercised
PREDICTION_LENGTH = 8
CHRONOS = chronos_config(context_length=CONTEXT_LENGTH, prediction_length=PREDICTION_LENGTH)


def make_series(length, seed=0, level=10.0):
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return (level + 5 * np.sin(t / 3.0 + seed) + rng.normal(size=length)).astype(np.float32)


X = make_series(50)  # one series: bucket 64
# three series of different lengths and scales, one with a gap: [3, 100], bucket 128
BATCH = [make_series(30, 1), 100 * make_series(50, 2), make_series(100, 3, level=-4.0)]
BATCH[2][40:43] = np.nan


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """(upstream, ours) for one tiny random Chronos-T5 saved with save_pretrained."""
    tm = tiny_hf_chronos(CHRONOS)
    with torch.no_grad():
        # Sharpen the next-token distribution (the logits are linear in this weight): with
        # N(0, 0.3) weights the top-50 logits span ~0.1, and no sampling setting would matter.
        tm.decoder.final_layer_norm.weight.mul_(30.0)
    directory = tmp_path_factory.mktemp("chronos_tiny")
    tm.save_pretrained(directory)
    return ChronosPipeline.from_pretrained(directory), ChronosT5Pipeline.from_pretrained(directory)


def to_torch(context):
    if isinstance(context, list):
        return [torch.from_numpy(c) for c in context]
    return torch.from_numpy(context)


# ---- embeddings ---------------------------------------------------------------------------


def _nan_inside():
    x = make_series(40, 4)
    x[[3, 17, 18]] = np.nan
    return x


def _left_padded():
    x = np.stack([make_series(50, s) for s in range(3)])
    x[0, :20] = np.nan
    x[2, :49] = np.nan  # one observed value
    return x


def _spiky():
    x = make_series(60, 5)
    x[10] = 1e4  # far beyond high_limit * scale: clipped to the last bin
    x[11] = -1e4
    return x


EMBED_CASES = {
    "nan-inside": _nan_inside,
    "length-1": lambda: np.float32([3.5]),
    "length-7": lambda: make_series(7, 6),
    "length-9": lambda: make_series(9, 7),
    "exactly-context-length": lambda: make_series(CONTEXT_LENGTH, 8),
    "longer-than-context": lambda: make_series(CONTEXT_LENGTH + 37, 9),
    "list-of-lengths": lambda: [make_series(5, 10), make_series(30, 11), make_series(140, 12)],
    "2d-left-padded": _left_padded,
    "all-zero-scale-1": lambda: np.zeros(20, np.float32),
    "spiky": _spiky,
}


@pytest.mark.parametrize("case", list(EMBED_CASES))
def test_embed_matches_upstream(pipes, case):
    tp, jp = pipes
    context = EMBED_CASES[case]()
    want_emb, want_scale = tp.embed(to_torch(context))
    emb, scale = jp.embed(context)
    assert emb.shape == tuple(want_emb.shape)
    n = prepare_context(context).shape[1]
    assert emb.shape[1] == min(n, CONTEXT_LENGTH) + 1  # + EOS
    np.testing.assert_allclose(emb, want_emb.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(scale, want_scale.numpy())


# ---- greedy forecasts: exact --------------------------------------------------------------


@pytest.mark.parametrize(
    "horizon, num_samples",
    [(5, 3), (PREDICTION_LENGTH, 3), (21, 3), (PREDICTION_LENGTH, 4)],
    ids=["H<pl", "H=pl", "H>pl", "even-S"],
)
def test_greedy_forecast_matches_upstream(pipes, horizon, num_samples):
    """top_k=1 leaves one candidate, so the forecasts must be identical; H > prediction_length
    runs the loop (median appended, context re-tokenised with a new scale) three times. Three
    series of different lengths, scales and a gap: rows of different series must not mix."""
    tp, jp = pipes
    kw = dict(prediction_length=horizon, num_samples=num_samples, top_k=1)
    want = tp.predict(to_torch(BATCH), **kw).numpy()
    got = jp.predict(BATCH, **kw)
    assert got.shape == (3, num_samples, horizon) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["predict", "predict_quantiles", "embed"])
def test_parameters_are_upstreams(name):
    """Same names in the same order as ``ChronosPipeline`` (plus our keyword-only ``key``)."""
    ours = inspect.signature(getattr(ChronosT5Pipeline, name)).parameters
    theirs = inspect.signature(getattr(ChronosPipeline, name)).parameters
    assert [p for p in ours if p != "key"] == list(theirs)
    if "key" in ours:
        assert ours["key"].kind is inspect.Parameter.KEYWORD_ONLY


def test_upstream_keyword_calls_work_unchanged(pipes):
    tp, jp = pipes
    kw = dict(prediction_length=5, num_samples=3, top_k=1, limit_prediction_length=True)
    want = tp.predict(inputs=to_torch(BATCH), **kw).numpy()
    np.testing.assert_array_equal(jp.predict(inputs=BATCH, **kw), want)
    levels = dict(quantile_levels=[0.1, 0.5], num_samples=3, top_k=1)
    want_q, want_mean = tp.predict_quantiles(inputs=to_torch(X), prediction_length=5, **levels)
    got_q, got_mean = jp.predict_quantiles(inputs=X, prediction_length=5, **levels)
    np.testing.assert_allclose(got_q, want_q.numpy(), rtol=1e-6)
    np.testing.assert_allclose(got_mean, want_mean.numpy(), rtol=1e-6)
    want_emb, _ = tp.embed(context=to_torch(X))
    np.testing.assert_allclose(jp.embed(context=X)[0], want_emb.numpy(), atol=1e-5)


def test_long_horizon_warns_and_limit_raises(pipes, caplog):
    _, jp = pipes
    with caplog.at_level(logging.WARNING, logger=pipeline_module.__name__):
        jp.predict(BATCH, prediction_length=21, num_samples=3, top_k=1)
    assert any(
        "We recommend keeping prediction length <= 8" in r.getMessage() for r in caplog.records
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=pipeline_module.__name__):
        jp.predict(BATCH, prediction_length=PREDICTION_LENGTH, num_samples=3, top_k=1)
    assert not caplog.records
    with pytest.raises(ValueError, match="limit_prediction_length=False"):
        jp.predict(BATCH, prediction_length=9, limit_prediction_length=True)


@pytest.mark.parametrize("num_samples", [5, 6], ids=["odd", "even"])
def test_long_horizon_loop_appends_torch_median_and_retokenises(pipes, monkeypatch, num_samples):
    """Sampled, so the median matters: the second chunk must see exactly the ids that
    upstream's tokenizer gives for ``cat(context, samples.median(dim=1).values)`` (the lower
    middle sample for even counts), and its values must use that context's new scale."""
    tp, jp = pipes
    calls = []
    real = pipeline_module.sample_tokens

    def spy(model, ids, mask, key, **kw):
        tokens = real(model, ids, mask, key, **kw)
        calls.append((np.array(ids), np.array(mask), np.array(tokens)))
        return tokens

    monkeypatch.setattr(pipeline_module, "sample_tokens", spy)
    horizon = PREDICTION_LENGTH + 5
    out = jp.predict(BATCH, horizon, num_samples=num_samples, key=jax.random.key(3))
    assert len(calls) == 2 and out.shape == (3, num_samples, horizon)
    first = out[..., :PREDICTION_LENGTH]
    middle = np.sort(first, axis=1)[:, num_samples // 2 - 1 : num_samples // 2 + 1]
    if num_samples % 2 == 0:  # lower and upper middle differ somewhere: the test can tell
        assert (middle[:, 0] != middle[:, 1]).any()
    median = torch.from_numpy(first).median(dim=1).values
    context = torch.cat([left_pad_and_stack_1D(to_torch(BATCH)), median], dim=-1)
    want_ids, want_mask, want_scale = tp.tokenizer.context_input_transform(context)
    ids, mask, tokens = calls[1]
    n = want_ids.shape[1]
    np.testing.assert_array_equal(ids[:, -n:], want_ids.numpy())
    np.testing.assert_array_equal(mask[:, -n:], want_mask.numpy())
    assert not mask[:, :-n].any()  # bucket padding, masked
    want_values = tp.tokenizer.output_transform(torch.from_numpy(tokens).long(), want_scale)
    np.testing.assert_array_equal(out[..., PREDICTION_LENGTH:], want_values.numpy())


# ---- sampled forecasts: same distribution -------------------------------------------------

KS_SAMPLES, KS_HORIZON, KS_ALPHA = 800, 6, 1e-3


def ks_min_p(a: np.ndarray, b: np.ndarray) -> float:
    """Bonferroni-corrected smallest two-sample KS p-value over the forecast steps."""
    p = [ks_2samp(a[:, h], b[:, h]).pvalue for h in range(a.shape[1])]
    return min(1.0, min(p) * len(p))


@pytest.fixture(scope="module")
def upstream_default_samples(pipes):
    torch.manual_seed(0)
    out = pipes[0].predict(to_torch(X), KS_HORIZON, num_samples=KS_SAMPLES)
    return out.numpy()[0]


SAMPLING = {
    "default": {},  # top_k 50, temperature 1, top_p 1 from chronos_config
    "t0.7-p0.8-k0": dict(temperature=0.7, top_p=0.8, top_k=0),
}


@pytest.mark.parametrize("setting", list(SAMPLING))
def test_sampled_forecasts_match_upstream_in_distribution(pipes, upstream_default_samples, setting):
    tp, jp = pipes
    kw = SAMPLING[setting]
    if kw:
        torch.manual_seed(1)
        want = tp.predict(to_torch(X), KS_HORIZON, num_samples=KS_SAMPLES, **kw).numpy()[0]
    else:
        want = upstream_default_samples
    got = jp.predict(X, KS_HORIZON, num_samples=KS_SAMPLES, key=jax.random.key(11), **kw)[0]
    assert len(np.unique(got[:, 0])) > 5  # really sampled
    assert ks_min_p(got, want) > KS_ALPHA


def test_ks_check_has_power(pipes, upstream_default_samples):
    """The same check tells temperature 3 from temperature 1 (and top-p 0.8 from off)."""
    _, jp = pipes
    hot = jp.predict(X, KS_HORIZON, num_samples=KS_SAMPLES, key=jax.random.key(11), temperature=3.0)
    assert ks_min_p(hot[0], upstream_default_samples) < KS_ALPHA
    kw = SAMPLING["t0.7-p0.8-k0"]
    nucleus = jp.predict(X, KS_HORIZON, num_samples=KS_SAMPLES, key=jax.random.key(11), **kw)
    assert ks_min_p(nucleus[0], upstream_default_samples) < KS_ALPHA


# ---- quantiles and keys -------------------------------------------------------------------


def test_predict_quantiles_equals_quantiles_of_predict(pipes):
    _, jp = pipes
    key = jax.random.key(5)
    levels = [0.1, 0.5, 0.9]
    q, mean = jp.predict_quantiles(
        BATCH, PREDICTION_LENGTH, quantile_levels=levels, num_samples=6, key=key
    )
    samples = jp.predict(BATCH, PREDICTION_LENGTH, num_samples=6, key=key)
    assert q.shape == (3, PREDICTION_LENGTH, 3) and mean.shape == (3, PREDICTION_LENGTH)
    want = np.moveaxis(np.quantile(samples, levels, axis=1), 0, -1)
    np.testing.assert_allclose(q, want, rtol=1e-6, atol=0)
    np.testing.assert_allclose(mean, samples.mean(axis=1), rtol=1e-6, atol=0)
    # upstream's torch.quantile (linear interpolation) on the same samples
    s = torch.from_numpy(samples).swapaxes(1, 2)
    torch_q = torch.quantile(s, torch.tensor(levels), dim=-1).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(q, torch_q, rtol=1e-5, atol=1e-5)
    q_default, _ = jp.predict_quantiles(BATCH, PREDICTION_LENGTH, num_samples=6, key=key)
    assert q_default.shape == (3, PREDICTION_LENGTH, 9)
    np.testing.assert_array_equal(q_default[..., [0, 4, 8]], q)
    for bad in ([], [0.5, 1.5], [[0.5]]):
        with pytest.raises(ValueError, match="quantile_levels"):
            jp.predict_quantiles(BATCH, quantile_levels=bad)


def test_key_semantics(pipes):
    _, jp = pipes
    kw = dict(prediction_length=PREDICTION_LENGTH, num_samples=6)
    a = jp.predict(BATCH, key=jax.random.key(1), **kw)
    np.testing.assert_array_equal(a, jp.predict(BATCH, key=jax.random.key(1), **kw))
    assert not np.array_equal(a, jp.predict(BATCH, key=jax.random.key(2), **kw))
    default = jp.predict(BATCH, **kw)
    np.testing.assert_array_equal(default, jp.predict(BATCH, **kw))
    np.testing.assert_array_equal(default, jp.predict(BATCH, key=jax.random.key(0), **kw))
    assert not np.array_equal(default, a)
    assert len(np.unique(a[0, :, 0])) > 1  # samples of one series differ from each other


# ---- input handling -----------------------------------------------------------------------


def test_input_types_are_equivalent(pipes):
    _, jp = pipes
    x1, x2 = make_series(12, 1), make_series(8, 2)
    stacked = np.stack([x1, np.concatenate([np.full(4, np.nan, np.float32), x2])])
    upstream = left_pad_and_stack_1D([torch.from_numpy(x1), torch.from_numpy(x2)]).numpy()
    np.testing.assert_array_equal(stacked, upstream)
    equivalents = {
        "list of arrays": [x1, x2],
        "list of lists": [x1.tolist(), x2.tolist()],
        "tuple": (x1, x2),
        "list of tensors": [torch.from_numpy(x1), torch.from_numpy(x2)],
        "2-D tensor": torch.from_numpy(stacked),
        "2-D float64 array": stacked.astype(np.float64),
        "DataFrame": pd.DataFrame({"a": x1, "b": np.concatenate([[np.nan] * 4, x2])}),
    }
    for name, context in equivalents.items():
        np.testing.assert_array_equal(prepare_context(context), stacked, err_msg=name)
    for name, context in {
        "Series": pd.Series(x1, index=pd.date_range("2024", periods=12, freq="h")),
        "1-D tensor": torch.from_numpy(x1),
        "flat list of numbers": x1.tolist(),
    }.items():
        np.testing.assert_array_equal(prepare_context(context), x1[None], err_msg=name)
    # end to end: a DataFrame forecasts like its columns (NaN-led columns = shorter series)
    df = pd.DataFrame(left_pad_and_stack_1D(to_torch(BATCH)).numpy().T, columns=["a", "b", "c"])
    kw = dict(prediction_length=5, num_samples=3, top_k=1)
    np.testing.assert_array_equal(jp.predict(df, **kw), jp.predict(BATCH, **kw))
    emb, scale = jp.embed(torch.from_numpy(X))
    emb2, scale2 = jp.embed(pd.Series(X))
    np.testing.assert_array_equal(emb, emb2)
    np.testing.assert_array_equal(scale, scale2)


@pytest.mark.parametrize(
    "context, match",
    [
        (np.array([], np.float32), "empty"),
        (np.zeros((2, 0), np.float32), "empty"),
        ([], "empty list"),
        ([np.float32([1, 2]), np.float32([np.nan, np.nan])], r"rows \[1\] have no observed"),
        (np.full((1, 5), np.nan), "no observed"),
        (np.zeros((2, 3, 4)), r"1-D \[T\] or 2-D \[B, T\].*\(2, 3, 4\)"),
        ([np.zeros((2, 2))], r"context\[0\] must be 1-D"),
        (np.float32([1, np.inf, 2]), "inf"),
        (np.float32([1, -np.inf]), "inf"),
        (["a", "b"], "not numeric|could not convert string"),
        (pd.DataFrame(), "empty"),
    ],
    ids=[
        "empty-array",
        "empty-2d",
        "empty-list",
        "all-nan-row-in-list",
        "all-nan-array",
        "3-d",
        "2-d-element",
        "inf",
        "-inf",
        "strings",
        "empty-dataframe",
    ],
)
def test_bad_context_raises_value_error(pipes, context, match):
    _, jp = pipes
    with pytest.raises(ValueError, match=match):
        jp.predict(context)
    with pytest.raises(ValueError, match=match):
        jp.embed(context)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prediction_length=0), "prediction_length must be positive"),
        (dict(prediction_length=-3), "prediction_length must be positive"),
        (dict(num_samples=0), "num_samples must be positive"),
        (dict(temperature=0.0), "temperature must be positive"),
        (dict(temperature=-1.0), "temperature must be positive"),
        (dict(temperature=float("nan")), "temperature must be positive"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), "top_k must be >= 0"),
    ],
    ids=[
        "prediction_length=0",
        "prediction_length=-3",
        "num_samples=0",
        "temperature=0",
        "temperature=-1",
        "temperature=nan",
        "top_p=0",
        "top_p=1.5",
        "top_k=-1",
    ],
)
def test_bad_sampling_arguments_raise_value_error(pipes, kwargs, match):
    _, jp = pipes
    with pytest.raises(ValueError, match=match):
        jp.predict(X, **kwargs)


# ---- jaxts checkpoints --------------------------------------------------------------------


def test_jaxts_checkpoint_directory_loads_with_identical_outputs(pipes, tmp_path):
    _, jp = pipes
    save_model(jp.model, tmp_path / "ckpt", extra={"source": "test"})
    jp2 = ChronosT5Pipeline.from_pretrained(tmp_path / "ckpt")
    assert jp2.model.config == jp.model.config
    kw = dict(prediction_length=PREDICTION_LENGTH, num_samples=6, key=jax.random.key(1))
    np.testing.assert_array_equal(jp2.predict(BATCH, **kw), jp.predict(BATCH, **kw))
    emb, scale = jp.embed(BATCH)
    emb2, scale2 = jp2.embed(BATCH)
    np.testing.assert_array_equal(emb2, emb)
    np.testing.assert_array_equal(scale2, scale)
