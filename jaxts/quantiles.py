"""Quantile interpolation as ``chronos.utils`` (chronos-forecasting 2.x), for numpy and jax arrays.

* :func:`interpolate_quantiles`: linear interpolation between given quantile levels, flat beyond
  the outermost levels (the values at the lowest/highest level are repeated at 0 and 1);
* :func:`weighted_quantile`: quantiles of the empirical distribution of weighted samples (sorted
  samples, cumulative weights as their levels, then :func:`interpolate_quantiles`);
* :func:`prob_mass_per_quantile_level`: the trapezoidal probability mass of each quantile level
  (upstream's ``Chronos2Pipeline._get_prob_mass_per_quantile_level``).

All arithmetic is float32, as upstream's torch code, so results agree to float32 rounding. A jax
input gives a jax result (usable under ``jit``); anything else is computed with numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["interpolate_quantiles", "prob_mass_per_quantile_level", "weighted_quantile"]


def _namespace(x):
    return jnp if isinstance(x, jax.Array) else np


def _levels(levels, name: str, ndim_max: int = 1) -> np.ndarray:
    arr = np.asarray(levels, dtype=np.float32)
    if arr.ndim == 0 or arr.ndim > ndim_max or arr.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 1-d sequence, got shape {arr.shape}")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"`{name}` must be between 0 and 1, got {arr.tolist()}")
    return arr


def interpolate_quantiles(
    query_quantile_levels: Sequence[float] | np.ndarray,
    original_quantile_levels: Sequence[float] | np.ndarray,
    original_values,
):
    """Values at ``query_quantile_levels [Q']`` from values ``original_values [..., Q]`` at
    ``original_quantile_levels`` (``[Q]``, or per row: the shape of ``original_values``).

    Returns ``[..., Q']`` in the dtype of ``original_values`` (which must be floating point).
    """
    xp = _namespace(original_values)
    if not xp.issubdtype(original_values.dtype, xp.floating):
        raise ValueError(
            f"`original_values` must be a floating point array, got {original_values.dtype}"
        )
    query = _levels(query_quantile_levels, "query_quantile_levels")
    if isinstance(original_quantile_levels, jax.Array):  # e.g. weighted_quantile's, under jit
        levels = original_quantile_levels.astype(jnp.float32)
    else:
        levels = _levels(original_quantile_levels, "original_quantile_levels", ndim_max=64)
    out_dtype = original_values.dtype
    if levels.ndim > 1:
        if levels.shape != original_values.shape:
            raise ValueError(
                "If `original_quantile_levels` is not 1-d, its shape must match `original_values`: "
                f"{levels.shape} != {original_values.shape}"
            )
    elif levels.shape[0] != original_values.shape[-1]:
        raise ValueError(
            "If `original_quantile_levels` is 1-d, its length must match the last dim of "
            f"`original_values`: {levels.shape[0]} != {original_values.shape[-1]}"
        )
    n_orig = levels.shape[-1]
    values = original_values.astype(xp.float32).reshape(-1, n_orig)  # [N, Q]
    n = values.shape[0]
    levels = xp.clip(levels, 0.0, 1.0)
    levels = xp.broadcast_to(levels, (n, n_orig)) if levels.ndim == 1 else levels.reshape(n, n_orig)

    order = xp.argsort(levels, axis=-1)  # [N, Q]
    sorted_levels = xp.take_along_axis(levels, order, axis=-1)
    sorted_values = xp.take_along_axis(values, order, axis=-1)
    # Upstream adds level 0 (the lowest value repeated) only when no row has level 0: an extra
    # level 0 never changes the result (the lower neighbour of any query is then the original
    # level 0), so it is always added here. Level 1 is added only when no row reaches 1.
    sorted_levels = xp.concatenate([xp.zeros((n, 1), xp.float32), sorted_levels], axis=-1)
    sorted_values = xp.concatenate([sorted_values[:, :1], sorted_values], axis=-1)
    q = xp.asarray(query)[None, :]  # [1, Q']
    top = levels.max()
    if isinstance(top, jax.core.Tracer):  # under jit: both variants, chosen per call
        padded = _interp(*_pad_top(xp, sorted_levels, sorted_values), q, xp)
        out = xp.where(top < 1.0, padded, _interp(sorted_levels, sorted_values, q, xp))
    elif top < 1.0:
        out = _interp(*_pad_top(xp, sorted_levels, sorted_values), q, xp)
    else:
        out = _interp(sorted_levels, sorted_values, q, xp)
    return out.reshape(*original_values.shape[:-1], query.shape[0]).astype(out_dtype)


def _pad_top(xp, levels, values):
    n = levels.shape[0]
    return (
        xp.concatenate([levels, xp.ones((n, 1), xp.float32)], axis=-1),
        xp.concatenate([values, values[:, -1:]], axis=-1),
    )


def _interp(sorted_levels, sorted_values, q, xp):
    """Linear interpolation of sorted rows ``[N, L]`` at the levels ``q [1, Q']``."""
    # searchsorted(right=True) on each sorted row: the number of levels <= the query
    upper = (sorted_levels[:, None, :] <= q[:, :, None]).sum(-1)  # [N, Q']
    upper = xp.minimum(upper, sorted_levels.shape[-1] - 1)
    lower = upper - 1
    lo_l = xp.take_along_axis(sorted_levels, lower, axis=-1)
    up_l = xp.take_along_axis(sorted_levels, upper, axis=-1)
    lo_v = xp.take_along_axis(sorted_values, lower, axis=-1)
    up_v = xp.take_along_axis(sorted_values, upper, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # torch.nan_to_num(nan=0): 0/0 -> 0, and +-inf -> the largest finite float32, as here
        weight = xp.nan_to_num((q - lo_l) / (up_l - lo_l), nan=0.0)
        return lo_v + weight * (up_v - lo_v)  # [N, Q']


def _cumsum_as_float64(x, xp):
    """``cumsum(x, -1)`` of float32 ``x`` accumulated in float64 and rounded to float32, as
    torch's CPU cumsum does. The upper levels of :func:`weighted_quantile` are spaced by the
    smallest masses (~1e-4), so a float32 running sum would move its extreme quantiles by ~1e-4."""
    if xp is np:
        return np.cumsum(x.astype(np.float64), axis=-1).astype(np.float32)

    # jax without x64: a double-float (hi, lo) running sum, exact to ~2**-48
    def add(a, b):
        (ah, al), (bh, bl) = a, b
        s = ah + bh
        v = s - ah
        err = (ah - (s - v)) + (bh - v) + al + bl  # two-sum error plus the low parts
        hi = s + err
        return hi, err - (hi - s)

    hi, _ = jax.lax.associative_scan(add, (x, jnp.zeros_like(x)), axis=-1)
    return hi


def weighted_quantile(
    query_quantile_levels: Sequence[float] | np.ndarray,
    sample_weights: Sequence[float] | np.ndarray,
    samples,
):
    """Quantiles ``[..., Q']`` of the distribution given by ``samples [..., S]`` with the
    probability masses ``sample_weights [S]`` (shared by all rows, normalised here)."""
    xp = _namespace(samples)
    if not xp.issubdtype(samples.dtype, xp.floating):
        raise ValueError(f"`samples` must be a floating point array, got {samples.dtype}")
    query = _levels(query_quantile_levels, "query_quantile_levels")
    weights = np.asarray(sample_weights, dtype=np.float32)
    if weights.ndim != 1 or weights.shape[0] != samples.shape[-1]:
        raise ValueError(
            f"`sample_weights` must be 1-d with the length of the last dim of `samples` "
            f"({samples.shape[-1]}), got shape {weights.shape}"
        )
    if not weights.min() > 0.0:
        raise ValueError(f"`sample_weights` must be > 0, got {weights.tolist()}")
    out_dtype = samples.dtype
    n_samples = weights.shape[0]
    flat = samples.astype(xp.float32).reshape(-1, n_samples)  # [N, S]
    weights = weights / weights.sum(keepdims=True)
    order = xp.argsort(flat, axis=-1)
    sorted_samples = xp.take_along_axis(flat, order, axis=-1)  # [N, S]
    sorted_weights = xp.asarray(weights)[order]  # [N, S]
    cumulative = xp.clip(_cumsum_as_float64(sorted_weights, xp), 0.0, 1.0)  # [N, S]
    out = interpolate_quantiles(query, cumulative, sorted_samples)  # [N, Q']
    return out.reshape(*samples.shape[:-1], query.shape[0]).astype(out_dtype)


def prob_mass_per_quantile_level(quantile_levels: Sequence[float] | np.ndarray) -> np.ndarray:
    """``[Q]`` float32: mass ``(q[i+1] - q[i-1]) / 2`` of each level (``q[-1] = 0``,
    ``q[Q] = 1``), normalised to sum to 1. Levels must lie strictly inside (0, 1)."""
    levels = np.asarray(quantile_levels, dtype=np.float32)
    if levels.ndim != 1 or levels.size == 0 or levels.min() <= 0.0 or levels.max() >= 1.0:
        raise ValueError(f"quantile levels must be 1-d and strictly in (0, 1), got {levels}")
    bounds = np.concatenate([np.zeros(1, np.float32), levels, np.ones(1, np.float32)])
    mass = (bounds[2:] - bounds[:-2]) / np.float32(2)
    return mass / mass.sum()
