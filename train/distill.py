"""Knowledge distillation of a STRIDE draft from a frozen Timer-XL teacher.

``python -m train.distill --config configs/distill_etth1.yaml [--set section.key=value ...]
[--data-dir DIR] [--out DIR] [--teacher PATH] [--init-from DIR]`` reproduces the distillation
branch of STRIDE's ``exp_forecast.train`` (``run.py --distill``):

* the teacher (a trained target: a jaxts model directory such as ``train.target``'s
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

The ``model`` section describes the teacher. Outputs in ``--out``: ``best/`` (the draft),
``metrics.jsonl``, ``metrics_val.json`` (calibration of the best draft on the val split) and
``metrics_test.json`` (its rolling test MSE/MAE). See ``docs/distill.md``.

Re-running the same command with the same ``--out`` resumes an interrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxts.models.timer_xl import TimerXL, TimerXLConfig, draft_config
from train.config import ConfigError, DistillConfig, RunConfig, dump_config, load_config
from train.config import model_config as _model_config
from train.trainer import masked_gaussian_nll, masked_mean, masked_mse

__all__ = [
    "ContextOnly",
    "DistillLoss",
    "DistillSetup",
    "Student",
    "build",
    "calibrate",
    "calibration_metrics",
    "calibration_sums",
    "distill_objective",
    "load_teacher",
    "main",
    "run",
    "student_config",
    "teacher_forecast",
    "val_mean_mse",
    "variance_penalty",
]

LOGVAR_FLOOR = -5.0  # STRIDE's variance regulariser penalises logvar below this
LOG_2PI = math.log(2.0 * math.pi)


# ---- losses ------------------------------------------------------------------------------------


def variance_penalty(logvar: jax.Array, mask: jax.Array) -> jax.Array:
    """STRIDE's collapse guard ``mean(relu(-logvar - 5))`` over the valid examples' elements."""
    return masked_mean(jax.nn.relu(LOGVAR_FLOOR - logvar), mask)


def distill_objective(out, target: jax.Array, mask: jax.Array, var_reg: float = 0.0) -> jax.Array:
    """The draft's loss against teacher targets ``[B, T, C]``. ``out``: a ``(mean, logvar)`` pair
    (stochastic draft: Gaussian NLL + ``var_reg`` * variance penalty) or an array (MSE)."""
    if isinstance(out, tuple):
        mean, logvar = out
        loss = masked_gaussian_nll(mean, logvar, target, mask)
        if var_reg > 0:
            loss = loss + var_reg * variance_penalty(logvar, mask)
        return loss
    return masked_mse(out, target, mask)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def teacher_forecast(graphdef, state, x, key=None, noise: float = 0.0) -> jax.Array:
    """The frozen teacher's forecast of every token's next patch ``[B, N*P_out, C]`` (its mean
    when the teacher is stochastic), with gradients stopped.

    ``state = (params, rest)`` from ``nnx.split(teacher, nnx.Param, ...)``; ``graphdef`` picks
    eval or train mode (teacher dropout). ``key`` makes the randomness explicit: its first half
    re-keys every dropout stream of the teacher (each stream's own key folded with fresh bits,
    so layers stay independent), its second half draws the ``noise * N(0, 1)`` target noise.
    Without ``key`` the teacher runs as given (eval mode: deterministic) and no noise is added.
    """
    params, rest = state
    if key is not None:
        k_drop, k_noise = jax.random.split(key)
        bits = jax.random.bits(k_drop, (), jnp.uint32)
        rest = jax.tree.map(lambda v: jax.random.fold_in(v, bits) if _is_key(v) else v, rest)
    teacher = nnx.merge(graphdef, params, rest)
    out = teacher(x)
    if isinstance(out, tuple):  # a stochastic teacher: distil its mean
        out = out[0]
    out = jax.lax.stop_gradient(out)
    if key is not None and noise > 0:
        out = out + noise * jax.random.normal(k_noise, out.shape, out.dtype)
    return out


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


def val_mean_mse(student, batch, mask, aux=None) -> jax.Array:
    """STRIDE's validation: MSE of the draft's (mean) forecast against the data ``y`` (the last
    token's patch with ``valid_last``, else every token's)."""
    x, y = batch
    draft = student.draft if isinstance(student, Student) else student
    out = draft(x)
    mean = out[0] if isinstance(out, tuple) else out
    return masked_mse(mean[:, -y.shape[1] :], y, mask)


class ContextOnly:
    """Training batches ``(x,)``: the distillation targets come from the teacher, not ``y``."""

    def __init__(self, windows):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, idx: np.ndarray):
        return (self.windows.batch(idx)[0],)


# ---- calibration -------------------------------------------------------------------------------


def calibration_sums(mean, logvar, teacher, mask, y=None) -> dict[str, jax.Array]:
    """Per-batch sums over the valid examples' elements (``[B, T, C]`` arrays, mask ``[B]``).

    Draft vs teacher: squared / absolute error and, with a ``logvar``, the Gaussian NLL of the
    teacher's value (with the ``log(2 pi)`` constant), how many teacher values lie within 1 and
    2 sigma of the mean, and the sum of sigma. With ``y``: the draft's and the teacher's squared
    and absolute errors against the data.
    """
    m = mask.reshape((-1,) + (1,) * (mean.ndim - 1))

    def total(v):
        return jnp.sum(jnp.where(m, v, 0.0))

    err = mean - teacher
    out = {
        "n": jnp.sum(mask) * (mean.size // mean.shape[0]),
        "sq": total(jnp.square(err)),
        "abs": total(jnp.abs(err)),
    }
    if logvar is not None:
        sigma = jnp.exp(0.5 * logvar)
        z = jnp.abs(err) / sigma
        out["nll"] = total(0.5 * (LOG_2PI + logvar + jnp.square(z)))
        out["in1"] = total((z <= 1.0).astype(jnp.float32))
        out["in2"] = total((z <= 2.0).astype(jnp.float32))
        out["sigma"] = total(sigma)
    if y is not None:
        out["sq_data"] = total(jnp.square(mean - y))
        out["abs_data"] = total(jnp.abs(mean - y))
        out["sq_teacher"] = total(jnp.square(teacher - y))
        out["abs_teacher"] = total(jnp.abs(teacher - y))
    return out


def calibration_metrics(sums: dict[str, float]) -> dict[str, Any]:
    """Means from (accumulated) :func:`calibration_sums`."""
    n = float(sums["n"])
    res: dict[str, Any] = {
        "draft_vs_teacher": {"mse": sums["sq"] / n, "mae": sums["abs"] / n},
    }
    if "nll" in sums:
        res["draft_vs_teacher"].update(
            nll=sums["nll"] / n,
            cover_1sigma=sums["in1"] / n,
            cover_2sigma=sums["in2"] / n,
            mean_sigma=sums["sigma"] / n,
        )
    if "sq_data" in sums:
        res["draft_vs_data"] = {"mse": sums["sq_data"] / n, "mae": sums["abs_data"] / n}
        res["teacher_vs_data"] = {"mse": sums["sq_teacher"] / n, "mae": sums["abs_teacher"] / n}
    return res


@functools.partial(jax.jit, static_argnums=(0, 1))
def _calibration_batch(draft_graphdef, teacher_graphdef, draft_state, teacher_state, x, y, mask):
    model = nnx.merge(draft_graphdef, *draft_state)
    draft = model.draft if isinstance(model, Student) else model
    out = draft(x)
    h = y.shape[1]
    mean, logvar = (
        (out[0][:, -h:], out[1][:, -h:]) if isinstance(out, tuple) else (out[:, -h:], None)
    )
    teacher = teacher_forecast(teacher_graphdef, teacher_state, x)[:, -h:]
    return calibration_sums(mean, logvar, teacher, mask, y)


def calibrate(
    draft_graphdef, draft_state, teacher_graphdef, teacher_state, data, batch_size: int, put=None
) -> dict[str, Any]:
    """The draft's calibration against the teacher over a whole split (both in eval mode, no
    teacher noise): :func:`calibration_metrics` of ``data``'s ``(x, y)`` batches (``y``'s length
    picks the tokens: the last patch with ``LastPatch``). ``draft_graphdef``/``draft_state``: an
    eval-mode split of a ``Student`` or a ``TimerXL`` (``(params, rest)``). ``put(batch, mask)``
    places a batch (e.g. the trainer's data sharding); padding rows are masked out."""
    from jaxts.data import pad_batch

    pending = []
    n = len(data)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        batch, mask = pad_batch(data.batch(idx), batch_size)
        if put is not None:
            batch, mask = put(batch, mask)
        x, y = batch
        pending.append(
            _calibration_batch(
                draft_graphdef, teacher_graphdef, draft_state, teacher_state, x, y, mask
            )
        )
    totals: dict[str, float] = {}
    for sums in jax.device_get(pending):
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(np.float64(v))
    return calibration_metrics(totals)


def _flat_calibration(metrics: dict[str, Any]) -> dict[str, float]:
    """The per-epoch metrics.jsonl fields of :func:`calibrate`'s result."""
    names = {"mse": "vs_teacher_mse", "mae": "vs_teacher_mae", "nll": "vs_teacher_nll",
             "cover_1sigma": "cover_1sigma", "cover_2sigma": "cover_2sigma",
             "mean_sigma": "mean_sigma"}  # fmt: skip
    return {names[k]: float(v) for k, v in metrics["draft_vs_teacher"].items()}


# ---- models ------------------------------------------------------------------------------------


def _config_diff(want: TimerXLConfig, got: TimerXLConfig) -> list[str]:
    a, b = want.to_dict(), got.to_dict()
    return [f"{k}: {b.get(k)!r} (expected {a.get(k)!r})" for k in a if a.get(k) != b.get(k)]


def load_teacher(path: str | Path | None, expected: TimerXLConfig, fmt: str = "auto") -> TimerXL:
    """The teacher: a jaxts model directory (its config must equal ``expected``, the run's
    ``model`` section) or an OpenLTM/STRIDE ``.pth`` read with ``expected`` as its config (the
    section supplies what a state dict does not record, e.g. ``use_norm``)."""
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
    hint = "the model section must describe the teacher (--set model.KEY=VALUE)"
    return _load_checked(p, expected, "teacher", hint, jaxts_dir=fmt == "jaxts")


def _load_checked(p: Path, cfg: TimerXLConfig, what: str, hint: str, *, jaxts_dir: bool):
    """A model from a jaxts directory (its config must equal ``cfg``) or an OpenLTM/STRIDE
    ``.pth`` read with ``cfg`` as its config; mismatches are ConfigErrors naming ``what``."""
    if jaxts_dir:
        from jaxts.checkpoint import load_model, read_config

        if not (p / "config.json").is_file():
            raise ConfigError(f"{what} {p} is not a jaxts model directory (no config.json)")
        _, got, _ = read_config(p)
        diff = _config_diff(cfg, got)
        if diff:
            raise ConfigError(f"{what} {p} does not match ({'; '.join(diff)}); {hint}")
        return load_model(p)
    from bridges.timer_xl import from_openltm

    try:
        return from_openltm(p, config=cfg)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"{what} {p}: not loadable as a Timer-XL with config {cfg}: {e}") from e


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

    def calibrate(self, model=None) -> dict[str, Any]:
        """Calibration on the val split: of the trainer's current state (default) or of a
        ``TimerXL`` draft (e.g. the exported best)."""
        tr = self.trainer
        graphdef, state = self.teacher_eval
        if model is None:
            return calibrate(tr.eval_graphdef, (tr.params, tr.rest), graphdef, tr.aux,
                             self.val_data, tr.cfg.batch_size, put=tr._shard)  # fmt: skip
        model.eval()
        g, params, rest = nnx.split(model, nnx.Param, ...)
        return calibrate(g, (params, rest), graphdef, state, self.val_data, tr.cfg.batch_size)


def build(cfg: RunConfig, *, devices=None, callback=None, verbose: bool = True) -> DistillSetup:
    """Teacher, student, data and Trainer of a distillation config (nothing trained yet)."""
    from train.target import LastPatch, n_params, next_patch_data, trainer_config
    from train.trainer import Trainer

    d_cfg = cfg.distill if cfg.distill is not None else DistillConfig()
    try:
        t_cfg = _model_config(cfg)
    except ValueError as e:
        raise ConfigError(f"model section: {e}") from e
    d, o = cfg.data, cfg.optim
    train_ds, val_ds = next_patch_data(cfg, t_cfg)
    loaded = load_teacher(d_cfg.teacher, t_cfg, d_cfg.teacher_format)
    s_cfg = student_config(t_cfg, d_cfg)
    init = _load_init(d_cfg.init_from, s_cfg) if d_cfg.init_from else None

    # The teacher, rebuilt with its dropout rate for teacher_dropout (a static attribute).
    rate = d_cfg.teacher_dropout if d_cfg.teacher_dropout > 0 else t_cfg.dropout
    teacher = TimerXL(dataclasses.replace(t_cfg, dropout=rate),
                      rngs=nnx.Rngs(params=0, dropout=o.seed + 3))  # fmt: skip
    nnx.update(teacher, nnx.state(loaded, nnx.Param))
    teacher.train()
    t_train_gd, _, _ = nnx.split(teacher, nnx.Param, ...)
    teacher.eval()
    t_eval_gd, t_params, t_rest = nnx.split(teacher, nnx.Param, ...)

    draft = TimerXL(s_cfg, rngs=nnx.Rngs(params=o.seed, dropout=o.seed + 1))
    if init is not None:
        nnx.update(draft, nnx.state(init, nnx.Param))
    student = Student(draft, seed=o.seed + 2)

    val_data = LastPatch(val_ds) if o.valid_last else val_ds
    if verbose:
        print(
            f"{d.dataset}: {len(train_ds)} train / {len(val_ds)} val windows, "
            f"{train_ds.num_channels} variables; {jax.device_count()} "
            f"{jax.default_backend()} device(s)\n"
            f"teacher {d_cfg.teacher}: {n_params(teacher):,} parameters "
            f"(d_model {t_cfg.d_model}, {t_cfg.n_heads} heads, d_ff {t_cfg.d_ff}, "
            f"{t_cfg.e_layers} layers)\n"
            f"draft{' (stochastic)' if s_cfg.stochastic else ''}: {n_params(draft):,} "
            f"parameters (d_model {s_cfg.d_model}, {s_cfg.n_heads} heads, d_ff {s_cfg.d_ff}, "
            f"{s_cfg.e_layers} layers)"
            + (f", initialised from {d_cfg.init_from}" if init is not None else ", fresh"),
            flush=True,
        )
        if not s_cfg.stochastic and d_cfg.var_reg > 0:
            print("note: distill.var_reg has no effect on a deterministic draft", flush=True)

    loss = DistillLoss(
        t_train_gd if d_cfg.teacher_dropout > 0 else t_eval_gd,
        var_reg=float(d_cfg.var_reg),
        teacher_noise=float(d_cfg.teacher_noise),
    )
    setup = DistillSetup(None, teacher, t_cfg, s_cfg, (t_eval_gd, (t_params, t_rest)), val_data)
    setup.trainer = Trainer(
        student,
        trainer_config(cfg),
        loss,
        ContextOnly(train_ds),
        val_data,
        val_mean_mse,
        devices=devices,
        export_best=lambda m, directory: _save_draft(m.draft, directory),
        callback=callback,
        aux=(t_params, t_rest),
        epoch_metrics=lambda tr: _flat_calibration(setup.calibrate()),
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


def run(cfg: RunConfig) -> dict:
    """Distil, then evaluate the best draft. Returns ``{"val": metrics_val.json's content,
    "test": metrics_test.json's content (rolling MSE/MAE per horizon and avg)}``."""
    from jaxts.checkpoint import load_model
    from train.target import _check_resume_compatible, evaluate_test, fit_and_report

    if cfg.distill is None:
        raise ConfigError("a distillation config needs a 'distill' section (at least teacher)")
    out = Path(cfg.run.out_dir)
    setup = build(cfg)
    _check_resume_compatible(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    result = fit_and_report(setup.trainer, "distillation")

    best = load_model(out / "best")
    val = setup.calibrate(best)
    val = {
        "split": "val",
        "tokens": "last" if cfg.optim.valid_last else "all",
        "windows": len(setup.val_data),
        "best_val_loss": result.best_val,
        **val,
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

    test = evaluate_test(best, cfg, out, " of the draft")
    teacher_test = Path(str(cfg.distill.teacher)).parent / "metrics_test.json"
    if teacher_test.is_file():
        try:
            avg = json.loads(teacher_test.read_text())["avg"]
            print(f"teacher ({teacher_test}): avg mse {avg['mse']:.6f} mae {avg['mae']:.6f}")
        except (ValueError, KeyError, TypeError):
            pass
    print(f"wrote {out / 'metrics_test.json'}", flush=True)
    return {"val": val, "test": test}


def main(argv: list[str] | None = None) -> int:
    from train.target import cli_parser, exit_code, with_cli_paths

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

    # Paths are passed as strings (never YAML-parsed: a path may look like a number or null).
    def job():
        cfg = load_config(args.config, args.overrides)
        dist = cfg.distill if cfg.distill is not None else DistillConfig()
        if args.teacher is not None:
            dist = dataclasses.replace(dist, teacher=args.teacher)
        if args.init_from is not None:
            dist = dataclasses.replace(dist, init_from=args.init_from)
        run(with_cli_paths(dataclasses.replace(cfg, distill=dist), args))

    return exit_code(job)


if __name__ == "__main__":
    sys.exit(main())
