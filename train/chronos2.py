"""Chronos-2 training on random multi-series tasks (issue 11 §4).

``python -m train.chronos2 --config configs/chronos2_cpu.yaml [--set section.key=value ...]
[--data-dir DIR] [--out DIR] [--init-from DIR] [--max-steps N]``

* model: :class:`jaxts.models.chronos2.Chronos2Model` of the ``model`` section (``name:
  chronos2``, nested ``core:`` / ``chronos:`` as its ``config.json``), fresh weights seeded from
  ``optim.seed`` or (``--init-from``) the weights of a trained Chronos-2 (same parameter shapes;
  without a model section its own config), dropout on while training;
* data: the train parts of ``chronos2.datasets`` (ETT x4, weather, M4 Hourly minus the last
  horizon of each series), drawn as task slots by :class:`train.chronos2_data.TaskSampler`:
  univariate series, variates of one window together, the same with known future covariates,
  and groups of unrelated M4 series (``chronos2.task_weights``), with random context lengths;
  the horizon is ``num_output_patches`` output patches;
* loss: the model's own quantile loss (upstream ``Chronos2Model``'s: pinball loss on the
  instance-normalised target, masked where the target is missing or a known covariate; mean
  over the horizon, sum over quantiles, mean over rows), taken over the rows that are not
  padding;
* validation: every ``steps_per_epoch`` steps, the same loss (dropout off) on ``val_tasks``
  fixed slots of the val parts (ETT/weather val rows, M4's held-out last horizon); the best
  model by it is exported to ``best/``;
* AdamW + global-norm clipping on a per-step schedule (:func:`train.optim.chronos_optimizer`),
  as upstream's ``Chronos2Pipeline.fit`` (HF Trainer: AdamW, linear decay, clip 1.0).

The generic :class:`train.trainer.Trainer` runs the loop (mesh data parallelism, orbax
checkpoints, resume, tqdm, ``metrics.jsonl``); slot ``i`` is a pure function of ``(seed, i)``
and the Trainer's shuffle of ``(seed, epoch)``, so a resumed run replays the same batches.
Outputs in ``--out``: ``best/`` (a jaxts ``chronos2`` checkpoint: ``jaxts.load_model``),
``metrics.jsonl`` (steps and per-epoch train/val loss), ``metrics.csv`` (per logged step),
``summary.json`` (with the val loss per epoch), ``config.yaml``. See
``docs/chronos2_training.md``. Re-running the same command with the same ``--out`` resumes.
"""

from __future__ import annotations

import functools
import json
import sys
import time

import jax.numpy as jnp
import numpy as np

from train.chronos2_data import TaskSampler, Ungrouped, load_sources
from train.chronos_t5 import CsvLog, add_max_steps, fit_and_summarize
from train.common import build_or_init_from
from train.config import ConfigError, RunConfig, updated

__all__ = [
    "build_model",
    "context_quantile_loss",
    "horizon_of",
    "main",
    "run",
    "samplers",
    "task_loss",
    "val_loss_alone",
    "val_losses",
]

ENTRY = "python -m train.chronos2"


# ---- loss ---------------------------------------------------------------------------------------


@functools.cache  # one function object per horizon: a jit static of the Trainer's step
def task_loss(num_output_patches: int):
    """A Trainer loss ``(model, batch, mask [B]) -> scalar`` over task slots: the slots' rows
    flattened into one Chronos-2 batch (group ids made unique per slot), ``model.loss`` with
    the rows of invalid slots (``mask`` False) masked out, rescaled to the mean over the rows
    that are not padding (padding rows add 0 to upstream's mean over rows; a batch with fewer
    of them must not weigh more)."""

    def loss(model, batch, mask):
        context, target, covariates, groups = batch  # [B, G, C], [B, G, H], [B, G, H], [B, G]
        b, g, c = context.shape
        rows = b * g
        group_ids = (groups + g * jnp.arange(b)[:, None]).reshape(rows)  # [B*G]
        target_mask = ~jnp.isnan(target) & mask[:, None, None]  # [B, G, H]
        real = ~jnp.all(jnp.isnan(context), axis=-1) & mask[:, None]  # [B, G]
        value = model.loss(
            context.reshape(rows, c),
            target.reshape(rows, -1),
            future_target_mask=target_mask.reshape(rows, -1),
            group_ids=group_ids,
            future_covariates=covariates.reshape(rows, -1),
            num_output_patches=num_output_patches,
        )
        return value * rows / jnp.maximum(real.sum(), 1)

    return loss


def context_quantile_loss(data, quantiles, use_arcsinh: bool, eps: float = 1e-5) -> float:
    """The loss of :func:`task_loss` on all slots of ``data`` for the forecast that needs no
    model: each row's quantiles of its own (normalised) context, flat over the horizon. A model
    below it has learnt more than the level and spread of each series.

    Same normalisation as Chronos-2 (nanmean, population std, 0 -> ``eps``, optional arcsinh),
    same mask (observed targets), same mean over the rows that are not padding; float64."""
    ctx, target, _, _ = data.batch(np.arange(len(data)))  # [N, G, C], [N, G, H]
    ctx = ctx.reshape(-1, ctx.shape[-1]).astype(np.float64)  # [R, C]
    target = target.reshape(len(ctx), -1).astype(np.float64)  # [R, H]
    real = ~np.isnan(ctx).all(-1)  # [R]
    ctx, target = ctx[real], target[real]
    loc = np.nanmean(ctx, -1, keepdims=True)  # [R, 1]
    scale = np.nanstd(ctx, -1, keepdims=True)
    scale[scale == 0] = eps

    def norm(x):
        y = (x - loc) / scale
        return np.arcsinh(y) if use_arcsinh else y

    levels = np.asarray(quantiles, np.float64)
    preds = np.nanquantile(norm(ctx), levels, axis=-1).T[:, :, None]  # [R, Q, 1]
    y = norm(target)[:, None]  # [R, 1, H]
    observed = ~np.isnan(y)
    y = np.where(observed, y, 0.0)
    pinball = 2.0 * np.abs((y - preds) * ((y <= preds) - levels[None, :, None]))  # [R, Q, H]
    return float((pinball * observed).mean(-1).sum(-1).mean())


# ---- the run ------------------------------------------------------------------------------------


def build_model(cfg: RunConfig):
    """``(model, cfg)``: a Chronos-2 of the ``model`` section with the parameters and dropout
    seeded from ``optim.seed``, fresh or (``chronos2.init_from``) with the weights of an HF
    Chronos-2 directory / hub id / LoRA adapter or a jaxts model directory; ``cfg`` gets that
    checkpoint's config as its model section when it has none."""
    from jaxts.models.chronos2 import Chronos2Model
    from jaxts.pipelines.chronos2 import Chronos2Pipeline

    if cfg.model is not None and cfg.model.name != "chronos2":
        raise ConfigError(f"{ENTRY} needs model.name: chronos2, got {cfg.model.name!r}")
    return build_or_init_from(
        cfg,
        Chronos2Model,
        lambda path: Chronos2Pipeline.from_pretrained(path).model,
        cfg.chronos2.init_from,
        "chronos2.init_from",
    )


def horizon_of(cfg: RunConfig, chronos) -> tuple[int, int]:
    """``(num_output_patches, horizon)`` of the recipe for the model's forecasting config."""
    n = cfg.chronos2.num_output_patches or chronos.max_output_patches
    if n > chronos.max_output_patches:
        raise ConfigError(
            f"chronos2.num_output_patches {n} exceeds model.chronos.max_output_patches "
            f"{chronos.max_output_patches}"
        )
    return n, n * chronos.output_patch_size


def samplers(cfg: RunConfig, chronos, horizon: int, total_steps: int):
    """``(train, val or None, counts)``: the task samplers of the run and the series found per
    data set."""
    c, o = cfg.chronos2, cfg.optim
    stray = sorted(set(c.source_weights) - set(c.datasets))
    if stray:
        raise ConfigError(f"chronos2.source_weights names {stray}, not in chronos2.datasets "
                          f"{list(c.datasets)}")  # fmt: skip
    length = chronos.context_length
    kw = dict(seed=o.seed, context_length=length, horizon=horizon,
              weights=c.task_weights.model_dump(), max_group_size=c.max_group_size,
              min_past=c.min_past, short_context_prob=c.short_context_prob, fill=c.fill,
              source_weights=c.source_weights)  # fmt: skip
    sources = load_sources(c.datasets, "train", length, horizon, c.min_past, cfg.data.data_dir)
    train = TaskSampler(sources, size=total_steps * o.batch_size, **kw)
    counts = {s.name: len(s.members) * s.n_columns for s in train.sources}
    val = None
    if c.val_tasks:
        found = load_sources(c.datasets, "val", length, horizon, c.min_past, cfg.data.data_dir,
                             log=lambda _: None)  # fmt: skip
        val = TaskSampler(found, size=c.val_tasks, salt=1, **kw)
    return train, val, counts


def run(cfg: RunConfig, *, max_steps: int | None = None, devices=None, callback=None) -> dict:
    """Train; returns a summary dict (also written to ``out/summary.json``). ``max_steps``
    stops early (resumable), as :meth:`train.trainer.Trainer.fit`."""
    from train.common import check_sections, devices_line, n_params, prepare_run_dir
    from train.optim import chronos_optimizer
    from train.trainer import Trainer

    check_sections(cfg, ENTRY, own="chronos2")
    if cfg.chronos2 is None:  # recorded with its defaults
        cfg = updated(cfg, {"chronos2": {}})
    c, o = cfg.chronos2, cfg.optim
    t_start = time.perf_counter()
    model, cfg = build_model(cfg)
    chronos = model.config.chronos
    n_out, horizon = horizon_of(cfg, chronos)
    total = o.train_epochs * c.steps_per_epoch
    data, val, counts = samplers(cfg, chronos, horizon, total)
    out = prepare_run_dir(cfg)
    print(f"series: {', '.join(f'{k} {v}' for k, v in counts.items())}; {devices_line()}; "
          f"task weights " + ", ".join(f"{k} {v:.2f}" for k, v in data.weights.items()),
          flush=True)  # fmt: skip
    print(
        f"Chronos-2: {n_params(model):,} parameters; context {chronos.context_length}, horizon "
        f"{horizon} ({n_out} patches); {o.train_epochs} x {c.steps_per_epoch} steps of "
        f"{o.batch_size} slots x {c.max_group_size} rows; "
        + (f"validation on {len(val)} slots" if val else "no validation")
        + (f"; from {c.init_from}" if c.init_from else ""),
        flush=True,
    )
    if val is not None:
        baseline = context_quantile_loss(val, chronos.quantiles, chronos.use_arcsinh)
        print(f"val loss of the context's own quantiles (a forecast-free reference): "
              f"{baseline:.4f}", flush=True)  # fmt: skip
    tx, schedule = chronos_optimizer(o.learning_rate, total, c.warmup_steps, c.schedule,
                                     o.weight_decay, c.grad_clip)  # fmt: skip
    log = CsvLog(out / "metrics.csv", schedule, cfg.run.log_every_steps)

    def cb(info):
        log(info)
        if callback is not None:
            callback(info)

    loss = task_loss(n_out)
    trainer = Trainer(
        model, loss, data, val,
        optim=o.model_copy(update={"max_steps_per_epoch": c.steps_per_epoch}),
        run=cfg.run, tx=tx, schedule=schedule, devices=devices, callback=cb,
        epoch_metrics=None if val is None else val_loss_alone,
    )  # fmt: skip
    summary = fit_and_summarize(trainer, log, t_start, max_steps, series=counts,
                                batch_size=o.batch_size, rows_per_step=o.batch_size
                                * c.max_group_size, horizon=horizon, steps=total)  # fmt: skip
    summary["val_loss"] = val_losses(out / "metrics.jsonl")
    if val is not None:
        summary["val_loss_alone"] = val_losses(out / "metrics.jsonl", "val_loss_alone")
        summary["val_loss_context_quantiles"] = baseline
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def val_loss_alone(trainer) -> dict[str, float]:
    """The Trainer's ``epoch_metrics``: the val loss with every row in a group of its own
    (``val_loss_alone``). Above ``val_loss``, the model uses what group attention brings (the
    covariates' futures, the other variates and series); equal, it ignores its groups."""
    grouped = trainer.val_data
    trainer.val_data = Ungrouped(grouped)
    try:
        return {"val_loss_alone": trainer.validate()}
    finally:
        trainer.val_data = grouped


def val_losses(path, key: str = "val_loss") -> dict[str, float]:
    """``{step: value}`` of ``key`` at every epoch end in a run's ``metrics.jsonl`` (the last
    line of a step wins: a resumed run repeats none, but a re-run epoch would)."""
    out: dict[str, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("event") == "epoch" and r.get(key) is not None:
                out[str(r["step"])] = r[key]
    return out


def main(argv: list[str] | None = None) -> int:
    from jaxts._cli import exit_code
    from train.common import cli_parser, load_run_config

    parser = cli_parser(
        ENTRY,
        "Train a Chronos-2 on random multi-series tasks (univariate, multivariate, covariates, "
        "cross-learning groups) of local series.",
        "chronos2.max_group_size=4",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        help="fine-tune from an HF Chronos-2 dir / hub id / LoRA adapter dir or a jaxts "
        "chronos2 dir (chronos2.init_from)",
    )
    add_max_steps(parser)
    args = parser.parse_args(argv)
    paths = {"chronos2.init_from": args.init_from}
    return exit_code(lambda: run(load_run_config(args, paths), max_steps=args.max_steps))


if __name__ == "__main__":
    sys.exit(main())
