"""A generic, resumable, data-parallel trainer for NNX models (OpenLTM's training loop).

The loss is injected, so the same loop serves next-patch pre-training (``train.target``) and
later distillation. What it owns:

* a ``jax.sharding.Mesh`` over all devices with one ``'data'`` axis: parameters and optimizer
  state are replicated, each batch is sharded along its leading axis (GSPMD inserts the
  gradient all-reduce);
* one jitted step over ``nnx.split`` state (graphdef static, state a pytree), so the dropout
  RNG counters of the model come back out of the step and are checkpointed with the weights;
* Adam (coupled L2 like ``torch.optim.Adam(weight_decay=...)``) with the learning rate injected
  per epoch (``optax.inject_hyperparams``) from OpenLTM's schedules;
* OpenLTM's early stopping and best-model export;
* orbax checkpoints every ``ckpt_every_steps`` and at each epoch end. The shuffle order is a
  function of ``(seed, epoch)`` only, so a resumed run replays exactly the batches the
  interrupted one would have seen and reaches the same final parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jaxts.data import pad_batch

__all__ = [
    "BatchSource",
    "FitResult",
    "LossFn",
    "Trainer",
    "TrainerConfig",
    "epoch_order",
    "learning_rate_at",
    "masked_gaussian_nll",
    "masked_mean",
    "masked_mse",
]


class BatchSource(Protocol):
    """Indexable examples: ``batch(idx [B])`` -> tuple of arrays with leading axis B."""

    def __len__(self) -> int: ...

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, ...]: ...


# loss(model, batch, mask [B] bool[, aux]) -> scalar mean over the valid (mask=True) examples.
# `aux` (only passed when the Trainer got one) is a frozen, replicated pytree such as a
# distillation teacher's state: an argument of the compiled step, never a baked-in constant.
LossFn = Callable[..., jax.Array]


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


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    out_dir: str
    learning_rate: float = 1e-4
    batch_size: int = 32
    train_epochs: int = 10
    patience: int = 3
    lradj: str = "type1"
    tmax: int = 10
    weight_decay: float = 0.0
    seed: int = 2021
    max_steps_per_epoch: int | None = None
    ckpt_every_steps: int = 200
    log_every_steps: int = 50
    max_to_keep: int = 2
    progress: bool = True


@dataclasses.dataclass
class FitResult:
    best_val: float | None
    epochs_done: int
    global_step: int
    early_stopped: bool
    finished: bool  # False when fit() returned early because of max_steps


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


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled example order of an epoch: a pure function of (seed, epoch), never of how
    many times the process was restarted."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
    """Typed PRNG keys -> raw uint32 key data, the portable on-disk form."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _keys_from_data(tree, like):
    return jax.tree.map(
        lambda x, ref: (
            jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x
        ),
        tree,
        like,
    )


@functools.cache
def adam(weight_decay: float = 0.0) -> optax.GradientTransformation:
    """torch.optim.Adam (b1 .9, b2 .999, eps 1e-8; ``weight_decay`` as coupled L2 added to the
    gradient before the moments, not AdamW) with the learning rate held in the optimizer state
    (``opt_state.hyperparams['learning_rate']``) so the schedule changes it without a
    recompile. Cached: equal settings give the same (hashable) object, a jit static."""

    def make(learning_rate):
        parts = [optax.add_decayed_weights(weight_decay)] if weight_decay > 0 else []
        return optax.chain(*parts, optax.adam(learning_rate))

    return optax.inject_hyperparams(make)(learning_rate=0.0)  # set by set_learning_rate


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _train_step(graphdef, tx, loss_fn, out_sharding, params, rest, opt_state, batch, mask, aux):
    """One optimizer step: (params, rest, opt_state, batch, mask [B], aux) -> (..., loss)."""
    model = nnx.merge(graphdef, params, rest)

    # nnx.value_and_grad (not jax's) so that the forward pass may advance the dropout RNG
    # counters, which live outside the differentiated Params.
    def loss_of(m):
        return loss_fn(m, batch, mask) if aux is None else loss_fn(m, batch, mask, aux)

    loss, grads = nnx.value_and_grad(loss_of, argnums=nnx.DiffState(0, nnx.Param))(model)
    _, params, rest = nnx.split(model, nnx.Param, ...)  # rest: the advanced RNG counters
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    # Pin everything replicated (GSPMD all-reduces the gradients of the sharded batch).
    return jax.lax.with_sharding_constraint((params, rest, opt_state, loss), out_sharding)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _eval_step(graphdef, loss_fn, out_sharding, params, rest, batch, mask, aux):
    model = nnx.merge(graphdef, params, rest)
    loss = loss_fn(model, batch, mask) if aux is None else loss_fn(model, batch, mask, aux)
    return jax.lax.with_sharding_constraint(loss, out_sharding)


def _fetch_losses(pending: list, logged: list, meta: dict[str, Any]) -> None:
    """Move step losses to the host (one sync per log line or checkpoint, not per step) and
    add them to the epoch's running sum."""
    vals = [float(v) for v in jax.device_get(pending)]
    meta["train_loss_sum"] += sum(vals)
    logged.extend(vals)
    pending.clear()


class Trainer:
    """Train ``model`` with ``loss_fn`` on ``train_data``, validating with ``val_loss_fn``.

    ``export_best(model, directory)`` writes the best model (default
    :func:`jaxts.checkpoint.save_model`). ``callback(info)`` runs after every step with a dict
    (``step``, ``epoch``, ``step_in_epoch``); raising in it simulates a crash. ``aux``: see
    :data:`LossFn`. ``devices``: the mesh (default all); the batch size must divide by their
    number. ``epoch_metrics(trainer)``: extra validation numbers computed at every epoch end
    (after the validation loss), a dict of JSON scalars added to that epoch's metrics line.
    """

    def __init__(
        self,
        model: nnx.Module,
        cfg: TrainerConfig,
        loss_fn: LossFn,
        train_data: BatchSource,
        val_data: BatchSource | None = None,
        val_loss_fn: LossFn | None = None,
        *,
        devices: Sequence[jax.Device] | None = None,
        export_best: Callable[[nnx.Module, Path], None] | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        aux: Any = None,
        epoch_metrics: Callable[[Trainer], dict[str, Any]] | None = None,
    ):
        devices = list(devices if devices is not None else jax.devices())
        if cfg.batch_size % len(devices):
            raise ValueError(
                f"batch_size {cfg.batch_size} must be divisible by the number of devices "
                f"({len(devices)}): each device gets an equal slice of every batch"
            )
        if len(train_data) == 0:
            raise ValueError("the training set is empty")
        self.cfg = cfg
        self.model = model
        self.loss_fn = loss_fn
        self.val_loss_fn = val_loss_fn or loss_fn
        self.train_data, self.val_data = train_data, val_data
        self.export_best = export_best
        self.callback = callback
        self.epoch_metrics = epoch_metrics
        self.out_dir = Path(cfg.out_dir)
        self.mesh = Mesh(np.array(devices), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))

        # dropout on/off is a static attribute, so train and eval have different graphdefs
        # over the same state structure.
        model.eval()
        self.eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
        model.train()
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.tx = adam(cfg.weight_decay)
        self.params = jax.device_put(params, self.replicated)
        self.rest = jax.device_put(rest, self.replicated)
        self.opt_state = jax.device_put(self.tx.init(self.params), self.replicated)
        self.set_learning_rate(cfg.learning_rate)
        self.aux = None if aux is None else jax.device_put(aux, self.replicated)
        # The compiled steps are module-level functions keyed on hashable statics, so a second
        # Trainer over an equal model (a resumed run, a sweep, tests) reuses the compilation.
        self._train_step = functools.partial(
            _train_step, self.graphdef, self.tx, self.loss_fn, self.replicated
        )
        self._eval_step = functools.partial(
            _eval_step, self.eval_graphdef, self.val_loss_fn, self.replicated
        )
        self.ckpt_dir = (self.out_dir / "checkpoints").absolute()
        self.metrics_path = self.out_dir / "metrics.jsonl"

    # ---- helpers --------------------------------------------------------------------------

    def _shard(self, batch: tuple[np.ndarray, ...], mask: np.ndarray):
        return (
            tuple(jax.device_put(np.asarray(a), self.batch_sharding) for a in batch),
            jax.device_put(mask, self.batch_sharding),
        )

    def set_learning_rate(self, lr: float) -> None:
        hp = self.opt_state.hyperparams
        hp["learning_rate"] = jax.device_put(
            jnp.asarray(lr, dtype=hp["learning_rate"].dtype), self.replicated
        )

    def steps_per_epoch(self) -> int:
        n = math.ceil(len(self.train_data) / self.cfg.batch_size)  # drop_last=False
        if self.cfg.max_steps_per_epoch is not None:
            n = min(n, self.cfg.max_steps_per_epoch)
        return n

    def sync_model(self) -> nnx.Module:
        """Write the current state back into ``self.model`` (e.g. to save or evaluate it)."""
        nnx.update(self.model, jax.device_get(self.params), jax.device_get(self.rest))
        return self.model

    def validate(self) -> float | None:
        """OpenLTM ``vali``: mean of per-batch losses weighted by batch size (eval mode)."""
        if self.val_data is None or len(self.val_data) == 0:
            return None
        bs, n = self.cfg.batch_size, len(self.val_data)
        losses, counts = [], []
        for start in range(0, n, bs):
            idx = np.arange(start, min(start + bs, n))
            batch, mask = pad_batch(self.val_data.batch(idx), bs)
            batch, mask = self._shard(batch, mask)
            losses.append(self._eval_step(self.params, self.rest, batch, mask, self.aux))
            counts.append(len(idx))
        losses = np.asarray(jax.device_get(losses), dtype=np.float64)
        return float(np.average(losses, weights=counts))

    def _log(self, record: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    # ---- checkpoints ------------------------------------------------------------------------

    def _manager(self) -> ocp.CheckpointManager:
        # Synchronous saves: a step's checkpoint is complete (orbax writes to a temporary folder
        # and renames it, so a crash never leaves a half checkpoint as "latest").
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.cfg.max_to_keep, enable_async_checkpointing=False, create=True
        )
        return ocp.CheckpointManager(self.ckpt_dir, options=options)

    def _train_state(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "rest": _keys_to_data(self.rest),
            "opt_state": self.opt_state,
        }

    def _save(self, mgr: ocp.CheckpointManager, step: int, meta: dict[str, Any]) -> None:
        mgr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(self._train_state()), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        mgr.wait_until_finished()

    def _restore(self, mgr: ocp.CheckpointManager) -> dict[str, Any] | None:
        step = mgr.latest_step()
        if step is None:
            return None
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated),
            self._train_state(),
        )
        got = mgr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        self.params = got.state["params"]
        self.rest = _keys_from_data(got.state["rest"], self.rest)
        self.opt_state = got.state["opt_state"]
        return dict(got.meta)

    def _export(self) -> None:
        """Replace ``out_dir/best`` with the current model (write aside, then swap)."""
        export = self.export_best
        if export is None:
            from jaxts.checkpoint import save_model as export
        best, tmp = self.out_dir / "best", self.out_dir / "best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        export(self.sync_model(), tmp.absolute())
        shutil.rmtree(best, ignore_errors=True)
        tmp.rename(best)

    # ---- the loop ---------------------------------------------------------------------------

    def fit(self, max_steps: int | None = None) -> FitResult:
        """Train (resuming from the latest checkpoint in ``out_dir/checkpoints`` if any).

        ``max_steps``: stop after this many global steps (checkpointing first), as if the
        process were interrupted there; calling ``fit`` again continues the run.
        """
        cfg = self.cfg
        mgr = self._manager()
        meta = self._restore(mgr) or {
            "epoch": 0,  # first epoch not yet finished
            "step_in_epoch": 0,  # steps of that epoch already applied
            "global_step": 0,
            "best_val": None,  # early stopping state (OpenLTM EarlyStopping)
            "es_counter": 0,
            "early_stopped": False,
            "train_loss_sum": 0.0,  # running sum of this epoch's step losses
            "seed": cfg.seed,  # the data order is epoch_order(seed, epoch)
        }
        if meta["seed"] != cfg.seed:
            raise ValueError(f"checkpoint was made with seed {meta['seed']}, config has {cfg.seed}")
        if meta["global_step"]:
            self._log({"event": "resume", "step": meta["global_step"], "epoch": meta["epoch"]})
        t0 = time.perf_counter()
        n_steps = self.steps_per_epoch()
        bs = cfg.batch_size
        last_saved = mgr.latest_step()
        try:
            while meta["epoch"] < cfg.train_epochs and not meta["early_stopped"]:
                epoch = meta["epoch"]
                lr = learning_rate_at(epoch, cfg.learning_rate, cfg.lradj, cfg.tmax)
                self.set_learning_rate(lr)
                order = epoch_order(cfg.seed, epoch, len(self.train_data))
                bar = tqdm(
                    total=n_steps,
                    initial=meta["step_in_epoch"],
                    desc=f"epoch {epoch + 1}/{cfg.train_epochs}",
                    disable=not cfg.progress,
                    dynamic_ncols=True,
                )
                pending: list[jax.Array] = []  # step losses not yet fetched (on device)
                logged: list[float] = []  # fetched losses since the last log line

                for s in range(meta["step_in_epoch"], n_steps):
                    idx = order[s * bs : (s + 1) * bs]
                    batch, mask = self._shard(*pad_batch(self.train_data.batch(idx), bs))
                    self.params, self.rest, self.opt_state, loss = self._train_step(
                        self.params, self.rest, self.opt_state, batch, mask, self.aux
                    )
                    pending.append(loss)
                    meta["step_in_epoch"] = s + 1
                    meta["global_step"] += 1
                    step = meta["global_step"]
                    bar.update(1)
                    if step % cfg.log_every_steps == 0 or s + 1 == n_steps:
                        _fetch_losses(pending, logged, meta)
                        mean = float(np.mean(logged))
                        logged.clear()
                        bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
                        sec = time.perf_counter() - t0
                        self._log(dict(event="step", step=step, epoch=epoch, loss=mean, lr=lr,
                                       val_loss=None, seconds=sec))  # fmt: skip
                    stop_here = max_steps is not None and step >= max_steps
                    # The epoch's last step is followed by the epoch-end checkpoint instead.
                    if s + 1 < n_steps and (step % cfg.ckpt_every_steps == 0 or stop_here):
                        # The saved running sum must include every applied step.
                        _fetch_losses(pending, logged, meta)
                        self._save(mgr, step, meta)
                        last_saved = step
                    if self.callback is not None:
                        self.callback(
                            {"step": step, "epoch": epoch, "step_in_epoch": s + 1, "loss": loss}
                        )
                    if stop_here and s + 1 < n_steps:
                        bar.close()
                        return self._result(meta, finished=False)
                bar.close()
                self._end_epoch(meta, lr, n_steps, t0)
                if last_saved != meta["global_step"]:
                    self._save(mgr, meta["global_step"], meta)
                    last_saved = meta["global_step"]
                if max_steps is not None and meta["global_step"] >= max_steps:
                    return self._result(meta, finished=False)
        finally:
            mgr.close()
        return self._result(meta, finished=True)

    def _end_epoch(self, meta: dict[str, Any], lr: float, n_steps: int, t0: float) -> None:
        """Validation, early stopping (OpenLTM semantics) and the epoch's metrics line."""
        epoch = meta["epoch"]
        train_loss = meta["train_loss_sum"] / n_steps
        val = self.validate()
        improved = False
        if val is not None:
            # OpenLTM EarlyStopping: score = -val; `score < best_score + delta` (delta 0) counts
            # as no improvement, so an exactly equal val loss still counts as an improvement.
            if meta["best_val"] is None or val <= meta["best_val"]:
                meta["best_val"], meta["es_counter"], improved = val, 0, True
            else:
                meta["es_counter"] += 1
                meta["early_stopped"] = meta["es_counter"] >= self.cfg.patience
        else:
            improved = True  # no validation set: the latest model is the best one
        extra = self.epoch_metrics(self) if self.epoch_metrics is not None else {}
        if improved:
            self._export()
        self._log(dict(event="epoch", step=meta["global_step"], epoch=epoch, loss=train_loss, lr=lr,
                       val_loss=val, best_val=meta["best_val"], es_counter=meta["es_counter"],
                       seconds=time.perf_counter() - t0, **extra))  # fmt: skip
        # Printed with or without progress bars (tqdm.write keeps an open bar intact).
        tqdm.write(
            f"epoch {epoch + 1}: train {train_loss:.6f} val "
            f"{'n/a' if val is None else f'{val:.6f}'} lr {lr:.3e}"
            + "".join(
                f" {k} {v:.4f}" if isinstance(v, float) else f" {k} {v}" for k, v in extra.items()
            )
            + (" *best*" if improved else f" (no improvement {meta['es_counter']})")
        )
        meta["epoch"] = epoch + 1
        meta["step_in_epoch"] = 0
        meta["train_loss_sum"] = 0.0

    def _result(self, meta: dict[str, Any], finished: bool) -> FitResult:
        return FitResult(meta["best_val"], meta["epoch"], meta["global_step"],
                         bool(meta["early_stopped"]), finished)  # fmt: skip
