"""Does soft group masking help Chronos-2? Hard groups, full cross-learning and soft masks on the
same windows.

``python -m eval.soft_mask --ckpt DIR [--data-dir D] [--datasets ...] [--context-length 512]
[--horizon 64] [--m4-horizon 48] [--stride H] [--max-windows N] [--m4-batch 16]
[--similarities correlation,cosine,gaussian] [--temperatures 1,5,10,20] --out DIR [--force]``

``--ckpt``: a Chronos-2 that ``jaxts.Chronos2Pipeline.from_pretrained`` loads (a jaxts
checkpoint such as ``train.chronos2``'s ``best/``, an upstream directory or hub id).

Data; every series is forecast as its own target (no covariates):

* ETTh1, ETTh2, ETTm1, ETTm2, weather (related variates): rolling windows over the test split
  (``jaxts.data.load_split``: ETT borders, 70/10/20 otherwise), one every ``--stride`` steps
  (default: the horizon, so horizons do not overlap), ``--max-windows`` of them evenly spread when
  given. One window = one batch = all variates of the window; *hard*: each variate its own group,
  *full*: the whole window one group.
* M4 Hourly (unrelated series): the last ``--context-length`` values of each training series
  before its official test horizon, ``--m4-batch`` consecutive series per batch (``--max-windows``
  limits the number of batches).

Arms, all on the same batches: ``hard`` (``cross_learning=False``), ``hard_rerun`` (the same
again: the model is deterministic, so its paired difference is exactly 0; the noise floor of this
evaluation is therefore not a re-run but the width of each interval, reported as ``ci_width``),
``full`` (``cross_learning=True``) and ``soft_<similarity>_t<temperature>``
(``soft_mask=SoftGroupMask(similarity, temperature)``, hard groups otherwise). A larger
temperature is *stricter* (closer to hard), temperature 0 is exactly full cross-learning (see
``jaxts.soft_mask``).

Scores in the scaled space (ETT / weather: the train-split standard scaler, as ``jaxts.data``;
M4: each series' context mean and population std, 1 when constant): MSE and MAE of the median
and WQL over the model's quantiles (``2 * pinball`` summed over levels, steps and series, divided
by ``sum |y|``, averaged over the levels). A *unit* of the paired statistics is one window
(ETT / weather: mean over its variates) or one series (M4). A unit's WQL uses its dataset's
``mean |y|`` as the denominator, so the mean over units is the dataset's WQL.

Per arm against ``hard`` (per dataset, ``related`` = the ETT / weather datasets pooled, ``all``):
mean metrics, the mean per-unit difference with a 95% bootstrap interval and its width, the
relative change, win rate (share of units where the arm is lower, ties half) and Wilcoxon p
(``eval.paired``); how close the arm's forecasts are to hard's (Pearson correlation over every
quantile forecast, share within 1e-3 in the scaled space); breakdowns by variate (ETT / weather
columns) and by horizon bucket (steps 1-16, 17-32, ...).

Writes ``results.json``, ``per_window.csv`` (one row per unit and arm), ``summary.csv`` and
``temperature_sweep.png`` (metric against temperature, one line per similarity, hard and full as
horizontal lines; ETT / weather and M4 apart) to ``--out``, and prints the summary.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from eval.chronos_t5 import quantile_loss
from eval.paired import N_BOOTSTRAP

__all__ = ["Arm", "Batch", "arg_parser", "evaluate", "load_batches", "main", "make_arms"]

RELATED = ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "weather")
M4 = "m4_hourly"
DEFAULT_DATASETS = (*RELATED, M4)
DEFAULT_TEMPERATURES = (1.0, 5.0, 10.0, 20.0)
POOLED = ("related", M4, "all")  # the groups printed (each dataset's rows: summary.csv)
CLOSE = 1e-3  # |soft - hard| below this (scaled units) counts as the same forecast


@dataclasses.dataclass
class Batch:
    """One forward pass' worth of series: ``context [B, T]`` raw float32, ``target [B, H]``
    scaled; ``loc``/``scale [B]`` map raw to scaled; ``labels [B]`` (variate names or series
    ids); ``unit [B]`` (index into ``units``, the statistical units the series belong to)."""

    dataset: str
    context: np.ndarray
    target: np.ndarray
    loc: np.ndarray
    scale: np.ndarray
    labels: list[str]
    units: list[str]
    unit: np.ndarray


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    cross_learning: bool = False
    similarity: str | None = None
    temperature: float | None = None

    def soft_mask(self):
        from jaxts.soft_mask import SoftGroupMask

        if self.similarity is None:
            return None
        return SoftGroupMask(self.similarity, temperature=self.temperature)


def make_arms(similarities, temperatures) -> list[Arm]:
    """``hard``, ``hard_rerun``, ``full`` and one soft arm per similarity and temperature."""
    arms = [Arm("hard"), Arm("hard_rerun"), Arm("full", cross_learning=True)]
    for sim in similarities:
        for t in temperatures:
            arms.append(Arm(f"soft_{sim}_t{t:g}", similarity=sim, temperature=float(t)))
    return arms


# ---- data ---------------------------------------------------------------------------------------


def _spread(n: int, limit: int | None) -> np.ndarray:
    """Indices of ``limit`` of ``n`` items evenly spread over them (all when ``limit`` is None)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def related_batches(name, data_dir, context_length, horizon, stride, max_windows) -> list[Batch]:
    """Rolling test windows of one wide table (ETT / weather layout), one batch per window."""
    from jaxts.data import DataError, load_split, read_table, resolve_path, scaler_stats

    path = resolve_path(name, data_dir)
    cols = read_table(path)[1]
    raw = load_split(path, "test", context_length, scale=False)  # [rows, C]
    mean, std = scaler_stats(path, context_length)  # [C] each, float64
    n = (len(raw) - context_length - horizon) // stride + 1
    if n < 1:
        raise DataError(f"{path}: the test split has {len(raw) - context_length} rows; a window "
                        f"needs a horizon of {horizon}")  # fmt: skip
    batches = []
    for k in _spread(n, max_windows):
        s = int(k) * stride
        ctx = raw[s : s + context_length].T  # [C, T]
        y = raw[s + context_length : s + context_length + horizon].T  # [C, H]
        target = ((y - mean[:, None]) / std[:, None]).astype(np.float32)
        batches.append(Batch(name, np.ascontiguousarray(ctx), target, mean, std, list(cols),
                             [f"w{s}"], np.zeros(len(cols), int)))  # fmt: skip
    return batches


def m4_batches(data_dir, context_length, horizon, batch_size, max_windows) -> list[Batch]:
    """M4 Hourly: each series' last ``context_length`` training values, ``batch_size`` series a
    batch; targets the first ``horizon`` test values, scaled by the context's mean and std."""
    from jaxts.data import M4_HOURLY_HORIZON, load_m4_hourly

    if horizon > M4_HOURLY_HORIZON:
        raise ValueError(f"--m4-horizon {horizon} exceeds M4 Hourly's test horizon "
                         f"{M4_HOURLY_HORIZON}")  # fmt: skip
    train, test, ids = load_m4_hourly(data_dir, with_ids=True)
    ctx = np.full((len(train), context_length), np.nan, np.float32)  # left-padded with NaN
    for i, s in enumerate(train):
        tail = s[-context_length:]
        ctx[i, context_length - len(tail) :] = tail
    loc = np.nanmean(ctx.astype(np.float64), axis=1)  # [N]
    std = np.nanstd(ctx.astype(np.float64), axis=1)
    std = np.where(std > 0, std, 1.0)
    target = ((test[:, :horizon] - loc[:, None]) / std[:, None]).astype(np.float32)
    starts = range(0, len(train), batch_size)
    batches = []
    for k in _spread(len(starts), max_windows):
        sl = slice(starts[k], starts[k] + batch_size)
        n = len(ids[sl])
        batches.append(Batch(M4, ctx[sl], target[sl], loc[sl], std[sl], ids[sl], ids[sl],
                             np.arange(n)))  # fmt: skip
    return batches


def load_batches(args) -> dict[str, list[Batch]]:
    """``{dataset: [Batch]}`` for ``--datasets`` (see the module docstring)."""
    known = {n.lower(): n for n in DEFAULT_DATASETS}
    out = {}
    for item in args.datasets.split(","):
        name = known.get(item.strip().lower())
        if name is None:
            raise ValueError(f"--datasets: unknown dataset {item.strip()!r}; known: "
                             f"{', '.join(DEFAULT_DATASETS)}")  # fmt: skip
        if name == M4:
            out[name] = m4_batches(args.data_dir, args.context_length, args.m4_horizon,
                                   args.m4_batch, args.max_windows)  # fmt: skip
        else:
            out[name] = related_batches(name, args.data_dir, args.context_length, args.horizon,
                                        args.stride or args.horizon, args.max_windows)  # fmt: skip
    return out


# ---- forecasting and scoring --------------------------------------------------------------------


def forecast(pipe, batch: Batch, arm: Arm, context_length: int) -> np.ndarray:
    """Quantile forecasts ``[B, Q, H]`` of one arm on one batch, in the scaled space."""
    from eval.forecast import require_finite

    b, h = batch.target.shape
    preds = pipe.predict(batch.context[:, None, :], prediction_length=h, batch_size=b,
                         context_length=context_length, cross_learning=arm.cross_learning,
                         soft_mask=arm.soft_mask())  # fmt: skip
    q = np.stack([np.asarray(p, np.float64)[0] for p in preds])  # [B, Q, H]
    require_finite(q, f"{batch.dataset} {batch.units[0]}", arm.name)
    return (q - batch.loc[:, None, None]) / batch.scale[:, None, None]


def step_errors(target: np.ndarray, q: np.ndarray, levels, median: int) -> dict[str, np.ndarray]:
    """Per series and step ``[B, H]``: squared and absolute error of the median, and the quantile
    loss ``2 * pinball`` averaged over the levels (``eval.chronos_t5.quantile_loss`` with every
    (series, step) as a series of one step)."""
    y = target.astype(np.float64)  # [B, H]
    b, n_q, h = q.shape
    err = q[:, median] - y  # [B, H]
    per_step = q.transpose(0, 2, 1).reshape(b * h, 1, n_q)  # [B*H, 1, Q]
    ql = quantile_loss(y.reshape(b * h, 1), per_step, levels).mean(-1)  # [B*H]
    return {"se": np.square(err), "ae": np.abs(err), "ql": ql.reshape(b, h)}


@dataclasses.dataclass
class Agreement:
    """Streaming comparison of an arm's quantile forecasts with hard's: moments for Pearson's r
    and the count within :data:`CLOSE`."""

    n: int = 0
    close: int = 0
    sums: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(5))

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = a.ravel(), b.ravel()
        self.n += a.size
        self.close += int(np.sum(np.abs(a - b) <= CLOSE))
        self.sums += [a.sum(), b.sum(), a @ a, b @ b, a @ b]

    def merged(self, other: Agreement) -> Agreement:
        return Agreement(self.n + other.n, self.close + other.close, self.sums + other.sums)

    def corr(self) -> float | None:
        sa, sb, saa, sbb, sab = self.sums / max(self.n, 1)
        va, vb = saa - sa * sa, sbb - sb * sb
        if va <= 1e-12 * max(saa, 1e-300) or vb <= 1e-12 * max(sbb, 1e-300):
            return None  # a constant forecast: no correlation to speak of
        return float(np.clip((sab - sa * sb) / np.sqrt(va * vb), -1, 1))

    def share_close(self) -> float:
        return self.close / max(self.n, 1)


@dataclasses.dataclass
class DatasetResult:
    """Everything of one dataset: per row (series of a batch) its label and unit, per arm the
    step errors ``[N, H]`` and the agreement with hard; ``abs_y`` = ``mean |y|`` (WQL's scale)."""

    name: str
    labels: list[str]
    units: list[str]
    unit: np.ndarray
    abs_y: float
    errors: dict[str, dict[str, np.ndarray]]
    agreement: dict[str, Agreement]


def evaluate_dataset(pipe, name, batches, arms, context_length, levels, bar) -> DatasetResult:
    median = list(levels).index(0.5)
    errors = {a.name: {"se": [], "ae": [], "ql": []} for a in arms}
    agreement = {a.name: Agreement() for a in arms}
    labels, units, unit = [], [], []
    for batch in batches:
        hard = None
        for arm in arms:
            q = forecast(pipe, batch, arm, context_length)  # [B, Q, H]
            hard = q if hard is None else hard
            agreement[arm.name].add(q, hard)
            for k, v in step_errors(batch.target, q, levels, median).items():
                errors[arm.name][k].append(v.astype(np.float32))
            bar.update(1)
        unit.append(batch.unit + len(units))
        labels += batch.labels
        units += batch.units
    abs_y = float(np.mean([np.abs(b.target.astype(np.float64)).mean() for b in batches]))
    stacked = {a: {k: np.concatenate(v) for k, v in e.items()} for a, e in errors.items()}
    return DatasetResult(name, labels, units, np.concatenate(unit), abs_y, stacked, agreement)


def evaluate(pipe, batches: dict[str, list[Batch]], arms: list[Arm], context_length: int, *,
             progress: bool = True) -> dict[str, DatasetResult]:  # fmt: skip
    """Forecast every batch with every arm (``arms[0]`` must be hard: the reference)."""
    if arms[0].name != "hard":
        raise ValueError("the first arm must be 'hard', the reference of the comparisons")
    levels = tuple(float(q) for q in pipe.model.config.chronos.quantiles)
    if 0.5 not in levels:
        raise ValueError(f"the model has no median among its quantiles {levels}")
    total = sum(len(b) for b in batches.values()) * len(arms)
    bar = tqdm(total=total, desc="forecast", unit="batch", disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    out = {name: evaluate_dataset(pipe, name, bs, arms, context_length, levels, bar)
           for name, bs in batches.items()}  # fmt: skip
    bar.close()
    return out


# ---- command line -------------------------------------------------------------------------------


def _float_list(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0 or not np.isfinite(values).all():
        raise ValueError(f"{flag} must be comma-separated numbers >= 0, got {text!r}")
    return values


def arg_parser():
    from eval.cli import parser

    p = parser("python -m eval.soft_mask", __doc__)
    p.add_argument("--ckpt", required=True, help="Chronos-2: jaxts checkpoint, upstream dir or "
                   "hub id")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default: "
                   "$JAXTS_DATA_DIR, the vendored and shared copies)")  # fmt: skip
    p.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), help="comma-separated")
    p.add_argument("--context-length", type=int, default=512, help="context steps per series")
    p.add_argument("--horizon", type=int, default=64, help="forecast steps, ETT / weather")
    p.add_argument("--m4-horizon", type=int, default=48, help="forecast steps, M4 Hourly")
    p.add_argument("--stride", type=int, default=None,
                   help="steps between ETT / weather windows (default: --horizon)")  # fmt: skip
    p.add_argument("--max-windows", type=int, default=None,
                   help="at most N windows (M4: batches) per dataset, evenly spread (default: "
                   "all)")  # fmt: skip
    p.add_argument("--m4-batch", type=int, default=16, help="M4 series per batch")
    p.add_argument("--similarities", default="correlation,cosine,gaussian",
                   help="soft-mask similarities, comma-separated")  # fmt: skip
    p.add_argument("--temperatures", default="1,5,10,20", help="soft-mask temperatures (>= 0)")
    p.add_argument("--n-bootstrap", type=int, default=N_BOOTSTRAP, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--out", default="runs/eval_soft_mask", help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite earlier results in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from jaxts._cli import exit_code

    args = arg_parser().parse_args(argv)
    return exit_code(lambda: _main(args))


def _check_args(args, model_config) -> None:
    for name in ("context_length", "horizon", "m4_horizon", "stride", "max_windows", "m4_batch",
                 "n_bootstrap"):  # fmt: skip
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    cfg = model_config.chronos
    if args.context_length > cfg.context_length:
        raise ValueError(f"--context-length {args.context_length} exceeds the model's "
                         f"context_length {cfg.context_length}")  # fmt: skip
    one_pass = cfg.max_output_patches * cfg.output_patch_size
    for flag, h in (("--horizon", args.horizon), ("--m4-horizon", args.m4_horizon)):
        if h > one_pass:
            raise ValueError(f"{flag} {h} exceeds what the model forecasts in one pass "
                             f"({cfg.max_output_patches} patches of {cfg.output_patch_size} = "
                             f"{one_pass}); soft masking is evaluated on one pass")  # fmt: skip


def _check_ckpt(ckpt: str) -> None:
    """A local path that does not exist, said as such (``org/name`` may be a hub id: the
    pipeline reports those)."""
    path = Path(ckpt).expanduser()
    looks_local = path.is_absolute() or ckpt.startswith((".", "~")) or ckpt.count("/") > 1
    if looks_local and not path.exists():
        raise ValueError(f"--ckpt {ckpt}: no such folder (expected a Chronos-2 checkpoint "
                         "directory or a hub id)")  # fmt: skip


def _main(args) -> None:
    from eval.cli import check_output_dir
    from eval.soft_mask_report import format_table, summarize, write_outputs
    from jaxts.pipelines.chronos2 import Chronos2Pipeline
    from jaxts.soft_mask import SIMILARITIES

    sims = [s.strip() for s in args.similarities.split(",") if s.strip()]
    bad = [s for s in sims if s not in SIMILARITIES]
    if bad or not sims:
        raise ValueError(f"--similarities must name some of {', '.join(SIMILARITIES)}, got "
                         f"{args.similarities!r}")  # fmt: skip
    temps = _float_list(args.temperatures, "--temperatures")
    out = check_output_dir(args.out, args.force)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ValueError(f"--data-dir {args.data_dir} is not a folder")
    _check_ckpt(args.ckpt)
    pipe = Chronos2Pipeline.from_pretrained(args.ckpt)
    _check_args(args, pipe.model.config)
    batches = load_batches(args)
    arms = make_arms(sims, temps)
    results = evaluate(pipe, batches, arms, args.context_length, progress=not args.no_progress)
    summary = summarize(results, arms, n_boot=args.n_bootstrap, seed=args.seed)
    settings = {k: getattr(args, k) for k in ("ckpt", "data_dir", "context_length", "horizon",
                "m4_horizon", "max_windows", "m4_batch", "n_bootstrap", "seed")}  # fmt: skip
    settings.update(stride=args.stride or args.horizon, similarities=sims, temperatures=temps,
                    quantiles=[float(q) for q in pipe.model.config.chronos.quantiles])  # fmt: skip
    written = write_outputs(out, results, arms, summary, settings)
    shown = [g for g in POOLED if g in summary["groups"]] or None  # None: a single dataset
    print(format_table(summary, groups=shown))
    print("diff = arm - hard (lower: the arm is better), win = share of units where the arm is "
          "lower, corr / same = Pearson r / share within 1e-3 of hard's forecasts; every "
          "dataset's rows are in summary.csv")  # fmt: skip
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    sys.exit(main())
