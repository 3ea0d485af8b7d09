"""Sampling primitives against lax.top_k and HF's logits warpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxts.sampling import categorical, kth_largest, top_k_filter, top_p_filter


def _logits(seed, rows=16, vocab=300):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, vocab)).astype(np.float32) * 3
    x[0, :5] = x[0, 5]  # ties
    x[1, 7] = -np.inf
    x[2] = 0.0  # all equal
    x[3, ::3] = -1e30
    return jnp.asarray(x)


@pytest.mark.parametrize("k", [1, 2, 5, 50, 299, 300])
def test_kth_largest_equals_top_k(k):
    x = _logits(k)
    np.testing.assert_array_equal(
        np.asarray(kth_largest(x, k)), np.asarray(jax.lax.top_k(x, k)[0][:, -1:])
    )


@pytest.mark.parametrize("k", [1, 4, 50])
def test_top_k_matches_hf(k):
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import TopKLogitsWarper

    x = _logits(10 + k)
    want = TopKLogitsWarper(top_k=k)(None, torch.from_numpy(np.array(x)))
    np.testing.assert_array_equal(np.asarray(top_k_filter(x, k)), want.numpy())


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.999])
def test_top_p_matches_hf(p):
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import TopPLogitsWarper

    rng = np.random.default_rng(int(p * 1000))
    x = jnp.asarray(rng.standard_normal((8, 200)).astype(np.float32) * 2)
    want = TopPLogitsWarper(top_p=p)(None, torch.from_numpy(np.array(x)))
    np.testing.assert_array_equal(np.isinf(np.asarray(top_p_filter(x, p))), np.isinf(want.numpy()))
    np.testing.assert_array_equal(
        np.asarray(top_p_filter(x, p))[np.isfinite(want.numpy())],
        want.numpy()[np.isfinite(want.numpy())],
    )


def test_categorical_distribution_and_support():
    probs = np.array([0.5, 0.0, 0.2, 0.25, 0.05, 0.0])
    logits = jnp.log(jnp.asarray(probs, jnp.float32))[None].repeat(40_000, 0)
    draws = np.asarray(categorical(jax.random.key(0), logits))
    counts = np.bincount(draws, minlength=6)
    assert counts[1] == 0 and counts[5] == 0  # zero-probability tokens never drawn
    keep = probs > 0
    chi = stats.chisquare(counts[keep], probs[keep] * len(draws))
    assert chi.pvalue > 1e-3
    # explicit key: same key, same draws; another key, other draws
    again = np.asarray(categorical(jax.random.key(0), logits))
    np.testing.assert_array_equal(draws, again)
    assert (np.asarray(categorical(jax.random.key(1), logits)) != draws).any()
