"""Sampling filters for Llama generation, exact to transformers' logits warpers.

``generate(do_sample=True)`` applies ``TemperatureLogitsWarper`` -> ``TopKLogitsWarper`` ->
``TopPLogitsWarper`` (``min_tokens_to_keep=1``, removed tokens set to ``-inf``) and then draws
from the softmax. :func:`warp_logits` does the same with fixed shapes (``lax.top_k`` threshold,
one sort for top-p), so it runs inside the jitted ``lax.while_loop`` of
:func:`jaxts.models.llama.generate`. Pure ``jnp``: no model import, so ``llama.py`` imports it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["sample_tokens", "warp_logits"]


def warp_logits(
    logits: jnp.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> jnp.ndarray:
    """``logits [B, V]`` -> float32 ``[B, V]``: divided by ``temperature``, then all but the
    ``top_k`` largest (ties with the k-th kept, as HF) and then all outside the nucleus set to
    ``-inf``. ``top_k=0`` and ``top_p=1.0`` switch a filter off (HF does not add the warper);
    ``temperature`` must be positive (0 means greedy, which the caller handles)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive to sample, got {temperature}")
    if top_k < 0 or not 0.0 <= top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and 0 <= top_p <= 1, got {top_k}, {top_p}")
    x = jnp.asarray(logits, jnp.float32)  # [B, V]
    neg_inf = jnp.float32(-jnp.inf)
    if temperature != 1.0:
        x = x / jnp.float32(temperature)
    if top_k > 0:
        # HF: remove scores < the k-th largest, so every token tied with the k-th survives.
        kth = jax.lax.top_k(x, min(top_k, x.shape[-1]))[0][..., -1:]  # [B, 1]
        x = jnp.where(x < kth, neg_inf, x)
    if top_p < 1.0:
        # HF sorts ascending and removes tokens whose cumulative probability is <= 1 - p: the
        # kept tail is the smallest set reaching mass >= p (an exact tie at 1 - p is removed).
        # A stable sort orders ties by index, as torch's CPU sort does.
        order = jnp.argsort(x, axis=-1, stable=True)  # [B, V] ascending
        sorted_x = jnp.take_along_axis(x, order, axis=-1)  # [B, V]
        cum = jnp.cumsum(jax.nn.softmax(sorted_x, axis=-1), axis=-1)  # [B, V]
        remove_sorted = cum <= (1.0 - top_p)
        remove_sorted = remove_sorted.at[..., -1].set(False)  # min_tokens_to_keep = 1
        inverse = jnp.argsort(order, axis=-1)  # [B, V]: back to vocabulary order
        x = jnp.where(jnp.take_along_axis(remove_sorted, inverse, axis=-1), neg_inf, x)
    return x


def sample_tokens(
    logits: jnp.ndarray,
    key: jax.Array,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> jnp.ndarray:
    """Next tokens ``[B]`` int32 from ``logits [B, V]``: argmax at ``temperature == 0`` (as
    ``do_sample=False``, which ignores top-k/top-p), else one categorical draw per row from the
    warped logits."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    warped = warp_logits(logits, temperature, top_k, top_p)
    return jax.random.categorical(key, warped, axis=-1).astype(jnp.int32)
