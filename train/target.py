"""Supervised next-patch training of Timer-XL on one dataset, then the rolling test evaluation.

``python -m train.target --config configs/timer_xl_etth1.yaml [--set optim.batch_size=64 ...]
[--data-dir DIR] [--out DIR]`` reproduces OpenLTM's ``exp_forecast`` (``run.py --task_name
forecast``): the loss is the MSE of every token's next patch, validation optionally on the last
token only (``valid_last``), early stopping on validation loss, and at the end the best model's
rolling forecasts at 96/192/336/720 on the test split.

A stochastic model (``model.stochastic: true``, e.g. a STRIDE draft pre-trained before
distillation) is trained with the Gaussian NLL of its (mean, log-variance) against the data
instead, and validated (early stopping) on the MSE of its mean.

Re-running the same command with the same ``--out`` resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from jaxts.data import DataError
from train.config import ConfigError, RunConfig, dump_config, load_config, model_config

__all__ = [
    "LastPatch",
    "cli_parser",
    "fit_and_report",
    "main",
    "n_params",
    "next_patch_data",
    "next_patch_loss",
    "next_patch_mean_mse",
    "next_patch_nll",
    "run",
    "evaluate_test",
    "trainer_config",
    "with_cli_paths",
]


def next_patch_loss(model, batch, mask):
    """MSE of the model's forecasts against ``y``'s tokens: with y ``[B, N*P_out, C]`` every
    token's next patch (training), with y ``[B, P_out, C]`` the last token's only
    (``valid_last``). x ``[B, L, C]``; mask ``[B]`` drops the padding of a short last batch."""
    from train.trainer import masked_mse

    x, y = batch
    pred = model(x)  # [B, N*P_out, C]
    return masked_mse(pred[:, -y.shape[1] :], y, mask)


def next_patch_nll(model, batch, mask):
    """A stochastic model's Gaussian NLL (STRIDE's form, see ``masked_gaussian_nll``) of the
    data ``y`` under its (mean, logvar) forecasts of every token's (or the last token's) patch."""
    from train.trainer import masked_gaussian_nll

    x, y = batch
    mean, logvar = model(x)  # [B, N*P_out, C] each
    h = y.shape[1]
    return masked_gaussian_nll(mean[:, -h:], logvar[:, -h:], y, mask)


def next_patch_mean_mse(model, batch, mask):
    """:func:`next_patch_loss` of a stochastic model's mean (STRIDE's validation)."""
    from train.trainer import masked_mse

    x, y = batch
    mean, _ = model(x)
    return masked_mse(mean[:, -y.shape[1] :], y, mask)


class LastPatch:
    """A view of NextPatchWindows whose batches are ``(x, y_last [B, P_out, C])``."""

    def __init__(self, windows):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, idx: np.ndarray):
        return self.windows.last_patch(idx)


def _check_resume_compatible(cfg: RunConfig, out: Path) -> None:
    """Refuse to resume a run in ``out`` that was started with different model/data/optim (and
    distill) settings: its checkpoints would silently mix two experiments. (data_dir may change:
    it is where the files are, not which data.)"""
    import yaml

    path = out / "config.yaml"
    if not path.is_file() or not (out / "checkpoints").is_dir():
        return
    with open(path) as f:
        old = yaml.safe_load(f) or {}
    new = cfg.to_dict()
    diff = [
        f"{sec}.{k}: {(old.get(sec) or {}).get(k)!r} -> {(new.get(sec) or {}).get(k)!r}"
        for sec in ("model", "data", "optim", "distill")
        for k in sorted(set(new.get(sec) or {}) | set(old.get(sec) or {}))
        if (old.get(sec) or {}).get(k) != (new.get(sec) or {}).get(k)
        and (sec, k) != ("data", "data_dir")
    ]
    if diff:
        raise ConfigError(
            f"{out} holds a run with other settings ({'; '.join(diff)}); "
            "use another --out or delete that folder"
        )


def trainer_config(cfg: RunConfig):
    """The Trainer settings of a run config (optim + run sections, ``run.out_dir``)."""
    from train.trainer import TrainerConfig

    o = cfg.optim
    return TrainerConfig(
        out_dir=str(cfg.run.out_dir),
        learning_rate=o.learning_rate,
        batch_size=o.batch_size,
        train_epochs=o.train_epochs,
        patience=o.patience,
        lradj=o.lradj,
        tmax=o.tmax,
        weight_decay=o.weight_decay,
        seed=o.seed,
        max_steps_per_epoch=o.max_steps_per_epoch,
        ckpt_every_steps=cfg.run.ckpt_every_steps,
        log_every_steps=cfg.run.log_every_steps,
        max_to_keep=cfg.run.max_to_keep,
        progress=cfg.run.progress,
    )


def next_patch_data(cfg: RunConfig, mcfg):
    """(train, val) ``NextPatchWindows`` of a run config for a model config ``mcfg``."""
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


def n_params(model) -> int:
    import jax
    from flax import nnx

    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def fit_and_report(trainer, what: str = "training"):
    """``trainer.fit()`` with a one-line summary; returns the FitResult."""
    t0 = time.perf_counter()
    result = trainer.fit()
    print(
        f"{what} done in {time.perf_counter() - t0:.1f}s: {result.epochs_done} epochs, "
        f"{result.global_step} steps, best val {result.best_val}"
        + (" (early stopped)" if result.early_stopped else ""),
        flush=True,
    )
    return result


def evaluate_test(model, cfg: RunConfig, out: Path, what: str = "") -> dict:
    """The rolling test evaluation of a run's best model: prints the table, writes
    ``out/metrics_test.json`` and ``out/forecast_test.png``; returns the metrics."""
    from eval.forecast import evaluate_rolling, format_table

    d = cfg.data
    t1 = time.perf_counter()
    metrics = evaluate_rolling(
        model,
        d.dataset,
        d.seq_len,
        cfg.run.horizons,
        cfg.run.eval_batch_size,
        d.data_dir,
        plot_path=out / "forecast_test.png",
        progress=cfg.run.progress,
    )
    print(f"{d.dataset} test, rolling forecast{what} ({time.perf_counter() - t1:.1f}s)")
    print(format_table(metrics))
    with open(out / "metrics_test.json", "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


def cli_parser(prog: str, description: str, set_example: str) -> argparse.ArgumentParser:
    """The arguments every training entry point takes: --config, --set, --data-dir, --out."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="YAML run config")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override config values (YAML-typed), e.g. --set {set_example}",
    )
    parser.add_argument("--data-dir", default=None, help="folder with the dataset CSVs")
    parser.add_argument("--out", default=None, help="run folder (overrides run.out_dir)")
    return parser


def with_cli_paths(cfg: RunConfig, args) -> RunConfig:
    """``cfg`` with ``--data-dir`` / ``--out`` applied (passed as strings, never YAML-parsed:
    a path may look like a number or null)."""
    if args.data_dir is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=args.data_dir))
    if args.out is not None:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=args.out))
    return cfg


def exit_code(job) -> int:
    """Run ``job()`` for a CLI: 0, or 2 with the message of a config or data error (no
    traceback: those errors are the user's input, and their messages say what to fix)."""
    try:
        job()
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run(cfg: RunConfig) -> dict:
    """Train + evaluate; returns the test metrics dict."""
    import jax
    from flax import nnx

    from jaxts.checkpoint import load_model
    from jaxts.models.timer_xl import TimerXL
    from train.trainer import Trainer

    if cfg.distill is not None:
        raise ConfigError("the 'distill' section belongs to python -m train.distill")
    mcfg = model_config(cfg)
    train_ds, val_ds = next_patch_data(cfg, mcfg)
    out = Path(cfg.run.out_dir)
    _check_resume_compatible(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")

    print(
        f"{cfg.data.dataset}: {len(train_ds)} train / {len(val_ds)} val windows, "
        f"{train_ds.num_channels} variables; {jax.device_count()} {jax.default_backend()} "
        "device(s)",
        flush=True,
    )
    o = cfg.optim
    model = TimerXL(mcfg, rngs=nnx.Rngs(params=o.seed, dropout=o.seed + 1))
    print(f"Timer-XL: {n_params(model):,} parameters", flush=True)
    if mcfg.stochastic:
        print("stochastic model: Gaussian NLL loss, validation on the mean's MSE", flush=True)
    trainer = Trainer(
        model,
        trainer_config(cfg),
        next_patch_nll if mcfg.stochastic else next_patch_loss,
        train_ds,
        LastPatch(val_ds) if o.valid_last else val_ds,
        next_patch_mean_mse if mcfg.stochastic else None,
    )
    fit_and_report(trainer)
    metrics = evaluate_test(load_model(out / "best"), cfg, out)
    print(f"wrote {out / 'metrics_test.json'}", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser(
        "python -m train.target",
        "Train Timer-XL (OpenLTM next-patch objective).",
        "optim.train_epochs=2",
    )
    args = parser.parse_args(argv)
    return exit_code(lambda: run(with_cli_paths(load_config(args.config, args.overrides), args)))


if __name__ == "__main__":
    sys.exit(main())
