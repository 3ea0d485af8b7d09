"""Token-sampling primitives of the autoregressive token decoders (Chronos-T5 today).

Written for CPU speed inside a jitted decode loop, where they run once per generated token
over ``[rows, vocab]`` logits:

* :func:`kth_largest` finds the exact k-th largest logit by bisection over the order-preserving
  integer image of float32 (32 passes of compare-and-count). XLA's CPU ``top_k`` sorts; on
  ``[160, 4096]`` logits the bisection measured ~10x faster with bit-identical thresholds.
* :func:`categorical` draws one uniform per row and inverts the CDF, instead of one Gumbel
  variate per vocabulary entry (``jax.random.categorical``): the same distribution from 1/V of
  the random bits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_SIGN = 0x80000000


def _ordered_bits(x: jnp.ndarray) -> jnp.ndarray:
    """float32 -> uint32 with the same order (negative floats reversed, sign bit flipped)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where((bits >> 31) == 1, ~bits, bits | jnp.uint32(_SIGN))


def _float_from_ordered(key: jnp.ndarray) -> jnp.ndarray:
    bits = jnp.where((key >> 31) == 1, key & jnp.uint32(~_SIGN & 0xFFFFFFFF), ~key)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def kth_largest(logits: jnp.ndarray, k: int) -> jnp.ndarray:
    """Exact k-th largest value of each row: ``[R, V]`` -> ``[R, 1]`` (``1 <= k <= V``).

    Equals ``lax.top_k(logits, k)[0][:, -1:]`` bit for bit (ties counted with multiplicity).
    """
    keys = _ordered_bits(logits)
    rows = logits.shape[0]
    ones = jnp.ones((logits.shape[-1], 1), jnp.float32)
    lo = jnp.zeros((rows, 1), jnp.uint32)  # invariant: count(keys >= lo) >= k
    hi = jnp.full((rows, 1), 0xFFFFFFFF, jnp.uint32)

    def halve(_, bounds):
        lo, hi = bounds
        gap = hi - lo
        mid = lo + (gap >> 1) + (gap & 1)  # ceil midpoint without uint32 overflow
        # the count as a GEMV with ones: XLA CPU's dot beats its int reduction ~1.6x here;
        # float32 counts are exact up to 2**24 entries
        ok = (keys >= mid).astype(jnp.float32) @ ones >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    return _float_from_ordered(lo)


def top_k_filter(logits: jnp.ndarray, k: int) -> jnp.ndarray:
    """HF ``TopKLogitsWarper``: -inf below the k-th largest (ties at the k-th value kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    return jnp.where(logits < kth_largest(logits, k), -jnp.inf, logits)


def top_p_filter(logits: jnp.ndarray, top_p) -> jnp.ndarray:
    """HF ``TopPLogitsWarper``: keep the most probable tokens whose mass exceeds ``top_p``
    (always at least one); the rest -> -inf. ``logits [R, V]``."""
    sorted_logits = jnp.sort(logits, axis=-1)  # ascending, as HF
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove = (cum <= 1 - top_p).at[:, -1].set(False)
    # the removed entries are a prefix of the ascending order: cut below the smallest kept
    kept_min = jnp.min(jnp.where(remove, jnp.inf, sorted_logits), axis=-1, keepdims=True)
    return jnp.where(logits < kept_min, -jnp.inf, logits)


def categorical(key: jax.Array, logits: jnp.ndarray) -> jnp.ndarray:
    """One draw per row from ``softmax(logits)`` (-inf = excluded): ``[R, V]`` -> ``[R]`` int32.

    Inverse CDF with ``u`` in (0, 1]: the first index whose cumulative mass reaches ``u`` times
    the total always has positive probability.
    """
    probs = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))  # [R, V]
    cdf = jnp.cumsum(probs, axis=-1)
    u = 1.0 - jax.random.uniform(key, (logits.shape[0], 1), jnp.float32)  # (0, 1]
    idx = jnp.sum(cdf < u * cdf[:, -1:], axis=-1, dtype=jnp.int32)
    return jnp.minimum(idx, logits.shape[-1] - 1)
