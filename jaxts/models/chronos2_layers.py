"""Chronos-2 encoder: time attention (RoPE), group attention (across the batch), feed-forward.

Module and parameter names mirror ``chronos.chronos2.layers`` / ``model`` state-dict keys
(``encoder.block.{i}.layer.{0,1,2}``, ``self_attention.{q,k,v,o}``, ``mlp.wi/wo``,
``layer_norm``, ``final_layer_norm``). As upstream (and unlike most transformers):

* attention scores are **not** scaled by ``1/sqrt(d_kv)`` (T5 style; :class:`T5Attention` is
  reused for the q/k/v/o projections, their initialisation and the softmax);
* masks are additive with ``finfo(float32).min``, not ``-inf``: a query whose keys are all
  masked gets a uniform softmax over every key instead of NaN;
* RoPE rotates the two halves of each head (HF ``rotate_half``), positions ``0..S-1`` over the
  whole token sequence (context patches, REG, future patches); group attention has no RoPE.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxts.layers.norms import RMSNorm
from jaxts.layers.patching import activation
from jaxts.layers.rope import apply_rope_half
from jaxts.models.t5 import T5Attention, T5Config

__all__ = [
    "Chronos2Encoder",
    "FeedForward",
    "GroupSelfAttention",
    "TimeSelfAttention",
    "apply_rope_half",
    "group_time_bias",
    "rope_half_tables",
    "time_attention_bias",
]

MASK_VALUE = float(jnp.finfo(jnp.float32).min)


def rope_half_tables(num_positions: int, dim: int, base: float):
    """cos/sin ``[S, dim]`` for positions ``0..S-1``: the frequencies ``base**(-2i/dim)``
    computed in float32 as upstream, repeated as two halves (``cat(freqs, freqs)``)."""
    inv_freq = 1.0 / jnp.power(
        jnp.float32(base), jnp.arange(0, dim, 2, dtype=jnp.float32) / jnp.float32(dim)
    )  # [dim // 2]
    freqs = jnp.arange(num_positions, dtype=jnp.float32)[:, None] * inv_freq  # [S, dim // 2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [S, dim]
    return jnp.cos(emb), jnp.sin(emb)


def time_attention_bias(attention_mask: jnp.ndarray) -> jnp.ndarray:
    """``[B, S]`` observed tokens -> additive ``[B, 1, 1, S]`` (``(1 - m) * min`` as upstream)."""
    m = attention_mask.astype(jnp.float32)
    return ((1.0 - m) * MASK_VALUE)[:, None, None, :]


def group_time_bias(group_ids, attention_mask, group_bias=None) -> jnp.ndarray:
    """The additive group-attention mask ``[S, 1 or H, B (query), B (key)]``.

    Upstream's ``_construct_and_invert_group_time_mask``: 0 where query and key series share a
    group and the key is observed at that step, ``min`` elsewhere. With ``group_bias``
    (``[B, B]``, ``[S, B, B]`` or ``[S, H, B, B]``), pairs of *different* groups whose key is
    observed get ``clip(group_bias, min)`` instead: a bias of 0 merges every group, ``min``
    keeps them apart. Unobserved keys stay masked.
    """
    same = group_ids[:, None] == group_ids[None, :]  # [B, B]
    observed = attention_mask.astype(bool).T[:, None, None, :]  # [S, 1, 1, B (key)]
    if group_bias is None:
        keep = same[None, None] & observed  # [S, 1, B, B]
        return jnp.where(keep, 0.0, MASK_VALUE).astype(jnp.float32)
    bias = jnp.asarray(group_bias, jnp.float32)
    if bias.ndim == 2:
        bias = bias[None, None]  # [1, 1, B, B]
    elif bias.ndim == 3:
        bias = bias[:, None]  # [S, 1, B, B]
    cross = jnp.maximum(bias, MASK_VALUE)  # clip: -inf -> min, so a masked row stays finite
    inside = jnp.where(same, 0.0, cross)  # [S or 1, H or 1, B, B]
    return jnp.where(observed, inside, MASK_VALUE).astype(jnp.float32)


def attention_config(core) -> T5Config:
    """The T5 config of the q/k/v/o projections (T5's attention is Chronos-2's minus RoPE)."""
    return T5Config(
        d_model=core.d_model,
        d_kv=core.d_kv,
        num_heads=core.num_heads,
        dropout_rate=core.dropout_rate,
        initializer_factor=core.initializer_factor,
    )


def _norm(core) -> RMSNorm:
    # upstream _init_weights sets every Chronos2LayerNorm weight to initializer_factor
    return RMSNorm(core.d_model, core.layer_norm_epsilon, scale_init=core.initializer_factor)


class _AttentionLayer(nnx.Module):
    """``self_attention`` (q/k/v/o), its pre-norm ``layer_norm`` and the residual dropout."""

    def __init__(self, core, *, rngs: nnx.Rngs):
        self.self_attention = T5Attention(
            attention_config(core), has_relative_attention_bias=False, rngs=rngs
        )
        self.layer_norm = _norm(core)
        self.dropout = nnx.Dropout(core.dropout_rate, rngs=rngs)


class TimeSelfAttention(_AttentionLayer):
    """Pre-norm self-attention along the time axis, RoPE on q and k, residual."""

    def __call__(self, h, bias, cos, sin):
        """``h [B, S, D]``, ``bias [B, 1, 1, S]``, ``cos/sin [S, d_kv]`` -> ``[B, S, D]``."""
        attn = self.self_attention
        x = self.layer_norm(h)
        q = apply_rope_half(attn.heads(attn.q, x), cos, sin)  # [B, H, S, E]
        k = apply_rope_half(attn.heads(attn.k, x), cos, sin)
        v = attn.heads(attn.v, x)
        return h + self.dropout(attn.output(attn.attend(q, k, v, bias)))


class GroupSelfAttention(_AttentionLayer):
    """Pre-norm self-attention across the series of the batch at each token position."""

    def __call__(self, h, bias):
        """``h [B, S, D]``, ``bias [S, 1 or H, B, B]`` -> ``[B, S, D]``."""
        attn = self.self_attention
        ht = jnp.swapaxes(h, 0, 1)  # [S, B, D]: the batch is the attended axis
        x = self.layer_norm(ht)
        q, k, v = (attn.heads(p, x) for p in (attn.q, attn.k, attn.v))  # [S, H, B, E]
        out = ht + self.dropout(attn.output(attn.attend(q, k, v, bias)))  # [S, B, D]
        return jnp.swapaxes(out, 0, 1)


class MLP(nnx.Module):
    """``wo(dropout(act(wi x)))``, no biases (upstream ``MLP``; gated forms are rejected by
    the config)."""

    def __init__(self, core, *, rngs: nnx.Rngs):
        f, d, d_ff = core.initializer_factor, core.d_model, core.d_ff
        normal = nnx.initializers.normal
        self.wi = nnx.Linear(d, d_ff, use_bias=False, kernel_init=normal(f * d**-0.5), rngs=rngs)
        self.wo = nnx.Linear(d_ff, d, use_bias=False, kernel_init=normal(f * d_ff**-0.5), rngs=rngs)
        self.act = activation(core.feed_forward_proj)
        self.dropout = nnx.Dropout(core.dropout_rate, rngs=rngs)

    def __call__(self, x):
        return self.wo(self.dropout(self.act(self.wi(x))))


class FeedForward(nnx.Module):
    def __init__(self, core, *, rngs: nnx.Rngs):
        self.mlp = MLP(core, rngs=rngs)
        self.layer_norm = _norm(core)
        self.dropout = nnx.Dropout(core.dropout_rate, rngs=rngs)

    def __call__(self, h):
        return h + self.dropout(self.mlp(self.layer_norm(h)))


class Chronos2EncoderBlock(nnx.Module):
    def __init__(self, core, *, rngs: nnx.Rngs):
        self.layer = nnx.List(
            [
                TimeSelfAttention(core, rngs=rngs),
                GroupSelfAttention(core, rngs=rngs),
                FeedForward(core, rngs=rngs),
            ]
        )

    def __call__(self, h, time_bias, group_bias, cos, sin):
        h = self.layer[0](h, time_bias, cos, sin)
        h = self.layer[1](h, group_bias)
        return self.layer[2](h)


class Chronos2Encoder(nnx.Module):
    def __init__(self, core, *, rngs: nnx.Rngs):
        self.block = nnx.List(
            [Chronos2EncoderBlock(core, rngs=rngs) for _ in range(core.num_layers)]
        )
        self.final_layer_norm = _norm(core)
        self.dropout = nnx.Dropout(core.dropout_rate, rngs=rngs)
        self.d_kv, self.rope_theta = core.d_kv, core.rope_theta

    def __call__(self, embeds, time_bias, group_bias):
        """``embeds [B, S, D]``, biases from :func:`time_attention_bias` and
        :func:`group_time_bias` -> last hidden state ``[B, S, D]``."""
        cos, sin = rope_half_tables(embeds.shape[1], self.d_kv, self.rope_theta)  # [S, E]
        h = self.dropout(embeds)
        for block in self.block:
            h = block(h, time_bias, group_bias, cos, sin)
        return self.dropout(self.final_layer_norm(h))
