"""Chronos-T5 (Ansari et al. 2024): a T5 over mean-scaled, uniformly binned values.

The model is :class:`jaxts.models.t5.T5EncoderDecoder` plus the Chronos config; sampling is one
jit program: the encoder runs once, cross-attention keys/values are computed once per series,
and the decoder runs ``prediction_length`` steps in ``lax.scan`` over a fixed-size cache for all
``B * num_samples`` rows at once. Matches ``ChronosModel.forward`` / HF ``generate``:
decoding starts from ``decoder_start_token_id``, EOS is never sampled (``min_new_tokens``), then
temperature, top-k and top-p in HF's order.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxts.config import DictConfig
from jaxts.models.chronos_tokenizer import ChronosConfig, MeanScaleUniformBins
from jaxts.models.t5 import T5Config, T5EncoderDecoder
from jaxts.sampling import categorical, top_k_filter, top_p_filter


@dataclasses.dataclass(frozen=True)
class ChronosT5Config(DictConfig):
    """The inner T5's config and the ``chronos_config`` block of ``config.json``."""

    # vocab_size = Chronos' default n_tokens: T5's own default (32128 text tokens) would make
    # ChronosT5Config() contradict itself.
    t5: T5Config = dataclasses.field(default_factory=lambda: T5Config(vocab_size=4096))
    chronos: ChronosConfig = dataclasses.field(default_factory=ChronosConfig)

    def __post_init__(self):
        if self.chronos.n_tokens != self.t5.vocab_size:
            raise ValueError(
                f"chronos n_tokens {self.chronos.n_tokens} != T5 vocab_size {self.t5.vocab_size}"
            )
        if self.chronos.pad_token_id != self.t5.pad_token_id:
            raise ValueError("chronos pad_token_id differs from the T5 pad_token_id")
        if self.chronos.eos_token_id != self.t5.eos_token_id:
            raise ValueError("chronos eos_token_id differs from the T5 eos_token_id")


class ChronosT5(nnx.Module):
    """Chronos-T5 weights (``self.model``, HF names) and the tokenizer."""

    def __init__(self, config: ChronosT5Config, *, rngs: nnx.Rngs):
        self.config = config
        self.model = T5EncoderDecoder(config.t5, rngs=rngs)

    @property
    def tokenizer(self) -> MeanScaleUniformBins:
        return MeanScaleUniformBins(self.config.chronos)

    def encode(self, input_ids, attention_mask):
        """``[B, T]`` ids and mask -> encoder embeddings ``[B, T, d_model]``."""
        return self.model.encode(input_ids, attention_mask)

    def __call__(self, input_ids, attention_mask, decoder_input_ids):
        """Teacher-forced logits ``[B, L, V]`` (training and parity)."""
        return self.model(input_ids, attention_mask, decoder_input_ids)

    # ---- what the sampler reads (DistanceAwareChronos provides the same) -------------------

    @property
    def t5(self) -> T5EncoderDecoder:
        """The encoder-decoder the sampler runs."""
        return self.model

    @property
    def masked_token_id(self) -> int | None:
        """The id sampling never draws: EOS (Chronos forecasts exactly the horizon)."""
        return self.config.chronos.eos_token_id

    def logits(self, h: jnp.ndarray) -> jnp.ndarray:
        """Decoder last hidden state ``[..., D]`` -> next-token logits ``[..., V]`` (lm head)."""
        return self.model.lm_logits(h)


def process_logits(
    logits, *, eos_token_id: int | None, temperature, top_k: int, top_p: float | None
):
    """HF's logits processors for Chronos sampling, in HF's order. ``logits [R, V]``.

    EOS -> -inf (``min_new_tokens`` equals the horizon; ``eos_token_id=None``: no id is
    special), divide by ``temperature``, keep the ``top_k`` largest (ties at the k-th value
    kept), then the smallest set whose probability exceeds ``top_p`` (``top_p=None`` skips it,
    as HF does for ``top_p == 1``).
    """
    logits = logits.astype(jnp.float32)
    if eos_token_id is not None:
        logits = logits.at[:, eos_token_id].set(-jnp.inf)
    logits = logits / temperature
    logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits


def _prefill(t5, cache, prefix, kernels):
    """Run the decoder over ``prefix [B, P]`` (teacher forcing through the cache): the cache
    then holds P positions."""

    def step(cache, tokens):
        _, cache = t5.decode_step_hidden(tokens, cache, kernels)
        return cache, None

    cache, _ = jax.lax.scan(step, cache, prefix.T)
    return cache


def _sample_tokens(
    graphdef,
    state,
    kernels,
    input_ids,
    attention_mask,
    key,
    temperature,
    top_p_value,
    decoder_prefix,
    prefix_mask,
    *,
    prediction_length: int,
    num_samples: int,
    top_k: int,
    use_top_p: bool,
):
    """Token paths ``[B, num_samples, prediction_length]`` (int32).

    The merged model provides ``t5`` (a :class:`T5EncoderDecoder`), ``logits(h)`` (the output
    head on the decoder's last hidden state) and ``masked_token_id``. ``decoder_prefix [B, P]``
    (None: start from ``decoder_start_token_id``) is fed to the decoder first, once per series;
    the logits at its last position give the first forecast token; ``prefix_mask [B, P]`` masks
    its padding as attention keys."""
    net = nnx.merge(graphdef, state)
    t5 = net.t5
    b = input_ids.shape[0]
    rows = b * num_samples
    enc = t5.encode(input_ids, attention_mask)  # [B, T, D], once per series
    if decoder_prefix is None:
        cache = t5.init_cache(enc, attention_mask, rows, prediction_length)
        start = jnp.full((rows,), t5.config.decoder_start_token_id, jnp.int32)
    else:
        p = decoder_prefix.shape[1]
        keep = jnp.concatenate([prefix_mask, jnp.ones((b, prediction_length - 1), bool)], 1)
        cache = t5.init_cache(enc, attention_mask, b, p - 1 + prediction_length, keep)
        cache = _prefill(t5, cache, decoder_prefix[:, :-1], kernels)  # once per series
        per_row = {  # series-major rows: row = b * S + s
            f: jax.tree.map(lambda x: jnp.repeat(x, num_samples, axis=0), getattr(cache, f))
            for f in ("self_k", "self_v", "self_keep")
        }
        cache = dataclasses.replace(cache, **per_row)
        start = jnp.repeat(decoder_prefix[:, -1], num_samples)
    greedy = top_k == 1

    def step(carry, t):
        tokens, cache = carry
        h, cache = t5.decode_step_hidden(tokens, cache, kernels)  # [R, D]
        logits = process_logits(
            net.logits(h),  # [R, V]
            eos_token_id=net.masked_token_id,
            temperature=temperature,
            top_k=0 if greedy else top_k,
            top_p=top_p_value if use_top_p else None,
        )
        if greedy:  # top-k 1 leaves one candidate: sampling is the argmax
            nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            nxt = categorical(jax.random.fold_in(key, t), logits)
        return (nxt, cache), nxt

    _, tokens = jax.lax.scan(step, (start, cache), jnp.arange(prediction_length))
    # rows are series-major (row = b * S + s), as HF's repeat_interleave expansion
    return tokens.T.reshape(b, num_samples, prediction_length)


_sample_tokens_jit = jax.jit(
    _sample_tokens,
    static_argnames=("graphdef", "prediction_length", "num_samples", "top_k", "use_top_p"),
)
_encode_jit = jax.jit(
    lambda graphdef, state, ids, mask: nnx.merge(graphdef, state).encode(ids, mask),
    static_argnames=("graphdef",),
)


def sample_tokens(
    model,
    input_ids,
    attention_mask,
    key,
    *,
    prediction_length: int,
    num_samples: int,
    temperature: float,
    top_k: int,
    top_p: float,
    decoder_prefix=None,
    prefix_mask=None,
):
    """Sample ``[B, num_samples, prediction_length]`` token ids (one compiled program per
    shape / ``top_k`` / horizon; temperature and top_p are traced). ``top_k=1`` is greedy.

    ``model``: a :class:`ChronosT5` or anything with its sampling interface (``t5``,
    ``logits``, ``masked_token_id``, ``encode``), e.g. ``DistanceAwareChronos``.
    ``decoder_prefix [B, P]`` / ``prefix_mask [B, P]``: see :func:`_sample_tokens`."""
    graphdef, state = nnx.split(model)
    if decoder_prefix is not None:
        decoder_prefix = jnp.asarray(decoder_prefix, jnp.int32)
        prefix_mask = (
            jnp.ones(decoder_prefix.shape, bool)
            if prefix_mask is None
            else jnp.asarray(prefix_mask, bool)
        )
    return _sample_tokens_jit(
        graphdef,
        state,
        model.t5.decode_kernels(),  # eager transposes, ~1% of a call's time
        jnp.asarray(input_ids, jnp.int32),
        jnp.asarray(attention_mask, bool),
        key,
        jnp.float32(temperature),
        jnp.float32(top_p),
        decoder_prefix,
        prefix_mask,
        prediction_length=prediction_length,
        num_samples=num_samples,
        top_k=int(top_k),
        use_top_p=float(top_p) < 1.0,
    )


def encode(model: ChronosT5, input_ids, attention_mask):
    """Jitted encoder: ``[B, T]`` -> ``[B, T, d_model]``."""
    graphdef, state = nnx.split(model)
    return _encode_jit(
        graphdef, state, jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask, bool)
    )
