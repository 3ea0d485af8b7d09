"""Llama decoder-only language model in Flax NNX, exact to transformers' ``LlamaForCausalLM``.

Module and parameter names mirror HF (``model.embed_tokens``, ``model.layers.{i}.self_attn.q_proj``,
``input_layernorm``, ``mlp.gate_proj``, ``model.norm``, ``lm_head``), so the bridge is a plain name
table. What a port gets wrong first:

* RoPE rotates the two *halves* of each head (``rotate_half``), not interleaved pairs, and the
  inverse frequencies are rescaled by ``rope_scaling`` (``llama3`` for Llama 3.1/3.2, ``linear``)
  exactly as transformers' rope init functions do, in float32;
* grouped-query attention: ``num_key_value_heads`` divides ``num_attention_heads``, each KV head
  serves ``num_attention_heads // num_key_value_heads`` query heads (MHA, GQA and MQA);
* left padding: positions per row are ``cumsum(mask) - 1`` (what HF ``generate`` passes), so a
  padded row sees the same positions, hence the same logits, as the unpadded one.

Generation (:func:`generate`) runs a fixed-size KV cache through one jitted prefill and a
``lax.while_loop`` of decode steps, greedy or sampled (``llama_sampling``).
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
from jaxts.layers.norms import RMSNorm
from jaxts.layers.rope import apply_rope_half
from jaxts.layers.swiglu import SwiGLU
from jaxts.models.llama_sampling import sample_tokens, warp_logits

__all__ = [
    "KVCache",
    "Llama",
    "cast_params",
    "decode_loop",
    "LlamaConfig",
    "generate",
    "greedy_generate",
    "RopeScaling",
    "apply_rope_half",
    "rope_inv_freq",
]

_ROPE_TYPES = ("linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling(DictConfig):
    """HF ``rope_scaling`` (``rope_parameters`` in transformers 5) minus ``rope_theta``: the
    rescaling of the inverse frequencies (``linear``: all divided by ``factor``; ``llama3``:
    low frequencies divided by ``factor``, high ones kept, a smooth ramp between)."""

    rope_type: str
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    def __post_init__(self):
        if self.rope_type not in _ROPE_TYPES:
            raise ValueError(
                f"rope_type {self.rope_type!r} is not supported; supported: {list(_ROPE_TYPES)}"
            )
        require_positive(self, "factor")
        if self.rope_type == "llama3":
            need = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
            absent = [n for n in need if getattr(self, n) is None]
            if absent:
                raise ValueError(f"llama3 rope scaling needs {absent}")
            if not self.high_freq_factor > self.low_freq_factor:
                raise ValueError("high_freq_factor must exceed low_freq_factor")


@dataclasses.dataclass(frozen=True)
class LlamaConfig(DictConfig):
    """HF ``LlamaConfig`` fields that change the computation (same names)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: = num_attention_heads (MHA), as HF
    head_dim: int | None = None  # None: hidden_size // num_attention_heads, as HF
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = 1
    # Llama 3 instruct checkpoints stop at several ids: a tuple keeps the config hashable.
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None

    def __post_init__(self):
        # Resolve HF's None defaults once so every reader sees concrete sizes.
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        require_positive(
            self, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta",
        )  # fmt: skip
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The EOS ids as a tuple (empty when there is none)."""
        eos = self.eos_token_id
        return () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)

    @property
    def fill_id(self) -> int:
        """The id that pads a generated row after it stops: the first EOS, else
        ``pad_token_id``, else 0."""
        return self.eos_ids[0] if self.eos_ids else (self.pad_token_id or 0)


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
    """Inverse frequencies ``[head_dim // 2]`` (float32), with the operations and in the order of
    transformers' ``_compute_default/linear_scaling/llama3_parameters`` (the llama3 band edges
    compare float32 wavelengths, as torch does). The power is taken in float64 and rounded:
    torch's vectorised float32 ``pow`` is not correctly rounded, so an element may differ from
    HF's by one ulp (an angle error of ~1e-7 relative; far below the 1e-4 logit tolerance)."""
    dim = cfg.head_dim
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    power = np.power(np.float64(np.float32(cfg.rope_theta)), exponent.astype(np.float64))
    inv_freq = (np.float32(1.0) / power.astype(np.float32)).astype(np.float32)
    rs = cfg.rope_scaling
    if rs is None:
        return inv_freq
    factor = np.float32(rs.factor)
    if rs.rope_type == "linear":
        return (inv_freq / factor).astype(np.float32)
    old_len = rs.original_max_position_embeddings
    low_wavelen = old_len / rs.low_freq_factor
    high_wavelen = old_len / rs.high_freq_factor
    wavelen = (np.float32(2 * math.pi) / inv_freq).astype(np.float32)
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
    smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
    smooth = smooth.astype(np.float32)
    smoothed = ((1 - smooth) * scaled / factor + smooth * scaled).astype(np.float32)
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


# HF initialises Linear weights with normal(0, initializer_range=0.02), biases with zeros.
_INIT = nnx.initializers.normal(stddev=0.02)


def _linear(d_in: int, d_out: int, bias: bool, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=bias, kernel_init=_INIT, rngs=rngs)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Fixed-size keys/values of every layer, a pytree (carried through ``lax.while_loop``).

    ``k``/``v``: one ``[B, K, S, E]`` array per layer (rotated keys). Separate arrays, not one
    stacked ``[L, ...]``: XLA then updates each layer's slots in place inside the loop, where a
    per-layer write into a stacked array copied all of it (10x slower decoding on CPU).
    ``filled [B, S]``: slots holding a real
    token (pads of a left-padded prefill stay False, so they are never attended to);
    ``count [B]``: real tokens per row (the next position); ``index []``: the next slot."""

    k: tuple[jnp.ndarray, ...]
    v: tuple[jnp.ndarray, ...]
    filled: jnp.ndarray
    count: jnp.ndarray
    index: jnp.ndarray


class LlamaAttention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        d, e = cfg.hidden_size, cfg.head_dim
        self.q_proj = _linear(d, self.n_heads * e, cfg.attention_bias, rngs)
        self.k_proj = _linear(d, self.n_kv * e, cfg.attention_bias, rngs)
        self.v_proj = _linear(d, self.n_kv * e, cfg.attention_bias, rngs)
        self.o_proj = _linear(self.n_heads * e, d, cfg.attention_bias, rngs)

    def __call__(self, x, cos, sin, allowed, kv=None, index=None):
        """``x [B, T, D]``, cos/sin ``[B, 1, T, E]``, ``allowed [B, 1, T, S]`` bool -> ``[B, T, D]``
        and this call's keys/values ``[B, K, T, E]`` (rotated). With ``kv`` (this layer's cache
        ``([B, K, S, E], [B, K, S, E])``) the new keys/values are written at slots
        ``index .. index + T - 1`` first, all S slots are attended to (``allowed`` says which)
        and the updated cache arrays are returned instead."""
        b, t, _ = x.shape
        e = self.head_dim
        q = self.q_proj(x).reshape(b, t, self.n_heads, e).transpose(0, 2, 1, 3)  # [B, H, T, E]
        k = self.k_proj(x).reshape(b, t, self.n_kv, e).transpose(0, 2, 1, 3)  # [B, K, T, E]
        v = self.v_proj(x).reshape(b, t, self.n_kv, e).transpose(0, 2, 1, 3)  # [B, K, T, E]
        q, k = apply_rope_half(q, cos, sin), apply_rope_half(k, cos, sin)
        if kv is not None:
            start = (0, 0, index, 0)
            k = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), start)  # [B, K, S, E]
            v = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), start)  # [B, K, S, E]
        new = (k, v)  # this layer's cache after the call (or this call's keys without one)
        # GQA: query heads h*G .. h*G+G-1 share KV head h (HF's repeat_kv order), grouped here
        # instead of repeating K/V so MQA does not copy the cache G times.
        g = self.n_heads // self.n_kv
        q = q.reshape(b, self.n_kv, g, t, e)  # [B, K, G, T, E]
        scores = jnp.einsum("bkgte,bkse->bkgts", q, k) * (1.0 / math.sqrt(e))  # [B, K, G, T, S]
        scores = scores.astype(jnp.float32)
        # A fully masked row (a pad query) gets a uniform softmax, not NaN; its output is unused.
        scores = jnp.where(allowed[:, :, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        # contract in the cache's own layout, then move T: an einsum straight to [B, T, K, G, E]
        # made XLA:CPU transpose the whole V cache every decode step (6x slower attention)
        out = jnp.einsum("bkgts,bkse->bkgte", probs, v).transpose(0, 3, 1, 2, 4)  # [B, T, K, G, E]
        return self.o_proj(out.reshape(b, t, self.n_heads * e)), new


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.self_attn = LlamaAttention(cfg, rngs=rngs)
        self.mlp = SwiGLU(
            cfg.hidden_size, cfg.intermediate_size, use_bias=cfg.mlp_bias, kernel_init=_INIT,
            rngs=rngs,
        )  # fmt: skip
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def __call__(self, h, cos, sin, allowed, kv=None, index=None):
        a, kv = self.self_attn(self.input_layernorm(h), cos, sin, allowed, kv, index)
        h = h + a
        return h + self.mlp(self.post_attention_layernorm(h)), kv


class LlamaModel(nnx.Module):
    """HF ``LlamaModel``: embeddings, decoder layers, final norm (no head)."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            embedding_init=nnx.initializers.normal(stddev=0.02),
            rngs=rngs,
        )
        self.layers = nnx.List(
            [LlamaDecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Llama(nnx.Module):
    """``LlamaForCausalLM``: ``ids [B, T]`` -> logits ``[B, T, V]`` (float32)."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = LlamaModel(config, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = _linear(config.hidden_size, config.vocab_size, False, rngs)
        # A constant, not a parameter: HF keeps inv_freq as a non-persistent buffer too.
        self.inv_freq = nnx.Variable(jnp.asarray(rope_inv_freq(config)))

    def rope_tables(self, positions: jnp.ndarray):
        """cos/sin ``[B, 1, T, E]`` for integer ``positions [B, T]`` (HF: float32, the two halves
        share frequencies: ``cat(freqs, freqs)``)."""
        freqs = positions.astype(jnp.float32)[..., None] * self.inv_freq[...]  # [B, T, E/2]
        emb = jnp.concatenate([freqs, freqs], axis=-1)[:, None]  # [B, 1, T, E]
        return jnp.cos(emb), jnp.sin(emb)

    def __call__(self, ids, attention_mask=None, positions=None) -> jnp.ndarray:
        """``ids [B, T]`` int, ``attention_mask [B, T]`` (1 = token, 0 = pad, any padding side),
        ``positions [B, T]`` (default: ``cumsum(mask) - 1``, i.e. ``0..T-1`` without a mask)
        -> logits ``[B, T, V]`` float32."""
        ids = jnp.asarray(ids)
        b, t = ids.shape
        mask = jnp.ones((b, t), bool) if attention_mask is None else jnp.asarray(attention_mask) > 0
        if positions is None:
            # HF generate: cumsum - 1, pads set to 1 (they are masked out anyway).
            positions = jnp.where(mask, jnp.cumsum(mask, axis=-1) - 1, 1)
        causal = jnp.tril(jnp.ones((t, t), bool))  # [T, S]
        allowed = (causal[None] & mask[:, None, :])[:, None]  # [B, 1, T, S]
        return self._forward(ids, jnp.asarray(positions), allowed)[0]

    def _forward(self, ids, positions, allowed, cache=None):
        """logits ``[B, T, V]`` float32 and ``cache`` with this call's keys/values written at
        slots ``cache.index ..`` (None without a cache)."""
        h = self.model.embed_tokens(ids)  # [B, T, D]
        # HF casts cos/sin to the activation dtype: in bfloat16 the rotation rounds as there.
        cos, sin = (c.astype(h.dtype) for c in self.rope_tables(positions))
        ks, vs = [], []
        for i, layer in enumerate(self.model.layers):
            if cache is None:
                h, _ = layer(h, cos, sin, allowed)
                continue
            h, (k, v) = layer(h, cos, sin, allowed, (cache.k[i], cache.v[i]), cache.index)
            ks.append(k)
            vs.append(v)
        if cache is not None:
            cache = dataclasses.replace(cache, k=tuple(ks), v=tuple(vs))
        h = self.model.norm(h)
        if self.config.tie_word_embeddings:
            logits = self.model.embed_tokens.attend(h)
        else:
            logits = self.lm_head(h)
        return logits.astype(jnp.float32), cache  # [B, T, V]

    @property
    def dtype(self):
        """The weights' (hence the activations') dtype: float32, or bfloat16 after
        :func:`cast_params`."""
        return self.model.embed_tokens.embedding[...].dtype

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty cache of ``max_len`` slots for ``batch`` rows (``dtype`` None: the
        weights' dtype, so a bfloat16 model keeps a bfloat16 cache)."""
        c = self.config
        dtype = self.dtype if dtype is None else dtype
        shape = (batch, c.num_key_value_heads, max_len, c.head_dim)
        layers = range(c.num_hidden_layers)
        return KVCache(
            k=tuple(jnp.zeros(shape, dtype) for _ in layers),
            v=tuple(jnp.zeros(shape, dtype) for _ in layers),
            filled=jnp.zeros((batch, max_len), bool),
            count=jnp.zeros((batch,), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    def extend(self, ids, attention_mask, cache: KVCache):
        """Run ``ids [B, T]`` (``attention_mask [B, T]``, pads anywhere) after what ``cache``
        holds: logits ``[B, T, V]`` and the cache with them appended. Positions continue each
        row's count of real tokens, so a left-padded prefill then one-token decode steps see
        the positions of the unpadded rows (HF generate's ``cumsum(mask) - 1``)."""
        ids = jnp.asarray(ids)
        mask = jnp.asarray(attention_mask) > 0  # [B, T]
        t, s = ids.shape[1], cache.filled.shape[1]
        positions = cache.count[:, None] + jnp.cumsum(mask, axis=-1) - 1  # [B, T]
        filled = jax.lax.dynamic_update_slice(cache.filled, mask, (0, cache.index))  # [B, S]
        slot = jnp.arange(s)  # query at slot index + q sees filled slots up to itself
        causal = slot[None, :] <= (cache.index + jnp.arange(t))[:, None]  # [T, S]
        allowed = (causal[None] & filled[:, None, :])[:, None]  # [B, 1, T, S]
        logits, cache = self._forward(ids, jnp.maximum(positions, 0), allowed, cache)
        cache = dataclasses.replace(
            cache,
            filled=filled,
            count=cache.count + mask.sum(-1).astype(jnp.int32),
            index=cache.index + t,
        )
        return logits, cache


def cast_params(model: Llama, dtype) -> Llama:
    """Cast every weight of ``model`` to ``dtype`` in place (``jnp.bfloat16``: bfloat16 weights
    and activations, as an HF model after ``.to(torch.bfloat16)``; ``jnp.float32`` back). RMS
    statistics and the attention softmax stay float32 and logits are returned in float32, as
    HF does. The RoPE inverse frequencies are a constant, not a weight, and stay float32."""
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda p: p.astype(dtype), params))
    return model


def generate(
    model: Llama,
    ids,
    attention_mask=None,
    max_new_tokens: int = 16,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    key: jax.Array | None = None,
):
    """Continuation ``[B, max_new_tokens]`` int32 of the left-padded batch ``ids [B, T]``
    (``attention_mask [B, T]``, 1 = token). ``temperature == 0``: greedy, as
    ``generate(do_sample=False)`` (top-k/top-p ignored); otherwise each token is drawn from the
    logits warped as HF's temperature -> top-k -> top-p warpers do
    (:func:`jaxts.models.llama_sampling.warp_logits`), step ``i`` with ``fold_in(key, i)``
    (``key`` None: ``jax.random.key(0)``, so a call is reproducible). A row stops at its first
    EOS (any of ``config.eos_token_id``) and is padded with EOS afterwards (with
    ``pad_token_id``, else 0, when there is no EOS). One jitted prefill, then one-token decode
    steps in a ``lax.while_loop`` that ends when every row has stopped; the sampling settings
    are static (one compile per setting, as ``lax.top_k`` needs a static k)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature > 0:
        warp_logits(jnp.zeros((1, 1)), temperature, top_k, top_p)  # validate before tracing
    ids = jnp.asarray(ids, jnp.int32)
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask)
    cfg = model.config
    fill = cfg.fill_id
    key = jax.random.key(0) if key is None else key
    graphdef, state = nnx.split(model)
    sampling = (float(temperature), int(top_k), float(top_p))
    return _generate(
        graphdef, state, ids, mask.astype(jnp.int32), key, max_new_tokens, cfg.eos_ids, fill,
        sampling,
    )  # fmt: skip


def greedy_generate(model: Llama, ids, attention_mask=None, max_new_tokens: int = 16):
    """Greedy continuation ``[B, max_new_tokens]``: :func:`generate` at temperature 0."""
    return generate(model, ids, attention_mask, max_new_tokens)


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8))
def _generate(graphdef, state, ids, mask, key, n: int, eos: tuple[int, ...], fill: int, sampling):
    model = nnx.merge(graphdef, state)
    b, t = ids.shape
    logits, cache = model.extend(ids, mask, model.init_cache(b, t + n))
    return decode_loop(model, logits[:, -1], cache, key, n, eos, fill, sampling)


def decode_loop(model: Llama, logits, cache: KVCache, key, n: int, eos, fill: int, sampling,
                limit=None):  # fmt: skip
    """Traced body of generation: ``n`` (static) tokens ``[B, n]`` int32 after the last
    position's ``logits [B, V]`` of what ``cache`` holds (which needs ``n`` free slots). Token
    ``i`` is :func:`sample_tokens` of step ``i``'s logits with ``fold_in(key, i)`` and
    ``sampling = (temperature, top_k, top_p)``; a row stops after its first token in ``eos``
    and is filled with ``fill`` afterwards. ``limit`` (a traced int, at most ``n``): stop after
    that many tokens (the rest is ``fill``), so callers can bucket ``n`` without recompiling.
    Runs in a ``lax.while_loop`` that ends once every row has stopped."""
    b = logits.shape[0]
    eos_arr = jnp.asarray(eos, jnp.int32)
    limit = n if limit is None else limit

    def pick(logits, i):  # token i of every row [B] from logits [B, V]
        return sample_tokens(logits, jax.random.fold_in(key, i), *sampling)

    def cond(carry):
        i, _, done, _, _ = carry
        return (i < limit) & ~jnp.all(done)

    def body(carry):
        i, out, done, nxt, cache = carry
        tok = jnp.where(done, fill, nxt)  # [B]
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, i))  # [B, n]
        done = done | jnp.isin(tok, eos_arr)
        logits, cache = model.extend(tok[:, None], jnp.ones((b, 1), jnp.int32), cache)
        return i + 1, out, done, pick(logits[:, -1], i + 1), cache

    carry = (
        jnp.zeros((), jnp.int32),
        jnp.full((b, n), fill, jnp.int32),
        jnp.zeros((b,), bool),
        pick(logits, 0),  # [B]: rows end with a token
        cache,
    )
    return jax.lax.while_loop(cond, body, carry)[1]
