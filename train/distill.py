"""Knowledge distillation of a STRIDE draft from a frozen Timer-XL teacher.

``python -m train.distill --config configs/distill_etth1.yaml [--set section.key=value ...]
[--data-dir DIR] [--out DIR] [--teacher PATH] [--init-from DIR]`` reproduces the distillation
branch of STRIDE's ``exp_forecast.train`` (``run.py --distill``):

* the teacher (a trained target: a jaxts model directory such as ``train.timer_xl``'s
  ``RUN/best``, or an OpenLTM/STRIDE ``checkpoint.pth``) is frozen; its forecasts of every
  token's next patch, ``teacher(x)`` ``[B, N*P_out, C]``, are the targets;
* the student is ``draft_config(teacher, scale_*, stochastic=...)``, fresh or initialised from a
  pretrained draft (``distill.init_from``, STRIDE's ``--adaptation``);
* a stochastic draft minimises the Gaussian NLL ``0.5 * (logvar + (mean - t)^2 / exp(logvar))``
  averaged over all elements, plus ``var_reg * mean(relu(-logvar - 5))``; a deterministic draft
  the MSE to the teacher. ``teacher_noise`` adds ``noise * N(0, 1)`` to the targets and
  ``teacher_dropout`` runs the teacher with dropout (train mode);
* validation (early stopping, best model) is the MSE of the draft's mean against the data, as
  STRIDE's ``vali``; every epoch also logs the draft's calibration against the teacher.

The ``model`` section describes the teacher: read from a jaxts teacher's checkpoint when left
out (given, it must agree), required for an OpenLTM ``.pth`` teacher, which does not record
``use_norm`` etc.; the run's ``config.yaml`` records the resolved teacher config. Outputs in
``--out``: ``best/`` (the draft),
``metrics.jsonl``, ``metrics_val.json`` (calibration of the best draft on the val split) and
``metrics_test.json`` (its rolling test MSE/MAE). See ``docs/distill.md``.

Re-running the same command with the same ``--out`` resumes an interrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from jaxts.models.timer_xl import TimerXL, TimerXLConfig, draft_config
from train.calibration import calibrate, flat_calibration, teacher_forecast
from train.config import ConfigError, DistillConfig, RunConfig, model_config, model_section, updated
from train.losses import distill_objective, next_patch_mean_mse
from train.timer_xl import WindowView


class Student(nnx.Module):
    """The trained object: the draft plus the RNG stream of the distillation's randomness
    (teacher noise and dropout). The stream's counter lives in the trainer's state, so it is
    checkpointed and a resumed run draws the same numbers as an uninterrupted one."""

    def __init__(self, draft: TimerXL, seed: int):
        self.draft = draft
        self.rngs = nnx.Rngs(distill=seed)


@dataclasses.dataclass(frozen=True)
class DistillLoss:
    """``loss_fn(student, (x,), mask, aux)`` for the Trainer; ``aux`` is the teacher's
    ``(params, rest)`` (replicated, an argument of the compiled step). Hashable: a jit static."""

    teacher_graphdef: Any  # train-mode graphdef when teacher_dropout, else eval-mode
    var_reg: float = 0.0
    teacher_noise: float = 0.0

    def __call__(self, student: Student, batch, mask, aux):
        x = batch[0]
        key = student.rngs.distill()  # one key per step, also when unused (fixed state layout)
        target = teacher_forecast(self.teacher_graphdef, aux, x, key, self.teacher_noise)
        return distill_objective(student.draft(x), target, mask, self.var_reg)


class ContextOnly(WindowView):
    """Training batches ``(x,)``: the distillation targets come from the teacher, not ``y``."""

    def batch(self, idx: np.ndarray):
        return (self.windows.batch(idx)[0],)


# ---- models ------------------------------------------------------------------------------------


def _config_diff(want: TimerXLConfig, got: TimerXLConfig) -> list[str]:
    a, b = want.to_dict(), got.to_dict()
    return [f"{k}: {b.get(k)!r} (expected {a.get(k)!r})" for k in a if a.get(k) != b.get(k)]


def load_teacher(
    path: str | Path | None, expected: TimerXLConfig | None = None, fmt: str = "auto"
) -> TimerXL:
    """The teacher: a jaxts model directory (its config must equal ``expected``, the run's
    ``model`` section, when that is given) or an OpenLTM/STRIDE ``.pth`` read with ``expected``
    as its config (the section supplies what a state dict does not record, e.g. ``use_norm``)."""
    if not path:
        raise ConfigError(
            "distill.teacher is not set: give the trained target (a jaxts model directory such "
            "as runs/timer_xl_etth1_cpu/best, or an OpenLTM checkpoint.pth) with --teacher PATH"
        )
    p = Path(path)
    if not p.exists():
        raise ConfigError(
            f"teacher checkpoint {p} not found: train the target first (e.g. python -m "
            "train.target --config configs/timer_xl_etth1_cpu.yaml, which writes "
            "runs/timer_xl_etth1_cpu/best) or pass --teacher PATH"
        )
    if fmt == "auto":
        fmt = "jaxts" if p.is_dir() else "openltm"
    hint = "the model section must describe the teacher (or leave it out for a jaxts teacher)"
    return _load_checked(p, expected, "teacher", hint, jaxts_dir=fmt == "jaxts")


def _load_checked(
    p: Path, cfg: TimerXLConfig | None, what: str, hint: str, *, jaxts_dir: bool
) -> TimerXL:
    """A Timer-XL from a jaxts directory (its config must equal ``cfg`` unless None) or an
    OpenLTM/STRIDE ``.pth`` read with ``cfg`` as its config; mismatches are ConfigErrors naming
    ``what``."""
    if jaxts_dir:
        from jaxts.checkpoint import load_model, read_config

        if not (p / "config.json").is_file():
            raise ConfigError(f"{what} {p} is not a jaxts model directory (no config.json)")
        name, got, _ = read_config(p)
        if name != "timer_xl":
            raise ConfigError(f"{what} {p} holds a {name} checkpoint; expected timer_xl")
        diff = [] if cfg is None else _config_diff(cfg, got)
        if diff:
            raise ConfigError(f"{what} {p} does not match ({'; '.join(diff)}); {hint}")
        return load_model(p, family="timer_xl")
    if cfg is None:
        raise ConfigError(
            f"{what} {p} is an OpenLTM checkpoint, which does not record the model's config "
            "(use_norm, activation, covariate): give it as the run config's model section"
        )
    from bridges.timer_xl import from_openltm

    try:
        return from_openltm(p, config=cfg)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"{what} {p}: not loadable as a Timer-XL with config {cfg}: {e}") from e


def resolve_teacher(cfg: RunConfig) -> tuple[RunConfig, TimerXL]:
    """The loaded teacher and ``cfg`` with its config as the ``model`` section (the section
    may be left out for a jaxts teacher, whose checkpoint records it)."""
    d = cfg.distill if cfg.distill is not None else DistillConfig()
    expected = None
    if cfg.model is not None:
        expected = model_config(cfg)
        if not isinstance(expected, TimerXLConfig):
            raise ConfigError(f"train.distill distils a timer_xl teacher, not {cfg.model.name}")
    teacher = load_teacher(d.teacher, expected, d.teacher_format)
    if cfg.model is None:
        cfg = updated(cfg, {"model": model_section(teacher.config)})
    return cfg, teacher


def student_config(teacher: TimerXLConfig, d: DistillConfig) -> TimerXLConfig:
    """STRIDE's draft of ``teacher`` with the distill section's scales and head kind."""
    return draft_config(
        teacher, d.scale_d_model, d.scale_n_heads, d.scale_d_ff, d.scale_e_layers,
        stochastic=d.stochastic,
    )  # fmt: skip


def _load_init(path: str, cfg: TimerXLConfig) -> TimerXL:
    """A pretrained draft to start from; its config must equal the draft config."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"distill.init_from {p} not found")
    hint = "pretrain the draft with exactly the draft config (printed by train.distill)"
    return _load_checked(p, cfg, "distill.init_from", hint, jaxts_dir=p.is_dir())


# ---- the run -----------------------------------------------------------------------------------


@dataclasses.dataclass
class DistillSetup:
    """Everything :func:`run` trains with (returned by :func:`build`, e.g. for tests)."""

    trainer: Any  # train.trainer.Trainer over a Student
    teacher: TimerXL
    teacher_config: TimerXLConfig
    draft_config: TimerXLConfig
    teacher_eval: tuple  # (eval graphdef, (params, rest)) of the teacher
    val_data: Any  # (x, y) batches: LastPatch with valid_last, else all tokens
    cfg: RunConfig  # the run config with the teacher's config as its model section

    def calibrate(self, model=None) -> dict[str, Any]:
        """Calibration on the val split: of the trainer's current state (default) or of a
        ``TimerXL`` draft (e.g. the exported best)."""
        tr = self.trainer
        graphdef, state = self.teacher_eval
        bs = tr.optim.batch_size
        if model is None:
            return calibrate(tr.eval_graphdef, (tr.params, tr.rest), graphdef, tr.aux,
                             self.val_data, bs, put=tr._shard)  # fmt: skip
        model.eval()
        g, params, rest = nnx.split(model, nnx.Param, ...)
        return calibrate(g, (params, rest), graphdef, state, self.val_data, bs)


def _frozen_teacher(loaded: TimerXL, d_cfg: DistillConfig, seed: int):
    """The teacher rebuilt with its dropout rate for ``teacher_dropout`` (a static attribute):
    (teacher, train-mode graphdef, eval-mode graphdef, params, rest)."""
    t_cfg = loaded.config
    rate = d_cfg.teacher_dropout if d_cfg.teacher_dropout > 0 else t_cfg.dropout
    teacher = TimerXL(dataclasses.replace(t_cfg, dropout=rate),
                      rngs=nnx.Rngs(params=0, dropout=seed + 3))  # fmt: skip
    nnx.update(teacher, nnx.state(loaded, nnx.Param))
    teacher.train()
    t_train_gd, _, _ = nnx.split(teacher, nnx.Param, ...)
    teacher.eval()
    t_eval_gd, t_params, t_rest = nnx.split(teacher, nnx.Param, ...)
    return teacher, t_train_gd, t_eval_gd, t_params, t_rest


def _describe(cfg: RunConfig, train_ds, val_ds, teacher, draft, init) -> None:
    from train.common import devices_line, n_params

    t, s, d_cfg = teacher.config, draft.config, cfg.distill or DistillConfig()
    print(
        f"{cfg.data.dataset}: {len(train_ds)} train / {len(val_ds)} val windows, "
        f"{train_ds.num_channels} variables; {devices_line()}\n"
        f"teacher {d_cfg.teacher}: {n_params(teacher):,} parameters "
        f"(d_model {t.d_model}, {t.n_heads} heads, d_ff {t.d_ff}, {t.e_layers} layers)\n"
        f"draft{' (stochastic)' if s.stochastic else ''}: {n_params(draft):,} "
        f"parameters (d_model {s.d_model}, {s.n_heads} heads, d_ff {s.d_ff}, "
        f"{s.e_layers} layers)"
        + (f", initialised from {d_cfg.init_from}" if init is not None else ", fresh"),
        flush=True,
    )
    if not s.stochastic and d_cfg.var_reg > 0:
        print("note: distill.var_reg has no effect on a deterministic draft", flush=True)


def build(cfg: RunConfig, *, devices=None, callback=None, verbose: bool = True) -> DistillSetup:
    """Teacher, student, data and Trainer of a distillation config (nothing trained yet)."""
    from train.timer_xl import LastPatch, next_patch_data, optimizer
    from train.trainer import Trainer

    cfg, loaded = resolve_teacher(cfg)
    d_cfg = cfg.distill if cfg.distill is not None else DistillConfig()
    o = cfg.optim
    t_cfg = loaded.config
    train_ds, val_ds = next_patch_data(cfg, t_cfg)
    s_cfg = student_config(t_cfg, d_cfg)
    init = _load_init(d_cfg.init_from, s_cfg) if d_cfg.init_from else None
    teacher, t_train_gd, t_eval_gd, t_params, t_rest = _frozen_teacher(loaded, d_cfg, o.seed)

    draft = TimerXL(s_cfg, rngs=nnx.Rngs(params=o.seed, dropout=o.seed + 1))
    if init is not None:
        nnx.update(draft, nnx.state(init, nnx.Param))
    student = Student(draft, seed=o.seed + 2)
    val_data = LastPatch(val_ds) if o.valid_last else val_ds
    if verbose:
        _describe(cfg, train_ds, val_ds, teacher, draft, init)

    loss = DistillLoss(
        t_train_gd if d_cfg.teacher_dropout > 0 else t_eval_gd,
        var_reg=float(d_cfg.var_reg),
        teacher_noise=float(d_cfg.teacher_noise),
    )
    setup = DistillSetup(
        None, teacher, t_cfg, s_cfg, (t_eval_gd, (t_params, t_rest)), val_data, cfg
    )
    tx, schedule = optimizer(cfg, len(train_ds))
    setup.trainer = Trainer(
        student,
        loss,
        ContextOnly(train_ds),
        val_data,
        next_patch_mean_mse,
        optim=o,
        run=cfg.run,
        tx=tx,
        schedule=schedule,
        devices=devices,
        export_best=lambda m, directory: _save_draft(m.draft, directory),
        callback=callback,
        aux=(t_params, t_rest),
        epoch_metrics=lambda tr: flat_calibration(setup.calibrate()),
    )
    return setup


def _save_draft(draft: TimerXL, directory: Path) -> None:
    from jaxts.checkpoint import save_model

    save_model(draft, directory, extra={"distilled": True})


_EPOCH_KEYS = ("epoch", "loss", "val_loss", "vs_teacher_mse", "vs_teacher_mae", "vs_teacher_nll",
               "cover_1sigma", "cover_2sigma", "mean_sigma")  # fmt: skip


def _epoch_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
    return [r for r in rows if r.get("event") == "epoch"]


def _write_val_metrics(setup: DistillSetup, best: TimerXL, result, out: Path) -> dict:
    """``metrics_val.json``: the best draft's calibration on the val split, printed too."""
    val = {
        "split": "val",
        "tokens": "last" if setup.cfg.optim.valid_last else "all",
        "windows": len(setup.val_data),
        "best_val_loss": result.best_val,
        **setup.calibrate(best),
        "per_epoch": [
            {k: r[k] for k in r if k in _EPOCH_KEYS} for r in _epoch_lines(out / "metrics.jsonl")
        ],
    }
    with open(out / "metrics_val.json", "w") as f:
        json.dump(val, f, indent=2)
    dvt = val["draft_vs_teacher"]
    print(
        "val, best draft vs teacher: "
        + ", ".join(f"{k} {v:.4f}" for k, v in dvt.items())
        + f"; vs data: draft mse {val['draft_vs_data']['mse']:.4f}, teacher mse "
        f"{val['teacher_vs_data']['mse']:.4f}"
    )
    print(f"wrote {out / 'metrics_val.json'}", flush=True)
    return val


def run(cfg: RunConfig) -> dict:
    """Distil, then evaluate the best draft. Returns ``{"val": metrics_val.json's content,
    "test": metrics_test.json's content (rolling MSE/MAE per horizon and avg)}``."""
    from jaxts.checkpoint import load_model
    from train.common import check_sections, evaluate_test, fit_and_report, prepare_run_dir

    check_sections(cfg, "python -m train.distill", own="distill")
    if cfg.distill is None:
        raise ConfigError("a distillation config needs a 'distill' section (at least teacher)")
    setup = build(cfg)
    out = prepare_run_dir(setup.cfg)
    result = fit_and_report(setup.trainer, "distillation")

    best = load_model(out / "best", family="timer_xl")
    val = _write_val_metrics(setup, best, result, out)
    test = evaluate_test(best, setup.cfg, out, " of the draft")
    teacher_test = Path(str(cfg.distill.teacher)).parent / "metrics_test.json"
    if teacher_test.is_file():
        try:
            avg = json.loads(teacher_test.read_text())["avg"]
            print(f"teacher ({teacher_test}): avg mse {avg['mse']:.6f} mae {avg['mae']:.6f}")
        except (ValueError, KeyError, TypeError):
            pass
    return {"val": val, "test": test}


def main(argv: list[str] | None = None) -> int:
    from jaxts._cli import exit_code
    from train.common import cli_parser, load_run_config

    parser = cli_parser(
        "python -m train.distill",
        "Distil a STRIDE draft from a frozen Timer-XL teacher.",
        "distill.teacher_noise=0.1",
    )
    parser.add_argument("--teacher", default=None, help="teacher checkpoint (distill.teacher)")
    parser.add_argument(
        "--init-from", default=None, help="pretrained draft to start from (distill.init_from)"
    )
    args = parser.parse_args(argv)
    paths = {"distill.teacher": args.teacher, "distill.init_from": args.init_from}
    return exit_code(lambda: run(load_run_config(args, paths)))


if __name__ == "__main__":
    sys.exit(main())
