"""T5 encoder-decoder (Raffel et al. 2020) in Flax NNX, with a fixed-size decode cache.

Module and parameter names mirror HF ``T5ForConditionalGeneration`` (``encoder.block.{i}.layer.0
.SelfAttention.q``, ``DenseReluDense.wi``, ``final_layer_norm``, ``shared``), so the bridge is a
plain name table. What makes T5 T5 (and what a port gets wrong first):

* no ``1/sqrt(d)`` attention scaling; ``inner_dim = num_heads * d_kv`` may differ from d_model;
* RMS layer norm (eps 1e-6, variance in float32), pre-norm residual blocks;
* a bucketed relative position bias that lives only in block 0 of each stack and is reused by
  every layer (bidirectional in the encoder, causal in the decoder), none on cross-attention;
* tied embeddings, the decoder output scaled by ``d_model**-0.5`` before the lm head.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxts.config import DictConfig, require_positive
from jaxts.layers.norms import RMSNorm
from jaxts.layers.relative_position import relative_position_bias

_ACTIVATIONS = {
    "relu": (jax.nn.relu, False),
    "gated-gelu": (lambda x: jax.nn.gelu(x, approximate=True), True),  # HF maps it to gelu_new
}


@dataclasses.dataclass(frozen=True)
class T5Config(DictConfig):
    """HF ``T5Config`` fields that change the computation (same names)."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    initializer_factor: float = 1.0
    # lm_head shares `shared` (HF ties unless the checkpoint carries a different lm_head).
    tie_word_embeddings: bool = True
    # HF multiplies the decoder output by d_model**-0.5 before the lm head (T5 v1.0 behaviour).
    scale_decoder_outputs: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self):
        if self.feed_forward_proj not in _ACTIVATIONS:
            raise ValueError(
                f"feed_forward_proj {self.feed_forward_proj!r} is not supported; "
                f"supported: {sorted(_ACTIVATIONS)}"
            )
        require_positive(
            self, "vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers",
            "num_decoder_layers",
        )  # fmt: skip
        half = self.relative_attention_num_buckets // 2
        if self.relative_attention_max_distance < half:
            raise ValueError(
                "relative_attention_max_distance must be at least half the number of buckets"
            )


def _normal(std: float):
    return nnx.initializers.normal(stddev=std)


def _linear(d_in: int, d_out: int, std: float, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=False, kernel_init=_normal(std), rngs=rngs)


def dense(linear: nnx.Linear, x: jnp.ndarray, kernel_out_in: jnp.ndarray | None = None):
    """``linear(x)``, or the same product with the kernel given as ``[out, in]``.

    The decode loop passes kernels transposed once outside the jitted sampler: XLA's CPU GEMM
    streams an ``[out, in]`` weight 15-35% faster at the decode step's few rows (measured on
    t5-small shapes at 20 and 160 rows), and those steps are bound by reading the weights.
    """
    if kernel_out_in is None:
        return linear(x)
    return jnp.einsum("...i,oi->...o", x, kernel_out_in)


def additive_mask(keep: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
    """0 where ``keep``, the dtype's most negative value elsewhere (HF's convention: a row with
    every key masked stays finite instead of becoming NaN)."""
    return jnp.where(keep, 0.0, jnp.finfo(dtype).min).astype(dtype)


class T5Attention(nnx.Module):
    """q/k/v/o projections (no bias) and unscaled softmax attention; HF ``T5Attention``."""

    def __init__(self, cfg: T5Config, *, has_relative_attention_bias: bool, rngs: nnx.Rngs):
        f, d, inner = cfg.initializer_factor, cfg.d_model, cfg.num_heads * cfg.d_kv
        self.n_heads, self.d_kv = cfg.num_heads, cfg.d_kv
        # HF T5PreTrainedModel._init_weights, so training from scratch starts like upstream.
        self.q = _linear(d, inner, f * (d * cfg.d_kv) ** -0.5, rngs)
        self.k = _linear(d, inner, f * d**-0.5, rngs)
        self.v = _linear(d, inner, f * d**-0.5, rngs)
        self.o = _linear(inner, d, f * inner**-0.5, rngs)
        if has_relative_attention_bias:
            self.relative_attention_bias = nnx.Embed(
                cfg.relative_attention_num_buckets,
                cfg.num_heads,
                embedding_init=_normal(f * d**-0.5),
                rngs=rngs,
            )
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

    def heads(self, proj: nnx.Linear, x: jnp.ndarray, kernel_out_in=None) -> jnp.ndarray:
        """``[B, T, D]`` -> heads-major ``[B, N, T, d_kv]``.

        Heads-major is what XLA's CPU batched dot wants: with ``[B, T, N, E]`` operands the
        decode step's attention ran 3-7x slower (measured on t5-small shapes)."""
        y = dense(proj, x, kernel_out_in).reshape(*x.shape[:-1], self.n_heads, self.d_kv)
        return jnp.swapaxes(y, -2, -3)

    def attend(self, q, k, v, bias) -> jnp.ndarray:
        """q ``[B, N, Q, E]``, k/v ``[B, N, K, E]``, bias broadcastable to ``[B, N, Q, K]``;
        returns the un-projected heads-major output ``[B, N, Q, E]``."""
        scores = jnp.einsum("bnqe,bnke->bnqk", q, k) + bias  # [B, N, Q, K]
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype)
        probs = self.dropout(probs)
        return jnp.einsum("bnqk,bnke->bnqe", probs, v)  # [B, N, Q, E]

    def output(self, heads: jnp.ndarray, kernel_out_in=None) -> jnp.ndarray:
        """``[B, N, Q, E]`` -> ``[B, Q, D]`` through ``o``."""
        y = jnp.swapaxes(heads, 1, 2)  # [B, Q, N, E]
        return dense(self.o, y.reshape(*y.shape[:2], -1), kernel_out_in)


class T5LayerSelfAttention(nnx.Module):
    def __init__(self, cfg: T5Config, *, has_relative_attention_bias: bool, rngs: nnx.Rngs):
        self.SelfAttention = T5Attention(
            cfg, has_relative_attention_bias=has_relative_attention_bias, rngs=rngs
        )
        self.layer_norm = RMSNorm(
            cfg.d_model, cfg.layer_norm_epsilon, scale_init=cfg.initializer_factor
        )
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

    def __call__(self, h, bias, cache_kv=None, index=None, w=None):
        """Full sequence (``cache_kv=None``) or one decode step writing k/v at ``index``.

        ``cache_kv`` is ``(k, v)`` of shape ``[B, N, T_max, E]``; ``w`` optional ``[out, in]``
        kernels by name (see :func:`dense`); returns ``(h, cache_kv)``.
        """
        attn, w = self.SelfAttention, w or {}
        x = self.layer_norm(h)
        q = attn.heads(attn.q, x, w.get("q"))
        k = attn.heads(attn.k, x, w.get("k"))
        v = attn.heads(attn.v, x, w.get("v"))
        if cache_kv is not None:
            k = jax.lax.dynamic_update_slice(cache_kv[0], k, (0, 0, index, 0))
            v = jax.lax.dynamic_update_slice(cache_kv[1], v, (0, 0, index, 0))
            cache_kv = (k, v)
        out = attn.output(attn.attend(q, k, v, bias), w.get("o"))
        return h + self.dropout(out), cache_kv


class T5LayerCrossAttention(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.EncDecAttention = T5Attention(cfg, has_relative_attention_bias=False, rngs=rngs)
        self.layer_norm = RMSNorm(
            cfg.d_model, cfg.layer_norm_epsilon, scale_init=cfg.initializer_factor
        )
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

    def project_kv(self, enc: jnp.ndarray):
        """Encoder output ``[B, T, D]`` -> keys, values ``[B, N, T, E]`` (computed once)."""
        attn = self.EncDecAttention
        return attn.heads(attn.k, enc), attn.heads(attn.v, enc)

    def __call__(self, h, k, v, bias, w=None):
        """``h [B*S, Q, D]`` over ``k, v [B, N, T, E]``: the S decoder rows of a series share its
        encoder keys, so they are folded into the query axis instead of repeating k/v S times
        (exact: cross-attention has no position bias). ``bias [B, 1, 1, T]``."""
        attn, w = self.EncDecAttention, w or {}
        b, n = k.shape[:2]
        rows, n_q, _ = h.shape
        s = rows // b
        q = attn.heads(attn.q, self.layer_norm(h), w.get("q"))  # [B*S, N, Q, E]
        q = q.reshape(b, s, n, n_q, -1).transpose(0, 2, 1, 3, 4).reshape(b, n, s * n_q, -1)
        out = attn.attend(q, k, v, bias)  # [B, N, S*Q, E]
        out = out.reshape(b, n, s, n_q, -1).transpose(0, 2, 1, 3, 4).reshape(rows, n, n_q, -1)
        return h + self.dropout(attn.output(out, w.get("o")))


class T5DenseActDense(nnx.Module):
    """``wo(dropout(act(wi x)))``, or the gated ``wo(dropout(act(wi_0 x) * wi_1 x))``."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.act, self.gated = _ACTIVATIONS[cfg.feed_forward_proj]
        f, d = cfg.initializer_factor, cfg.d_model
        if self.gated:
            self.wi_0 = _linear(d, cfg.d_ff, f * d**-0.5, rngs)
            self.wi_1 = _linear(d, cfg.d_ff, f * d**-0.5, rngs)
        else:
            self.wi = _linear(d, cfg.d_ff, f * d**-0.5, rngs)
        self.wo = _linear(cfg.d_ff, d, f * cfg.d_ff**-0.5, rngs)
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

    def __call__(self, x, w=None):
        w = w or {}
        if self.gated:
            y = self.act(dense(self.wi_0, x, w.get("wi_0"))) * dense(self.wi_1, x, w.get("wi_1"))
        else:
            y = self.act(dense(self.wi, x, w.get("wi")))
        return dense(self.wo, self.dropout(y), w.get("wo"))

    def kernels(self) -> tuple[str, ...]:
        return ("wi_0", "wi_1", "wo") if self.gated else ("wi", "wo")


class T5LayerFF(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.DenseReluDense = T5DenseActDense(cfg, rngs=rngs)
        self.layer_norm = RMSNorm(
            cfg.d_model, cfg.layer_norm_epsilon, scale_init=cfg.initializer_factor
        )
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

    def __call__(self, h, w=None):
        return h + self.dropout(self.DenseReluDense(self.layer_norm(h), w))


class T5Block(nnx.Module):
    def __init__(self, cfg: T5Config, *, is_decoder: bool, has_bias: bool, rngs: nnx.Rngs):
        layers = [T5LayerSelfAttention(cfg, has_relative_attention_bias=has_bias, rngs=rngs)]
        if is_decoder:
            layers.append(T5LayerCrossAttention(cfg, rngs=rngs))
        layers.append(T5LayerFF(cfg, rngs=rngs))
        self.layer = nnx.List(layers)
        self.is_decoder = is_decoder


class T5Stack(nnx.Module):
    """Encoder or decoder stack; the embedding table is the model's ``shared``."""

    def __init__(self, cfg: T5Config, *, is_decoder: bool, rngs: nnx.Rngs):
        n = cfg.num_decoder_layers if is_decoder else cfg.num_layers
        self.block = nnx.List(
            [T5Block(cfg, is_decoder=is_decoder, has_bias=i == 0, rngs=rngs) for i in range(n)]
        )
        self.final_layer_norm = RMSNorm(
            cfg.d_model, cfg.layer_norm_epsilon, scale_init=cfg.initializer_factor
        )
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)
        self.is_decoder = is_decoder
        self.max_distance = cfg.relative_attention_max_distance

    def position_bias(self, query_position, key_position) -> jnp.ndarray:
        """``[1, N, Q, K]`` from block 0's table (shared by every layer of the stack)."""
        table = self.block[0].layer[0].SelfAttention.relative_attention_bias.embedding[...]
        return relative_position_bias(
            table,
            query_position,
            key_position,
            bidirectional=not self.is_decoder,
            max_distance=self.max_distance,
        )

    def __call__(
        self,
        inputs_embeds: jnp.ndarray,
        attention_mask: jnp.ndarray | None = None,
        encoder_hidden_states: jnp.ndarray | None = None,
        encoder_attention_mask: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        """HF ``T5Stack.forward`` from embeddings to the last hidden state (after the final layer
        norm), so that models feeding their own embeddings (Chronos-Bolt's patches) reuse it.

        Encoder: ``inputs_embeds [B, T, D]``, ``attention_mask [B, T]`` (bool, keys kept).
        Decoder: ``inputs_embeds [B*S, L, D]`` under a causal mask (``attention_mask`` unused)
        over ``encoder_hidden_states [B, T, D]`` with ``encoder_attention_mask [B, T]``.
        """
        n = inputs_embeds.shape[1]
        pos = jnp.arange(n)
        if self.is_decoder:
            causal = pos[None, :] <= pos[:, None]
            bias = self.position_bias(pos, pos) + additive_mask(causal)[None, None]
            cross_bias = additive_mask(encoder_attention_mask[:, None, None, :])  # [B, 1, 1, T]
            cross = [blk.layer[1].project_kv(encoder_hidden_states) for blk in self.block]
        else:
            bias = self.position_bias(pos, pos) + additive_mask(attention_mask[:, None, None, :])
        h = self.dropout(inputs_embeds)
        for i, block in enumerate(self.block):
            h, _ = block.layer[0](h, bias)
            if self.is_decoder:
                h = block.layer[1](h, *cross[i], cross_bias)
            h = block.layer[-1](h)
        return self.dropout(self.final_layer_norm(h))


class T5EncoderDecoder(nnx.Module):
    """HF ``T5ForConditionalGeneration`` without the loss: encode, decode, lm head."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        f = config.initializer_factor
        self.shared = nnx.Embed(
            config.vocab_size, config.d_model, embedding_init=_normal(f), rngs=rngs
        )
        self.encoder = T5Stack(config, is_decoder=False, rngs=rngs)
        self.decoder = T5Stack(config, is_decoder=True, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = _linear(config.d_model, config.vocab_size, f, rngs)

    def encode(self, input_ids: jnp.ndarray, attention_mask: jnp.ndarray) -> jnp.ndarray:
        """``input_ids, attention_mask [B, T]`` -> last hidden state ``[B, T, D]``."""
        return self.encoder(self.shared(input_ids), attention_mask)

    def cross_bias(self, attention_mask: jnp.ndarray) -> jnp.ndarray:
        return additive_mask(attention_mask[:, None, None, :])  # [B, 1, 1, T]

    def cross_kv(self, enc_out: jnp.ndarray):
        """Per decoder layer, the cross-attention keys/values ``[B, N, T, E]``."""
        return [block.layer[1].project_kv(enc_out) for block in self.decoder.block]

    def lm_logits(self, h: jnp.ndarray) -> jnp.ndarray:
        """Decoder output ``[..., D]`` -> logits ``[..., V]``."""
        if self.config.scale_decoder_outputs:
            h = h * (self.config.d_model**-0.5)
        if self.config.tie_word_embeddings:
            return h @ self.shared.embedding[...].T
        return self.lm_head(h)

    def decode(
        self,
        decoder_input_ids: jnp.ndarray,
        enc_out: jnp.ndarray,
        attention_mask: jnp.ndarray,
    ) -> jnp.ndarray:
        """Teacher-forced decoder: ``decoder_input_ids [B*S, L]`` over ``enc_out [B, T, D]``
        -> logits ``[B*S, L, V]`` (S >= 1 decoder rows per encoded series)."""
        return self.lm_logits(self.decode_hidden(decoder_input_ids, enc_out, attention_mask))

    def decode_hidden(
        self,
        decoder_input_ids: jnp.ndarray,
        enc_out: jnp.ndarray,
        attention_mask: jnp.ndarray,
    ) -> jnp.ndarray:
        """:meth:`decode` up to the decoder's last hidden state ``[B*S, L, D]``: after the final
        layer norm, before the lm head's ``d_model**-0.5`` scaling (HF's
        ``decoder_hidden_states[-1]``, what other output heads read)."""
        return self.decoder(
            self.shared(decoder_input_ids),
            encoder_hidden_states=enc_out,
            encoder_attention_mask=attention_mask,
        )

    def __call__(self, input_ids, attention_mask, decoder_input_ids):
        return self.decode(
            decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask
        )

    # ---- incremental decoding over a fixed-size cache ------------------------------------

    def init_cache(
        self, enc_out, attention_mask, rows: int, max_len: int, self_keep=None
    ) -> T5DecodeCache:
        """Empty self-attention cache for ``rows`` decoder rows and ``max_len`` positions, with
        the cross-attention keys/values of ``enc_out [B, T, D]`` computed once. ``self_keep``
        (optional ``[rows, max_len]`` bool): decoder positions that may be attended to (False
        for padding inside a decoder prefix); None keeps every position (and the program as
        it was)."""
        cfg = self.config
        kv = self.cross_kv(enc_out)
        zeros = jnp.zeros((rows, cfg.num_heads, max_len, cfg.d_kv), enc_out.dtype)
        return T5DecodeCache(
            self_k=tuple(zeros for _ in kv),
            self_v=tuple(zeros for _ in kv),
            cross_k=tuple(k for k, _ in kv),
            cross_v=tuple(v for _, v in kv),
            cross_bias=self.cross_bias(attention_mask),
            next_index=jnp.zeros((), jnp.int32),
            self_keep=self_keep,
        )

    def decode_kernels(self) -> tuple[dict, ...]:
        """Every decoder kernel transposed to ``[out, in]``, per layer, for :meth:`decode_step`.

        Call it outside jit (eagerly): materialised here, the transposed copies keep their
        layout; inside the same program XLA would fold the transpose back into the dot.
        """

        def t(linear):
            return jnp.asarray(linear.kernel[...]).T

        out = []
        for block in self.decoder.block:
            sa, ca = block.layer[0].SelfAttention, block.layer[1].EncDecAttention
            ff = block.layer[2].DenseReluDense
            out.append(
                {
                    "self": {n: t(getattr(sa, n)) for n in "qkvo"},
                    "cross": {n: t(getattr(ca, n)) for n in "qo"},
                    "ff": {n: t(getattr(ff, n)) for n in ff.kernels()},
                }
            )
        return tuple(out)

    def decode_step(self, tokens: jnp.ndarray, cache: T5DecodeCache, kernels=None):
        """One decoder position for every row: ``tokens [R]`` -> logits ``[R, V]``, new cache.

        ``kernels``: optional :meth:`decode_kernels` (same result, faster on CPU)."""
        h, cache = self.decode_step_hidden(tokens, cache, kernels)
        return self.lm_logits(h), cache

    def decode_step_hidden(self, tokens: jnp.ndarray, cache: T5DecodeCache, kernels=None):
        """:meth:`decode_step` up to the last hidden state: ``tokens [R]`` -> ``[R, D]`` (after
        the final layer norm, as :meth:`decode_hidden`), new cache."""
        dec, t = self.decoder, cache.next_index
        max_len = cache.self_k[0].shape[2]
        keys = jnp.arange(max_len)
        self_bias = dec.position_bias(t[None], keys)  # [1, N, 1, T_max]
        if cache.self_keep is None:
            self_bias = self_bias + additive_mask(keys <= t)[None, None, None, :]
        else:  # per-row padding in a decoder prefix: [R, 1, 1, T_max]
            self_bias = self_bias + additive_mask((keys <= t) & cache.self_keep)[:, None, None]
        h = self.shared(tokens[:, None])  # [R, 1, D]
        new_k, new_v = [], []
        for i, block in enumerate(dec.block):
            w = kernels[i] if kernels is not None else {}
            kv = (cache.self_k[i], cache.self_v[i])
            h, (k, v) = block.layer[0](h, self_bias, kv, t, w.get("self"))
            new_k.append(k)
            new_v.append(v)
            h = block.layer[1](
                h, cache.cross_k[i], cache.cross_v[i], cache.cross_bias, w.get("cross")
            )
            h = block.layer[2](h, w.get("ff"))
        h = dec.final_layer_norm(h)[:, 0]  # [R, D]
        cache = dataclasses.replace(
            cache, self_k=tuple(new_k), self_v=tuple(new_v), next_index=t + 1
        )
        return h, cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class T5DecodeCache:
    """Decoder state between steps (a pytree, so it can be a ``lax.scan`` carry).

    Per decoder layer (tuples, so each layer's buffer is updated in place): self_k/self_v
    ``[R, N, T_max, E]`` (R decoder rows); cross_k/cross_v ``[B, N, T, E]`` (one copy per
    series, shared by its R/B rows). cross_bias ``[B, 1, 1, T]``;
    next_index: the position the next token is written to; self_keep: None, or ``[R, T_max]``
    bool, the decoder positions that may be attended to (see :meth:`T5EncoderDecoder.init_cache`).
    """

    self_k: tuple
    self_v: tuple
    cross_k: tuple
    cross_v: tuple
    cross_bias: jnp.ndarray
    next_index: jnp.ndarray
    self_keep: jnp.ndarray | None = None
