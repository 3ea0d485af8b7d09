"""The HF Timer (``thuml/timer-base-84m``, remote code ``TimerForPrediction``) in Flax NNX.

Numerically identical to upstream's ``modeling_timer.py`` (reference:
``bridges/reference/timer_hf_torch.py``). Unlike OpenLTM's Timer-XL (``jaxts.models.timer_xl``):
a bias-free patch embedding, RoPE over the whole head in the half-split (``rotate_half``)
layout with positions 0..N-1 and base 10000 (upstream ignores ``rope_theta``), biases on
q/k/v only, a SwiGLU FFN without biases, post-LN blocks and a final LayerNorm, no variable
bias, and one bias-free head per entry of ``output_token_lens``. Module names are upstream's
(``model.layers[i].self_attn.q_proj``...), so the checkpoint mapping is a plain name table
(``jaxts.pipelines.timer.HF_TABLE``, shared with ``bridges/timer_hf.py``).

``TimerHF`` has Timer-XL's call interface (``model(x [B, L, C]) -> [B, N*P_out, C]``, channel
independent, the first head at every patch position) so the Timer-XL trainer and
``rolling_forecast`` drive it; ``forward`` / ``generate`` are the univariate ``[B, L]`` API of
upstream, ``generate`` with a fixed-size KV cache (:class:`TimerKVCache`) and one jit call
for the whole horizon.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxts.config import DictConfig, require_positive
from jaxts.layers.rope import apply_rope_half, rope_tables
from jaxts.layers.swiglu import SwiGLU
from jaxts.models.timer_xl import check_context

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm default, what upstream uses
ROPE_BASE = 10000.0  # upstream's TimeMoeRotaryEmbedding is built without rope_theta
NORMALIZATIONS = ("context", "hf", "window")


@dataclasses.dataclass(frozen=True)
class TimerHFConfig(DictConfig):
    """``TimerConfig`` field names; defaults are timer-base-84m's (upstream's own defaults,
    used for fields a ``config.json`` omits, are ``jaxts.pipelines.timer.UPSTREAM_DEFAULTS``)."""

    input_token_len: int = 96
    hidden_size: int = 1024
    intermediate_size: int = 2048
    output_token_lens: tuple[int, ...] = (96,)
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    hidden_act: str = "silu"
    use_cache: bool = True
    rope_theta: float = 10000.0  # recorded only: upstream always rotates with base 10000
    attention_dropout: float = 0.0  # applied in train mode only (upstream: always)
    initializer_range: float = 0.02
    max_position_embeddings: int = 10000  # no limit: upstream extends its tables on demand

    # What the Timer-XL trainer and rolling_forecast read; not fields (not in config.json).
    stochastic = False
    use_norm = False  # the network has no instance norm; generate() normalises outside it

    def __post_init__(self):
        object.__setattr__(self, "output_token_lens", tuple(self.output_token_lens))
        require_positive(
            self, "input_token_len", "hidden_size", "intermediate_size", "num_hidden_layers"
        )
        require_positive(self, "num_attention_heads", "max_position_embeddings")
        if not self.output_token_lens or min(self.output_token_lens) <= 0:
            raise ValueError(
                f"output_token_lens must be a non-empty list of positive lengths, got "
                f"{list(self.output_token_lens)}"
            )
        if len(set(self.output_token_lens)) != len(self.output_token_lens):
            raise ValueError(f"output_token_lens has duplicates: {list(self.output_token_lens)}")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act must be 'silu' (SwiGLU), got {self.hidden_act!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("hidden_size / num_attention_heads must be even (rotary halves)")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")

    @property
    def output_token_len(self) -> int:
        """The first head's length: what ``model(x)`` and the trainer use."""
        return self.output_token_lens[0]


# ---- modules (upstream names) --------------------------------------------------------------


def _linear(d_in: int, d_out: int, bias: bool, cfg: TimerHFConfig, rngs: nnx.Rngs):
    # upstream _init_weights: N(0, initializer_range) weights, zero biases
    init = nnx.initializers.normal(stddev=cfg.initializer_range)
    return nnx.Linear(d_in, d_out, use_bias=bias, kernel_init=init, rngs=rngs)


def rope_half_tables(positions, head_dim: int):
    """cos/sin ``[T, E]`` in upstream's ``cat(freqs, freqs)`` layout for (possibly traced)
    integer ``positions [T]``: the interleaved tables of ``jaxts.layers.rope`` de-duplicated."""
    cos, sin = rope_tables(positions, head_dim, ROPE_BASE)  # [T, E]: (t0, t0, t1, t1, ...)
    cos, sin = cos[..., 0::2], sin[..., 0::2]  # [T, E/2]
    return jnp.concatenate([cos, cos], -1), jnp.concatenate([sin, sin], -1)


class TimerAttention(nnx.Module):
    def __init__(self, cfg: TimerHFConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_attention_heads, d // cfg.num_attention_heads
        self.q_proj = _linear(d, d, True, cfg, rngs)
        self.k_proj = _linear(d, d, True, cfg, rngs)
        self.v_proj = _linear(d, d, True, cfg, rngs)
        self.o_proj = _linear(d, d, False, cfg, rngs)
        self.dropout = nnx.Dropout(cfg.attention_dropout, rngs=rngs)

    def __call__(self, x, cos, sin, allowed, kv=None, index=None):
        """x ``[B, T, D]``, cos/sin ``[T, E]``, ``allowed [T, S]`` -> (``[B, T, D]``, keys and
        values ``[B, H, S, E]``). With ``kv`` (this layer's cache) the new keys/values are
        written at slots ``index ..`` first and all S slots are attended to where allowed."""
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        q = self.q_proj(x).reshape(shape).transpose(0, 2, 1, 3)  # [B, H, T, E]
        k = self.k_proj(x).reshape(shape).transpose(0, 2, 1, 3)  # [B, H, T, E]
        v = self.v_proj(x).reshape(shape).transpose(0, 2, 1, 3)  # [B, H, T, E]
        q, k = apply_rope_half(q, cos, sin), apply_rope_half(k, cos, sin)
        if kv is not None:
            k = jax.lax.dynamic_update_slice(kv[0], k, (0, 0, index, 0))  # [B, H, S, E]
            v = jax.lax.dynamic_update_slice(kv[1], v, (0, 0, index, 0))
        scores = jnp.einsum("bhte,bhse->bhts", q, k) / math.sqrt(self.head_dim)  # [B, H, T, S]
        probs = self.dropout(jax.nn.softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1))
        out = jnp.einsum("bhts,bhse->bthe", probs, v).reshape(b, t, -1)  # [B, T, D]
        return self.o_proj(out), (k, v)


class TimerDecoderLayer(nnx.Module):
    """Post-LN: attention -> add -> norm1 -> SwiGLU -> add -> norm2."""

    def __init__(self, cfg: TimerHFConfig, *, rngs: nnx.Rngs):
        self.self_attn = TimerAttention(cfg, rngs=rngs)
        self.ffn_layer = SwiGLU(  # no biases upstream
            cfg.hidden_size, cfg.intermediate_size, use_bias=False,
            kernel_init=nnx.initializers.normal(stddev=cfg.initializer_range), rngs=rngs,
        )  # fmt: skip
        self.norm1 = nnx.LayerNorm(cfg.hidden_size, epsilon=LAYER_NORM_EPS, rngs=rngs)
        self.norm2 = nnx.LayerNorm(cfg.hidden_size, epsilon=LAYER_NORM_EPS, rngs=rngs)

    def __call__(self, x, cos, sin, allowed, kv=None, index=None):
        a, kv = self.self_attn(x, cos, sin, allowed, kv, index)
        x = self.norm1(x + a)
        return self.norm2(x + self.ffn_layer(x)), kv


class PatchEmbedding(nnx.Module):
    def __init__(self, cfg: TimerHFConfig, *, rngs: nnx.Rngs):
        self.emb = _linear(cfg.input_token_len, cfg.hidden_size, False, cfg, rngs)

    def __call__(self, patches):
        return self.emb(patches)  # [B, N, P] -> [B, N, D]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TimerKVCache:
    """Fixed-size rotated keys/values of every layer (a pytree, carried through ``scan``).

    ``k``/``v``: one ``[B, H, S, E]`` array per layer (separate arrays so XLA updates each in
    place); ``next_index []`` int32: the next free slot, which is also the next token's
    position (slots hold positions 0..S-1 in order)."""

    k: tuple[jnp.ndarray, ...]
    v: tuple[jnp.ndarray, ...]
    next_index: jnp.ndarray

    @classmethod
    def empty(cls, cfg: TimerHFConfig, batch: int, size: int) -> TimerKVCache:
        e = cfg.hidden_size // cfg.num_attention_heads
        zeros = jnp.zeros((batch, cfg.num_attention_heads, size, e), jnp.float32)
        n = cfg.num_hidden_layers
        return cls((zeros,) * n, (zeros,) * n, jnp.zeros((), jnp.int32))


class TimerModel(nnx.Module):
    """Upstream ``TimerModel``: embedding, decoder layers, final norm."""

    def __init__(self, cfg: TimerHFConfig, *, rngs: nnx.Rngs):
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.embed_layer = PatchEmbedding(cfg, rngs=rngs)
        self.layers = nnx.List(
            [TimerDecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)]
        )
        self.norm = nnx.LayerNorm(cfg.hidden_size, epsilon=LAYER_NORM_EPS, rngs=rngs)

    def __call__(self, patches, cache: TimerKVCache | None = None):
        """``patches [B, T, P]`` -> (hidden ``[B, T, D]``, cache). Without a cache: causal
        attention over these T tokens at positions 0..T-1 (the returned cache is None). With
        one: the tokens take positions ``next_index ..``, attend to every earlier slot, and the
        cache comes back with them written and ``next_index`` advanced by T."""
        t = patches.shape[1]
        h = self.embed_layer(patches)  # [B, T, D]
        start = jnp.zeros((), jnp.int32) if cache is None else cache.next_index
        positions = start + jnp.arange(t)  # [T]
        cos, sin = rope_half_tables(positions, self.head_dim)
        keys = positions if cache is None else jnp.arange(cache.k[0].shape[2])  # [S]
        allowed = keys[None, :] <= positions[:, None]  # [T, S] causal
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            h, (k, v) = layer(h, cos, sin, allowed, kv, start)
            ks.append(k)
            vs.append(v)
        if cache is not None:
            cache = TimerKVCache(tuple(ks), tuple(vs), cache.next_index + t)
        return self.norm(h), cache


class TimerHF(nnx.Module):
    """``TimerForPrediction``. ``model(x)`` with x ``[B, L, C]`` -> ``[B, N*P_out, C]``: each
    variable forecast on its own (folded into the batch, no normalisation), the first head
    applied at every patch position; output token n forecasts the P_out points after patch n."""

    def __init__(self, config: TimerHFConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = TimerModel(config, rngs=rngs)
        self.lm_heads = nnx.List(
            [_linear(config.hidden_size, n, False, config, rngs) for n in config.output_token_lens]
        )

    def hidden(self, series, cache: TimerKVCache | None = None):
        """Univariate ``series [B, T*P]`` (a multiple of P, already normalised) -> hidden
        ``[B, T, D]`` and the cache (see :class:`TimerModel`)."""
        b, length = series.shape
        p = self.config.input_token_len
        return self.model(series.reshape(b, length // p, p), cache)  # [B, T, P] patches

    def _channels(self, x, truncate: bool):
        extra = check_context(x, self.config.input_token_len, truncate=truncate)
        x = jnp.asarray(x, jnp.float32)[:, extra:]
        b, length, c = x.shape
        return x.transpose(0, 2, 1).reshape(b * c, length), b, c  # [B*C, L]

    def __call__(self, x, *, truncate: bool = False):
        series, b, c = self._channels(x, truncate)
        h, _ = self.hidden(series)  # [B*C, N, D]
        out = self.lm_heads[0](h)  # [B*C, N, P_out]
        return out.reshape(b, c, -1).transpose(0, 2, 1)  # [B, N*P_out, C]

    def forecast_next(self, x, *, truncate: bool = False):
        """The next patch after the context, ``model(x)[:, -P_out:]`` ``[B, P_out, C]``."""
        series, b, c = self._channels(x, truncate)
        h, _ = self.hidden(series)
        out = self.lm_heads[0](h[:, -1])  # [B*C, P_out]
        return out.reshape(b, c, -1).transpose(0, 2, 1)

    def forecast_next_mean(self, x, *, truncate: bool = False):
        return self.forecast_next(x, truncate=truncate)


# ---- univariate forward and generation ([B, L] series, upstream's API) ---------------------


def check_series(x, input_token_len: int) -> np.ndarray:
    """Validate a batch of series ``[B, L]`` and left-truncate it to a multiple of
    ``input_token_len`` (upstream's ``generate`` drops the oldest points) -> float32 numpy."""
    arr = np.asarray(x, np.float32)
    if arr.ndim != 2:
        raise ValueError(f"series must be [batch, length], got shape {arr.shape}")
    b, length = arr.shape
    if b == 0:
        raise ValueError(f"series batch is empty: shape {arr.shape}")
    if length < input_token_len:
        raise ValueError(f"series too short: length {length} < input_token_len {input_token_len}")
    if not np.isfinite(arr).all():
        raise ValueError("series contains NaN or inf values")
    return arr[:, length - (length // input_token_len) * input_token_len :]


def generation_schedule(cfg: TimerHFConfig, max_new_tokens: int) -> tuple[tuple[int, int], ...]:
    """Upstream's steps for a horizon: ``(head index, points kept)`` per step. Each step takes
    the first head, then each following one while its length is <= the remaining horizon, and
    keeps at most the remaining horizon; every step but the last feeds its points back, so
    they must fill whole patches."""
    lens, p = cfg.output_token_lens, cfg.input_token_len
    steps, remaining = [], int(max_new_tokens)
    while remaining > 0:
        chosen = lens[0]
        for n in lens[1:]:
            if n > remaining:
                break
            chosen = n
        used = min(chosen, remaining)
        steps.append((lens.index(chosen), used))
        remaining -= used
    for _, used in steps[:-1]:
        if used % p:
            raise ValueError(
                f"a step forecasts {used} points, not a multiple of input_token_len {p}: "
                f"output_token_lens {list(lens)} cannot be rolled over {max_new_tokens} points"
            )
    return tuple(steps)


def _stats(x):
    """Mean and *unbiased* std over the last axis, no epsilon (upstream's revin)."""
    mean = x.mean(axis=-1, keepdims=True)  # [B, 1]
    return mean, jnp.std(x, axis=-1, keepdims=True, ddof=1)


def _run_steps(step, carry, heads: tuple[int, ...], batch: int):
    """Apply ``step(carry, head) -> (carry, out [B, len_head])`` for each of ``heads`` -> the
    outputs concatenated ``[B, sum of lengths]``. A run of equal heads is one ``lax.scan``
    after its first step (whose input may differ in size), so the model is traced once per
    run, whatever the horizon."""
    outs, i = [], 0
    while i < len(heads):
        count = 1
        while i + count < len(heads) and heads[i + count] == heads[i]:
            count += 1
        j = heads[i]
        carry, out = step(carry, j)
        outs.append(out)
        if count > 1:
            carry, more = jax.lax.scan(
                lambda c, _, j=j: step(c, j), carry, None, length=count - 1
            )  # [S, B, len_j]
            outs.append(more.transpose(1, 0, 2).reshape(batch, -1))
        i += count
    return jnp.concatenate(outs, axis=1)


def _generate_cached(model: TimerHF, x, heads: tuple[int, ...], hf: bool):
    """KV-cached decoding: the context is encoded once, each step feeds the previous step's
    points. ``hf``: they are normalised by their own mean/std (upstream with its cache);
    otherwise they stay in the context's normalisation ("context"). Every step keeps its
    head's whole output: only the last one is ever cut, and nothing is fed after it."""
    cfg = model.config
    p, lens = cfg.input_token_len, cfg.output_token_lens
    b, length = x.shape
    mean, std = _stats(x)  # [B, 1]
    if not hf:  # a constant context: upstream divides by 0; keep the forecast finite
        std = jnp.where(std > 0, std, 1.0)
    cache = TimerKVCache.empty(cfg, b, length // p + sum(lens[j] for j in heads[:-1]) // p)
    h, cache = model.hidden((x - mean) / std, cache)  # [B, N, D]
    pred = model.lm_heads[heads[0]](h[:, -1])  # [B, len], normalised
    first = pred * std + mean

    def step(carry, j):
        cache, prev = carry  # prev [B, k*P]: the points to feed
        if hf:
            m, s = _stats(prev)
            h, cache = model.hidden((prev - m) / s, cache)
        else:
            h, cache = model.hidden(prev, cache)
        pred = model.lm_heads[j](h[:, -1])  # [B, len_j]
        if hf:
            out = pred * s + m
            return (cache, out), out
        return (cache, pred), pred * std + mean

    if len(heads) == 1:
        return first
    rest = _run_steps(step, (cache, first if hf else pred), heads[1:], b)
    return jnp.concatenate([first, rest], axis=1)


def _generate_window(model: TimerHF, x, heads: tuple[int, ...]):
    """Upstream without a cache: each step re-normalises the whole series so far (context and
    forecasts) by its mean/std and recomputes it. Done on a fixed-size buffer: positions past
    the valid length are ignored by the statistics and, attention being causal, by the last
    valid token."""
    p, lens = model.config.input_token_len, model.config.output_token_lens
    b, length = x.shape
    total = -(-(length + sum(lens[j] for j in heads)) // p) * p  # whole patches
    buf = jnp.zeros((b, total), jnp.float32).at[:, :length].set(x)  # [B, total]
    idx = jnp.arange(total)

    def step(carry, j):
        buf, valid = carry
        mask = idx < valid  # [total]
        mean = jnp.where(mask, buf, 0.0).sum(-1, keepdims=True) / valid  # [B, 1]
        dev = jnp.where(mask, buf - mean, 0.0)
        std = jnp.sqrt((dev * dev).sum(-1, keepdims=True) / (valid - 1))
        h, _ = model.hidden(jnp.where(mask, (buf - mean) / std, 0.0))  # [B, total/P, D]
        last = jax.lax.dynamic_index_in_dim(h, valid // p - 1, axis=1, keepdims=False)
        out = model.lm_heads[j](last) * std + mean  # [B, len_j]
        return (jax.lax.dynamic_update_slice(buf, out, (0, valid)), valid + lens[j]), out

    return _run_steps(step, (buf, jnp.asarray(length, jnp.int32)), heads, b)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _generate_jit(graphdef, state, x, heads: tuple[int, ...], normalization: str):
    model = nnx.merge(graphdef, state)
    model.eval()
    if normalization == "window":
        return _generate_window(model, x, heads)
    return _generate_cached(model, x, heads, hf=normalization == "hf")


def generate(model: TimerHF, x, max_new_tokens: int, normalization: str = "context"):
    """Forecast ``max_new_tokens`` points after each series of ``x [B, L]`` -> ``[B, H]``.

    ``L`` is left-truncated to a multiple of ``input_token_len``; heads and steps follow
    upstream (:func:`generation_schedule`). ``normalization``:

    * ``"context"`` (default): normalise once by the context's mean and unbiased std (a zero
      std counts as 1), KV cache, every generated patch fed back in that normalisation, so
      the forecast is one consistent growing-context forecast;
    * ``"hf"``: upstream ``generate`` with its (default) cache: each fed-back patch is
      normalised by its own mean/std while the cached keys keep the context's;
    * ``"window"``: upstream ``generate(use_cache=False)``: every step re-normalises and
      recomputes the whole series so far.

    The whole horizon is one jit call (compiled once per shape, horizon and mode).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens:
        raise ValueError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    x = check_series(x, model.config.input_token_len)
    heads = tuple(j for j, _ in generation_schedule(model.config, int(max_new_tokens)))
    graphdef, state = nnx.split(model)
    out = _generate_jit(graphdef, state, jnp.asarray(x), heads, normalization)
    return out[:, : int(max_new_tokens)]


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _forward_jit(graphdef, state, x, normalize: bool, head: int):
    model = nnx.merge(graphdef, state)
    model.eval()
    if normalize:
        mean, std = _stats(x)
        x = (x - mean) / std
    h, _ = model.hidden(x)  # [B, N, D]
    out = model.lm_heads[head](h)  # [B, N, P_out]
    return out * std[..., None] + mean[..., None] if normalize else out


def forward(model: TimerHF, x, *, normalize: bool = False, head: int = 0):
    """Head ``head`` at every patch position of ``x [B, L]`` (left-truncated to whole patches)
    -> ``[B, N, P_out]``; row ``N-1`` is upstream ``forward(x).logits``. ``normalize``: by the
    series' mean / unbiased std and back, as upstream's ``revin`` (``generate``) does."""
    n_heads = len(model.config.output_token_lens)
    if not 0 <= head < n_heads:
        raise ValueError(f"head must be in [0, {n_heads}), got {head}")
    x = check_series(x, model.config.input_token_len)
    graphdef, state = nnx.split(model)
    return _forward_jit(graphdef, state, jnp.asarray(x), bool(normalize), int(head))
