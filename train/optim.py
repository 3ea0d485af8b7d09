"""Optimizers and learning-rate schedules of the trainers: each builder returns an optax
``GradientTransformation`` and its schedule (step -> learning rate, the rate the ``step``-th
update applies), which :class:`train.trainer.Trainer` takes from its caller.

Builders are cached: equal settings give the same (hashable) objects, which the Trainer's
compiled step takes as jit statics, so a resumed run or a second Trainer reuses the compile.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "Schedule",
    "chronos_optimizer",
    "learning_rate_at",
    "learning_rate_schedule",
    "openltm_adam",
]

Schedule = Callable[[int], float]  # optax schedule: update count -> learning rate


def learning_rate_at(epoch: int, lr: float, lradj: str, tmax: int = 10) -> float:
    """Learning rate of (0-based) ``epoch`` under OpenLTM's schedules.

    type1: OpenLTM calls ``adjust_learning_rate(epoch + 1)`` after each epoch, which sets
    ``lr * 0.5 ** ((epoch + 1) - 1)`` for the *next* epoch: epochs 0 and 1 use lr, then halving.
    cosine: ``CosineAnnealingLR(T_max=tmax, eta_min=1e-8)`` stepped once per epoch (closed form).
    """
    if lradj == "type1":
        return lr * 0.5 ** max(0, epoch - 1)
    if lradj == "cosine":
        eta_min = 1e-8
        return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / tmax)) / 2
    raise ValueError(f"unknown lradj {lradj!r}; expected 'type1' or 'cosine'")


@functools.cache
def openltm_adam(
    learning_rate: float,
    lradj: str,
    tmax: int,
    train_epochs: int,
    steps_per_epoch: int,
    weight_decay: float = 0.0,
) -> tuple[optax.GradientTransformation, Schedule]:
    """OpenLTM's optimizer: ``torch.optim.Adam`` (b1 .9, b2 .999, eps 1e-8; ``weight_decay`` as
    coupled L2 added to the gradient before the moments, not AdamW) with the learning rate
    constant within an epoch and set per epoch by :func:`learning_rate_at`.

    The per-epoch rates are computed in float64 as OpenLTM does and rounded once to float32 (a
    table indexed by ``step // steps_per_epoch``), so the update ``-lr * adam_direction`` has the
    same bits as a float32 rate set from the host each epoch."""
    table = np.asarray(
        [learning_rate_at(e, learning_rate, lradj, tmax) for e in range(train_epochs)],
        np.float32,
    )

    def schedule(count):
        epoch = jnp.minimum(jnp.asarray(count) // steps_per_epoch, len(table) - 1)
        return jnp.asarray(table)[epoch]

    parts = [optax.add_decayed_weights(weight_decay)] if weight_decay > 0 else []
    return optax.chain(*parts, optax.adam(schedule)), schedule


def learning_rate_schedule(lr: float, total_steps: int, warmup_steps: int, schedule: str):
    """Optax schedule of the step count: linear warmup from 0 over ``warmup_steps``, then
    ``linear`` decay to 0 at ``total_steps`` (HF ``get_linear_schedule_with_warmup``),
    ``cosine`` decay to 0, or ``constant``."""
    warmup = min(int(warmup_steps), int(total_steps))
    rest = max(int(total_steps) - warmup, 1)
    if schedule == "linear":
        after = optax.linear_schedule(lr, 0.0, rest)
    elif schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, rest)
    elif schedule == "constant":
        after = optax.constant_schedule(lr)
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


@functools.cache
def chronos_optimizer(
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "linear",
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
) -> tuple[optax.GradientTransformation, Schedule]:
    """Chronos' (HF Trainer's) optimizer: global-norm clipping + AdamW (torch defaults: b1 0.9,
    b2 0.999, eps 1e-8, decoupled ``weight_decay``) on the per-step
    :func:`learning_rate_schedule`."""
    sched = learning_rate_schedule(lr, total_steps, warmup_steps, schedule)
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    parts.append(optax.adamw(sched, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay))
    return optax.chain(*parts), sched
