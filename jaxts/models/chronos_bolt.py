"""Chronos-Bolt (Ansari et al. 2024): a T5 over instance-normalised patches with a direct
quantile head, exact to ``chronos.chronos_bolt.ChronosBoltModelForForecasting``.

Forward pass, as upstream: keep the last ``context_length`` steps; instance norm (NaN-aware mean
and population std, no arcsinh); left-pad with NaN to whole patches; each patch becomes
``[values (0 where unobserved), observed mask]`` (``2 * patch`` features) through the
``input_patch_embedding`` residual block; a patch with no observed value is masked as an
attention key; optionally a REG token (``shared`` row 1) is appended; the T5 encoder runs over
these embeddings; the decoder runs one step from ``decoder_start_token_id`` over the encoder
output; ``output_patch_embedding`` maps it to ``[B, Q, prediction_length]`` quantiles, which are
de-normalised with the context's loc and scale.

Parameter names are upstream's (``shared``, ``encoder.*``, ``decoder.*``,
``input_patch_embedding.*``, ``output_patch_embedding.*``), so the bridge is a name table.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxts.config import DictConfig, require_positive
from jaxts.layers.patching import ResidualBlock, instance_norm, instance_norm_inverse, patch
from jaxts.models.t5 import T5Config, T5EncoderDecoder

# HF T5Config derives the activation of Bolt's residual blocks (``dense_act_fn``) from this.
DENSE_ACT = {"relu": "relu", "gated-gelu": "gelu_new"}
# Row of ``shared`` that is the REG token (upstream hard-codes ``config.reg_token_id = 1``).
REG_TOKEN_ID = 1


@dataclasses.dataclass(frozen=True)
class ChronosBoltForecastingConfig(DictConfig):
    """The ``chronos_config`` block (upstream's ``ChronosBoltConfig``); defaults are the
    published amazon/chronos-bolt-small/base block."""

    context_length: int = 2048
    prediction_length: int = 64
    input_patch_size: int = 16
    input_patch_stride: int = 16
    quantiles: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    use_reg_token: bool = True

    def __post_init__(self):
        require_positive(
            self, "context_length", "prediction_length", "input_patch_size", "input_patch_stride"
        )
        if self.input_patch_stride != self.input_patch_size:
            # upstream's unfold would overlap patches; no published model does, and
            # jaxts.layers.patching.patch only cuts whole, disjoint patches
            raise ValueError(
                f"input_patch_stride {self.input_patch_stride} != input_patch_size "
                f"{self.input_patch_size} is not supported"
            )
        if not self.quantiles or not all(0 < q < 1 for q in self.quantiles):
            raise ValueError(f"quantiles must be a non-empty list in (0, 1), got {self.quantiles}")


def _small_t5() -> T5Config:
    # amazon/chronos-bolt-small's T5 block; vocab_size 2 = decoder start + REG.
    return T5Config(
        vocab_size=2, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6,
        num_heads=8, initializer_factor=0.05,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ChronosBoltConfig(DictConfig):
    """The inner T5's config and the ``chronos_config`` block of ``config.json``."""

    t5: T5Config = dataclasses.field(default_factory=_small_t5)
    chronos: ChronosBoltForecastingConfig = dataclasses.field(
        default_factory=ChronosBoltForecastingConfig
    )

    def __post_init__(self):
        # upstream overwrites vocab_size with this; a config that disagrees would build
        # a `shared` table of another shape than the checkpoint's
        want = 2 if self.chronos.use_reg_token else 1
        if self.t5.vocab_size != want:
            raise ValueError(
                f"t5.vocab_size must be {want} (decoder start"
                f"{' + REG token' if want == 2 else ''}), got {self.t5.vocab_size}"
            )
        if not 0 <= self.t5.decoder_start_token_id < want:
            raise ValueError(
                f"t5.decoder_start_token_id must index `shared` (< {want}), "
                f"got {self.t5.decoder_start_token_id}"
            )


def _init_residual_block(block: ResidualBlock, in_std: float, out_std: float, key) -> None:
    """Upstream's ``_init_weights`` for a ResidualBlock: normal kernels, zero biases."""
    k1, k2, k3 = jax.random.split(key, 3)
    for layer, std, k in (
        (block.hidden_layer, in_std, k1),
        (block.residual_layer, in_std, k2),
        (block.output_layer, out_std, k3),
    ):
        layer.kernel[...] = std * jax.random.normal(k, layer.kernel.shape)
        layer.bias[...] = jnp.zeros(layer.bias.shape)


class ChronosBolt(nnx.Module):
    """Chronos-Bolt weights (upstream names) and its forward pass."""

    def __init__(self, config: ChronosBoltConfig, *, rngs: nnx.Rngs):
        self.config = config
        t5, chronos = config.t5, config.chronos
        backbone = T5EncoderDecoder(t5, rngs=rngs)  # HF T5 init (shared: N(0, factor))
        self.shared, self.encoder, self.decoder = (
            backbone.shared,
            backbone.encoder,
            backbone.decoder,
        )
        act = DENSE_ACT[t5.feed_forward_proj]
        self.input_patch_embedding = ResidualBlock(
            2 * chronos.input_patch_size, t5.d_ff, t5.d_model, act,
            dropout_p=t5.dropout_rate, rngs=rngs,
        )  # fmt: skip
        self.output_patch_embedding = ResidualBlock(
            t5.d_model, t5.d_ff, len(chronos.quantiles) * chronos.prediction_length, act,
            dropout_p=t5.dropout_rate, rngs=rngs,
        )  # fmt: skip
        # upstream scales both blocks' input layers by the *patch* width (2 * patch), also the
        # output block whose input is d_model: kept, so training from scratch starts the same
        f = t5.initializer_factor
        in_std, out_std = f * (2 * chronos.input_patch_size) ** -0.5, f * t5.d_ff**-0.5
        for block in (self.input_patch_embedding, self.output_patch_embedding):
            _init_residual_block(block, in_std, out_std, rngs.params())

    @property
    def quantiles(self) -> tuple[float, ...]:
        return self.config.chronos.quantiles

    def encode(self, context: jnp.ndarray, mask: jnp.ndarray | None = None):
        """``context [B, T]`` (NaN = missing; ``mask [B, T]`` optional, 1 = observed) ->
        ``(encoder output [B, N(+1), D], (loc, scale) [B, 1], attention mask [B, N(+1)])``,
        N = patches of the last ``context_length`` steps, +1 for the REG token."""
        cfg = self.config.chronos
        context = jnp.asarray(context, jnp.float32)
        mask = (~jnp.isnan(context) if mask is None else mask).astype(jnp.float32)
        context, mask = context[:, -cfg.context_length :], mask[:, -cfg.context_length :]
        x, loc_scale = instance_norm(context)  # [B, T], loc/scale [B, 1]
        patched = patch(x, cfg.input_patch_size)  # [B, N, P]
        patched_mask = jnp.nan_to_num(patch(mask, cfg.input_patch_size), nan=0.0)  # [B, N, P]
        patched = jnp.where(patched_mask > 0, patched, 0.0)
        features = jnp.concatenate([patched, patched_mask], axis=-1)  # [B, N, 2P]
        keep = patched_mask.sum(-1) > 0  # [B, N]: a patch with any observed value
        embeds = self.input_patch_embedding(features)  # [B, N, D]
        if cfg.use_reg_token:
            b = embeds.shape[0]
            reg = self.shared(jnp.full((b, 1), REG_TOKEN_ID, jnp.int32))  # [B, 1, D]
            embeds = jnp.concatenate([embeds, reg], axis=1)  # [B, N+1, D]
            keep = jnp.concatenate([keep, jnp.ones((b, 1), bool)], axis=1)
        return self.encoder(embeds, keep), loc_scale, keep

    def __call__(self, context: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
        """``context [B, T]`` -> de-normalised quantiles ``[B, Q, prediction_length]``
        (upstream's ``quantile_preds``)."""
        enc, loc_scale, keep = self.encode(context, mask)
        preds = self.normalized_quantiles(enc, keep)  # [B, Q, H]
        b = preds.shape[0]
        return instance_norm_inverse(preds.reshape(b, -1), loc_scale).reshape(preds.shape)

    def normalized_quantiles(self, enc: jnp.ndarray, keep: jnp.ndarray) -> jnp.ndarray:
        """One decoder step from the start token over ``enc [B, N, D]`` -> quantiles in the
        normalised space ``[B, Q, H]`` (what the training loss compares)."""
        cfg, b = self.config, enc.shape[0]
        start = jnp.full((b, 1), cfg.t5.decoder_start_token_id, jnp.int32)
        h = self.decoder(self.shared(start), None, enc, keep)  # [B, 1, D]
        out = self.output_patch_embedding(h)  # [B, 1, Q*H]
        return out.reshape(b, len(cfg.chronos.quantiles), cfg.chronos.prediction_length)

    def loss(self, context, target, *, mask=None, target_mask=None) -> jnp.ndarray:
        """Upstream's training loss: the quantile (pinball) loss ``2|(y - q)(1[y <= q] - tau)|``
        on normalised values, masked (``target_mask``, default: target observed), averaged over
        the quantiles, summed over the horizon, averaged over the batch (what upstream's
        ``mean(dim=-2).sum(dim=-1)`` on ``[B, Q, H]`` does; its comments name the axes the
        other way round). ``target [B, H' <= H]``."""
        horizon = self.config.chronos.prediction_length
        target = jnp.asarray(target, jnp.float32)
        if target.shape[-1] > horizon:
            raise ValueError(f"target has {target.shape[-1]} steps; the model predicts {horizon}")
        enc, loc_scale, keep = self.encode(context, mask)
        preds = self.normalized_quantiles(enc, keep)  # [B, Q, H]
        y, _ = instance_norm(target, loc_scale)  # [B, H']
        observed = ~jnp.isnan(y) if target_mask is None else jnp.asarray(target_mask, bool)
        pad = ((0, 0), (0, horizon - y.shape[-1]))  # shorter targets: padded, masked out
        y = jnp.pad(jnp.where(observed, y, 0.0), pad)[:, None]  # [B, 1, H]
        observed = jnp.pad(observed, pad)[:, None]
        tau = jnp.asarray(self.quantiles, jnp.float32)[None, :, None]  # [1, Q, 1]
        pinball = 2 * jnp.abs((y - preds) * ((y <= preds).astype(jnp.float32) - tau))
        pinball = pinball * observed  # [B, Q, H]
        return pinball.mean(-2).sum(-1).mean()
