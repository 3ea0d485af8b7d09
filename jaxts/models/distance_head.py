"""The distance-aware output head of ``Phoenix21/distance-aware-chronos-t`` and its wiring into
Chronos-T5.

:class:`DistanceAwareOutputLayer` is upstream's ``DistanceAwareOutputLayer`` (same parameter
names, so the bridge is a name table): a Gaussian soft binning of one predicted value, mixed by
a learned confidence with an MLP over the hidden state. :class:`DistanceHead` adds the learnable
temperature (a registered family, ``distance_head``: its checkpoints hold the 11 upstream
tensors under ``layer.`` plus ``temperature``). :class:`DistanceAwareChronos` puts the head on a
frozen :class:`ChronosT5`'s decoder and forecasts with the same jitted sampler.

Deviations from upstream, all deliberate (see ``docs/distance_head.md``):

* the temperature divides the logits once (upstream divides inside the head and again before
  sampling);
* two token spaces. Default: Chronos' own ``MeanScaleUniformBins`` ids (head bin k == Chronos
  token k; EOS never sampled), decoding starts from PAD as Chronos trains. ``upstream_compat``:
  the published tokenizer and decoder feeding (see :class:`DistanceAwareChronos`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxts.config import DictConfig, require_positive
from jaxts.models.chronos_t5 import ChronosT5
from jaxts.models.chronos_tokenizer import torch_linspace_f32
from jaxts.models.t5 import T5EncoderDecoder

__all__ = [
    "DistanceAwareChronos",
    "DistanceAwareOutputLayer",
    "DistanceHead",
    "DistanceHeadConfig",
    "ordinal_embedding_init",
]

LIMIT = 15.0  # upstream's bin range [-15, 15] (gaussian centers and tokenizer)
ORDINAL_DIM = 64  # upstream's ordinal embedding width: 32 sines + 32 cosines


@dataclasses.dataclass(frozen=True)
class DistanceHeadConfig(DictConfig):
    """Upstream's ``DistanceAwareOutputLayer(hidden_size, num_bins)`` arguments (defaults:
    the published head on chronos-t5-small) and its mix-layer dropout."""

    hidden_size: int = 512
    num_bins: int = 4096
    dropout: float = 0.1

    def __post_init__(self):
        require_positive(self, "hidden_size", "num_bins")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def ordinal_embedding_init(num_bins: int) -> np.ndarray:
    """Upstream's ``_init_ordinal_embeddings``: row i = ``[sin(2π·(i/N)·(j+1)) for j < 32] ++
    [cos(...) for j < 32]``, float32 ``[N, 64]``. Computed in float64 in upstream's operation
    order (``2 * pi * position * (j + 1)``, left to right) and rounded once, as torch does
    when it copies the float64 row into the float32 weight."""
    position = np.arange(num_bins, dtype=np.float64)[:, None] / num_bins  # [N, 1]
    freq = np.arange(1, ORDINAL_DIM // 2 + 1, dtype=np.float64)[None, :]  # [1, 32]
    angle = 2 * np.pi * position * freq  # [N, 32]
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)


def _torch_linear(d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    """``nn.Linear``'s default init (U(±1/sqrt(in)) for weight and bias), so a head trained from
    scratch starts like upstream's."""
    bound = d_in**-0.5

    def uniform(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.Linear(d_in, d_out, kernel_init=uniform, bias_init=uniform, rngs=rngs)


WIDTH_EPS = 1e-8


class DistanceAwareOutputLayer(nnx.Module):
    """Upstream's ``DistanceAwareOutputLayer``; parameters (flax kernels ``[in, out]``):
    ``gaussian_centers [1, N]``, ``gaussian_widths [N]``, ``ordinal_embed.embedding [N, 64]``,
    ``value_projection`` / ``confidence_projection`` (H -> 1), ``mix_layer.0`` (H+65 -> H),
    ``mix_layer.3`` (H -> N); ``mix_layer`` is ``[Linear, ReLU, Dropout, Linear]`` as upstream's
    ``nn.Sequential``, so the indices match its state-dict keys."""

    def __init__(self, hidden_size: int, num_bins: int = 4096, *, dropout: float = 0.1, rngs):
        DistanceHeadConfig(hidden_size, num_bins, dropout)  # the checks, one place
        self.hidden_size, self.num_bins = hidden_size, num_bins
        centers = torch_linspace_f32(-LIMIT, LIMIT, num_bins)[None]  # [1, N], torch's bits
        self.gaussian_centers = nnx.Param(jnp.asarray(centers))
        self.gaussian_widths = nnx.Param(jnp.full((num_bins,), 0.5, jnp.float32))
        table = ordinal_embedding_init(num_bins)
        self.ordinal_embed = nnx.Embed(
            num_bins, ORDINAL_DIM, embedding_init=lambda *_: jnp.asarray(table), rngs=rngs
        )
        self.value_projection = _torch_linear(hidden_size, 1, rngs)
        self.confidence_projection = _torch_linear(hidden_size, 1, rngs)
        self.mix_layer = nnx.List(
            [
                _torch_linear(hidden_size + 1 + ORDINAL_DIM, hidden_size, rngs),
                jax.nn.relu,
                nnx.Dropout(dropout, rngs=rngs),
                _torch_linear(hidden_size, num_bins, rngs),
            ]
        )

    def __call__(self, hidden_states: jnp.ndarray, temperature=1.0) -> jnp.ndarray:
        """``hidden_states [..., H]`` -> logits ``[..., N]`` (upstream's ``forward``)."""
        h = hidden_states
        if h.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden_states must end in hidden_size {self.hidden_size}, got shape {h.shape}"
            )
        pv = self.value_projection(h)  # [..., 1] predicted (scaled) value
        c = jax.nn.sigmoid(self.confidence_projection(h))  # [..., 1]
        widths = self.gaussian_widths[...]
        # upstream's + 1e-8 keeps a width trained to 0 finite (it is in the published code)
        g = -((pv - self.gaussian_centers[...]) ** 2) / (2 * widths**2 + WIDTH_EPS)  # [..., N]
        o = jnp.mean(self.ordinal_embed.embedding[...], axis=0)  # [64], the same for every row
        o = jnp.broadcast_to(o, (*h.shape[:-1], ORDINAL_DIM))  # [..., 64]
        m = jnp.concatenate([h, pv, o], axis=-1)  # [..., H + 65]
        for layer in self.mix_layer:
            m = layer(m)  # [..., N] at the end
        return ((1 - c) * g + c * m) / temperature


class DistanceHead(nnx.Module):
    """The ``distance_head`` family: the output layer and upstream's learnable temperature
    (a scalar here; upstream's is ``[1]``), applied once."""

    def __init__(self, config: DistanceHeadConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.layer = DistanceAwareOutputLayer(
            config.hidden_size, config.num_bins, dropout=config.dropout, rngs=rngs
        )
        self.temperature = nnx.Param(jnp.ones((), jnp.float32))

    def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
        """``h [..., H]`` -> logits ``[..., N]`` divided by the temperature."""
        return self.layer(h, self.temperature[...])


class DistanceAwareChronos(nnx.Module):
    """A frozen Chronos-T5 (``base``) whose LM head is replaced by a :class:`DistanceHead`
    (``head``) on the decoder's last hidden state (after the final layer norm, before the LM
    head's ``d_model**-0.5`` scaling: upstream's ``decoder_hidden_states[-1]``).

    "Frozen" is structural: gradients stop at the hidden state, so backpropagation never enters
    the T5 (an optimizer must still leave ``base`` out, e.g. to skip weight decay).

    ``upstream_compat=False`` (default): the head's bins are Chronos' token ids (``num_bins ==
    vocab_size``); encoder and decoder are fed as Chronos (context + EOS; decoding starts from
    PAD), and EOS is never sampled. ``upstream_compat=True``: the published tokenizer's ids
    (``jaxts.pipelines.distance_aware_chronos.upstream_tokenize``) go straight into Chronos'
    embedding, as in upstream's training, where the decoder read the series itself: the context
    ids are both the encoder input and the decoder prefix, the head's logits at the last
    context position give the first forecast token, and no id is special (ids 0/1 are bins).
    """

    def __init__(self, base: ChronosT5, head: DistanceHead, *, upstream_compat: bool = False):
        d_model, vocab = base.config.t5.d_model, base.config.t5.vocab_size
        hc = head.config
        if hc.hidden_size != d_model:
            raise ValueError(f"head hidden_size {hc.hidden_size} != Chronos d_model {d_model}")
        if upstream_compat and hc.num_bins > vocab:
            raise ValueError(
                f"upstream_compat feeds head bin ids to Chronos' embedding: num_bins "
                f"{hc.num_bins} must be <= vocab_size {vocab}"
            )
        if not upstream_compat and hc.num_bins != vocab:
            raise ValueError(
                f"head num_bins {hc.num_bins} != Chronos vocab_size {vocab} (the head's bins "
                "are Chronos' token ids; upstream_compat=True uses the published tokenizer)"
            )
        self.base, self.head = base, head
        self.upstream_compat = bool(upstream_compat)

    @property
    def config(self):
        """The base model's config (the pipeline reads its ``chronos`` block)."""
        return self.base.config

    @property
    def t5(self) -> T5EncoderDecoder:
        return self.base.model

    @property
    def masked_token_id(self) -> int | None:
        return None if self.upstream_compat else self.base.config.chronos.eos_token_id

    def encode(self, input_ids, attention_mask):
        return self.base.encode(input_ids, attention_mask)

    def logits(self, h: jnp.ndarray) -> jnp.ndarray:
        """Decoder last hidden state ``[..., D]`` -> head logits ``[..., N]``."""
        return self.head(jax.lax.stop_gradient(h))

    def __call__(self, input_ids, attention_mask, decoder_input_ids) -> jnp.ndarray:
        """Teacher-forced head logits ``[B, L, N]`` (training): ``input_ids, attention_mask
        [B, T]``, ``decoder_input_ids [B, L]``."""
        t5 = self.t5
        enc = t5.encode(input_ids, attention_mask)  # [B, T, D]
        return self.logits(t5.decode_hidden(decoder_input_ids, enc, attention_mask))
