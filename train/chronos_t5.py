"""Chronos-T5 pre-training (or fine-tuning) on random windows of local series.

``python -m train.chronos_t5 --config configs/chronos_t5_tiny.yaml [--set section.key=value ...]
[--data-dir DIR] [--out DIR] [--init-from DIR] [--max-steps N]`` (also ``python -m
train.chronos``) follows chronos-forecasting's ``scripts/training/train.py`` (Ansari et al.
2024) without its data augmentations:

* series: the train part of every source in ``chronos_t5.datasets`` (ETT: the first 8640
  hourly / 34560 15-minute rows, weather: the first 70% of rows; every column a series; raw
  values, no standardisation) and the 414 M4 Hourly train series; a missing file is skipped
  with a note;
* windows: a series drawn uniformly, then a forecast start uniformly among the positions with
  at least ``min_past`` values before and ``prediction_length`` after; the context is the
  ``context_length`` values before it, left-padded with NaN when the series is shorter;
* tokens: ``context_input_transform`` (mean scaling, uniform bins, EOS) for the context,
  ``label_input_transform(future, scale)`` for the labels (EOS appended); labels whose mask is
  False become -100 (ignored); the decoder input is the labels shifted right behind
  ``decoder_start_token_id`` with -100 -> pad (HF T5 ``_shift_right``);
* loss: token cross-entropy averaged over all non-ignored label tokens of the batch (EOS
  included), dropout on (``train.losses.chronos_loss``); AdamW, per-step linear (or cosine)
  schedule with optional warmup, global-norm gradient clipping (``train.optim``).

The generic :class:`train.trainer.Trainer` runs the loop (mesh data parallelism, orbax
checkpoints, resume, tqdm, ``metrics.jsonl``) with this optimizer: its data set is a pool of
``train_epochs * steps_per_epoch * batch_size`` virtual windows, window ``i`` a pure function
of ``(seed, i)``, and each "epoch" is ``steps_per_epoch`` steps over the Trainer's
``(seed, epoch)`` shuffle of that pool, so a resumed run replays the same batches.

The ``model`` section is the model trained. ``--init-from`` (``chronos_t5.init_from``: an HF
Chronos directory / hub id or a jaxts model directory) gives its initial weights, which must
have the section's parameter shapes (settings that change no shape, e.g. dropout or the
context length, are the section's); without a model section the checkpoint's own config is
trained. Either way ``config.yaml`` records the model trained. Outputs in ``--out``: ``best/``
(the model of the last finished epoch, loadable by ``ChronosT5Pipeline.from_pretrained``),
``metrics.jsonl``, ``metrics.csv`` (per logged step: loss and the scheduled learning rate),
``summary.json``, ``config.yaml``. See ``docs/chronos_training.md``.

Re-running the same command with the same ``--out`` resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxts.data import DataError
from train.common import build_or_init_from
from train.config import ConfigError, RunConfig, updated
from train.losses import IGNORE_INDEX, chronos_loss

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


# ---- the run ------------------------------------------------------------------------------------


def build_model(cfg: RunConfig, init_from: str | None = None):
    """``(model, cfg)``: a ChronosT5 of the ``model`` section with the dropout RNG seeded from
    the config, fresh or (``init_from``) with the weights of an HF Chronos directory / hub id or
    a jaxts model directory; ``cfg`` gets that checkpoint's config as its model section when it
    has none."""
    from jaxts.models.chronos_t5 import ChronosT5
    from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline

    return build_or_init_from(
        cfg,
        ChronosT5,
        lambda path: ChronosT5Pipeline.from_pretrained(path).model,
        init_from,
        "chronos_t5.init_from",
    )


class CsvLog:
    """``metrics.csv``: one row per ``every`` steps (mean loss since the last row, the
    scheduled learning rate, seconds). A resumed run first drops the rows of the steps it
    replays."""

    FIELDS = ("step", "epoch", "loss", "lr", "seconds")

    def __init__(self, path: Path, schedule, every: int):
        self.path, self.schedule, self.every = path, schedule, every
        self.rows = []
        if path.is_file():
            with open(path) as f:
                self.rows = list(csv.DictReader(f))
        self.started = False
        self.losses: list = []
        self.t0 = time.perf_counter()
        self.last: float | None = float(self.rows[-1]["loss"]) if self.rows else None

    def _start(self, step: int) -> None:
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(r for r in self.rows if int(r["step"]) < step)
        self.started = True

    def __call__(self, info) -> None:
        step = info["step"]
        if not self.started:
            self._start(step)
        self.losses.append(info["loss"])
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
    from train.common import check_sections, n_params, prepare_run_dir
    from train.optim import chronos_optimizer

    check_sections(cfg, "python -m train.chronos_t5", own="chronos_t5")
    if cfg.model is not None and cfg.model.name != "chronos_t5":
        raise ConfigError(f"train.chronos_t5 needs model.name: chronos_t5, got {cfg.model.name!r}")
    if cfg.chronos_t5 is None:  # recorded with its defaults
        cfg = updated(cfg, {"chronos_t5": {}})
    c = cfg.chronos_t5
    t_start = time.perf_counter()
    series, counts = load_series(c.datasets, cfg.data.data_dir)
    model, cfg = build_model(cfg, c.init_from)
    ccfg = model.config.chronos
    o = cfg.optim
    total = o.train_epochs * c.steps_per_epoch
    data = ChronosWindows(series, ccfg, total * o.batch_size, o.seed, c.min_past)
    out = prepare_run_dir(cfg)
    print_series(counts, data, series)
    print(
        f"Chronos-T5: {n_params(model):,} parameters; context {ccfg.context_length}, horizon "
        f"{ccfg.prediction_length}; {o.train_epochs} x {c.steps_per_epoch} steps of "
        f"{o.batch_size} windows" + (f"; from {c.init_from}" if c.init_from else ""),
        flush=True,
    )
    tx, schedule = chronos_optimizer(o.learning_rate, total, c.warmup_steps, c.schedule,
                                     o.weight_decay, c.grad_clip)  # fmt: skip
    trainer, log = windows_trainer(model, chronos_loss, data, cfg, c.steps_per_epoch, tx,
                                   schedule, out, devices=devices, callback=callback)  # fmt: skip
    return fit_and_summarize(trainer, log, t_start, max_steps, series=counts,
                             batch_size=o.batch_size, steps=total)  # fmt: skip


def print_series(counts: dict[str, int], data, series) -> None:
    from train.common import devices_line

    print(
        "series: " + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f" ({len(data.series)} usable of {len(series)}); {devices_line()}",
        flush=True,
    )  # fmt: skip


def windows_trainer(
    model,
    loss,
    data,
    cfg: RunConfig,
    steps_per_epoch: int,
    tx,
    schedule,
    out: Path,
    *,
    devices=None,
    callback=None,
    export_best=None,
):
    """``(Trainer, metrics.csv log)`` of a random-window recipe: one "epoch" is
    ``steps_per_epoch`` steps, and with no validation set every epoch exports ``best``."""
    from train.trainer import Trainer

    log = CsvLog(out / "metrics.csv", schedule, cfg.run.log_every_steps)

    def cb(info):
        log(info)
        if callback is not None:
            callback(info)

    trainer = Trainer(
        model, loss, data,
        optim=cfg.optim.model_copy(update={"max_steps_per_epoch": steps_per_epoch}),
        run=cfg.run, tx=tx, schedule=schedule, devices=devices, export_best=export_best,
        callback=cb,
    )  # fmt: skip
    return trainer, log


def fit_and_summarize(trainer, log: CsvLog, t_start: float, max_steps: int | None, **extra):
    """:func:`train.common.fit_and_report`, then ``summary.json`` in the run folder (steps run,
    seconds, the last logged loss, then ``extra``), printed in one line; returns the summary."""
    from train.common import fit_and_report

    result = fit_and_report(trainer, max_steps=max_steps)
    summary = {
        "global_step": result.global_step,
        "finished": result.finished,
        "steps_run": result.steps_run,
        "final_train_loss": log.last,
        "train_seconds": round(result.seconds, 1),
        "seconds_per_step": round(result.seconds / max(result.steps_run, 1), 3),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        **extra,
    }
    (trainer.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if result.steps_run:
        print(f"{summary['seconds_per_step']}s/step; last logged loss {log.last}", flush=True)
    return summary


def _steps(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number of steps >= 0, got {text!r}")
    return n


def add_max_steps(parser: argparse.ArgumentParser) -> None:
    """``--max-steps N``: stop after global step N (resumable)."""
    parser.add_argument(
        "--max-steps",
        type=_steps,
        default=None,
        help="stop after this global step (resumable; 0: train nothing)",
    )


def windows_main(
    argv,
    run_fn,
    *,
    prog: str,
    description: str,
    set_example: str,
    path_flag: str,
    path_key: str,
    path_help: str,
) -> int:
    """The command line of a random-window Chronos recipe: train.common's arguments, one path
    option (``path_flag`` -> config key ``path_key``, passed as a string) and ``--max-steps``."""
    from jaxts._cli import exit_code
    from train.common import cli_parser, load_run_config

    parser = cli_parser(prog, description, set_example)
    parser.add_argument(path_flag, default=None, help=f"{path_help} ({path_key})")
    add_max_steps(parser)
    args = parser.parse_args(argv)
    paths = {path_key: getattr(args, path_flag.lstrip("-").replace("-", "_"))}
    return exit_code(lambda: run_fn(load_run_config(args, paths), max_steps=args.max_steps))


def main(argv: list[str] | None = None) -> int:
    return windows_main(
        argv, run, prog="python -m train.chronos_t5",
        description="Pre-train (or fine-tune) a Chronos-T5 on random windows of local series.",
        set_example="optim.train_epochs=2", path_flag="--init-from",
        path_key="chronos_t5.init_from",
        path_help="fine-tune from an HF Chronos or jaxts model dir",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
