"""jaxts.soft_mask: similarities on constructed series, the bias formula and its direction, errors;
and the two limits of soft masking against upstream chronos-forecasting (hard groups and full
cross-learning)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxts.soft_mask import MASK_VALUE, SoftGroupMask, similarity_matrix

T = 64
WAVE = np.sin(np.arange(T) / 3.0).astype(np.float32)  # mean ~0, not constant


def _reference(x: np.ndarray, kind: str) -> np.ndarray:
    """Pairwise loop over the overlap, written from the definitions (r in [-1, 1] before the
    negative mapping; gaussian with scale 1)."""
    b = len(x)
    out = np.eye(b)
    for i in range(b):
        for j in range(b):
            both = ~np.isnan(x[i]) & ~np.isnan(x[j])
            a, c = x[i][both].astype(np.float64), x[j][both].astype(np.float64)
            if i == j or both.sum() < 2:
                continue
            if kind == "correlation":
                if a.std() > 0 and c.std() > 0:
                    out[i, j] = np.corrcoef(a, c)[0, 1]
                else:
                    out[i, j] = 0.0
            elif kind == "cosine":
                out[i, j] = a @ c / np.sqrt((a @ a) * (c @ c))
            else:
                za = (x[i] - np.nanmean(x[i])) / np.nanstd(x[i])
                zc = (x[j] - np.nanmean(x[j])) / np.nanstd(x[j])
                out[i, j] = np.exp(-np.sqrt(np.mean(np.square(za[both] - zc[both]))))
    return out


def _ragged(seed: int = 0, b: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (np.cumsum(rng.normal(size=(b, T)), -1) + rng.uniform(-3, 3, (b, 1))).astype(np.float32)
    x[rng.random((b, T)) < 0.3] = np.nan  # scattered gaps
    x[1, :20] = np.nan  # a shorter series (left-padded, as the pipeline pads)
    return x


@pytest.mark.parametrize("kind", ["correlation", "cosine", "gaussian"])
def test_matches_pairwise_definition_with_gaps(kind):
    x = _ragged()
    r = _reference(x, kind)
    expected = r if kind == "gaussian" else np.maximum(r, 0)
    got = similarity_matrix(x, kind)
    assert got.dtype == np.float32 and got.shape == (5, 5)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    if kind != "gaussian":
        np.testing.assert_allclose(similarity_matrix(x, kind, negative="abs"), np.abs(r),
                                   atol=1e-6)  # fmt: skip
        np.testing.assert_allclose(similarity_matrix(x, kind, negative="shift"), (r + 1) / 2,
                                   atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("kind", ["correlation", "cosine", "gaussian"])
def test_identical_series_are_fully_similar(kind):
    x = np.stack([WAVE, WAVE, 2 * WAVE])
    np.testing.assert_allclose(similarity_matrix(x, kind)[:2, :2], 1.0, atol=1e-6)
    if kind != "gaussian":  # scale-invariant; the gaussian is too after instance norm
        np.testing.assert_allclose(similarity_matrix(x, kind), 1.0, atol=1e-6)


def test_anti_correlated_under_each_negative_mode():
    x = np.stack([WAVE, -WAVE])
    for kind in ("correlation", "cosine"):
        assert similarity_matrix(x, kind, negative="clip")[0, 1] == 0.0
        assert similarity_matrix(x, kind, negative="abs")[0, 1] == pytest.approx(1.0, abs=1e-6)
        assert similarity_matrix(x, kind, negative="shift")[0, 1] == pytest.approx(0.0, abs=1e-6)
    # normalised a and -a: RMS difference 2 (each has unit population std)
    for scale in (1.0, 4.0):
        got = similarity_matrix(x, "gaussian", scale=scale)[0, 1]
        assert got == pytest.approx(np.exp(-2.0 / scale), rel=1e-5)


def test_correlation_is_affine_invariant_and_cosine_is_not():
    x = np.stack([WAVE, 3 * WAVE + 1000.0])
    assert similarity_matrix(x, "correlation")[0, 1] == pytest.approx(1.0, abs=1e-5)
    a, b = x.astype(np.float64)
    cos = a @ b / np.sqrt((a @ a) * (b @ b))
    assert cos < 0.2  # the level of 1000 dominates the uncentred cosine
    assert similarity_matrix(x, "cosine")[0, 1] == pytest.approx(cos, abs=1e-6)
    assert similarity_matrix(x, "gaussian")[0, 1] == pytest.approx(1.0, abs=1e-4)


def test_gaps_use_the_overlap_only():
    # b equals a where both are observed and is wild where a is missing: a perfect match
    a = WAVE.copy()
    b = WAVE.copy()
    a[T // 2 :] = np.nan
    b[T // 2 :] = np.random.default_rng(0).normal(0, 50, T - T // 2)
    got = similarity_matrix(np.stack([a, b]), "correlation")
    assert got[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert similarity_matrix(np.stack([a, b]), "cosine")[0, 1] == pytest.approx(1.0, abs=1e-6)


def test_no_overlap_or_one_step_gives_zero_and_diagonal_is_one():
    x = np.full((3, 8), np.nan, np.float32)
    x[0, :4] = [1, 2, 3, 4]
    x[1, 4:] = [1, 2, 3, 4]  # disjoint from series 0
    x[2, 3:5] = [5, 1]  # one step shared with each
    for kind in ("correlation", "cosine", "gaussian"):
        np.testing.assert_array_equal(similarity_matrix(x, kind), np.eye(3, dtype=np.float32))
    allnan = np.full((2, 8), np.nan, np.float32)
    np.testing.assert_array_equal(similarity_matrix(allnan, "gaussian"), np.eye(2))


def test_constant_series():
    x = np.stack([np.full(T, 0.1, np.float32), WAVE, np.full(T, 7.0, np.float32)])
    corr = similarity_matrix(x, "correlation")
    np.testing.assert_array_equal(corr, np.eye(3))  # zero variance: no evidence
    gauss = similarity_matrix(x, "gaussian")
    assert gauss[0, 2] == pytest.approx(1.0)  # both constant: same (flat) shape
    assert gauss[0, 1] == pytest.approx(np.exp(-1.0), rel=1e-5)  # 0 vs a unit-std series
    assert similarity_matrix(x, "cosine")[0, 2] == pytest.approx(1.0)
    # constant only on the overlap: correlation 0, even though the series vary elsewhere
    y = np.stack([np.r_[np.full(10, 2.0), WAVE[10:]], np.r_[WAVE[:10], np.full(T - 10, np.nan)]])
    assert similarity_matrix(y.astype(np.float32), "correlation")[0, 1] == 0.0


def _groups(*ids):
    return np.array(ids, np.int64)


def test_group_bias_formula_and_direction():
    x = np.stack([WAVE, WAVE + 0.5 * np.cos(np.arange(T) / 2.0), -WAVE, WAVE]).astype(np.float32)
    groups = _groups(0, 1, 2, 0)
    sim = similarity_matrix(x, "correlation")
    assert 0 < sim[0, 1] < 1 and sim[0, 2] == 0
    biases = {t: SoftGroupMask("correlation", temperature=t).group_bias(x, groups)
              for t in (0, 1, 5, 20)}  # fmt: skip
    same = groups[:, None] == groups[None, :]
    for bias in biases.values():
        assert bias.dtype == np.float32 and bias.shape == (4, 4)
        assert np.all(bias[same] == 0)  # pairs within a group untouched
    np.testing.assert_array_equal(biases[0], 0)  # temperature 0: full cross-learning
    np.testing.assert_allclose(biases[5][0, 1], 5 * np.log(sim[0, 1]), rtol=1e-6)
    # larger temperature -> more negative cross-group bias -> STRICTER masking
    assert biases[1][0, 1] > biases[5][0, 1] > biases[20][0, 1]
    # similarity 0 (anti-correlated, clipped): log 0 clamped to the mask value, never -inf
    assert biases[1][0, 2] == MASK_VALUE and np.isfinite(biases[20]).all()


def test_user_matrix_limits_and_clamping():
    x = np.zeros((3, 4), np.float32)
    groups = _groups(0, 0, 1)
    zeros = SoftGroupMask(np.zeros((3, 3)), temperature=0.5).group_bias(x, groups)
    assert zeros[0, 2] == MASK_VALUE and zeros[2, 1] == MASK_VALUE and zeros[0, 1] == 0
    ones = SoftGroupMask(np.ones((3, 3)), temperature=10).group_bias(x, groups)
    np.testing.assert_array_equal(ones, 0)  # similarity 1 = one group
    tiny = SoftGroupMask(np.full((3, 3), 1e-30), temperature=1e37).group_bias(x, groups)
    assert tiny[0, 2] == MASK_VALUE  # below the float32 range: clamped, not -inf
    asym = np.array([[1, 1, 0.5], [1, 1, 0.5], [0.1, 0.1, 1]])  # row: query, column: key
    b = SoftGroupMask(asym).group_bias(x, groups)
    assert b[0, 2] == pytest.approx(np.log(0.5)) and b[2, 0] == pytest.approx(np.log(0.1))
    mask = SoftGroupMask(np.eye(3))
    assert mask.similarity_matrix(x).shape == (3, 3)
    with pytest.raises(ValueError, match="read-only"):
        mask.similarity[0, 1] = 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(similarity="pearson"), "similarity must be one of 'correlation'"),
        (dict(similarity=np.ones((2, 3))), r"square \[B, B\], got shape \(2, 3\)"),
        (dict(similarity=np.full((2, 2), 1.5)), r"finite values in \[0, 1\]"),
        (dict(similarity=[["a", "b"]]), "matrix of numbers"),
        (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(negative="relu"), "negative must be one of 'clip', 'abs', 'shift'"),
        (dict(scale=0.0), "scale must be a finite number > 0"),
    ],
)
def test_invalid_masks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SoftGroupMask(**kwargs)


def test_invalid_inputs():
    x = np.zeros((3, 8), np.float32)
    with pytest.raises(ValueError, match=r"shape \(2, 2\), but the batch has 3 series: "
                       r"expected \(3, 3\)"):  # fmt: skip
        SoftGroupMask(np.eye(2)).group_bias(x, _groups(0, 1, 2))
    with pytest.raises(ValueError, match=r"group_ids must be 3 integers"):
        SoftGroupMask().group_bias(x, _groups(0, 1))
    with pytest.raises(ValueError, match=r"group_ids must be 3 integers"):
        SoftGroupMask().group_bias(x, np.zeros(3))
    with pytest.raises(ValueError, match=r"context must be \[B, T\]"):
        SoftGroupMask().group_bias(x[0], _groups(0))
    with pytest.raises(ValueError, match="similarity must be one of"):
        similarity_matrix(x, "dtw")
    with pytest.raises(dataclasses.FrozenInstanceError):
        SoftGroupMask().temperature = 2.0


# ---- the two limits against upstream chronos-forecasting -----------------------------------------

HORIZON = 48  # within max_output_patches (4 x 16): one forward pass


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """(upstream, jaxts) Chronos2Pipeline on the same tiny random model."""
    pytest.importorskip("chronos")
    from chronos.chronos2 import Chronos2Pipeline as Upstream

    from bridges.reference.chronos2_hf import tiny_chronos2
    from jaxts.pipelines.chronos2 import Chronos2Pipeline

    path = tmp_path_factory.mktemp("chronos2") / "model"
    tiny_chronos2(path, seed=3)
    return Upstream.from_pretrained(str(path)), Chronos2Pipeline.from_pretrained(str(path))


def _inputs(multivariate: bool):
    """Ragged series with NaN gaps; with ``multivariate``, 2-D items (given groups of 2 and 3
    variates) next to a 1-D one."""
    rng = np.random.default_rng(7)

    def walk(*shape):
        x = np.cumsum(rng.normal(size=shape), -1) + rng.uniform(-5, 5, shape[:-1] + (1,))
        x[rng.random(shape) < 0.1] = np.nan
        return x.astype(np.float32)

    if multivariate:
        return [walk(2, 150), walk(3, 90), walk(120)]  # groups [0, 0, 1, 1, 1, 2]
    return [walk(150), walk(90), walk(256), walk(40), walk(200)]


def _stack(preds) -> np.ndarray:
    return np.concatenate([np.asarray(p, np.float32) for p in preds])  # [series, Q, H]


@pytest.mark.parametrize("multivariate", [False, True], ids=["univariate", "given_groups"])
def test_limits_equal_upstream(pipelines, multivariate):
    upstream, ours = pipelines
    inputs = _inputs(multivariate)
    n = 6 if multivariate else 5  # series in the batch
    hard = _stack(upstream.predict(inputs, HORIZON, cross_learning=False))
    full = _stack(upstream.predict(inputs, HORIZON, cross_learning=True))
    assert np.abs(hard - full).max() > 1e-2  # the two limits are far apart on this model
    # similarity 0 (bias = mask value across groups) = hard groups, at any temperature > 0
    for t in (0.5, 20.0):
        zero = SoftGroupMask(np.zeros((n, n)), temperature=t)
        got = _stack(ours.predict(inputs, HORIZON, soft_mask=zero))
        np.testing.assert_allclose(got, hard, atol=1e-4, rtol=1e-4)
    # temperature 0 (bias 0) = full cross-learning, whatever the similarity
    for sim in ("correlation", "gaussian"):
        got = _stack(ours.predict(inputs, HORIZON, soft_mask=SoftGroupMask(sim, temperature=0)))
        np.testing.assert_allclose(got, full, atol=1e-4, rtol=1e-4)
    # in between: a soft mask is neither limit
    soft = _stack(ours.predict(inputs, HORIZON, soft_mask=SoftGroupMask(np.full((n, n), 0.5))))
    assert np.abs(soft - hard).max() > 1e-3 and np.abs(soft - full).max() > 1e-3


def test_larger_temperature_moves_forecasts_towards_hard(pipelines):
    """The measured direction: temperature up = stricter (towards hard groups), not softer."""
    upstream, ours = pipelines
    inputs = _inputs(multivariate=False)
    hard = _stack(upstream.predict(inputs, HORIZON, cross_learning=False))
    half = np.full((5, 5), 0.5)  # attention weight across groups x 0.5 ** temperature
    preds = {t: _stack(ours.predict(inputs, HORIZON, soft_mask=SoftGroupMask(half, t)))
             for t in (1.0, 5.0, 20.0, 200.0)}  # fmt: skip
    dist = {t: np.abs(p - hard).max() for t, p in preds.items()}
    assert dist[1.0] > dist[5.0] > dist[20.0], dist
    # 0.5 ** 200 underflows float32: the cross-group weights vanish, hard groups exactly
    np.testing.assert_allclose(preds[200.0], hard, atol=1e-4, rtol=1e-4)
