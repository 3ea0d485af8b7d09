"""Chronos-T5 pre-training (or fine-tuning) on random windows of local series.

``python -m train.chronos --config configs/chronos_t5_tiny.yaml [--set section.key=value ...]
[--data-dir DIR] [--out DIR] [--init-from DIR]`` follows chronos-forecasting's
``scripts/training/train.py`` (Ansari et al. 2024) without its data augmentations:

* series: the train part of every source in ``chronos.datasets`` (ETT: the first 8640 hourly /
  34560 15-minute rows, weather: the first 70% of rows; every column a series; raw values,
  no standardisation) and the 414 M4 Hourly train series; a missing file is skipped with a note;
* windows: a series drawn uniformly, then a forecast start uniformly among the positions with
  at least ``min_past`` values before and ``prediction_length`` after; the context is the
  ``context_length`` values before it, left-padded with NaN when the series is shorter;
* tokens: ``context_input_transform`` (mean scaling, uniform bins, EOS) for the context,
  ``label_input_transform(future, scale)`` for the labels (EOS appended); labels whose mask is
  False become -100 (ignored); the decoder input is the labels shifted right behind
  ``decoder_start_token_id`` with -100 -> pad (HF T5 ``_shift_right``);
* loss: token cross-entropy averaged over all non-ignored label tokens of the batch (EOS
  included), dropout on; AdamW, per-step linear (or cosine) schedule with optional warmup,
  global-norm gradient clipping.

The generic :class:`train.trainer.Trainer` runs the loop (mesh data parallelism, orbax
checkpoints, resume, tqdm, ``metrics.jsonl``): its data set is a pool of
``train_epochs * steps_per_epoch * batch_size`` virtual windows, window ``i`` a pure function
of ``(seed, i)``, and each "epoch" is ``steps_per_epoch`` steps over the Trainer's
``(seed, epoch)`` shuffle of that pool, so a resumed run replays the same batches. Only the
optimizer differs from the Trainer's (AdamW + schedule + clipping, see
:class:`ChronosTrainer`). Outputs in ``--out``: ``best/`` (the final model, loadable by
``ChronosT5Pipeline.from_pretrained``), ``metrics.jsonl``, ``metrics.csv`` (per logged step:
loss and the scheduled learning rate), ``config.yaml``. See ``docs/chronos_training.md``.

Re-running the same command with the same ``--out`` resumes an interrupted run.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxts.data import DataError
from train.config import (
    ChronosTrainConfig,
    ConfigError,
    RunConfig,
    dump_config,
    load_config,
    model_config,
)
from train.trainer import Trainer, _train_step

__all__ = [
    "IGNORE_INDEX",
    "ChronosTrainer",
    "ChronosWindows",
    "build_model",
    "chronos_loss",
    "chronos_optimizer",
    "learning_rate_schedule",
    "load_series",
    "main",
    "make_labels",
    "run",
    "shift_right",
    "token_cross_entropy",
]

IGNORE_INDEX = -100  # torch CrossEntropyLoss / HF ignore_index

# ETT: train rows [0, 8640) hourly, [0, 34560) 15-minute (jaxts.data.load_split's borders)
_ETT = ("ETTh1", "ETTh2", "ETTm1", "ETTm2")
M4_HOURLY = "m4_hourly"


# ---- data ---------------------------------------------------------------------------------------


def load_series(
    datasets: Sequence[str], data_dir=None, log=print
) -> tuple[list[np.ndarray], dict[str, int]]:
    """Float32 1-D train series of every source found, and the count per source.

    ETT*/weather/any CSV name: the train split of :func:`jaxts.data.load_split` (unscaled),
    each column one series. ``m4_hourly``: the 414 M4 Hourly train series. A source whose file
    is not found is skipped with a note (a malformed file is an error)."""
    from jaxts.data import load_m4_hourly, load_split, m4_hourly_paths, resolve_path

    series: list[np.ndarray] = []
    counts: dict[str, int] = {}
    for name in datasets:
        try:
            if name.lower() == M4_HOURLY:
                m4_hourly_paths(data_dir)
            else:
                resolve_path(name, data_dir)
        except DataError as e:
            log(f"note: skipping {name}: not found ({str(e).splitlines()[0]})")
            continue
        if name.lower() == M4_HOURLY:
            got = load_m4_hourly(data_dir)[0]
        else:
            rows = load_split(name, "train", 1, scale=False, data_dir=data_dir)  # [T, C]
            got = [np.ascontiguousarray(rows[:, c]) for c in range(rows.shape[1])]
        series += got
        counts[name] = len(got)
    if not series:
        raise DataError(f"no training series: none of {list(datasets)} was found")
    return series, counts


def shift_right(labels: np.ndarray, decoder_start_token_id: int = 0, pad_token_id: int = 0):
    """HF T5 ``_shift_right``: ``[start, labels[:-1]]`` with -100 replaced by the pad id."""
    labels = np.asarray(labels)
    out = np.empty_like(labels)
    out[:, 0] = decoder_start_token_id
    out[:, 1:] = labels[:, :-1]
    return np.where(out == IGNORE_INDEX, pad_token_id, out).astype(np.int32)


def make_labels(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Label ids with ``IGNORE_INDEX`` where the mask is False (missing future values)."""
    return np.where(mask, ids, IGNORE_INDEX).astype(np.int32)


class ChronosWindows:
    """A :class:`train.trainer.BatchSource` of ``size`` random windows over ``series``.

    Window ``i`` is fixed at construction from ``seed`` alone (series index, then forecast
    start), so any batch is a pure function of ``(seed, indices)``. ``batch(idx)`` returns
    ``(input_ids [B, C+1], attention_mask [B, C+1], decoder_input_ids [B, H+1],
    labels [B, H+1])``."""

    def __init__(
        self,
        series: Sequence[np.ndarray],
        chronos_config,
        size: int,
        seed: int,
        min_past: int = 60,
    ):
        from jaxts.models.chronos_tokenizer import MeanScaleUniformBins

        self.config = chronos_config
        self.context_length = chronos_config.context_length
        self.prediction_length = chronos_config.prediction_length
        self.min_past = int(min_past)
        self.tokenizer = MeanScaleUniformBins(chronos_config)
        need = self.min_past + self.prediction_length
        self.series = [np.asarray(s, np.float32) for s in series if len(s) >= need]
        if not self.series:
            raise DataError(f"no series has the {need} values a window needs")
        lengths = np.array([len(s) for s in self.series], np.int64)
        rng = np.random.default_rng([int(seed), 0xC0FFEE])
        self.series_idx = rng.integers(len(self.series), size=int(size))
        n_starts = lengths[self.series_idx] - need + 1  # forecast starts in [min_past, T - H]
        self.start = self.min_past + (rng.random(int(size)) * n_starts).astype(np.int64)

    def __len__(self) -> int:
        return len(self.series_idx)

    def values(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw windows: context ``[B, C]`` (NaN left padding) and future ``[B, H]``."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        c, h = self.context_length, self.prediction_length
        ctx = np.full((len(idx), c), np.nan, np.float32)
        fut = np.empty((len(idx), h), np.float32)
        for row, i in enumerate(idx):
            s, t = self.series[self.series_idx[i]], int(self.start[i])
            past = s[max(0, t - c) : t]
            ctx[row, c - len(past) :] = past
            fut[row] = s[t : t + h]
        return ctx, fut

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        ctx, fut = self.values(idx)
        ids, mask, scale = self.tokenizer.context_input_transform(ctx)
        label_ids, label_mask = self.tokenizer.label_input_transform(fut, scale)
        labels = make_labels(label_ids, label_mask)
        dec = shift_right(labels, 0, self.config.pad_token_id)
        return ids.astype(np.int32), mask.astype(bool), dec, labels


# ---- loss and optimizer -------------------------------------------------------------------------


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


def learning_rate_schedule(lr: float, total_steps: int, warmup_steps: int, schedule: str):
    """Optax schedule of the step count: linear warmup from 0 over ``warmup_steps``, then
    ``linear`` decay to 0 at ``total_steps`` (HF ``get_linear_schedule_with_warmup``),
    ``cosine`` decay to 0, or ``constant``."""
    import optax

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
):
    """Global-norm clipping + AdamW (torch defaults: b1 0.9, b2 0.999, eps 1e-8, decoupled
    ``weight_decay``) on the per-step schedule. Cached: equal settings give the same object
    (a jit static, so a resumed run reuses the compiled step)."""
    import optax

    sched = learning_rate_schedule(lr, total_steps, warmup_steps, schedule)
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    parts.append(optax.adamw(sched, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay))
    return optax.chain(*parts)


class ChronosTrainer(Trainer):
    """:class:`train.trainer.Trainer` with the optimizer replaced by ``tx`` (its schedule lives
    in the optimizer state's step count, so the per-epoch learning rate the Trainer sets is
    ignored; ``metrics.jsonl``'s ``lr`` field is the peak rate)."""

    def __init__(self, model, cfg, loss_fn, train_data, *, tx, **kwargs):
        super().__init__(model, cfg, loss_fn, train_data, **kwargs)
        self.tx = tx
        self.opt_state = jax.device_put(tx.init(self.params), self.replicated)
        # the Trainer's compiled step, keyed on this tx (a cached, hashable static)
        self._train_step = functools.partial(
            _train_step, self.graphdef, tx, self.loss_fn, self.replicated
        )

    def set_learning_rate(self, lr: float) -> None:
        pass  # the schedule is part of tx


# ---- the run ------------------------------------------------------------------------------------


def build_model(cfg: RunConfig, init_from: str | None = None):
    """A fresh ChronosT5 from the ``model`` section, or (``init_from``) the weights of an HF
    Chronos directory / a jaxts model directory, with the dropout RNG seeded from the config."""
    from flax import nnx

    from jaxts.models.chronos_t5 import ChronosT5

    seed = cfg.optim.seed
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    if init_from is None:
        return ChronosT5(model_config(cfg), rngs=rngs)
    from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline

    loaded = ChronosT5Pipeline.from_pretrained(init_from).model
    model = ChronosT5(loaded.config, rngs=rngs)
    nnx.update(model, nnx.state(loaded, nnx.Param))
    return model


def _trainer_config(cfg: RunConfig):
    from train.target import trainer_config

    c = cfg.chronos
    # One "epoch" = steps_per_epoch steps; no validation set, so every epoch exports `best`.
    # The Trainer's per-epoch rate is unused (see ChronosTrainer); a constant keeps its log sane.
    return dataclasses.replace(
        trainer_config(cfg), max_steps_per_epoch=c.steps_per_epoch, lradj="cosine", tmax=10**9
    )


def _check_resume(cfg: RunConfig, out: Path) -> None:
    """train.target's check (model/data/optim) plus the ``chronos`` section (init_from and the
    data folder may change: they say where files are)."""
    import yaml

    from train.target import _check_resume_compatible

    _check_resume_compatible(cfg, out)
    path = out / "config.yaml"
    if not path.is_file() or not (out / "checkpoints").is_dir():
        return
    old = (yaml.safe_load(path.read_text()) or {}).get("chronos") or {}
    new = cfg.to_dict()["chronos"]
    diff = [f"chronos.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k != "init_from"]  # fmt: skip
    if diff:
        raise ConfigError(
            f"{out} holds a run with other settings ({'; '.join(diff)}); "
            "use another --out or delete that folder"
        )


class _CsvLog:
    """``metrics.csv``: one row per ``every`` steps (mean loss since the last row, the
    scheduled learning rate, seconds). Rows past the resumed step are dropped first."""

    FIELDS = ("step", "epoch", "loss", "lr", "seconds")

    def __init__(self, path: Path, schedule, every: int, resume_step: int):
        self.path, self.schedule, self.every = path, schedule, every
        rows = []
        if path.is_file():
            with open(path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)
        self.losses: list = []
        self.t0 = time.perf_counter()
        self.last: float | None = float(rows[-1]["loss"]) if rows else None

    def __call__(self, info) -> None:
        self.losses.append(info["loss"])
        step = info["step"]
        if step % self.every:
            return
        loss = float(np.mean([float(v) for v in self.losses]))
        self.losses.clear()
        self.last = loss
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(
                dict(
                    step=step,
                    epoch=info["epoch"],
                    loss=f"{loss:.6f}",
                    lr=f"{float(self.schedule(step - 1)):.6e}",
                    seconds=f"{time.perf_counter() - self.t0:.1f}",
                )  # fmt: skip
            )


def run(cfg: RunConfig, *, max_steps: int | None = None, devices=None, callback=None) -> dict:
    """Train; returns a summary dict (also written to ``out/summary.json``). ``max_steps``
    stops early (resumable), as :meth:`train.trainer.Trainer.fit`."""
    import json

    import orbax.checkpoint as ocp

    from train.target import n_params

    if cfg.distill is not None:
        raise ConfigError("the 'distill' section belongs to python -m train.distill")
    if cfg.model.get("name") != "chronos_t5":
        raise ConfigError(f"train.chronos needs model.name: chronos_t5, got {cfg.model['name']!r}")
    c = cfg.chronos or ChronosTrainConfig()
    cfg = dataclasses.replace(cfg, chronos=c)
    out = Path(cfg.run.out_dir)
    _check_resume(cfg, out)
    t_start = time.perf_counter()
    series, counts = load_series(c.datasets, cfg.data.data_dir)
    model = build_model(cfg, c.init_from)
    ccfg = model.config.chronos
    o = cfg.optim
    total = o.train_epochs * c.steps_per_epoch
    data = ChronosWindows(series, ccfg, total * o.batch_size, o.seed, c.min_past)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    print(
        "series: " + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f" ({len(data.series)} usable of {len(series)}); {jax.device_count()} "
        f"{jax.default_backend()} device(s)",
        flush=True,
    )  # fmt: skip
    print(
        f"Chronos-T5: {n_params(model):,} parameters; context {ccfg.context_length}, horizon "
        f"{ccfg.prediction_length}; {o.train_epochs} x {c.steps_per_epoch} steps of "
        f"{o.batch_size} windows" + (f"; from {c.init_from}" if c.init_from else ""),
        flush=True,
    )
    tx = chronos_optimizer(o.learning_rate, total, c.warmup_steps, c.schedule, o.weight_decay,
                           c.grad_clip)  # fmt: skip
    tcfg = _trainer_config(cfg)
    resume_step = 0
    if (out / "checkpoints").is_dir():
        with ocp.CheckpointManager((out / "checkpoints").absolute()) as mgr:
            resume_step = mgr.latest_step() or 0
    log = _CsvLog(out / "metrics.csv",
                  learning_rate_schedule(o.learning_rate, total, c.warmup_steps, c.schedule),
                  cfg.run.log_every_steps, resume_step)  # fmt: skip

    def cb(info):
        log(info)
        if callback is not None:
            callback(info)

    trainer = ChronosTrainer(model, tcfg, chronos_loss, data, tx=tx, devices=devices, callback=cb)
    t0 = time.perf_counter()
    result = trainer.fit(max_steps=max_steps)
    secs = time.perf_counter() - t0
    steps_run = result.global_step - resume_step
    summary = {
        "global_step": result.global_step,
        "finished": result.finished,
        "final_train_loss": log.last,
        "train_seconds": round(secs, 1),
        "seconds_per_step": round(secs / max(steps_run, 1), 3),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "series": counts,
        "batch_size": o.batch_size,
        "steps": total,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"training {'done' if result.finished else 'stopped'} at step {result.global_step} in "
        f"{secs:.1f}s ({summary['seconds_per_step']}s/step); last logged loss {log.last}; "
        f"model in {out / 'best'}",
        flush=True,
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    from train.target import cli_parser, exit_code, with_cli_paths

    parser = cli_parser(
        "python -m train.chronos",
        "Pre-train (or fine-tune) a Chronos-T5 on random windows of local series.",
        "optim.train_epochs=2",
    )
    parser.add_argument(
        "--init-from", default=None, help="fine-tune from an HF Chronos or jaxts model dir"
    )
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (resumable)"
    )
    args = parser.parse_args(argv)

    def job():
        cfg = with_cli_paths(load_config(args.config, args.overrides), args)
        if args.init_from is not None:
            c = cfg.chronos or ChronosTrainConfig()
            cfg = dataclasses.replace(cfg, chronos=dataclasses.replace(c, init_from=args.init_from))
        run(cfg, max_steps=args.max_steps)

    return exit_code(job)


if __name__ == "__main__":
    sys.exit(main())
