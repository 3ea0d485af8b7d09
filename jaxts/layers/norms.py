"""Root-mean-square layer norm (T5LayerNorm, LlamaRMSNorm)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class RMSNorm(nnx.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``: no mean subtraction, no bias.

    The variance is accumulated in float32 whatever the input dtype, as T5 and Llama do, so
    bf16 activations do not lose the statistic. ``x [..., D]`` -> ``[..., D]``.
    """

    def __init__(self, dim: int, eps: float = 1e-6, *, scale_init: float = 1.0):
        self.weight = nnx.Param(jnp.full((dim,), scale_init, jnp.float32))
        self.eps = eps

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        variance = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
        y = x * jax.lax.rsqrt(variance + self.eps)
        weight = self.weight[...]
        return weight * y.astype(weight.dtype)
