"""Speculative decoding over the KV cache (decoding="cached"): tolerance 0 equals the target's
cached decoding, the exact rule keeps the distribution of cached target sampling, per-row
progress, call accounting (STRIDE's bonus is free), adaptive k, errors."""

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from jaxts.models.timer_xl import TimerXL, TimerXLConfig, draft_config
from jaxts.models.timer_xl_cache import cached_forecast
from jaxts.speculative import generate, sample_target
from tests.helpers import series

# One tiny config for every test: the file's cost is compilation, shared where shapes agree.
SMALL = TimerXLConfig(
    input_token_len=4, output_token_len=4, d_model=16, n_heads=2, d_ff=32, e_layers=1, use_norm=True
)
CACHED = dict(decoding="cached")


def model(cfg, seed):
    m = TimerXL(cfg, rngs=nnx.Rngs(seed))
    m.eval()
    return m


@pytest.fixture(scope="module")
def pair():
    return model(SMALL, 0), model(draft_config(SMALL, stochastic=True), 1)


@pytest.fixture(scope="module")
def x():
    return series(3, 16, 2, seed=5)  # 4 context patches, 2 variables


def test_tolerance_zero_equals_target_cached_decoding(pair, x):
    target, draft = pair
    r = generate(target, draft, x, 30, k=2, rule="tolerance", tol=0.0, key=jax.random.key(0),
                 **CACHED)  # fmt: skip
    want = np.asarray(cached_forecast(target, x, 30))
    np.testing.assert_allclose(r.forecast, want, atol=1e-4, rtol=0)
    assert r.accepted.sum() == 0  # a different draft is never within tol 0
    assert r.rounds == r.target_calls == 8 and r.draft_calls == 16  # ceil(30 / 4) patches


def test_rows_progress_independently(pair, x):
    """A row's forecast and counts do not depend on the others in its batch."""
    target, draft = pair
    kw = dict(k=2, rule="tolerance", tol=1.0, key=jax.random.key(0), **CACHED)
    batch = generate(target, draft, x, 30, **kw)
    assert len(set(batch.accepted.tolist())) > 1  # the rows did progress differently
    for i in range(3):
        one = generate(target, draft, x[i : i + 1], 30, **kw)
        np.testing.assert_allclose(one.forecast[0], batch.forecast[i], atol=1e-5)
        assert one.accepted[0] == batch.accepted[i] and one.attempted[0] == batch.attempted[i]


# ------------------------------------------------------------- the exact rule is exact

N_SAMPLES = 3000
CONTEXT = np.array([0.0, 1.0, 0.5, -0.3, 0.2, 0.9, 1.4, 0.8], np.float32)


def ks_pvalues(a, b):
    """Two-sample KS p-values over every step and every patch sum of [S, H] samples."""
    ps = [stats.ks_2samp(a[:, i], b[:, i]).pvalue for i in range(a.shape[1])]
    for i in range(0, a.shape[1], 4):
        ps.append(stats.ks_2samp(a[:, i : i + 4].sum(1), b[:, i : i + 4].sum(1)).pvalue)
    return np.array(ps)


@pytest.fixture(scope="module")
def target_samples(pair):
    target, _ = pair
    xs = np.tile(CONTEXT[None, :, None], (N_SAMPLES, 1, 1))
    want = sample_target(target, xs, 12, sigma=0.5, key=jax.random.key(123), **CACHED)
    return target, xs, want[..., 0]


def test_cached_sampling_is_not_rolling_sampling(target_samples):
    """The cached process is a different one (growing context, context statistics): the KS test
    below compares against the right baseline and would see the difference."""
    target, xs, want = target_samples
    rolling = sample_target(target, xs, 12, sigma=0.5, key=jax.random.key(5))[..., 0]
    assert ks_pvalues(rolling, want).min() < 1e-6


@pytest.mark.parametrize("stochastic", [False, True])
def test_exact_rule_matches_cached_target_sampling(target_samples, stochastic):
    """Kolmogorov-Smirnov on all 12 steps and 3 patch sums, Bonferroni at 1e-3 overall; the
    draft is a different random network, so the residual sampler carries the correction."""
    target, xs, want = target_samples
    draft = model(draft_config(SMALL, stochastic=stochastic), 7)
    r = generate(target, draft, xs, 12, k=2, rule="exact", sigma=0.5, key=jax.random.key(0),
                 **CACHED)  # fmt: skip
    assert 0.05 < r.acceptance_rate < 0.95
    assert r.residual_fallbacks == 0
    ps = ks_pvalues(r.forecast[..., 0], want)
    assert ps.min() > 1e-3 / len(ps), ps


# ------------------------------------------------------------- accounting and knobs


def test_stride_rule_bonus_is_free(pair, x):
    """The bonus patch after k kept proposals comes with the verification call: one target call
    per round, whatever the rule (the rolling loop pays STRIDE a second call)."""
    target, draft = pair

    def run(**kw):
        return generate(target, draft, x, 30, k=2, rule="stride", key=jax.random.key(1),
                        **CACHED, **kw)  # fmt: skip

    every, lo = run(tol=1e6), run(accept_bias=1.0)
    assert every.acceptance_rate == 1.0  # 8 patches in rounds of k + 1 = 3
    assert every.rounds == every.target_calls == 3 and every.draft_calls == 6
    assert lo.acceptance_rate < 1.0 and lo.target_calls == lo.rounds
    assert (lo.accepted <= lo.attempted).all() and np.isfinite(lo.forecast).all()


def test_draft_equal_to_target_keeps_everything_and_k_grows(pair, x):
    """A draft identical to the target is always within tolerance: the forecast is the target's
    cached decoding, and adaptive k climbs to its cap (one compilation for both checks)."""
    target, _ = pair
    r = generate(target, target, x[:1], 168, k=2, rule="tolerance", tol=1.0, adaptive=True,
                 key=jax.random.key(0), **CACHED)  # fmt: skip
    assert r.k_final == 8 and r.acceptance_rate == 1.0
    want = np.asarray(cached_forecast(target, x[:1], 168))
    np.testing.assert_allclose(r.forecast, want, atol=1e-4)
    # 42 patches in rounds of k+1 with k = 2, 3, ..., 8: 7 rounds (14 with a fixed k = 2)
    assert r.rounds == r.target_calls == 7


def test_bad_inputs_rejected(pair, x):
    target, draft = pair
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="decoding must be one of"):
        generate(target, draft, x, 8, key=key, decoding="kv")
    with pytest.raises(ValueError, match="decoding must be one of"):
        sample_target(target, x, 8, key=key, decoding="kv")
    with pytest.raises(ValueError, match="at least 2 patches"):
        generate(target, draft, x[:, :4], 8, key=key, **CACHED)
    with pytest.raises(ValueError, match="multiple"):
        generate(target, draft, x[:, 1:], 8, key=key, **CACHED)
