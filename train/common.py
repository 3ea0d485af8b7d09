"""What every training entry point shares: the command line (``--config``, ``--set``,
``--data-dir``, ``--out``), the run folder (refusing a file, refusing to resume a run made with
other settings, the resolved ``config.yaml``), fit-and-report, parameter counts and the rolling
test evaluation of a Timer-XL run.

Errors a user can fix (config, data, checkpoint) are ValueErrors; the entry points run their job
through :func:`jaxts._cli.exit_code`, which prints them as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from train.config import (
    RECIPE_OWNERS,
    ConfigError,
    RunConfig,
    dump_config,
    flat,
    load_config,
    model_config,
    model_section,
    updated,
)

__all__ = [
    "RECIPE_OWNERS",
    "check_resume_compatible",
    "check_sections",
    "cli_parser",
    "devices_line",
    "evaluate_test",
    "fit_and_report",
    "load_run_config",
    "n_params",
    "prepare_run_dir",
]

# Which entry point a trainer-specific section belongs to.

# Keys that say where files are, not which experiment: a resumed run may change them.
RESUME_MAY_CHANGE = (
    "data.data_dir",
    "chronos_t5.init_from",
    "chronos2.init_from",
    "timer_hf.init_from",
)


def cli_parser(prog: str, description: str, set_example: str) -> argparse.ArgumentParser:
    """The arguments every training entry point takes: --config, --set, --data-dir, --out."""
    from jaxts._cli import parser as jaxts_parser

    parser = jaxts_parser(prog, description)  # every default shown in --help, as every CLI
    parser.add_argument("--config", required=True, help="YAML run config")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override config values (YAML-typed; nested keys with dots), e.g. --set "
        f"{set_example}",
    )
    parser.add_argument(
        "--data-dir", default=None, help="folder with the dataset CSVs (data.data_dir)"
    )
    parser.add_argument("--out", default=None, help="run folder (default: run.out_dir)")
    return parser


def load_run_config(args: argparse.Namespace, paths: dict[str, Any] | None = None) -> RunConfig:
    """The run config of parsed CLI ``args``: the file, ``--set`` overrides, then ``--data-dir``,
    ``--out`` and the entry point's other path flags (``paths``: dotted key -> value; None
    values are left out). Paths are taken as given, never YAML-parsed: a path may look like a
    number or null."""
    cfg = load_config(args.config, args.overrides)
    values = {"data.data_dir": args.data_dir, "run.out_dir": args.out, **(paths or {})}
    values = {k: v for k, v in values.items() if v is not None}
    return updated(cfg, values) if values else cfg


def check_sections(cfg: RunConfig, entry_point: str, own: str | None = None) -> None:
    """Refuse a trainer-specific section that belongs to another entry point (a distillation
    config given to the Timer-XL trainer would silently train something else)."""
    for section, owner in RECIPE_OWNERS.items():
        if section != own and getattr(cfg, section) is not None:
            raise ConfigError(f"the '{section}' section belongs to {owner}, not to {entry_point}")


def check_resume_compatible(cfg: RunConfig, out: Path) -> None:
    """Refuse to resume a run in ``out`` that was started with other settings (any section but
    ``run``, which says where outputs go and how often): its checkpoints would silently mix two
    experiments. Keys in :data:`RESUME_MAY_CHANGE` say where files are and may change."""
    path = out / "config.yaml"
    if not path.is_file() or not (out / "checkpoints").is_dir():
        return
    try:
        old = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(old, dict):
        raise ConfigError(f"{path}: not a run config (a mapping)")
    new = cfg.to_dict()
    old, new = (flat({k: v for k, v in d.items() if k != "run"}) for d in (old, new))
    diff = [
        f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k) and k not in RESUME_MAY_CHANGE
    ]
    if diff:
        raise ConfigError(
            f"{out} holds a run with other settings ({'; '.join(diff)}); "
            "use another --out or delete that folder"
        )


def prepare_run_dir(cfg: RunConfig) -> Path:
    """The run folder ``run.out_dir``, created, with the resolved ``config.yaml`` (after the
    resume check: call it once everything that can fail before training has been checked, so
    a failed start writes nothing)."""
    out = Path(cfg.run.out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run folder {out} (--out / run.out_dir) is a file, not a folder")
    check_resume_compatible(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    return out


def n_params(model) -> int:
    """The number of trainable parameters (``nnx.Param`` elements) of ``model``."""
    import jax
    from flax import nnx

    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def devices_line() -> str:
    import jax

    return f"{jax.device_count()} {jax.default_backend()} device(s)"


def fit_and_report(trainer, what: str = "training", max_steps: int | None = None):
    """``trainer.fit(max_steps)`` with a one-line summary; returns the FitResult."""
    result = trainer.fit(max_steps)
    best = trainer.out_dir / "best"
    # best/ is written at epoch ends: a run stopped in its first epoch has none yet
    saved = f"; best model in {best}" if best.is_dir() else "; no model written yet"
    if result.steps_run == 0:
        state = "finished" if result.finished else f"stopped at max_steps {max_steps}"
        print(f"{what}: nothing trained (the run is at step {result.global_step}, {state})"
              + saved, flush=True)  # fmt: skip
        return result
    print(
        f"{what} {'done' if result.finished else 'stopped (resumable)'} in "
        f"{result.seconds:.1f}s: {result.epochs_done} epochs, {result.global_step} steps"
        + ("" if result.best_val is None else f", best val {result.best_val}")
        + (" (early stopped)" if result.early_stopped else "")
        + saved,
        flush=True,
    )
    return result


def evaluate_test(model, cfg: RunConfig, out: Path, what: str = "") -> dict:
    """The rolling test evaluation of a Timer-XL run's best model: prints the table, writes
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
    print(f"wrote {out / 'metrics_test.json'}", flush=True)
    return metrics


def _param_shapes(model) -> dict[str, tuple[int, ...]]:
    import jax
    from flax import nnx

    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
    return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in leaves}


def build_or_init_from(cfg: RunConfig, model_cls, load, init_from: str | None, option: str):
    """``(model, cfg)``: ``model_cls`` of the ``model`` section with its parameters and dropout
    seeded from ``optim.seed``, fresh or with the weights of ``load(init_from)`` (a checkpoint's
    model); ``cfg`` gets that checkpoint's config as its model section when it has none.
    ``option`` names the setting in messages (``chronos_t5.init_from``)."""
    from flax import nnx

    rngs = nnx.Rngs(params=cfg.optim.seed, dropout=cfg.optim.seed + 1)
    if init_from is None:
        if cfg.model is None:
            raise ConfigError(
                f"the run config needs a model section, or {option} (--init-from) to train a "
                "checkpoint's model"
            )
        return model_cls(model_config(cfg), rngs=rngs), cfg
    loaded = load(init_from)
    if cfg.model is None:
        cfg = updated(cfg, {"model": model_section(loaded.config)})
    model = model_cls(model_config(cfg), rngs=rngs)
    want, got = _param_shapes(model), _param_shapes(loaded)
    bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if bad:
        ours, theirs = flat(model.config.to_dict()), flat(loaded.config.to_dict())
        fields = [f"{k} {theirs.get(k)!r} (model section {v!r})" for k, v in ours.items()
                  if theirs.get(k) != v]  # fmt: skip
        raise ConfigError(
            f"{option} {init_from} does not fit the model section: {len(bad)} parameter arrays "
            f"differ (e.g. {bad[0]}: {got.get(bad[0])} vs {want.get(bad[0])}); its config has "
            f"{', '.join(fields)}; leave the model section out to train the checkpoint's config"
        )
    nnx.update(model, nnx.state(loaded, nnx.Param))
    return model, cfg
