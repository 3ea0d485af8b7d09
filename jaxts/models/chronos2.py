"""Chronos-2 (Ansari et al. 2025): an encoder-only patch model with attention across series.

Exact to ``chronos.chronos2.Chronos2Model`` (chronos-forecasting 2.x) in float32:

* the context (left-truncated to ``context_length``) is instance-normalised (NaN-aware mean and
  population std, optional arcsinh), cut into NaN-left-padded patches of ``P`` steps, and each
  patch embedded from ``[time_enc, values, observed_mask]`` (``3P`` features; missing values
  zeroed) by the ``input_patch_embedding`` residual block; the time encoding is
  ``arange(-N*P, 0) / time_encoding_scale`` for context and ``arange(0, n*P) / ...`` for the
  future;
* then the REG token (``shared`` embedding row 1) and ``n`` future patches, built the same way
  from the known future covariates (normalised with the context's loc/scale; unknown = NaN);
* the encoder (:mod:`jaxts.models.chronos2_layers`), then ``output_patch_embedding`` of the
  last ``n`` tokens -> ``[B, Q, n*P]`` quantiles, de-normalised.

Series of the same ``group_ids`` attend to each other in the group attention; an optional
additive ``group_bias`` opens (0) or keeps shut (``finfo.min``) the pairs of different groups
(see :func:`jaxts.models.chronos2_layers.group_time_bias`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxts.config import DictConfig, require_positive
from jaxts.layers.patching import (
    ACTIVATIONS,
    ResidualBlock,
    instance_norm,
    instance_norm_inverse,
    patch,
)
from jaxts.models.chronos2_layers import Chronos2Encoder, group_time_bias, time_attention_bias

__all__ = [
    "Chronos2Config",
    "Chronos2CoreConfig",
    "Chronos2ForecastingConfig",
    "Chronos2Model",
    "forward",
]

_QUANTILES_21 = (0.01, *(round(0.05 * i, 2) for i in range(1, 20)), 0.99)


@dataclasses.dataclass(frozen=True)
class Chronos2CoreConfig(DictConfig):
    """The top-level fields of upstream ``Chronos2CoreConfig`` that change the computation
    (defaults: the published amazon/chronos-2)."""

    d_model: int = 768
    d_kv: int = 64
    d_ff: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 0.05
    feed_forward_proj: str = "relu"
    rope_theta: float = 10000.0

    def __post_init__(self):
        require_positive(self, "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
        require_positive(self, "layer_norm_epsilon", "rope_theta")
        if self.feed_forward_proj.startswith("gated-"):
            raise ValueError(
                f"feed_forward_proj {self.feed_forward_proj!r}: gated activations are not "
                "supported by Chronos-2"
            )
        if self.feed_forward_proj not in ACTIVATIONS:
            raise ValueError(
                f"feed_forward_proj {self.feed_forward_proj!r} is not supported; "
                f"supported: {sorted(ACTIVATIONS)}"
            )
        if self.d_kv % 2:
            raise ValueError(f"d_kv must be even (RoPE rotates half of it), got {self.d_kv}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")


@dataclasses.dataclass(frozen=True)
class Chronos2ForecastingConfig(DictConfig):
    """The ``chronos_config`` block (upstream ``Chronos2ForecastingConfig``); defaults are the
    published model's. ``time_encoding_scale=None`` resolves to ``context_length``, as
    upstream does when the key is absent."""

    context_length: int = 8192
    output_patch_size: int = 16
    input_patch_size: int = 16
    input_patch_stride: int = 16
    quantiles: tuple[float, ...] = _QUANTILES_21
    use_reg_token: bool = True
    use_arcsinh: bool = True
    max_output_patches: int = 64
    time_encoding_scale: int | None = None

    def __post_init__(self):
        if self.time_encoding_scale is None:
            object.__setattr__(self, "time_encoding_scale", self.context_length)
        object.__setattr__(self, "quantiles", tuple(float(q) for q in self.quantiles))
        require_positive(
            self, "context_length", "output_patch_size", "input_patch_size",
            "input_patch_stride", "max_output_patches", "time_encoding_scale",
        )  # fmt: skip
        if self.input_patch_size != self.output_patch_size:
            raise ValueError(
                f"input_patch_size ({self.input_patch_size}) and output_patch_size "
                f"({self.output_patch_size}) must be equal"
            )
        if self.input_patch_stride != self.input_patch_size:
            raise ValueError(
                f"input_patch_stride ({self.input_patch_stride}) must equal input_patch_size "
                f"({self.input_patch_size}): overlapping patches are not supported"
            )
        q = self.quantiles
        increasing = all(a < b for a, b in zip(q, q[1:], strict=False))
        if not q or not all(0.0 < x < 1.0 for x in q) or not increasing:
            raise ValueError(f"quantiles must be strictly increasing inside (0, 1), got {q}")


@dataclasses.dataclass(frozen=True)
class Chronos2Config(DictConfig):
    core: Chronos2CoreConfig = dataclasses.field(default_factory=Chronos2CoreConfig)
    chronos: Chronos2ForecastingConfig = dataclasses.field(
        default_factory=Chronos2ForecastingConfig
    )


def _residual_block(in_dim, out_dim, core, rngs: nnx.Rngs) -> ResidualBlock:
    """A ResidualBlock initialised as upstream's ``_init_weights``: weights from
    N(0, factor / sqrt(in_features)), biases 0."""
    block = ResidualBlock(
        in_dim, core.d_ff, out_dim, core.feed_forward_proj, dropout_p=core.dropout_rate,
        rngs=rngs,
    )  # fmt: skip
    for layer in (block.hidden_layer, block.output_layer, block.residual_layer):
        fan_in = layer.kernel.shape[0]
        std = core.initializer_factor * fan_in**-0.5
        layer.kernel[...] = std * jax.random.normal(rngs.params(), layer.kernel.shape)
        layer.bias[...] = jnp.zeros(layer.bias.shape)
    return block


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


class Chronos2Model(nnx.Module):
    """Chronos-2 weights under upstream's state-dict names and its forward pass."""

    def __init__(self, config: Chronos2Config, *, rngs: nnx.Rngs):
        self.config = config
        core, ch = config.core, config.chronos
        vocab = 2 if ch.use_reg_token else 1  # [PAD] (never used) and [REG]
        self.shared = nnx.Embed(
            vocab,
            core.d_model,
            embedding_init=nnx.initializers.normal(core.initializer_factor),
            rngs=rngs,
        )
        self.input_patch_embedding = _residual_block(
            3 * ch.input_patch_size, core.d_model, core, rngs
        )
        self.encoder = Chronos2Encoder(core, rngs=rngs)
        out_dim = len(ch.quantiles) * ch.output_patch_size
        self.output_patch_embedding = _residual_block(core.d_model, out_dim, core, rngs)

    # ---- inputs ------------------------------------------------------------------------

    def _validate(self, context, context_mask, group_ids, future, future_mask, n: int):
        p = self.config.chronos.output_patch_size
        if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
            raise ValueError(f"num_output_patches must be a positive python int, got {n!r}")
        if context.ndim != 2:
            raise ValueError(
                f"context must have shape (batch_size, context_length), found: {context.shape}"
            )
        b = context.shape[0]
        if context_mask is not None and context_mask.shape != context.shape:
            raise ValueError(
                f"context_mask must have shape {context.shape}, found: {context_mask.shape}"
            )
        if group_ids is not None and group_ids.shape != (b,):
            raise ValueError(
                f"group_ids must have shape (batch_size={b},), found: {group_ids.shape}"
            )
        if future is not None:
            if future.ndim != 2 or future.shape[0] != b:
                raise ValueError(
                    f"future_covariates must have shape (batch_size={b}, future_length), "
                    f"found: {future.shape}"
                )
            if future.shape[1] > n * p:
                raise ValueError(
                    f"num_output_patches={n} must be large enough to accommodate the length of "
                    f"future_covariates, found: {future.shape[1]} > {n} * {p}"
                )
        if future_mask is not None:
            if future is None:
                raise ValueError("future_covariates must be given when future_covariates_mask is")
            if future_mask.shape != future.shape:
                raise ValueError(
                    f"future_covariates_mask must have the shape of future_covariates "
                    f"{future.shape}, found: {future_mask.shape}"
                )

    def _patched_context(self, context, context_mask):
        """-> patch features ``[B, N, 3P]``, observed patches ``[B, N]`` and loc/scale."""
        ch = self.config.chronos
        mask = (~jnp.isnan(context) if context_mask is None else context_mask).astype(jnp.float32)
        context, mask = context[:, -ch.context_length :], mask[:, -ch.context_length :]
        normed, loc_scale = instance_norm(context, use_arcsinh=ch.use_arcsinh)
        values = patch(normed, ch.input_patch_size)  # [B, N, P], NaN left padding
        patched_mask = jnp.nan_to_num(patch(mask, ch.input_patch_size), nan=0.0)
        values = jnp.where(patched_mask > 0.0, values, 0.0)
        observed = patched_mask.sum(-1) > 0  # [B, N]: a patch counts if any step is observed
        b, n, p = values.shape
        time_enc = jnp.arange(-n * p, 0, dtype=jnp.float32) / jnp.float32(ch.time_encoding_scale)
        time_enc = jnp.broadcast_to(time_enc.reshape(n, p), (b, n, p))
        return jnp.concatenate([time_enc, values, patched_mask], -1), observed, loc_scale

    def _patched_future(self, future, future_mask, loc_scale, batch: int, n: int):
        """-> future patch features ``[B, n, 3P]`` and the known-covariate mask ``[B, n, P]``."""
        ch = self.config.chronos
        p = ch.output_patch_size
        if future is None:
            values = known = jnp.zeros((batch, n * p), jnp.float32)
        else:
            normed, _ = instance_norm(future, loc_scale, use_arcsinh=ch.use_arcsinh)
            if future_mask is None:
                known = (~jnp.isnan(normed)).astype(jnp.float32)
            else:
                known = jnp.asarray(future_mask).astype(jnp.float32)
            values = jnp.where(known > 0.0, normed, 0.0)
            if not _is_traced(values) and bool(jnp.isnan(values).any()):
                raise ValueError(
                    "future_covariates contains NaN values at steps that future_covariates_mask "
                    "marks as known; fix the mask or omit it (then NaN means unknown)"
                )
            pad = ((0, 0), (0, n * p - values.shape[1]))  # right-pad to whole patches
            values, known = jnp.pad(values, pad), jnp.pad(known, pad)
        time_enc = jnp.arange(0, n * p, dtype=jnp.float32) / jnp.float32(ch.time_encoding_scale)
        time_enc = jnp.broadcast_to(time_enc.reshape(n, p), (batch, n, p))
        values, known = values.reshape(batch, n, p), known.reshape(batch, n, p)
        return jnp.concatenate([time_enc, values, known], -1), known

    def _group_bias_shape_check(self, group_bias, b: int, s: int):
        h = self.config.core.num_heads
        ok = {2: (b, b), 3: (s, b, b), 4: (s, h, b, b)}.get(group_bias.ndim)
        ok_one_head = group_bias.ndim == 4 and group_bias.shape == (s, 1, b, b)
        if group_bias.shape != ok and not ok_one_head:
            raise ValueError(
                f"group_bias must have shape [B, B] = {(b, b)}, [S, B, B] = {(s, b, b)} or "
                f"[S, H, B, B] = {(s, h, b, b)} (S = context patches + REG + output patches), "
                f"found: {group_bias.shape}"
            )

    # ---- forward -----------------------------------------------------------------------

    def _normalised_forward(
        self, context, context_mask, group_ids, future, future_mask, n, group_bias
    ):
        """Quantiles in the normalised space ``[B, Q, n*P]``, loc/scale and the known-future
        mask ``[B, n, P]``."""
        context = jnp.asarray(context, jnp.float32)
        context_mask = None if context_mask is None else jnp.asarray(context_mask)
        group_ids = None if group_ids is None else jnp.asarray(group_ids)
        future = None if future is None else jnp.asarray(future, jnp.float32)
        future_mask = None if future_mask is None else jnp.asarray(future_mask)
        self._validate(context, context_mask, group_ids, future, future_mask, n)
        ch = self.config.chronos
        b = context.shape[0]
        feats, observed, loc_scale = self._patched_context(context, context_mask)
        embeds = self.input_patch_embedding(feats)  # [B, N, D]
        if ch.use_reg_token:
            reg = jnp.broadcast_to(self.shared.embedding[1], (b, 1, embeds.shape[-1]))
            embeds = jnp.concatenate([embeds, reg.astype(embeds.dtype)], 1)  # [B, N+1, D]
            observed = jnp.concatenate([observed, jnp.ones((b, 1), bool)], 1)
        future_feats, known = self._patched_future(future, future_mask, loc_scale, b, n)
        embeds = jnp.concatenate([embeds, self.input_patch_embedding(future_feats)], 1)
        observed = jnp.concatenate([observed, jnp.ones((b, n), bool)], 1)  # [B, S]
        if group_ids is None:  # by default every series on its own
            group_ids = jnp.arange(b)
        if group_bias is not None:
            group_bias = jnp.asarray(group_bias, jnp.float32)
            self._group_bias_shape_check(group_bias, b, observed.shape[1])
        hidden = self.encoder(
            embeds,
            time_attention_bias(observed),
            group_time_bias(group_ids, observed, group_bias),
        )  # [B, S, D]
        q, p = len(ch.quantiles), ch.output_patch_size
        out = self.output_patch_embedding(hidden[:, -n:])  # [B, n, Q*P]
        out = out.reshape(b, n, q, p).transpose(0, 2, 1, 3).reshape(b, q, n * p)
        return out, loc_scale, known

    def __call__(
        self,
        context,
        context_mask=None,
        group_ids=None,
        future_covariates=None,
        num_output_patches: int = 1,
        group_bias=None,
        *,
        future_covariates_mask=None,
    ) -> jnp.ndarray:
        """Quantile forecasts ``[B, Q, num_output_patches * P]`` (upstream's
        ``quantile_preds``).

        ``context [B, T]`` (NaN = missing; truncated to the last ``context_length`` steps),
        ``context_mask [B, T]`` (default: not NaN), ``group_ids [B]`` (default: each series
        alone), ``future_covariates [B, F]`` with ``F <= num_output_patches * P`` (NaN =
        unknown, i.e. a target; ``future_covariates_mask`` overrides that), ``group_bias``:
        see :func:`jaxts.models.chronos2_layers.group_time_bias`."""
        out, loc_scale, _ = self._normalised_forward(
            context, context_mask, group_ids, future_covariates, future_covariates_mask,
            num_output_patches, group_bias,
        )  # fmt: skip
        loc, scale = (x[:, :, None] for x in loc_scale)  # [B, 1, 1]
        return instance_norm_inverse(out, (loc, scale), use_arcsinh=self.config.chronos.use_arcsinh)

    def loss(
        self,
        context,
        future_target,
        *,
        context_mask=None,
        future_target_mask=None,
        group_ids=None,
        future_covariates=None,
        num_output_patches: int = 1,
        group_bias=None,
        future_covariates_mask=None,
    ) -> jnp.ndarray:
        """Upstream's training loss: twice the pinball loss on normalised values, masked by the
        target mask (default: not NaN) and by the known future covariates, mean over the
        horizon, sum over quantiles, mean over the batch."""
        ch = self.config.chronos
        target = jnp.asarray(future_target, jnp.float32)
        b, n, p = np.shape(context)[0], num_output_patches, ch.output_patch_size
        if target.ndim != 2 or target.shape[0] != b or target.shape[1] > n * p:
            raise ValueError(
                f"future_target must have shape (batch_size={b}, future_length <= "
                f"{n} * {p}), found: {target.shape}"
            )
        if future_covariates is not None and np.shape(future_covariates) != target.shape:
            raise ValueError(
                f"future_target must have the shape of future_covariates "
                f"{np.shape(future_covariates)}, found: {target.shape}"
            )
        if future_target_mask is not None and np.shape(future_target_mask) != target.shape:
            raise ValueError(
                f"future_target_mask must have shape {target.shape}, found: "
                f"{np.shape(future_target_mask)}"
            )
        preds, loc_scale, known = self._normalised_forward(
            context, context_mask, group_ids, future_covariates, future_covariates_mask, n,
            group_bias,
        )  # fmt: skip
        target, _ = instance_norm(target, loc_scale, use_arcsinh=ch.use_arcsinh)
        if future_target_mask is None:
            valid = (~jnp.isnan(target)).astype(jnp.float32)
        else:
            valid = jnp.asarray(future_target_mask).astype(jnp.float32)
        target = jnp.where(valid > 0.0, target, 0.0)
        pad = ((0, 0), (0, n * p - target.shape[1]))
        target, valid = jnp.pad(target, pad)[:, None], jnp.pad(valid, pad)[:, None]  # [B, 1, H]
        levels = jnp.asarray(ch.quantiles, jnp.float32)[None, :, None]  # [1, Q, 1]
        below = (target <= preds).astype(jnp.float32)
        pinball = 2.0 * jnp.abs((target - preds) * (below - levels))  # [B, Q, H]
        weight = valid * (1.0 - known.reshape(b, 1, n * p))  # known covariates are not targets
        return (pinball * weight).mean(-1).sum(-1).mean()


def _forward(graphdef, state, context, context_mask, group_ids, future, group_bias, *, n):
    model = nnx.merge(graphdef, state)
    return model(context, context_mask, group_ids, future, n, group_bias)


_forward_jit = jax.jit(_forward, static_argnames=("graphdef", "n"))


def forward(
    model: Chronos2Model,
    context,
    context_mask=None,
    group_ids=None,
    future_covariates=None,
    num_output_patches: int = 1,
    group_bias=None,
):
    """``model(...)`` as one compiled program per input shape and ``num_output_patches``
    (jax caches it); inputs are converted to float32 / int32 arrays first."""
    graphdef, state = nnx.split(model)

    def arr(x, dtype):
        return None if x is None else jnp.asarray(x, dtype)

    return _forward_jit(
        graphdef,
        state,
        arr(context, jnp.float32),
        arr(context_mask, jnp.float32),
        arr(group_ids, jnp.int32),
        arr(future_covariates, jnp.float32),
        arr(group_bias, jnp.float32),
        n=int(num_output_patches),
    )
