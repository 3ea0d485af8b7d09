"""KV-cached decoding for Timer-XL (OpenLTM): encode the context once, then each step appends
one token per variable (the forecast patch, in data scale) instead of re-running the window.

Semantics (a growing context, not OpenLTM's sliding window):

* Positions. OpenLTM gives token (variable c, time n) the RoPE position ``c * N + n`` with N the
  window's tokens, so growing the window would move every cross-variable relative position and
  invalidate cached keys when C > 1. The cache fixes the stride to the context's
  ``N0 = L / P``: token (c, n) has position ``c * N0 + n`` for every n, also ``n >= N0``. On the
  context this is exactly OpenLTM's forward, so the first cached forecast equals
  ``model(ctx)[:, -P_out:]`` (rolling_forecast's first patch). The growing-context recomputation
  that cached decoding reproduces is ``model(grown, position_stride=N0, norm_stats=stats)``.
* Normalisation (use_norm): OpenLTM's statistics (mean, sqrt(biased var + 1e-5)) of the context,
  computed once; each generated patch is appended in data scale and normalised with them.
* Masks: :func:`jaxts.models.timer_xl.timer_visible` with ``known = N0``: (c, n) sees every
  (c', n') with n' <= n (multivariate); with ``covariate`` the target also sees every covariate
  token of the context, and generated covariate tokens only up to its own time. The binary
  same-variable bias is unchanged.
* Layout. Per layer one ``k`` and one ``v`` array ``[B, S, H, E]``, S = C * max_tokens slots,
  time-major (slot ``n * C + c``: one time step is C contiguous slots), keys stored after RoPE.
  Separate arrays per layer, not a stacked ``[L, ...]`` one: a write into a stacked array
  copies all of it each step (docs/llama.md). ``next_index [B]`` counts each row's filled time
  steps, so rows advance at their own pace (speculative decoding rewinds rejected ones).

:func:`extend`, :func:`prefill` and :func:`rewind` take a merged model, are traceable (call them
inside your jit) and assume eval mode (no dropout). :func:`cached_forecast` is the jitted
target-only decoder. Requires ``input_token_len == output_token_len``: each forecast patch
becomes the next token.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxts.layers.rope import partial_split, rope_tables
from jaxts.models.timer_xl import (
    INSTANCE_NORM_EPS,
    LOGVAR_CLAMP,
    ROPE_PARTIAL,
    TimerXL,
    check_context,
    timer_visible,
)

__all__ = [
    "TimerKVCache",
    "cached_forecast",
    "context_stats",
    "extend",
    "init_cache",
    "prefill",
    "rewind",
]


def _static():
    return dataclasses.field(metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TimerKVCache:
    """Fixed-size keys/values of every layer (a pytree; carry it through ``lax`` loops).

    ``k``/``v``: one ``[B, S, H, E]`` array per layer, S = ``n_vars * max_tokens``, slot
    ``n * n_vars + c`` holds token (variable c, time n), keys after RoPE; ``next_index [B]``
    int32: time steps filled per row (slots at or beyond it are ignored). Static metadata:
    ``n_vars`` (C), ``position_stride`` (N0, the context's tokens), ``max_tokens``."""

    k: tuple
    v: tuple
    next_index: jax.Array
    n_vars: int = _static()
    position_stride: int = _static()
    max_tokens: int = _static()


def _require_token_patches(model: TimerXL) -> None:
    cfg = model.config
    if cfg.input_token_len != cfg.output_token_len:
        raise ValueError(
            "KV-cached decoding needs input_token_len == output_token_len (each forecast patch "
            f"becomes the next token), got {cfg.input_token_len} and {cfg.output_token_len}"
        )


def context_stats(model: TimerXL, x):
    """OpenLTM's instance-norm statistics of the context ``x [B, L, C]`` (as given, no
    truncation): ``(means, stdev)`` ``[B, 1, C]`` each with stdev = sqrt(biased var + 1e-5),
    or ``(None, None)`` when the model has ``use_norm=False``."""
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"context must be [batch, length, variables], got shape {np.shape(x)}")
    if not model.config.use_norm:
        return None, None
    x = jnp.asarray(x, jnp.float32)
    means = x.mean(axis=1, keepdims=True)  # [B, 1, C]
    stdev = jnp.sqrt(jnp.var(x - means, axis=1, keepdims=True) + INSTANCE_NORM_EPS)
    return means, stdev


def init_cache(
    model: TimerXL, batch: int, n_vars: int, max_tokens: int, position_stride: int
) -> TimerKVCache:
    """An empty cache for ``batch`` rows of ``n_vars`` variables with room for ``max_tokens``
    time steps; token (c, n) gets RoPE position ``c * position_stride + n``."""
    _require_token_patches(model)
    for name, val in (("batch", batch), ("n_vars", n_vars), ("max_tokens", max_tokens),
                      ("position_stride", position_stride)):  # fmt: skip
        if not (isinstance(val, (int, np.integer)) and val > 0):
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    cfg = model.config
    shape = (batch, n_vars * max_tokens, cfg.n_heads, cfg.d_model // cfg.n_heads)
    layers = range(cfg.e_layers)
    return TimerKVCache(
        k=tuple(jnp.zeros(shape, jnp.float32) for _ in layers),
        v=tuple(jnp.zeros(shape, jnp.float32) for _ in layers),
        next_index=jnp.zeros((batch,), jnp.int32),
        n_vars=int(n_vars),
        position_stride=int(position_stride),
        max_tokens=int(max_tokens),
    )


def rewind(cache: TimerKVCache, next_index) -> TimerKVCache:
    """The cache with ``next_index`` (``[B]`` or a scalar) as each row's filled time steps; the
    slots beyond it keep stale values that are masked out and overwritten by the next extend."""
    idx = jnp.broadcast_to(jnp.asarray(next_index, jnp.int32), cache.next_index.shape)
    return dataclasses.replace(cache, next_index=idx)


def _write(buf, new, start):
    """Write ``new [B, T, H, E]`` into ``buf [B, S, H, E]`` at slot ``start[b]`` of each row."""
    return jax.vmap(lambda b, n, s: jax.lax.dynamic_update_slice(b, n, (s, 0, 0)))(buf, new, start)


def _layer_step(layer, h, kc, vc, cos, sin, additive, start):
    """One post-LN Timer layer on the new tokens ``h [B, Q, D]`` against the cache: writes this
    call's rotated keys/values at slot ``start [B]`` and returns (h, kc, vc)."""
    att = layer.attention
    b, q_len, d = h.shape
    heads = att.n_heads
    rot = cos.shape[-1]

    def rope(x):  # [B, Q, H, E]: rotate the first `rot` dims (OpenLTM's partial RoPE)
        mid = cos * x[..., :rot] + sin * _rotate_interleaved(x[..., :rot])
        return jnp.concatenate([mid, x[..., rot:]], axis=-1)

    q = rope(att.query_projection(h).reshape(b, q_len, heads, -1))  # [B, Q, H, E]
    k = rope(att.key_projection(h).reshape(b, q_len, heads, -1))  # [B, Q, H, E]
    v = att.value_projection(h).reshape(b, q_len, heads, -1)  # [B, Q, H, E]
    kc, vc = _write(kc, k, start), _write(vc, v, start)  # [B, S, H, E]
    scale = 1.0 / math.sqrt(q.shape[-1])
    # OpenLTM adds bias and mask before scaling (see softmax_attention)
    scores = jnp.einsum("bqhe,bshe->bhqs", q, kc) + additive  # [B, H, Q, S]
    probs = jax.nn.softmax(scale * scores, axis=-1)
    out = jnp.einsum("bhqs,bshe->bqhe", probs, vc)  # [B, Q, H, E], cache kept in its layout
    x = layer.norm1(h + att.out_projection(out.reshape(b, q_len, d)))
    if layer.activation == "relu":
        y = jax.nn.relu(layer.conv1(x))
    else:
        y = jax.nn.gelu(layer.conv1(x), approximate=False)  # torch's exact erf form
    return layer.norm2(x + layer.conv2(y)), kc, vc


def _rotate_interleaved(x):
    return jnp.stack([-x[..., 1::2], x[..., 0::2]], axis=-1).reshape(x.shape)


def extend(model: TimerXL, cache: TimerKVCache, patches, stats):
    """Append ``patches [B, T, P, C]`` (data scale) at each row's ``next_index`` in ONE forward
    of T*C tokens and forecast after each: returns ``(cache, out)`` with ``next_index += T`` and
    ``out[:, t]`` ``[B, T, P_out, C]`` (data scale) the forecast of the patch that follows step
    t (a ``(mean, logvar)`` pair of such arrays for a stochastic model). ``stats`` is
    :func:`context_stats`' pair. The caller keeps ``next_index + T <= max_tokens`` (a traced
    index cannot be checked; writes past the end would be clamped)."""
    _require_token_patches(model)
    cfg = model.config
    if getattr(patches, "ndim", None) != 4:
        raise ValueError(
            f"patches must be [batch, steps, patch, variables], got {np.shape(patches)}"
        )
    b, t, p, c = patches.shape
    if p != cfg.input_token_len or c != cache.n_vars or b != cache.next_index.shape[0]:
        raise ValueError(
            f"patches must be [{cache.next_index.shape[0]}, T, {cfg.input_token_len}, "
            f"{cache.n_vars}] for this model and cache, got {patches.shape}"
        )
    if t > cache.max_tokens:
        raise ValueError(f"{t} steps do not fit a cache of max_tokens {cache.max_tokens}")
    x = jnp.asarray(patches, jnp.float32)
    means, stdev = stats
    if cfg.use_norm:
        x = (x - means[:, :, None]) / stdev[:, :, None]  # stats [B, 1, 1, C]
    h = model.embedding(x.transpose(0, 1, 3, 2)).reshape(b, t * c, cfg.d_model)  # [B, T*C, D]

    # token j of this call: variable j % C, time next_index + j // C (time-major like the slots)
    q_var = np.arange(t * c) % c  # [Q]
    q_time = cache.next_index[:, None] + jnp.asarray(np.arange(t * c) // c)  # [B, Q]
    slots = cache.n_vars * cache.max_tokens
    k_var, k_time = np.arange(slots) % c, np.arange(slots) // c  # [S]
    visible = timer_visible(
        q_var[None, :, None],
        q_time[:, :, None],
        k_var[None, None],
        k_time[None, None],
        c,
        cfg.covariate,
        cache.position_stride,
    )  # fmt: skip  [B, Q, S]
    filled = k_time[None] < (cache.next_index + t)[:, None]  # [B, S]
    visible = visible & filled[:, None]
    _, rot, _ = partial_split(cfg.d_model // cfg.n_heads, ROPE_PARTIAL)
    cos, sin = rope_tables(q_var[None] * cache.position_stride + q_time, rot)  # [B, Q, rot]
    cos, sin = cos[:, :, None], sin[:, :, None]  # [B, Q, 1, rot]
    same = q_var[:, None] == k_var[None]  # [Q, S]
    start = cache.next_index * c
    ks, vs = [], []
    for i, layer in enumerate(model.blocks.attn_layers):
        w = layer.attention.inner_attention.attn_bias.emb.embedding[...]  # [2, H]
        bias = jnp.where(same[None], w[1][:, None, None], w[0][:, None, None])  # [H, Q, S]
        additive = jnp.where(visible[:, None], bias[None], -jnp.inf)  # [B, H, Q, S]
        h, kc, vc = _layer_step(layer, h, cache.k[i], cache.v[i], cos, sin, additive, start)
        ks.append(kc)
        vs.append(vc)
    h = model.blocks.norm(h)
    cache = dataclasses.replace(cache, k=tuple(ks), v=tuple(vs), next_index=cache.next_index + t)
    return cache, _heads(model, h, means, stdev, b, t, c)


def _heads(model: TimerXL, h, means, stdev, b: int, t: int, c: int):
    """Hidden ``[B, T*C, D]`` -> forecasts ``[B, T, P_out, C]`` in data scale."""
    cfg = model.config

    def layout(y):  # [B, T*C, P_out] -> [B, T, P_out, C]
        return y.reshape(b, t, c, -1).transpose(0, 1, 3, 2)

    def denorm(y):
        return y * stdev[:, :, None] + means[:, :, None] if cfg.use_norm else y

    if not cfg.stochastic:
        return denorm(layout(model.head(h)))
    logvar = layout(jnp.clip(model.head_logvar(h), *LOGVAR_CLAMP))
    if cfg.use_norm:
        logvar = logvar + 2.0 * jnp.log(stdev[:, :, None])  # variance scales with stdev^2
    return denorm(layout(model.head_mean(h))), logvar


def prefill(model: TimerXL, context, max_tokens: int, *, truncate: bool = False):
    """Encode ``context [B, L, C]`` (L a multiple of P, or ``truncate`` drops the oldest extra
    points) into a cache of ``max_tokens`` time steps with ``position_stride`` N0 = L / P.

    Returns ``(cache, stats, out)``: ``stats`` = :func:`context_stats` of the (truncated)
    context, ``out [B, N0, P_out, C]`` the forecast after each context token (equal to
    ``model(context)`` reshaped; ``out[:, -1]`` is the first forecast patch)."""
    _require_token_patches(model)
    p = model.config.input_token_len
    extra = check_context(context, p, truncate=truncate)
    x = jnp.asarray(context, jnp.float32)[:, extra:]
    b, length, c = x.shape
    n0 = length // p
    if not (isinstance(max_tokens, (int, np.integer)) and max_tokens >= n0):
        raise ValueError(
            f"max_tokens must be an int >= the context's {n0} tokens, got {max_tokens!r}"
        )
    stats = context_stats(model, x)
    cache = init_cache(model, b, c, int(max_tokens), n0)
    cache, out = extend(model, cache, x.reshape(b, n0, p, c), stats)
    return cache, stats, out


def cached_forecast(model: TimerXL, context, pred_len: int, *, truncate: bool = False):
    """Target-only KV-cached forecast ``[B, pred_len, C]`` of ``context [B, L, C]``: prefill,
    then one C-token :func:`extend` per further patch in a jitted ``lax.scan``; each forecast
    patch (the mean for a stochastic model) is appended in data scale. Equals the step-by-step
    recomputation ``model(grown, position_stride=N0, norm_stats=context_stats(ctx))[:, -P:]``;
    for ``pred_len <= P_out`` it equals :func:`~jaxts.models.timer_xl.rolling_forecast`."""
    if not (isinstance(pred_len, (int, np.integer)) and pred_len > 0):
        raise ValueError(f"pred_len must be a positive int, got {pred_len!r}")
    _require_token_patches(model)
    extra = check_context(context, model.config.input_token_len, truncate=truncate)
    x = jnp.asarray(context, jnp.float32)[:, extra:]
    graphdef, state = nnx.split(model)
    return _cached_jit(graphdef, state, x, int(pred_len))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _cached_jit(graphdef, state, x, pred_len: int):
    model = nnx.merge(graphdef, state)
    model.eval()
    cfg = model.config
    p = cfg.output_token_len
    steps = math.ceil(pred_len / p)
    n0 = x.shape[1] // p
    cache, stats, out = prefill(model, x, n0 + steps - 1)  # the last patch is never appended

    def mean(o):
        return o[0] if cfg.stochastic else o

    def step(carry, _):
        cache, patch = carry  # patch [B, P, C]
        cache, out = extend(model, cache, patch[:, None], stats)
        nxt = mean(out)[:, 0]
        return (cache, nxt), nxt

    first = mean(out)[:, -1]  # [B, P, C]
    _, rest = jax.lax.scan(step, (cache, first), None, length=steps - 1)  # [S-1, B, P, C]
    preds = jnp.concatenate([first[None], rest], axis=0).transpose(1, 0, 2, 3)  # [B, S, P, C]
    return preds.reshape(x.shape[0], steps * p, x.shape[2])[:, :pred_len]
