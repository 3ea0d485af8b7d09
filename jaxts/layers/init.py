"""Initialisers that reproduce PyTorch's defaults, so training from scratch behaves like upstream."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def _uniform_fan_in(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_linear(in_features: int, out_features: int, *, rngs: nnx.Rngs, use_bias=True):
    """``nnx.Linear`` initialised like ``torch.nn.Linear`` / ``Conv1d(kernel_size=1)``.

    torch draws weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """
    init = _uniform_fan_in(in_features)
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        kernel_init=init,
        bias_init=init,
        rngs=rngs,
    )
