"""Distance-aware losses over ordered bins (the distance-aware Chronos head's objectives).

Every loss takes ``logits [..., N]`` over N ordered bins, integer ``targets [...]`` and an
optional boolean ``mask [...]``. A row counts when its mask is True and its target is not
``IGNORE_INDEX`` (-100, torch's ``ignore_index``); losses average over the counted rows (0 when
none counts; torch's mean of nothing would be NaN). Rows that do not count get exactly zero
gradient, whatever their logits hold. A counted target outside ``[0, N)`` is a ``ValueError``
when the targets are concrete and a NaN loss under ``jit`` (values cannot raise there).

Semantics are upstream's (``OrdinalLoss`` of ``Phoenix21/distance-aware-chronos-t``, ported
faithfully in ``bridges/reference/ordinal_loss_torch.py``), with one change of method: upstream
reads bin distances from an ``[N, N]`` matrix; here ``|k - t|`` is computed per row from an
``arange``, so memory stays O(rows * N) (64 MiB less at N = 4096, and no 47 s start-up).
Log-probabilities come from ``log_softmax`` (stable for any logit scale); logits are upcast to at
least float32.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = -100  # torch CrossEntropyLoss / HF ignore_index
REDUCTIONS = ("mean", "sum", "none")


class _Rows(NamedTuple):
    logits: jax.Array  # [..., N] float, zero on rows that do not count
    targets: jax.Array  # [...] int, 0 on rows that do not count
    keep: jax.Array  # [...] bool: the row counts
    bad: jax.Array  # [...] bool: the row counts but its target is outside [0, N)


def _prepare(name: str, logits, targets, mask) -> _Rows:
    """Validate shapes/dtypes (one ValueError line each) and neutralise the rows that do not
    count, so that NaN/inf logits or -100 labels there cannot reach the loss or its gradient."""
    logits, targets = jnp.asarray(logits), jnp.asarray(targets)
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise ValueError(f"{name}: logits must be [..., N] with N >= 2 bins; got {logits.shape}")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"{name}: targets must be integer bin ids; got dtype {targets.dtype}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"{name}: targets must have logits.shape[:-1] = {logits.shape[:-1]}; "
            f"got {targets.shape}"
        )
    n = logits.shape[-1]
    keep = targets != IGNORE_INDEX  # [...]
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_ or mask.shape != targets.shape:
            raise ValueError(
                f"{name}: mask must be boolean with the targets' shape {targets.shape}; "
                f"got {mask.dtype} {mask.shape}"
            )
        keep = keep & mask
    bad = keep & ((targets < 0) | (targets >= n))  # [...]
    if not isinstance(bad, jax.core.Tracer) and bool(np.any(bad)):
        first = np.asarray(targets)[np.asarray(bad)][0]
        raise ValueError(f"{name}: targets must lie in [0, {n}) or be {IGNORE_INDEX}; got {first}")
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    logits = jnp.where(keep[..., None], logits.astype(dtype), 0)  # [..., N]
    return _Rows(logits, jnp.where(keep & ~bad, targets, 0), keep, bad)


def _reduce(per_row: jax.Array, rows: _Rows, reduction: str = "mean") -> jax.Array:
    """Rows that do not count give 0, counted rows with a bad target NaN; then reduce."""
    per_row = jnp.where(rows.bad, jnp.nan, jnp.where(rows.keep, per_row, 0.0))  # [...]
    if reduction == "none":
        return per_row
    total = jnp.sum(per_row)
    if reduction == "sum":
        return total
    return total / jnp.maximum(jnp.sum(rows.keep), 1)


def _check_reduction(name: str, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}; got {reduction!r}")


def _bin_distance(targets: jax.Array, n: int, dtype) -> jax.Array:
    """|k - t| for every bin k: [...] -> [..., N] (exact in float32 for N < 2**24)."""
    return jnp.abs(jnp.arange(n, dtype=dtype) - targets[..., None].astype(dtype))


# ---- per-row terms (on prepared rows) ----------------------------------------------------------


def _ordinal_ce_rows(log_probs, rows: _Rows, alpha) -> jax.Array:
    """CE + alpha * log(1 + |argmax - t| / N) per row; argmax is an integer: no gradient."""
    n = rows.logits.shape[-1]
    ce = -jnp.take_along_axis(log_probs, rows.targets[..., None], axis=-1)[..., 0]  # [...]
    predicted = jnp.argmax(rows.logits, axis=-1)  # [...] (first maximum, as torch)
    distance = jnp.abs(predicted - rows.targets).astype(log_probs.dtype) / n  # [...]
    return ce + alpha * jnp.log(1 + distance)


def _soft_label_rows(log_probs, log_kernel) -> jax.Array:
    """-sum_k q(k) log p(k) with q = softmax(log_kernel): kernel [..., N] -> [...]."""
    soft_labels = jax.nn.softmax(log_kernel, axis=-1)  # [..., N]
    return -jnp.sum(soft_labels * log_probs, axis=-1)


def _smooth_label_rows(log_probs, rows: _Rows, beta) -> jax.Array:
    n = rows.logits.shape[-1]
    return _soft_label_rows(log_probs, -beta * _bin_distance(rows.targets, n, log_probs.dtype))


def _emd_rows(log_probs, rows: _Rows) -> jax.Array:
    """sum_k |CDF_pred(k) - CDF_target(k)|; the target CDF is the step [k >= t]."""
    n = rows.logits.shape[-1]
    cdf = jnp.cumsum(jnp.exp(log_probs), axis=-1)  # [..., N]
    step = jnp.arange(n) >= rows.targets[..., None]  # [..., N]
    return jnp.sum(jnp.abs(cdf - step.astype(cdf.dtype)), axis=-1)


# ---- public losses -----------------------------------------------------------------------------


def ordinal_cross_entropy(logits, targets, alpha=1.0, mask=None) -> jax.Array:
    """Upstream ``OrdinalLoss.ordinal_cross_entropy``: cross-entropy plus
    ``alpha * log(1 + |argmax(logits) - target| / N)``, averaged over the counted rows.

    The distance term depends on the logits only through an argmax, so (as upstream) it adds to
    the value but not to the gradient: the gradient is plain cross-entropy's.
    """
    rows = _prepare("ordinal_cross_entropy", logits, targets, mask)
    log_probs = jax.nn.log_softmax(rows.logits, axis=-1)  # [..., N]
    return _reduce(_ordinal_ce_rows(log_probs, rows, alpha), rows)


def smooth_label_loss(logits, targets, beta=0.1, mask=None) -> jax.Array:
    """Upstream ``OrdinalLoss.smooth_label_loss``: ``-sum_k q(k) log_softmax(logits)_k`` with
    soft labels ``q(k) ∝ exp(-beta |k - target|)`` (a Laplace kernel, as upstream's code does,
    whatever its comment says), averaged over the counted rows."""
    rows = _prepare("smooth_label_loss", logits, targets, mask)
    log_probs = jax.nn.log_softmax(rows.logits, axis=-1)  # [..., N]
    return _reduce(_smooth_label_rows(log_probs, rows, beta), rows)


def earth_movers_distance(logits, targets, mask=None) -> jax.Array:
    """Upstream ``OrdinalLoss.earth_movers_distance``:
    ``sum_k |cumsum(softmax(logits))_k - cumsum(onehot(target))_k|`` (in bins, not divided by
    N), averaged over the counted rows."""
    rows = _prepare("earth_movers_distance", logits, targets, mask)
    log_probs = jax.nn.log_softmax(rows.logits, axis=-1)  # [..., N]
    return _reduce(_emd_rows(log_probs, rows), rows)


def combined_ordinal_loss(
    logits, targets, mask=None, weights=(0.5, 0.3, 0.2), alpha=1.0, beta=0.1
) -> jax.Array:
    """Upstream ``OrdinalLoss.combined_loss`` (the published head's training loss):
    ``weights[0] * ordinal_cross_entropy + weights[1] * smooth_label_loss
    + weights[2] * earth_movers_distance``, one softmax shared by the three terms."""
    if len(weights) != 3:
        raise ValueError(
            "combined_ordinal_loss: weights must be 3 numbers (ordinal CE, smooth label, EMD); "
            f"got {weights!r}"
        )
    rows = _prepare("combined_ordinal_loss", logits, targets, mask)
    log_probs = jax.nn.log_softmax(rows.logits, axis=-1)  # [..., N]
    per_row = (
        weights[0] * _ordinal_ce_rows(log_probs, rows, alpha)
        + weights[1] * _smooth_label_rows(log_probs, rows, beta)
        + weights[2] * _emd_rows(log_probs, rows)
    )  # [...]
    return _reduce(per_row, rows)


def gaussian_soft_label_loss(logits, targets, sigma=2.0, mask=None, reduction="mean"):
    """The "v2" loss (upstream ``distance_aware_loss``): ``-sum_k q(k) log_softmax(logits)_k``
    with Gaussian soft labels ``q(k) ∝ exp(-(k - target)^2 / (2 sigma^2))``.

    Upstream takes ONE scalar target and sums over every row it is given. Here each row has its
    own target; ``reduction`` is ``"mean"`` over the counted rows (default, like the other
    losses), ``"sum"`` (upstream's batch sum) or ``"none"`` (per-row values ``[...]``, 0 on rows
    that do not count). One row with its target gives exactly upstream's value.
    """
    _check_reduction("gaussian_soft_label_loss", reduction)
    if isinstance(sigma, (int, float)) and not sigma > 0:
        raise ValueError(f"gaussian_soft_label_loss: sigma must be > 0; got {sigma}")
    rows = _prepare("gaussian_soft_label_loss", logits, targets, mask)
    log_probs = jax.nn.log_softmax(rows.logits, axis=-1)  # [..., N]
    n = rows.logits.shape[-1]
    log_kernel = -jnp.square(_bin_distance(rows.targets, n, log_probs.dtype)) / (2 * sigma**2)
    return _reduce(_soft_label_rows(log_probs, log_kernel), rows, reduction)
