"""A generic, resumable, data-parallel trainer for NNX models (OpenLTM's training loop).

The loss, the optimizer (an optax ``GradientTransformation``) and its learning-rate schedule
come from the caller, so the same loop serves Timer-XL next-patch training
(``train.timer_xl``), STRIDE distillation (``train.distill``) and Chronos-T5 pre-training
(``train.chronos_t5``). What it owns:

* a ``jax.sharding.Mesh`` over all devices with one ``'data'`` axis: parameters and optimizer
  state are replicated, each batch is sharded along its leading axis (GSPMD inserts the
  gradient all-reduce);
* one jitted step over ``nnx.split`` state (graphdef static, state a pytree), so the dropout
  RNG counters of the model come back out of the step and are checkpointed with the weights;
  the schedule runs on the optimizer's own step count, so it is checkpointed too;
* OpenLTM's early stopping and best-model export (an atomic swap of ``out_dir/best``);
* orbax checkpoints every ``ckpt_every_steps`` and at each epoch end. The shuffle order is a
  function of ``(seed, epoch)`` only, so a resumed run replays exactly the batches the
  interrupted one would have seen and reaches the same final parameters. A damaged latest
  checkpoint is set aside and the run resumes from the previous one.
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
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jaxts.checkpoint import atomic_replace_dir
from jaxts.data import pad_batch
from train.checkpoints import TrainCheckpoints
from train.config import OptimConfig, RunSection
from train.optim import Schedule


class BatchSource(Protocol):
    """Indexable examples: ``batch(idx [B])`` -> tuple of arrays with leading axis B."""

    def __len__(self) -> int: ...

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, ...]: ...


# loss(model, batch, mask [B] bool[, aux]) -> scalar mean over the valid (mask=True) examples
# (see train.losses). `aux` (only passed when the Trainer got one) is a frozen, replicated
# pytree such as a distillation teacher's state: an argument of the compiled step, never a
# baked-in constant.
LossFn = Callable[..., jax.Array]


@dataclasses.dataclass
class FitResult:
    best_val: float | None
    epochs_done: int
    global_step: int
    early_stopped: bool
    finished: bool  # False when fit() returned early because of max_steps
    start_step: int = 0  # the step this fit() call resumed from
    seconds: float = 0.0  # time spent in this fit() call

    @property
    def steps_run(self) -> int:
        return self.global_step - self.start_step


def steps_per_epoch(n_examples: int, batch_size: int, cap: int | None = None) -> int:
    """Optimizer steps of an epoch: every example once (the last batch may be short, OpenLTM's
    ``drop_last=False``), at most ``cap``."""
    n = math.ceil(n_examples / batch_size)
    return n if cap is None else min(n, cap)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled example order of an epoch: a pure function of (seed, epoch), never of how
    many times the process was restarted."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def is_prng_key(x: Any) -> bool:
    """A typed JAX PRNG key array (an ``nnx.Rngs`` stream's key)."""
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
    """Typed PRNG keys -> raw uint32 key data, the portable on-disk form."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_prng_key(x) else x, tree)


def _keys_from_data(tree, like):
    return jax.tree.map(
        lambda x, ref: (
            jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if is_prng_key(ref) else x
        ),
        tree,
        like,
    )


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

    ``optim``/``run``: the run config's sections (batch size, epochs, patience, seed, step cap;
    ``out_dir``, checkpoint/log cadence, progress bars). ``tx``: the optimizer; ``schedule``:
    its learning rate per update count (logged, see :mod:`train.optim`). ``export_best(model,
    directory)`` writes the best model (default :func:`jaxts.checkpoint.save_model`).
    ``callback(info)`` runs after every step with a dict (``step``, ``epoch``,
    ``step_in_epoch``, ``loss``); raising in it simulates a crash. ``aux``: see :data:`LossFn`.
    ``devices``: the mesh (default all); the batch size must divide by their number.
    ``epoch_metrics(trainer)``: extra validation numbers computed at every epoch end (after the
    validation loss), a dict of JSON scalars added to that epoch's metrics line.
    """

    def __init__(
        self,
        model: nnx.Module,
        loss_fn: LossFn,
        train_data: BatchSource,
        val_data: BatchSource | None = None,
        val_loss_fn: LossFn | None = None,
        *,
        optim: OptimConfig,
        run: RunSection,
        tx: optax.GradientTransformation,
        schedule: Schedule,
        devices: Sequence[jax.Device] | None = None,
        export_best: Callable[[nnx.Module, Path], None] | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        aux: Any = None,
        epoch_metrics: Callable[[Trainer], dict[str, Any]] | None = None,
    ):
        devices = list(devices if devices is not None else jax.devices())
        if optim.batch_size % len(devices):
            raise ValueError(
                f"batch_size {optim.batch_size} must be divisible by the number of devices "
                f"({len(devices)}): each device gets an equal slice of every batch"
            )
        if len(train_data) == 0:
            raise ValueError("the training set is empty")
        self.optim, self.run = optim, run
        self.model = model
        self.loss_fn = loss_fn
        self.val_loss_fn = val_loss_fn or loss_fn
        self.train_data, self.val_data = train_data, val_data
        self.tx, self.schedule = tx, schedule
        self.export_best = export_best
        self.callback = callback
        self.epoch_metrics = epoch_metrics
        self.out_dir = Path(run.out_dir)
        self.mesh = Mesh(np.array(devices), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))

        # Dropout on/off is a static attribute, so train and eval have different graphdefs
        # over the same state structure. Train mode is set here, whatever mode the model came
        # in (loaders return eval-mode models).
        model.eval()
        self.eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
        model.train()
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.params = jax.device_put(params, self.replicated)
        self.rest = jax.device_put(rest, self.replicated)
        self.opt_state = jax.device_put(tx.init(self.params), self.replicated)
        self.aux = None if aux is None else jax.device_put(aux, self.replicated)
        # The compiled steps are module-level functions keyed on hashable statics, so a second
        # Trainer over an equal model (a resumed run, a sweep, tests) reuses the compilation.
        self._train_step = functools.partial(
            _train_step, self.graphdef, tx, self.loss_fn, self.replicated
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

    def steps_per_epoch(self) -> int:
        o = self.optim
        return steps_per_epoch(len(self.train_data), o.batch_size, o.max_steps_per_epoch)

    def learning_rate(self, step: int) -> float:
        """The rate the ``step``-th update (1-based) applied, as the shortest decimal that reads
        back as that float32 (``1e-3``, not ``0.0010000000474974513``)."""
        return float(str(np.float32(self.schedule(max(step - 1, 0)))))

    def sync_model(self) -> nnx.Module:
        """Write the current state back into ``self.model`` (e.g. to save or evaluate it)."""
        nnx.update(self.model, jax.device_get(self.params), jax.device_get(self.rest))
        return self.model

    def validate(self) -> float | None:
        """OpenLTM ``vali``: mean of per-batch losses weighted by batch size (eval mode)."""
        if self.val_data is None or len(self.val_data) == 0:
            return None
        bs, n = self.optim.batch_size, len(self.val_data)
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

    def _train_state(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "rest": _keys_to_data(self.rest),
            "opt_state": self.opt_state,
        }

    def _restore(self, ckpts: TrainCheckpoints) -> dict[str, Any] | None:
        like = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated),
            self._train_state(),
        )
        got = ckpts.restore(like)
        if got is None:
            return None
        state, meta = got
        self.params = state["params"]
        self.rest = _keys_from_data(state["rest"], self.rest)
        self.opt_state = state["opt_state"]
        return meta

    def _export(self) -> None:
        """Replace ``out_dir/best`` with the current model: written aside, then swapped in with
        one atomic step (a kill never leaves no model)."""
        export = self.export_best
        if export is None:
            from jaxts.checkpoint import save_model as export
        best, tmp = self.out_dir / "best", self.out_dir / "best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        export(self.sync_model(), tmp.absolute())
        atomic_replace_dir(tmp, best)

    # ---- the loop ---------------------------------------------------------------------------

    def fit(self, max_steps: int | None = None) -> FitResult:
        """Train (resuming from the latest checkpoint in ``out_dir/checkpoints`` if any).

        ``max_steps``: stop after this many global steps (checkpointing first), as if the
        process were interrupted there; calling ``fit`` again continues the run. A run already
        at or past ``max_steps`` (e.g. ``max_steps=0``) takes no step.
        """
        t_start = time.perf_counter()
        ckpts = TrainCheckpoints(self.ckpt_dir, self.run.max_to_keep,
                                 self.out_dir / "corrupt_checkpoints")  # fmt: skip
        with ckpts:
            meta = self._restore(ckpts) or {
                "epoch": 0,  # first epoch not yet finished
                "step_in_epoch": 0,  # steps of that epoch already applied
                "global_step": 0,
                "best_val": None,  # early stopping state (OpenLTM EarlyStopping)
                "es_counter": 0,
                "early_stopped": False,
                "train_loss_sum": 0.0,  # running sum of this epoch's step losses
                "seed": self.optim.seed,  # the data order is epoch_order(seed, epoch)
            }
            if meta["seed"] != self.optim.seed:
                raise ValueError(
                    f"checkpoint was made with seed {meta['seed']}, config has {self.optim.seed}"
                )
            start = meta["global_step"]
            if start:
                self._log({"event": "resume", "step": start, "epoch": meta["epoch"]})
            t0 = time.perf_counter()
            finished = True
            while meta["epoch"] < self.optim.train_epochs and not meta["early_stopped"]:
                if max_steps is not None and meta["global_step"] >= max_steps:
                    finished = False
                    break
                if not self._run_epoch(ckpts, meta, max_steps, t0):
                    finished = False
                    break
        return FitResult(meta["best_val"], meta["epoch"], meta["global_step"],
                         bool(meta["early_stopped"]), finished, start,
                         time.perf_counter() - t_start)  # fmt: skip

    def _run_epoch(
        self, ckpts: TrainCheckpoints, meta: dict[str, Any], max_steps: int | None, t0: float
    ) -> bool:
        """Continue the current epoch from ``meta['step_in_epoch']``; False when ``max_steps``
        stopped it before its end (after a checkpoint)."""
        run = self.run
        epoch = meta["epoch"]
        n_steps = self.steps_per_epoch()
        bs = self.optim.batch_size
        order = epoch_order(self.optim.seed, epoch, len(self.train_data))
        bar = tqdm(
            total=n_steps,
            initial=meta["step_in_epoch"],
            desc=f"epoch {epoch + 1}/{self.optim.train_epochs}",
            disable=not run.progress,
            dynamic_ncols=True,
        )
        pending: list[jax.Array] = []  # step losses not yet fetched (on device)
        logged: list[float] = []  # fetched losses since the last log line
        with bar:
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
                if step % run.log_every_steps == 0 or s + 1 == n_steps:
                    _fetch_losses(pending, logged, meta)
                    mean = float(np.mean(logged))
                    logged.clear()
                    lr = self.learning_rate(step)
                    bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
                    sec = time.perf_counter() - t0
                    self._log(dict(event="step", step=step, epoch=epoch, loss=mean, lr=lr,
                                   val_loss=None, seconds=sec))  # fmt: skip
                stop_here = max_steps is not None and step >= max_steps
                # The epoch's last step is followed by the epoch-end checkpoint instead.
                if s + 1 < n_steps and (step % run.ckpt_every_steps == 0 or stop_here):
                    # The saved running sum must include every applied step.
                    _fetch_losses(pending, logged, meta)
                    ckpts.save(step, self._train_state(), meta)
                if self.callback is not None:
                    self.callback(
                        {"step": step, "epoch": epoch, "step_in_epoch": s + 1, "loss": loss}
                    )
                if stop_here and s + 1 < n_steps:
                    return False
        self._end_epoch(meta, n_steps, t0)
        if ckpts.latest_step() != meta["global_step"]:
            ckpts.save(meta["global_step"], self._train_state(), meta)
        return True

    def _end_epoch(self, meta: dict[str, Any], n_steps: int, t0: float) -> None:
        """Validation, early stopping (OpenLTM semantics) and the epoch's metrics line."""
        epoch = meta["epoch"]
        train_loss = meta["train_loss_sum"] / n_steps
        lr = self.learning_rate(meta["global_step"])
        val = self.validate()
        improved = False
        if val is not None:
            # OpenLTM EarlyStopping: score = -val; `score < best_score + delta` (delta 0) counts
            # as no improvement, so an exactly equal val loss still counts as an improvement.
            if meta["best_val"] is None or val <= meta["best_val"]:
                meta["best_val"], meta["es_counter"], improved = val, 0, True
            else:
                meta["es_counter"] += 1
                meta["early_stopped"] = meta["es_counter"] >= self.optim.patience
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
