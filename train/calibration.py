"""The draft against its teacher: the frozen teacher's forecasts (the distillation targets,
with explicit randomness) and the draft's calibration on a split (``train.distill``)."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from train.trainer import is_prng_key

__all__ = [
    "calibrate",
    "calibration_metrics",
    "calibration_sums",
    "flat_calibration",
    "teacher_forecast",
]

LOG_2PI = math.log(2.0 * math.pi)


def teacher_forecast(graphdef, state, x, key=None, noise: float = 0.0) -> jax.Array:
    """The frozen teacher's forecast of every token's next patch ``[B, N*P_out, C]`` (its mean
    when the teacher is stochastic), with gradients stopped.

    ``state = (params, rest)`` from ``nnx.split(teacher, nnx.Param, ...)``; ``graphdef`` picks
    eval or train mode (teacher dropout). ``key`` makes the randomness explicit: its first half
    re-keys every dropout stream of the teacher (each stream's own key folded with fresh bits,
    so layers stay independent), its second half draws the ``noise * N(0, 1)`` target noise.
    Without ``key`` the teacher runs as given (eval mode: deterministic) and no noise is added.
    """
    params, rest = state
    if key is not None:
        k_drop, k_noise = jax.random.split(key)
        bits = jax.random.bits(k_drop, (), jnp.uint32)
        rest = jax.tree.map(lambda v: jax.random.fold_in(v, bits) if is_prng_key(v) else v, rest)
    teacher = nnx.merge(graphdef, params, rest)
    out = teacher(x)
    if isinstance(out, tuple):  # a stochastic teacher: distil its mean
        out = out[0]
    out = jax.lax.stop_gradient(out)
    if key is not None and noise > 0:
        out = out + noise * jax.random.normal(k_noise, out.shape, out.dtype)
    return out


# ---- calibration -------------------------------------------------------------------------------


def calibration_sums(mean, logvar, teacher, mask, y=None) -> dict[str, jax.Array]:
    """Per-batch sums over the valid examples' elements (``[B, T, C]`` arrays, mask ``[B]``).

    Draft vs teacher: squared / absolute error and, with a ``logvar``, the Gaussian NLL of the
    teacher's value (with the ``log(2 pi)`` constant), how many teacher values lie within 1 and
    2 sigma of the mean, and the sum of sigma. With ``y``: the draft's and the teacher's squared
    and absolute errors against the data.
    """
    m = mask.reshape((-1,) + (1,) * (mean.ndim - 1))

    def total(v):
        return jnp.sum(jnp.where(m, v, 0.0))

    err = mean - teacher
    out = {
        "n": jnp.sum(mask) * (mean.size // mean.shape[0]),
        "sq": total(jnp.square(err)),
        "abs": total(jnp.abs(err)),
    }
    if logvar is not None:
        sigma = jnp.exp(0.5 * logvar)
        z = jnp.abs(err) / sigma
        out["nll"] = total(0.5 * (LOG_2PI + logvar + jnp.square(z)))
        out["in1"] = total((z <= 1.0).astype(jnp.float32))
        out["in2"] = total((z <= 2.0).astype(jnp.float32))
        out["sigma"] = total(sigma)
    if y is not None:
        out["sq_data"] = total(jnp.square(mean - y))
        out["abs_data"] = total(jnp.abs(mean - y))
        out["sq_teacher"] = total(jnp.square(teacher - y))
        out["abs_teacher"] = total(jnp.abs(teacher - y))
    return out


def calibration_metrics(sums: dict[str, float]) -> dict[str, Any]:
    """Means from (accumulated) :func:`calibration_sums`."""
    n = float(sums["n"])
    res: dict[str, Any] = {
        "draft_vs_teacher": {"mse": sums["sq"] / n, "mae": sums["abs"] / n},
    }
    if "nll" in sums:
        res["draft_vs_teacher"].update(
            nll=sums["nll"] / n,
            cover_1sigma=sums["in1"] / n,
            cover_2sigma=sums["in2"] / n,
            mean_sigma=sums["sigma"] / n,
        )
    if "sq_data" in sums:
        res["draft_vs_data"] = {"mse": sums["sq_data"] / n, "mae": sums["abs_data"] / n}
        res["teacher_vs_data"] = {"mse": sums["sq_teacher"] / n, "mae": sums["abs_teacher"] / n}
    return res


@functools.partial(jax.jit, static_argnums=(0, 1))
def _calibration_batch(draft_graphdef, teacher_graphdef, draft_state, teacher_state, x, y, mask):
    model = nnx.merge(draft_graphdef, *draft_state)
    out = getattr(model, "draft", model)(x)  # a distillation Student or a Timer-XL
    h = y.shape[1]
    mean, logvar = (
        (out[0][:, -h:], out[1][:, -h:]) if isinstance(out, tuple) else (out[:, -h:], None)
    )
    teacher = teacher_forecast(teacher_graphdef, teacher_state, x)[:, -h:]
    return calibration_sums(mean, logvar, teacher, mask, y)


def calibrate(
    draft_graphdef, draft_state, teacher_graphdef, teacher_state, data, batch_size: int, put=None
) -> dict[str, Any]:
    """The draft's calibration against the teacher over a whole split (both in eval mode, no
    teacher noise): :func:`calibration_metrics` of ``data``'s ``(x, y)`` batches (``y``'s length
    picks the tokens: the last patch with ``LastPatch``). ``draft_graphdef``/``draft_state``: an
    eval-mode split of a ``Student`` or a ``TimerXL`` (``(params, rest)``). ``put(batch, mask)``
    places a batch (e.g. the trainer's data sharding); padding rows are masked out."""
    from jaxts.data import pad_batch

    pending = []
    n = len(data)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        batch, mask = pad_batch(data.batch(idx), batch_size)
        if put is not None:
            batch, mask = put(batch, mask)
        x, y = batch
        pending.append(
            _calibration_batch(
                draft_graphdef, teacher_graphdef, draft_state, teacher_state, x, y, mask
            )
        )
    totals: dict[str, float] = {}
    for sums in jax.device_get(pending):
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(np.float64(v))
    return calibration_metrics(totals)


def flat_calibration(metrics: dict[str, Any]) -> dict[str, float]:
    """The per-epoch metrics.jsonl fields of :func:`calibrate`'s result."""
    names = {"mse": "vs_teacher_mse", "mae": "vs_teacher_mae", "nll": "vs_teacher_nll",
             "cover_1sigma": "cover_1sigma", "cover_2sigma": "cover_2sigma",
             "mean_sigma": "mean_sigma"}  # fmt: skip
    return {names[k]: float(v) for k, v in metrics["draft_vs_teacher"].items()}
