"""Supervised next-patch training of Timer-XL on one dataset, then the rolling test evaluation.

``python -m train.timer_xl --config configs/timer_xl_etth1.yaml [--set optim.batch_size=64 ...]
[--data-dir DIR] [--out DIR]`` (also ``python -m train.target``) reproduces OpenLTM's
``exp_forecast`` (``run.py --task_name forecast``): the loss is the MSE of every token's next
patch, validation optionally on the last token only (``valid_last``), Adam with OpenLTM's
per-epoch schedules, early stopping on validation loss, and at the end the best model's rolling
forecasts at 96/192/336/720 on the test split.

A stochastic model (``model.stochastic: true``, e.g. a STRIDE draft pre-trained before
distillation) is trained with the Gaussian NLL of its (mean, log-variance) against the data
instead, and validated (early stopping) on the MSE of its mean.

Re-running the same command with the same ``--out`` resumes an interrupted run.
"""

from __future__ import annotations

import sys

import numpy as np

from train.config import ConfigError, RunConfig, model_config


class WindowView:
    """A :class:`train.trainer.BatchSource` over the same windows as a ``NextPatchWindows``,
    whose subclasses pick what a batch holds."""

    def __init__(self, windows):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)


class LastPatch(WindowView):
    """Batches ``(x, y_last [B, P_out, C])``: only the last token's next patch (valid_last)."""

    def batch(self, idx: np.ndarray):
        return self.windows.last_patch(idx)


def next_patch_data(cfg: RunConfig, mcfg):
    """(train, val) ``NextPatchWindows`` of a run config for a Timer-XL config ``mcfg``."""
    from jaxts.data import NextPatchWindows, load_split

    d = cfg.data
    if d.seq_len % mcfg.input_token_len:
        raise ConfigError(
            f"data.seq_len {d.seq_len} must be a multiple of model.input_token_len "
            f"{mcfg.input_token_len}"
        )

    def windows(split):
        rows = load_split(d.dataset, split, d.seq_len, data_dir=d.data_dir)  # [T, C]
        return NextPatchWindows(rows, d.seq_len, mcfg.input_token_len, mcfg.output_token_len)

    return windows("train"), windows("val")


def optimizer(cfg: RunConfig, n_train: int):
    """OpenLTM's Adam and per-epoch schedule (``train.optim.openltm_adam``) of a run config
    over ``n_train`` training examples: ``(tx, schedule)`` for the Trainer."""
    from train.optim import openltm_adam
    from train.trainer import steps_per_epoch

    o = cfg.optim
    n_steps = steps_per_epoch(n_train, o.batch_size, o.max_steps_per_epoch)
    return openltm_adam(o.learning_rate, o.lradj, o.tmax, o.train_epochs, n_steps,
                        o.weight_decay)  # fmt: skip


def run(cfg: RunConfig) -> dict:
    """Train + evaluate; returns the test metrics dict."""

    from jaxts.checkpoint import load_model
    from jaxts.models.timer_xl import TimerXLConfig
    from train.common import (
        check_sections,
        devices_line,
        evaluate_test,
        fit_and_report,
        n_params,
        prepare_run_dir,
    )
    from train.losses import next_patch_loss, next_patch_mean_mse, next_patch_nll
    from train.trainer import Trainer

    check_sections(cfg, "python -m train.timer_xl", own="timer_hf")
    model, cfg = _build_model(cfg)
    mcfg = model.config
    train_ds, val_ds = next_patch_data(cfg, mcfg)
    out = prepare_run_dir(cfg)

    print(
        f"{cfg.data.dataset}: {len(train_ds)} train / {len(val_ds)} val windows, "
        f"{train_ds.num_channels} variables; {devices_line()}",
        flush=True,
    )
    o = cfg.optim
    name = "Timer-XL" if isinstance(mcfg, TimerXLConfig) else "HF Timer"
    print(f"{name}: {n_params(model):,} parameters", flush=True)
    if mcfg.stochastic:
        print("stochastic model: Gaussian NLL loss, validation on the mean's MSE", flush=True)
    tx, schedule = optimizer(cfg, len(train_ds))
    trainer = Trainer(
        model,
        next_patch_nll if mcfg.stochastic else next_patch_loss,
        train_ds,
        LastPatch(val_ds) if o.valid_last else val_ds,
        next_patch_mean_mse if mcfg.stochastic else None,
        optim=o,
        run=cfg.run,
        tx=tx,
        schedule=schedule,
    )
    fit_and_report(trainer)
    return evaluate_test(load_model(out / "best", family=cfg.model.name), cfg, out)


def _build_model(cfg: RunConfig):
    """``(model, cfg)``: a fresh Timer-XL of the model section, or an HF Timer (``model.name:
    timer_hf``), fresh or fine-tuned from ``timer_hf.init_from`` (an HF dir, hub id or jaxts
    timer_hf dir; the model section may then be left out)."""
    from flax import nnx

    from jaxts.models.timer_hf import TimerHF
    from jaxts.models.timer_xl import TimerXL
    from jaxts.pipelines.timer import TimerPipeline
    from train.common import build_or_init_from

    init_from = cfg.timer_hf.init_from if cfg.timer_hf is not None else None
    if init_from is not None or (cfg.model is not None and cfg.model.name == "timer_hf"):
        if cfg.model is not None and cfg.model.name != "timer_hf":
            raise ConfigError(
                f"timer_hf.init_from needs model.name: timer_hf, got {cfg.model.name!r}"
            )
        return build_or_init_from(
            cfg,
            TimerHF,
            lambda d: TimerPipeline.from_pretrained(d).model,
            init_from,
            "timer_hf.init_from",
        )
    mcfg = model_config(cfg)
    if cfg.model.name != "timer_xl":
        raise ConfigError(
            f"train.timer_xl trains model.name: timer_xl or timer_hf, got {cfg.model.name!r}"
        )
    o = cfg.optim
    return TimerXL(mcfg, rngs=nnx.Rngs(params=o.seed, dropout=o.seed + 1)), cfg


def main(argv: list[str] | None = None) -> int:
    from jaxts._cli import exit_code
    from train.common import cli_parser, load_run_config

    parser = cli_parser(
        "python -m train.timer_xl",
        "Train Timer-XL (OpenLTM next-patch objective).",
        "optim.train_epochs=2",
    )
    args = parser.parse_args(argv)
    return exit_code(lambda: run(load_run_config(args)))


if __name__ == "__main__":
    sys.exit(main())
