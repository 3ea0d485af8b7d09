"""Soft group masking for Chronos-2: series of different groups attend to each other with a
weight given by how similar their contexts are.

Chronos-2's group attention lets a series attend only to the series of its own group. Given a
similarity ``sim [B, B]`` in ``[0, 1]`` between the series of a batch (row: query series, column:
key series), :meth:`SoftGroupMask.group_bias` builds the additive cross-group bias that
``Chronos2Model(..., group_bias=...)`` takes::

    hard = same_group                       # 1 within a group, 0 across
    soft = hard + (1 - hard) * sim          # 1 within a group, sim across
    bias = temperature * log(soft)          # 0 within a group, <= 0 across

Adding ``bias`` to a pre-softmax score multiplies that key's attention weight by
``sim ** temperature``. Since ``sim <= 1``, a *larger* temperature makes the cross-group bias
*more negative*: the mask gets **stricter** (temperature -> inf: hard groups, for every pair with
``sim < 1``); temperature 0 gives a bias of 0 everywhere, i.e. full cross-learning (every series
of the batch in one group). The seed idea described the opposite direction; this is what the
formula does, and ``tests/test_soft_mask.py`` checks it. ``log 0`` (and anything below the float32
range) is clamped to ``finfo(float32).min``, the model's own mask value, so a similarity of 0
equals hard groups exactly.

Similarities (:func:`similarity_matrix`), each computed on the steps observed (not NaN) in *both*
series of a pair, vectorised over the batch (matrix products, no loop over pairs):

* ``"correlation"``: Pearson's r on the overlap. Fewer than 2 overlapping steps, or a series
  constant on the overlap (zero variance), gives 0: no evidence of similarity.
* ``"cosine"``: the cosine of the raw (uncentred) values on the overlap; 0 when either series is
  all zeros there or the overlap has fewer than 2 steps. Uncentred, it is dominated by the level:
  series that are all positive (loads, temperatures in K) have cosines near 1, so it behaves close
  to full cross-learning on such data; use ``"correlation"`` to compare shapes.
* ``"gaussian"``: ``exp(-d / scale)`` with ``d`` the *RMS* difference of the instance-normalised
  series (:func:`jaxts.layers.patching.instance_norm`: own mean and population std over all its
  observed steps) on the overlap. RMS rather than a plain L2 norm, which grows with the context
  length: with RMS, ``scale`` means the same for a context of 64 or 2048 steps. A series constant
  over its observed steps normalises to 0. Fewer than 2 overlapping steps gives 0.

Correlation and cosine lie in ``[-1, 1]``; ``negative`` maps them into ``[0, 1]``: ``"clip"``
(default) ``max(r, 0)``: anti-correlated series get no cross-group attention; ``"abs"``
``|r|``: an anti-correlated series is as informative as a correlated one (the model normalises
each series, but it does not flip signs, so this is a modelling bet); ``"shift"``
``(r + 1) / 2``: uncorrelated series get 0.5 and only perfectly anti-correlated ones 0.
The diagonal is 1 for every similarity (a series is always in its own group anyway).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["NEGATIVE_MODES", "SIMILARITIES", "SoftGroupMask", "similarity_matrix"]

SIMILARITIES = ("correlation", "cosine", "gaussian")
NEGATIVE_MODES = ("clip", "abs", "shift")
MASK_VALUE = float(np.finfo(np.float32).min)  # the model's additive mask value
# A variance below this share of the second moment is float rounding of a constant overlap
# (float64 sums of up to ~1e5 equal values err by far less), not a real signal.
_REL_VAR_TOL = 1e-10


def _context(context) -> np.ndarray:
    x = np.asarray(context, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"context must be [B, T] (series x time steps), got shape {x.shape}")
    if np.isinf(x).any():
        raise ValueError("context holds inf; missing steps must be NaN")
    return x


def _check_option(name: str, value, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _standardised(x: np.ndarray, observed: np.ndarray, *, center: bool) -> np.ndarray:
    """Each row affinely rescaled in float64 (centred by its observed mean when ``center``,
    divided by its observed spread), NaN -> 0. Pearson's r is invariant to per-series positive
    affine maps and the cosine to positive scaling, so this changes neither; it only keeps the
    one-pass moment sums below well conditioned. A constant row becomes all 0."""
    x = np.where(observed, x, 0.0).astype(np.float64)  # [B, T]
    count = np.maximum(observed.sum(-1, keepdims=True), 1)  # [B, 1]
    if center:
        x = np.where(observed, x - x.sum(-1, keepdims=True) / count, 0.0)
    spread = np.abs(x).max(-1, keepdims=True)  # [B, 1]
    return x / np.where(spread > 0, spread, 1.0)


def _overlap_moments(x: np.ndarray, m: np.ndarray):
    """Sums over the steps observed in both series of each pair, ``[B, B]`` each (row i, col j):
    ``n`` overlap length, ``sx`` sum of x_i, ``sxx`` sum of x_i^2, ``sxy`` sum of x_i x_j.
    ``x`` is 0 where unobserved, so one matrix product per sum does the masking."""
    n = m @ m.T  # [B, B]
    sx = x @ m.T  # [B, B]
    sxx = np.square(x) @ m.T  # [B, B]
    sxy = x @ x.T  # [B, B]
    return n, sx, sxx, sxy


def _correlation(x: np.ndarray, observed: np.ndarray) -> np.ndarray:
    m = observed.astype(np.float64)
    n, sx, sxx, sxy = _overlap_moments(_standardised(x, observed, center=True), m)
    safe_n = np.maximum(n, 1)
    cov = sxy - sx * sx.T / safe_n  # [B, B]
    var = sxx - np.square(sx) / safe_n  # [B, B]: variance (x n) of the row series on the overlap
    ok = (n >= 2) & (var > _REL_VAR_TOL * sxx) & (var.T > _REL_VAR_TOL * sxx.T)
    r = cov / np.sqrt(np.where(ok, var * var.T, 1.0))
    return np.where(ok, np.clip(r, -1.0, 1.0), 0.0)


def _cosine(x: np.ndarray, observed: np.ndarray) -> np.ndarray:
    m = observed.astype(np.float64)
    n, _, sxx, sxy = _overlap_moments(_standardised(x, observed, center=False), m)
    ok = (n >= 2) & (sxx > 0) & (sxx.T > 0)
    cos = sxy / np.sqrt(np.where(ok, sxx * sxx.T, 1.0))
    return np.where(ok, np.clip(cos, -1.0, 1.0), 0.0)


def _gaussian(x: np.ndarray, observed: np.ndarray, scale: float) -> np.ndarray:
    from jaxts.layers.patching import instance_norm

    z = np.asarray(instance_norm(x)[0], np.float64)  # [B, T], NaN where unobserved
    # instance_norm turns float noise of a constant series into +-1 (its std is a rounding
    # residue, not 0); a constant series carries no shape, so it is 0 after normalising.
    lo = np.where(observed, x, np.inf).min(-1, keepdims=True)
    hi = np.where(observed, x, -np.inf).max(-1, keepdims=True)
    z = np.where(observed & (hi > lo), z, 0.0)
    m = observed.astype(np.float64)
    n, _, sxx, sxy = _overlap_moments(z, m)
    sq = np.maximum(sxx + sxx.T - 2.0 * sxy, 0.0)  # [B, B]: sum (z_i - z_j)^2 on the overlap
    rms = np.sqrt(sq / np.maximum(n, 1))
    return np.where(n >= 2, np.exp(-rms / scale), 0.0)


def similarity_matrix(
    context, kind: str = "correlation", *, negative: str = "clip", scale: float = 1.0
) -> np.ndarray:
    """``context [B, T]`` (NaN = missing) -> ``[B, B]`` float32 in ``[0, 1]``, diagonal 1.

    ``kind``: ``"correlation"``, ``"cosine"`` or ``"gaussian"``; ``negative`` (correlation,
    cosine): ``"clip"``, ``"abs"`` or ``"shift"``; ``scale`` (gaussian) > 0. See the module
    docstring for the definitions."""
    _check_option("similarity", kind, SIMILARITIES)
    _check_option("negative", negative, NEGATIVE_MODES)
    _check_scale(scale)
    x = _context(context)
    observed = ~np.isnan(x)  # [B, T]
    if kind == "gaussian":
        sim = _gaussian(x, observed, float(scale))
    else:
        r = (_correlation if kind == "correlation" else _cosine)(x, observed)  # [B, B] in [-1, 1]
        sim = {"clip": np.maximum(r, 0.0), "abs": np.abs(r), "shift": (r + 1.0) / 2.0}[negative]
    np.fill_diagonal(sim, 1.0)
    return np.clip(sim, 0.0, 1.0).astype(np.float32)


def _check_scale(scale) -> None:
    if not (isinstance(scale, (int, float)) and np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class SoftGroupMask:
    """Similarity-weighted cross-group attention for ``Chronos2Pipeline.predict(soft_mask=...)``.

    ``similarity``: ``"correlation"`` (default), ``"cosine"``, ``"gaussian"`` (computed per batch
    from the context) or a fixed ``[B, B]`` matrix in ``[0, 1]`` (row: query series, column: key
    series; it must match the batch it is used on). ``temperature`` >= 0: the exponent of the
    similarity in the attention weight; 0 = full cross-learning, larger = stricter (see the
    module docstring). ``negative`` and ``scale``: see :func:`similarity_matrix`.
    ``eq=False``: a matrix field has no scalar equality; masks compare by identity."""

    similarity: str | np.ndarray = "correlation"
    temperature: float = 1.0
    negative: str = "clip"
    scale: float = 1.0

    def __post_init__(self):
        if isinstance(self.similarity, str):
            _check_option("similarity", self.similarity, SIMILARITIES)
        else:
            object.__setattr__(self, "similarity", _user_matrix(self.similarity))
        t = self.temperature
        if isinstance(t, bool) or not (isinstance(t, (int, float)) and np.isfinite(t) and t >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
        _check_option("negative", self.negative, NEGATIVE_MODES)
        _check_scale(self.scale)

    def similarity_matrix(self, context) -> np.ndarray:
        """``[B, B]`` float32 in ``[0, 1]`` for ``context [B, T]`` (the fixed matrix, after
        checking that it has the batch's size)."""
        if isinstance(self.similarity, str):
            return similarity_matrix(
                context, self.similarity, negative=self.negative, scale=self.scale
            )
        b = _context(context).shape[0]
        if self.similarity.shape != (b, b):
            raise ValueError(f"similarity matrix has shape {self.similarity.shape}, but the "
                             f"batch has {b} series: expected ({b}, {b})")  # fmt: skip
        return self.similarity

    def group_bias(self, context, group_ids) -> np.ndarray:
        """Additive cross-group attention bias ``[B, B]`` float32 for ``context [B, T]`` and
        ``group_ids [B]``: 0 within a group, ``temperature * log(sim)`` across groups, clamped
        to ``finfo(float32).min``; all 0 when ``temperature`` is 0."""
        x = _context(context)
        groups = np.asarray(group_ids)
        if groups.shape != (x.shape[0],) or not np.issubdtype(groups.dtype, np.integer):
            raise ValueError(f"group_ids must be {x.shape[0]} integers (one per series of the "
                             f"context), got {groups.dtype} of shape {groups.shape}")  # fmt: skip
        if self.temperature == 0:
            # t * log(sim) -> 0 as t -> 0 for every sim > 0; sim = 0 follows the same limit
            # rather than 0 * -inf, so temperature 0 is exactly full cross-learning.
            return np.zeros((x.shape[0],) * 2, np.float32)
        sim = self.similarity_matrix(x).astype(np.float64)  # [B, B]
        hard = groups[:, None] == groups[None, :]  # [B, B]
        soft = np.where(hard, 1.0, sim)
        with np.errstate(divide="ignore"):
            bias = self.temperature * np.log(soft)  # [B, B], -inf where sim == 0
        return np.maximum(bias, MASK_VALUE).astype(np.float32)


def _user_matrix(value) -> np.ndarray:
    try:
        sim = np.array(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"similarity must be one of {', '.join(map(repr, SIMILARITIES))} or a "
                         f"[B, B] matrix of numbers, got {type(value).__name__}") from None  # fmt: skip
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"a similarity matrix must be square [B, B], got shape {sim.shape}")
    if not (np.isfinite(sim).all() and sim.min(initial=0.0) >= 0 and sim.max(initial=0.0) <= 1):
        raise ValueError("a similarity matrix must hold finite values in [0, 1]")
    sim.setflags(write=False)  # the mask is frozen: so is its matrix
    return sim
