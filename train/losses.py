"""The training objectives of every trainer in ``train/``.

A Trainer loss is ``loss(model, batch, mask[, aux])``: a scalar mean over the valid examples of
a batch (``mask [B]`` is False on the rows that pad a short last batch). The ``masked_*``
reductions make that mean equal the upstream mean over the unpadded batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100  # torch CrossEntropyLoss / HF ignore_index
LOGVAR_FLOOR = -5.0  # STRIDE's variance regulariser penalises logvar below this


# ---- reductions --------------------------------------------------------------------------------


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over all elements of the valid examples. values ``[B, ...]``, mask ``[B]``.

    Every example has the same number of elements, so this equals ``values[mask].mean()``.
    ``where`` (not a product) keeps a NaN in a padding row out of the sum.
    """
    per_example = jnp.mean(values.reshape(values.shape[0], -1), axis=1)  # [B]
    total = jnp.sum(jnp.where(mask, per_example, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1)


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """MSE over all elements of the valid examples (``nn.MSELoss`` on the unpadded batch).
    pred/target ``[B, ...]``, mask ``[B]``."""
    return masked_mean(jnp.square(pred - target), mask)


def masked_gaussian_nll(
    mean: jax.Array, logvar: jax.Array, target: jax.Array, mask: jax.Array
) -> jax.Array:
    """STRIDE's Gaussian NLL ``0.5 * (logvar + (mean - target)^2 / exp(logvar))`` (no
    ``log(2 pi)`` constant), averaged over all elements of the valid examples. ``[B, ...]``."""
    return masked_mean(0.5 * (logvar + jnp.square(mean - target) * jnp.exp(-logvar)), mask)


# ---- Timer-XL next-patch objective (OpenLTM exp_forecast) --------------------------------------


def next_patch_loss(model, batch, mask):
    """MSE of the model's forecasts against ``y``'s tokens: with y ``[B, N*P_out, C]`` every
    token's next patch (training), with y ``[B, P_out, C]`` the last token's only
    (``valid_last``). x ``[B, L, C]``."""
    x, y = batch
    pred = model(x)  # [B, N*P_out, C]
    return masked_mse(pred[:, -y.shape[1] :], y, mask)


def next_patch_nll(model, batch, mask):
    """A stochastic model's Gaussian NLL (:func:`masked_gaussian_nll`) of the data ``y`` under
    its (mean, logvar) forecasts of every token's (or the last token's) patch."""
    x, y = batch
    mean, logvar = model(x)  # [B, N*P_out, C] each
    h = y.shape[1]
    return masked_gaussian_nll(mean[:, -h:], logvar[:, -h:], y, mask)


def next_patch_mean_mse(model, batch, mask, aux=None):
    """:func:`next_patch_loss` of a stochastic model's mean (STRIDE's validation). A model with
    a ``draft`` (a distillation ``Student``) is scored through its draft."""
    x, y = batch
    out = getattr(model, "draft", model)(x)
    mean = out[0] if isinstance(out, tuple) else out
    return masked_mse(mean[:, -y.shape[1] :], y, mask)


# ---- STRIDE distillation -----------------------------------------------------------------------


def variance_penalty(logvar: jax.Array, mask: jax.Array) -> jax.Array:
    """STRIDE's collapse guard ``mean(relu(-logvar - 5))`` over the valid examples' elements."""
    return masked_mean(jax.nn.relu(LOGVAR_FLOOR - logvar), mask)


def distill_objective(out, target: jax.Array, mask: jax.Array, var_reg: float = 0.0) -> jax.Array:
    """The draft's loss against teacher targets ``[B, T, C]``. ``out``: a ``(mean, logvar)`` pair
    (stochastic draft: Gaussian NLL + ``var_reg`` * variance penalty) or an array (MSE)."""
    if isinstance(out, tuple):
        mean, logvar = out
        loss = masked_gaussian_nll(mean, logvar, target, mask)
        if var_reg > 0:
            loss = loss + var_reg * variance_penalty(logvar, mask)
        return loss
    return masked_mse(out, target, mask)


# ---- Chronos token cross-entropy ---------------------------------------------------------------


def token_cross_entropy(logits, labels, valid):
    """Mean cross-entropy over the ``valid`` tokens. logits ``[B, L, V]``, labels/valid
    ``[B, L]`` (labels of invalid tokens may hold anything, e.g. -100)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    safe = jnp.where(valid, labels, 0)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def chronos_loss(model, batch, mask):
    """HF ``T5ForConditionalGeneration`` loss: CrossEntropyLoss(ignore_index=-100) averaged over
    every non-ignored label token of the batch; ``mask [B]`` also drops padding rows."""
    ids, attention_mask, decoder_input_ids, labels = batch
    logits = model(ids, attention_mask, decoder_input_ids)  # [B, H+1, V]
    valid = (labels != IGNORE_INDEX) & mask[:, None]
    return token_cross_entropy(logits, labels, valid)
