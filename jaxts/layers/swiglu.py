"""The SwiGLU feed-forward of Llama-style blocks (Llama, the HF Timer): ``down(silu(gate(x)) *
up(x))``, with HF's parameter names, so bridges map ``mlp.gate_proj`` / ``ffn_layer.gate_proj``
straight onto it."""

from __future__ import annotations

import jax
from flax import nnx


class SwiGLU(nnx.Module):
    """``x [..., D] -> [..., D]`` through a ``d_ff``-wide gated SiLU; ``kernel_init`` is the
    model's weight initialiser (biases, when ``use_bias``, start at zero)."""

    def __init__(self, d_model: int, d_ff: int, *, use_bias: bool, kernel_init, rngs: nnx.Rngs):
        def linear(d_in, d_out):
            return nnx.Linear(d_in, d_out, use_bias=use_bias, kernel_init=kernel_init, rngs=rngs)

        self.gate_proj = linear(d_model, d_ff)
        self.up_proj = linear(d_model, d_ff)
        self.down_proj = linear(d_ff, d_model)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))
