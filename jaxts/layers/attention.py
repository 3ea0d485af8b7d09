"""OpenLTM's multi-head attention pieces (``AttentionLayer``), as Timer-XL uses them.

T5 has its own attention in ``jaxts/models/t5.py``: no ``1/sqrt(d)`` scaling, a decode cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxts.layers.init import torch_linear


def softmax_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    additive: jnp.ndarray,
    scale: float,
    dropout: nnx.Dropout | None = None,
) -> jnp.ndarray:
    """``softmax(scale * (q k^T + additive)) v``.

    The additive term (bias and -inf mask) is added *before* scaling, as OpenLTM's TimeAttention
    does (``scores += attn_mask; softmax(scale * scores)``); this is not the usual convention.

    q ``[B, H, L, E]``, k ``[B, H, S, E]``, v ``[B, H, S, D]``, additive broadcastable to
    ``[B, H, L, S]``; returns ``[B, L, H, D]``.
    """
    scores = jnp.einsum("bhle,bhse->bhls", q, k) + additive  # [B, H, L, S]
    probs = jax.nn.softmax(scale * scores, axis=-1)
    if dropout is not None:
        probs = dropout(probs)
    return jnp.einsum("bhls,bhsd->blhd", probs, v)  # [B, L, H, D]


class AttentionLayer(nnx.Module):
    """q/k/v/out projections around an inner attention; names mirror OpenLTM's ``AttentionLayer``."""

    def __init__(self, inner_attention, d_model: int, n_heads: int, *, rngs: nnx.Rngs):
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        head_dim = d_model // n_heads
        self.inner_attention = inner_attention
        self.query_projection = torch_linear(d_model, head_dim * n_heads, rngs=rngs)
        self.key_projection = torch_linear(d_model, head_dim * n_heads, rngs=rngs)
        self.value_projection = torch_linear(d_model, head_dim * n_heads, rngs=rngs)
        self.out_projection = torch_linear(head_dim * n_heads, d_model, rngs=rngs)

    def __call__(self, x: jnp.ndarray, *, query_rows=None, **kwargs) -> jnp.ndarray:
        """Self-attention over ``x [B, T, D]``; ``kwargs`` go to the inner attention.

        ``query_rows`` (static int array of length Tq) computes outputs for those rows only:
        keys/values still cover all T tokens, so the rows equal the full computation's rows.
        Returns ``[B, T, D]`` or ``[B, Tq, D]``.
        """
        b, t, _ = x.shape
        h = self.n_heads
        xq = x if query_rows is None else x[:, query_rows]
        q = self.query_projection(xq).reshape(b, xq.shape[1], h, -1)  # [B, Tq, H, E]
        k = self.key_projection(x).reshape(b, t, h, -1)  # [B, T, H, E]
        v = self.value_projection(x).reshape(b, t, h, -1)
        out = self.inner_attention(q, k, v, query_rows=query_rows, **kwargs)  # [B, Tq, H, E]
        return self.out_projection(out.reshape(b, xq.shape[1], -1))
