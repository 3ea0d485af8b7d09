"""KV-cached Timer-XL decoding: prefill equals the full forward, cached_forecast equals the
step-by-step growing-context recomputation, batched/rewound extends equal sequential ones."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxts.layers import masks
from jaxts.models import timer_xl_cache as tc
from jaxts.models.timer_xl import TimerXL, TimerXLConfig, rolling_forecast, timer_visible
from tests.helpers import LAYER_TOL, MODEL_TOL, series

P = 8
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
BASE = dict(input_token_len=P, output_token_len=P, d_model=16, n_heads=2, d_ff=32)
CONFIGS = {  # name: (config fields, variables)
    "c1_norm": (dict(use_norm=True), 1),
    "c3_cov_2layers": (dict(use_norm=False, covariate=True, e_layers=2), 3),
    "c3_norm_stochastic": (dict(use_norm=True, stochastic=True), 3),
}


@functools.cache
def model(name: str) -> TimerXL:
    fields, _ = CONFIGS[name]
    m = TimerXL(TimerXLConfig(**BASE, **fields), rngs=nnx.Rngs(3))
    # bias table and LayerNorms random too, so every path of the cache counts
    key = jax.random.key(7)
    for path, var in nnx.iter_graph(m):
        if isinstance(var, nnx.Param) and ("norm" in str(path) or "emb" in str(path)):
            key, sub = jax.random.split(key)
            var[...] = var[...] + 0.3 * jax.random.normal(sub, var[...].shape)
    m.eval()
    return m


def mean(out, m):
    return out[0] if m.config.stochastic else out


def run(m, fn, *args):
    """``fn(model, *args)`` under one jit (eager dispatch is slower than compiling here),
    compiled without XLA's backend optimisations: these tiny programs then compile 2x faster."""
    graphdef, state = nnx.split(m)
    jitted = jax.jit(lambda s, *a: fn(nnx.merge(graphdef, s), *a), compiler_options=FAST)
    return jitted(state, *args)


def forward(mm, xx):
    return mm(xx)


def context(name, b=2, n_tokens=4, seed=0):
    return jnp.asarray(series(b, n_tokens * P, CONFIGS[name][1], seed))


# ---------------------------------------------------------------- prefill and the full forward


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_equals_the_full_forward(name):
    m, x = model(name), context(name)
    _, stats, out = run(m, lambda mm, xx: tc.prefill(mm, xx, 6), x)
    full = run(m, forward, x)
    b, n0, p, c = mean(out, m).shape
    for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(full), strict=True):
        # out[:, n] is the patch after token n: [B, N0, P, C] -> [B, N0 * P, C]
        got = np.asarray(got).reshape(b, n0 * p, c)
        np.testing.assert_allclose(got, np.asarray(want), atol=LAYER_TOL, rtol=0)
    want_stats = tc.context_stats(m, x)
    for got, want in zip(stats, want_stats, strict=True):
        assert (got is None) == (want is None) == (not m.config.use_norm)


# ---------------------------------------------------------------- decoding == recomputation


def recompute(m, x, pred_len):
    """The growing-context reference: model(grown, position_stride=N0, norm_stats=context's)
    one patch at a time, each appended in data scale."""
    n0 = x.shape[1] // P

    def fn(mm, grown):
        stats, outs = tc.context_stats(mm, grown), []
        for _ in range(-(-pred_len // P)):  # one program: a compile per length costs more
            outs.append(mm.forecast_next_mean(grown, position_stride=n0, norm_stats=stats))
            grown = jnp.concatenate([grown, outs[-1]], axis=1)
        return jnp.concatenate(outs, axis=1)[:, :pred_len]

    return np.asarray(run(m, fn, x))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_forecast_equals_growing_context_recomputation(name):
    m, x = model(name), context(name, seed=1)
    want = recompute(m, x, 2 * P + 3)
    got = np.asarray(tc.cached_forecast(m, x, 2 * P + 3))  # across three patches
    assert got.shape == want.shape == (2, 2 * P + 3, CONFIGS[name][1])
    np.testing.assert_allclose(got, want, atol=MODEL_TOL, rtol=0)
    if name == "c3_norm_stochastic":  # inside one patch: rolling's first patch (its mean)
        short = np.asarray(tc.cached_forecast(m, x, 5))
        np.testing.assert_allclose(short, want[:, :5], atol=MODEL_TOL, rtol=0)
        np.testing.assert_allclose(short, rolling_forecast(m, x, 5), atol=MODEL_TOL, rtol=0)


def test_position_stride_n_and_own_stats_are_openltm():
    m, x = model("c3_cov_2layers"), context("c3_cov_2layers")
    base = run(m, forward, x)
    same = run(m, lambda mm, xx: mm(xx, position_stride=4, norm_stats=(None, None)), x)
    np.testing.assert_array_equal(np.asarray(base), np.asarray(same))
    mn = model("c1_norm")
    x1 = context("c1_norm")
    own = run(mn, forward, x1)
    given = run(mn, lambda mm, xx: mm(xx, norm_stats=tc.context_stats(mm, xx)), x1)
    np.testing.assert_allclose(np.asarray(given), np.asarray(own), atol=LAYER_TOL, rtol=0)


@pytest.mark.parametrize("c,n", [(1, 5), (3, 4), (4, 6)])
def test_visibility_rule_with_everything_known_is_openltms_masks(c, n):
    var, time = np.repeat(np.arange(c), n), np.tile(np.arange(n), c)
    for covariate, want in ((False, masks.timer_multivariate_mask), (True, masks.timer_covariate_mask)):  # fmt: skip
        vis = timer_visible(var[:, None], time[:, None], var[None], time[None], c, covariate, n)
        np.testing.assert_array_equal(~vis, want(c, n))


def test_generated_covariates_are_revealed_causally():
    # target (var 1) at generated time 3 sees the covariate's context (times < 2) and time 3,
    # never the covariate's generated future
    assert timer_visible(1, 3, 0, 1, 2, True, 2) and timer_visible(1, 3, 0, 3, 2, True, 2)
    assert not timer_visible(1, 3, 0, 4, 2, True, 2)
    assert timer_visible(1, 0, 0, 1, 2, True, 2)  # inside the context: OpenLTM's rule
    assert not timer_visible(0, 3, 1, 0, 2, True, 2)  # covariates never see the target


# ---------------------------------------------------------------- batched, rewound extends


def _decode(m, x, patches, max_tokens, rewind_to=None, again=None):
    """prefill -> extend(patches) [-> rewind(rewind_to) -> extend(again)] in one jit."""

    def fn(mm, xx, pp, aa):
        cache, stats, _ = tc.prefill(mm, xx, max_tokens)
        cache, out = tc.extend(mm, cache, pp, stats)
        if aa is None:
            return cache, out, None
        cache = tc.rewind(cache, jnp.asarray(rewind_to, jnp.int32))
        cache, out2 = tc.extend(mm, cache, aa, stats)
        return cache, out, out2

    return run(m, fn, x, patches, again)


def test_extend_of_t_steps_equals_t_single_steps():
    name = "c3_cov_2layers"  # the covariate rule is the one a block of steps could leak through
    m, x = model(name), context(name, seed=2)
    c = CONFIGS[name][1]
    patches = jnp.asarray(series(2, 3 * P, c, seed=5)).reshape(2, 3, P, c)

    def singles(mm, xx, pp):
        cache, stats, _ = tc.prefill(mm, xx, 8)
        outs = []
        for t in range(3):
            cache, out = tc.extend(mm, cache, pp[:, t : t + 1], stats)
            outs.append(out)
        return cache, jax.tree.map(lambda *o: jnp.concatenate(o, axis=1), *outs)

    cache1, out1 = run(m, singles, x, patches)
    cache3, out3, _ = _decode(m, x, patches, 8)
    np.testing.assert_array_equal(np.asarray(cache3.next_index), [7, 7])
    for a, b in zip(jax.tree.leaves(out3), jax.tree.leaves(out1), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=LAYER_TOL, rtol=0)
    filled = 7 * c  # slots beyond the filled ones are never read
    for a, b in zip(cache3.k + cache3.v, cache1.k + cache1.v, strict=True):
        np.testing.assert_allclose(a[:, :filled], b[:, :filled], atol=LAYER_TOL, rtol=0)


def test_rows_at_different_indices_match_running_alone_and_rewind_reproduces():
    name = "c3_norm_stochastic"
    m, x = model(name), context(name, seed=3)
    steps = jnp.asarray(series(2, 2 * P, 3, seed=6)).reshape(2, 2, P, 3)
    again = jnp.asarray(series(2, P, 3, seed=7)).reshape(2, 1, P, 3)
    # row 0 is rewound one step (its second patch rejected), row 1 keeps both
    cache, out, out2 = _decode(m, x, steps, 8, rewind_to=[5, 6], again=again)
    np.testing.assert_array_equal(np.asarray(cache.next_index), [6, 7])
    for row, kept in ((0, 1), (1, 2)):
        _, alone_out, alone_out2 = _decode(
            m, x[row : row + 1], steps[row : row + 1, :kept], 8, rewind_to=[4 + kept],
            again=again[row : row + 1],
        )  # fmt: skip
        for a, b in zip(jax.tree.leaves(out2), jax.tree.leaves(alone_out2), strict=True):
            np.testing.assert_allclose(a[row], b[0], atol=LAYER_TOL, rtol=0)
    # rewinding one step and re-extending the same patch reproduces the first outputs
    _, _, redo = _decode(m, x, steps, 8, rewind_to=5, again=steps[:, 1:2])
    for a, b in zip(jax.tree.leaves(redo), jax.tree.leaves(out), strict=True):
        np.testing.assert_allclose(a[:, 0], b[:, 1], atol=LAYER_TOL, rtol=0)


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_are_refused_with_what_was_expected():
    m, x = model("c1_norm"), context("c1_norm")
    for bad in (0, -3):
        with pytest.raises(ValueError, match="pred_len must be a positive int"):
            tc.cached_forecast(m, x, bad)
    uneven = TimerXL(TimerXLConfig(**{**BASE, "output_token_len": 4}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_token_len == output_token_len"):
        tc.cached_forecast(uneven, x, 4)
    with pytest.raises(ValueError, match="max_tokens must be an int >= the context's 4 tokens"):
        tc.prefill(m, x, 3)
    with pytest.raises(ValueError, match="not a multiple of input_token_len"):
        tc.cached_forecast(m, x[:, 1:], 4)
    cache = tc.init_cache(m, 2, 1, 6, 4)
    with pytest.raises(ValueError, match=r"patches must be \[2, T, 8, 1\]"):
        tc.extend(m, cache, jnp.zeros((2, 1, 8, 3)), tc.context_stats(m, x))
    with pytest.raises(ValueError, match="max_tokens must be a positive int"):
        tc.init_cache(m, 2, 1, 0, 4)
    with pytest.raises(ValueError, match="position_stride must be a positive int"):
        m(x, position_stride=0)
    with pytest.raises(ValueError, match="use_norm=False"):
        model("c3_cov_2layers")(context("c3_cov_2layers"), norm_stats=(jnp.zeros((2, 1, 3)),) * 2)
    with pytest.raises(ValueError, match=r"means must have shape \(2, 1, 1\)"):
        m(x, norm_stats=(jnp.zeros((2, 1, 3)), jnp.ones((2, 1, 3))))
