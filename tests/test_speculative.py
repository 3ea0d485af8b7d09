"""Speculative decoding: exactness of the "exact" rule (statistical test), "tolerance" with tol 0
equals the target's rolling forecast, per-sample progress, call accounting, adaptive k, errors."""

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from jaxts.models.timer_xl import TimerXL, TimerXLConfig, draft_config, rolling_forecast
from jaxts.speculative import generate, sample_target
from tests.helpers import series

TARGET = TimerXLConfig(
    input_token_len=8, output_token_len=8, d_model=32, n_heads=4, d_ff=64, e_layers=2, use_norm=True
)


def model(cfg, seed):
    m = TimerXL(cfg, rngs=nnx.Rngs(seed))
    m.eval()
    return m


@pytest.fixture(scope="module")
def pair():
    return model(TARGET, 0), model(draft_config(TARGET, 0.5, 0.5, 0.5, 0.5, stochastic=True), 1)


@pytest.mark.parametrize("k,pred_len", [(1, 45), (3, 45), (2, 8)])
def test_tolerance_zero_equals_target_rolling(pair, k, pred_len):
    target, draft = pair
    x = series(4, 32, 3)
    r = generate(target, draft, x, pred_len, k=k, rule="tolerance", tol=0.0, key=jax.random.key(0))
    want = np.asarray(rolling_forecast(target, x, pred_len))
    np.testing.assert_allclose(r.forecast, want, atol=1e-5, rtol=0)
    assert r.accepted.sum() == 0  # a different draft is never within tol 0
    steps = -(-pred_len // 8)
    assert r.rounds == r.target_calls == steps and r.draft_calls == steps * k


def test_tolerance_with_draft_equal_to_target_keeps_everything(pair):
    target, _ = pair
    x = series(3, 32, 2, seed=4)
    r = generate(target, target, x, 80, k=3, rule="tolerance", tol=1e-4, key=jax.random.key(0))
    np.testing.assert_allclose(r.forecast, np.asarray(rolling_forecast(target, x, 80)), atol=1e-4)
    np.testing.assert_array_equal(r.accepted, r.attempted)
    # 10 patches: rounds emit k+1 = 4 (3 kept + the bonus from the verification pass)
    assert r.rounds == r.target_calls == 3 and r.draft_calls == 9


def test_samples_progress_independently(pair):
    """A sample's forecast and counts do not depend on the others in its batch."""
    target, draft = pair
    x = series(3, 32, 2, seed=5)
    kw = dict(k=3, rule="tolerance", tol=0.6, key=jax.random.key(0))
    batch = generate(target, draft, x, 64, **kw)
    assert len(set(batch.accepted.tolist())) > 1  # the samples did progress differently
    for i in range(3):
        one = generate(target, draft, x[i : i + 1], 64, **kw)
        np.testing.assert_allclose(one.forecast[0], batch.forecast[i], atol=1e-5)
        assert one.accepted[0] == batch.accepted[i] and one.attempted[0] == batch.attempted[i]


# ------------------------------------------------------------- the exact rule is exact

SMALL = TimerXLConfig(
    input_token_len=4, output_token_len=4, d_model=16, n_heads=2, d_ff=32, e_layers=1, use_norm=True
)
N_SAMPLES = 3000
CONTEXT = np.array([0.0, 1.0, 0.5, -0.3, 0.2, 0.9, 1.4, 0.8], np.float32)


def ks_pvalues(a, b):
    """Two-sample KS p-values over every step and every patch sum of [S, H] samples."""
    ps = [stats.ks_2samp(a[:, i], b[:, i]).pvalue for i in range(a.shape[1])]
    for i in range(0, a.shape[1], 4):
        ps.append(stats.ks_2samp(a[:, i : i + 4].sum(1), b[:, i : i + 4].sum(1)).pvalue)
    return np.array(ps)


@pytest.fixture(scope="module")
def target_samples():
    target = model(SMALL, 0)
    x = np.tile(CONTEXT[None, :, None], (N_SAMPLES, 1, 1))
    return target, x, sample_target(target, x, 12, sigma=0.5, key=jax.random.key(123))[..., 0]


@pytest.mark.parametrize("stochastic", [False, True])
def test_exact_rule_matches_target_only_sampling(target_samples, stochastic):
    """Kolmogorov-Smirnov on all 12 steps and 3 patch sums, Bonferroni at 1e-3 overall.

    The draft is a different random network, so about half (deterministic) or most
    (stochastic) proposals are rejected and the residual sampler carries the correction."""
    target, x, want = target_samples
    draft = model(draft_config(SMALL, stochastic=stochastic), 7)
    r = generate(target, draft, x, 12, k=2, rule="exact", sigma=0.5, key=jax.random.key(0))
    assert 0.05 < r.acceptance_rate < 0.95
    assert r.residual_fallbacks == 0
    ps = ks_pvalues(r.forecast[..., 0], want)
    assert ps.min() > 1e-3 / len(ps), ps


def test_stride_rule_is_not_distribution_preserving(target_samples):
    """The same test has the power to reject STRIDE's rule with a stochastic draft."""
    target, x, want = target_samples
    draft = model(draft_config(SMALL, stochastic=True), 7)
    r = generate(target, draft, x, 12, k=2, rule="stride", sigma=0.5, key=jax.random.key(0))
    assert ks_pvalues(r.forecast[..., 0], want).min() < 1e-6


def test_exact_with_draft_equal_to_target_accepts_all(target_samples):
    target, x, _ = target_samples
    r = generate(target, target, x[:64], 40, k=4, rule="exact", sigma=0.5, key=jax.random.key(0))
    assert r.acceptance_rate > 0.99
    assert r.target_calls == r.rounds < 10  # 10 patches in 2 rounds of k + 1 = 5


# ------------------------------------------------------------- accounting and knobs


def test_stride_rule_counts_and_bias(pair):
    target, draft = pair
    x = series(6, 32, 2, seed=2)

    def run(**kw):
        return generate(target, draft, x, 96, k=3, rule="stride", key=jax.random.key(1), **kw)

    lo, hi, every = run(accept_bias=1.0), run(accept_bias=1e4), run(tol=1e6)
    assert lo.acceptance_rate < hi.acceptance_rate < 1.0
    # all-accepted rounds cost STRIDE one extra target call for the bonus patch
    assert every.acceptance_rate == 1.0
    assert every.rounds == 3 and every.target_calls == 6 and every.draft_calls == 9
    assert lo.rounds <= lo.target_calls <= 2 * lo.rounds
    assert lo.draft_calls == 3 * lo.rounds
    assert (lo.accepted <= lo.attempted).all() and np.isfinite(lo.forecast).all()


def test_deterministic_given_key(pair):
    target, draft = pair
    x = series(2, 32, 2)
    a, b, c = (
        generate(target, draft, x, 40, k=2, key=jax.random.key(s)).forecast for s in (0, 0, 1)
    )
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_adaptive_k_grows_with_full_acceptance(pair):
    target, _ = pair
    x = series(2, 32, 1)
    r = generate(
        target, target, x, 400, k=2, rule="tolerance", tol=1.0, adaptive=True, key=jax.random.key(0)
    )
    assert r.k_final == 8 and r.acceptance_rate == 1.0
    np.testing.assert_allclose(r.forecast, np.asarray(rolling_forecast(target, x, 400)), atol=1e-4)
    # rounds of k+1 patches with k = 2, 3, ... 8, 8: fewer rounds than with a fixed k = 2
    assert r.rounds < 50 / 3


def test_bad_inputs_rejected(pair):
    target, draft = pair
    x = series(2, 32, 2)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="rule"):
        generate(target, draft, x, 8, rule="greedy", key=key)
    with pytest.raises(ValueError, match="k must"):
        generate(target, draft, x, 8, k=0, key=key)
    with pytest.raises(ValueError, match="tol"):
        generate(target, draft, x, 8, rule="tolerance", key=key)
    with pytest.raises(ValueError, match="sigma"):
        generate(target, draft, x, 8, sigma=0.0, key=key)
    with pytest.raises(ValueError, match="NaN"):
        generate(target, draft, np.where(x > 1, np.nan, x), 8, key=key)
    with pytest.raises(ValueError, match="multiple"):
        generate(target, draft, x[:, 1:], 8, key=key)
    with pytest.raises(ValueError, match="pred_len"):
        generate(target, draft, x, 0, key=key)
    with pytest.raises(ValueError, match="key must be a JAX PRNG key"):
        generate(target, draft, x, 8, key=None)
    with pytest.raises(ValueError, match="key must be a JAX PRNG key"):
        sample_target(target, x, 8, key=None)
    other = model(
        TimerXLConfig(**{**TARGET.to_dict(), "input_token_len": 16, "output_token_len": 16}), 0
    )
    with pytest.raises(ValueError, match="differ"):
        generate(target, other, x, 8, key=key)
    uneven = model(TimerXLConfig(**{**TARGET.to_dict(), "output_token_len": 16}), 0)
    with pytest.raises(ValueError, match="input_token_len == output_token_len"):
        generate(uneven, draft, x, 8, key=key)
