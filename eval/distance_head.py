"""Paired evaluation of a distance-aware Chronos head against the base model it was trained on.

``python -m eval.distance_head --base BASE --head HEAD [--control HEAD_CE] [--data-dir D]
[--datasets auto] [--num-samples 20] [--max-series N] [--seed 0] [--out DIR] [--force]``

On the same frozen Chronos-T5 ``BASE`` and the same series, four arms forecast:

* ``base``: the base model's own LM head (``ChronosT5Pipeline``);
* ``head``: the distance-aware head ``HEAD`` (``DistanceAwareChronosPipeline``; a jaxts
  ``distance_head`` checkpoint such as ``train.distance_head``'s ``best/``, or the published
  ``distance_output.pt``, which needs ``--upstream-compat``);
* ``control`` (with ``--control``): a head trained with plain cross-entropy on the same budget,
  which separates "a retrained head" from "a distance-aware loss";
* ``noise``: the base model again with other keys: the Monte-Carlo noise floor. A difference
  between two arms that is not clearly larger than this one is sampling noise.

Series ``i`` of dataset ``D`` is forecast by ``base``, ``head`` and ``control`` with the same key,
``fold_in(fold_in(key(seed), crc32(D)), i)`` (one series per call, so a forecast depends neither
on the other series nor on ``--max-series``), and by ``noise`` with ``fold_in(that key, 2**31 - 1)``.

Per series and arm, on the original scale, from the quantiles of the samples (linear
interpolation) and the median forecast: MASE and WQL as ``eval.chronos_t5`` (per-series WQL:
mean over the 9 levels of ``2 * pinball / sum |y|``), MAE, RMSE and MAPE (``100 * mean |e| / |y|``,
undefined, so left out of the statistics, when the horizon holds a zero). Each comparison
(``head``, ``control`` and ``noise`` against ``base``, and ``head`` against ``control``) reports the
mean per-series difference with a 95% bootstrap interval, the relative change of the mean, the win
rate and the Wilcoxon signed-rank p-value (``eval.paired``), per dataset and, for the scale-free
metrics (MASE, WQL, MAPE), pooled over datasets (``all``).

Datasets (``--datasets``, comma-separated; ``auto``: M4 Hourly plus the ETT / weather files found
in ``--data-dir``): ``m4_hourly`` (vendored; its official 48-step test set) and files looked up in
``--data-dir`` like every jaxts loader, whose last ``H`` values per series are the test horizon and
everything before it the history (the model sees its last ``context_length`` values, MASE's
seasonal-naive scale uses all of it):

* wide tables, one series per column: ``etth1``, ``etth2`` (H 24, seasonality 24), ``ettm1``,
  ``ettm2`` (24, 96), ``weather`` (24, 144);
* long tables ``NAME.csv[.gz]`` with columns ``id,target`` (a ``timestamp`` column is ignored;
  rows of a series in time order), e.g. ``autogluon/chronos_datasets`` exported as
  ``docs/distance_head.md`` shows: ``m4_quarterly`` (8, 4), ``m4_yearly`` (6, 1),
  ``monash_tourism_monthly`` (24, 12), ``monash_tourism_quarterly`` (8, 4),
  ``monash_tourism_yearly`` (4, 1), ``monash_cif_2016`` (12, 12), ``monash_fred_md`` (12, 12),
  the horizons of Chronos' own benchmark;
* any other file as ``NAME:H:SEASONALITY`` (either layout).

Writes ``results.json`` (settings, every per-series value, the summary), ``per_series.csv``,
``summary.csv`` and ``differences.png`` (per-series differences of MASE and WQL with the mean and
its interval) to ``--out``, and prints the summary.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import zlib
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from eval.chronos_t5 import QUANTILES, mase, mase_scale, quantile_loss, seasonal_naive, wql
from eval.cli import json_safe
from eval.paired import N_BOOTSTRAP, paired_stats

__all__ = ["DATASETS", "Dataset", "arg_parser", "evaluate", "load_dataset", "main", "score"]

METRICS = ("MASE", "WQL", "MAE", "RMSE", "MAPE")
SCALE_FREE = ("MASE", "WQL", "MAPE")  # the ones that can be pooled over datasets
COMPARISONS = (("head", "base"), ("control", "base"), ("head", "control"), ("noise", "base"))
NOISE_STREAM = 2**31 - 1  # far from the chunk indices the pipelines fold into a key
# name (the file's, looked up case-insensitively): (horizon, seasonality); Chronos' horizons.
DATASETS: dict[str, tuple[int, int]] = {
    "ETTh1": (24, 24), "ETTh2": (24, 24), "ETTm1": (24, 96), "ETTm2": (24, 96),
    "weather": (24, 144), "m4_quarterly": (8, 4), "m4_yearly": (6, 1),
    "monash_tourism_monthly": (24, 12), "monash_tourism_quarterly": (8, 4),
    "monash_tourism_yearly": (4, 1), "monash_cif_2016": (12, 12), "monash_fred_md": (12, 12),
}  # fmt: skip
AUTO = ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "weather")


@dataclasses.dataclass
class Dataset:
    """Histories (``train``, float32, any lengths), the test horizon ``test [N, H]`` and ids."""

    name: str
    train: list[np.ndarray]
    test: np.ndarray
    ids: list[str]
    seasonality: int
    source: str

    def head(self, n: int | None) -> Dataset:
        if n is None:
            return self
        return dataclasses.replace(self, train=self.train[:n], test=self.test[:n],
                                   ids=self.ids[:n])  # fmt: skip


# ---- data ---------------------------------------------------------------------------------------


def _split_last(name, series: dict[str, np.ndarray], horizon: int, m: int, src) -> Dataset:
    """The last ``horizon`` values of each series as its test horizon."""
    from jaxts.data import DataError

    for sid, s in series.items():
        if not np.isfinite(s).all():
            raise DataError(f"{src}: series {sid!r} has NaN/inf values")
        if len(s) <= horizon + m:
            raise DataError(f"{src}: series {sid!r} has {len(s)} values; {name} needs more than "
                            f"{horizon} (horizon) + {m} (seasonality)")  # fmt: skip
    values = [np.asarray(s, np.float32) for s in series.values()]
    test = np.stack([s[-horizon:] for s in values])  # [N, H]
    return Dataset(name, [s[:-horizon] for s in values], test, list(series), m, str(src))


def _read_series(path: Path) -> dict[str, np.ndarray]:
    """A long table (``id``, ``target`` columns) or a wide one (one series per column)."""
    import pandas as pd

    from jaxts.data import DataError, read_table

    header = pd.read_csv(path, nrows=0, encoding_errors="replace").columns
    if {"id", "target"} <= set(header):
        df = pd.read_csv(path, usecols=["id", "target"], dtype={"id": str})
        target = pd.to_numeric(df["target"], errors="coerce")
        bad = target.isna() & df["target"].notna()
        if bad.any():
            raise DataError(f"{path}: non-numeric target {df['target'][bad].iloc[0]!r}")
        return {sid: g.to_numpy(np.float32) for sid, g in target.groupby(df["id"], sort=False)}
    values, cols = read_table(path)  # [T, C]
    return {c: values[:, j].astype(np.float32) for j, c in enumerate(cols)}


def _dataset_spec(item: str) -> tuple[str, int, int]:
    """``name`` (a known one) or ``name:H:m`` -> (file name, horizon, seasonality)."""
    name, *spec = item.split(":")
    if spec:
        try:
            h, m = (int(v) for v in spec)
        except ValueError:
            h = m = 0
        if h < 1 or m < 1:
            raise ValueError(f"--datasets {item!r}: expected NAME:HORIZON:SEASONALITY with "
                             "positive integers")  # fmt: skip
        return name, h, m
    known = {k.lower(): k for k in DATASETS}
    if name.lower() not in known:
        raise ValueError(f"--datasets: unknown dataset {name!r}; known: m4_hourly, "
                         f"{', '.join(DATASETS)}, or NAME:HORIZON:SEASONALITY")  # fmt: skip
    return (known[name.lower()], *DATASETS[known[name.lower()]])


def load_dataset(item: str, data_dir=None) -> Dataset:
    """One ``--datasets`` entry (see the module docstring)."""
    from jaxts.data import M4_HOURLY_SEASONALITY, load_m4_hourly, m4_hourly_paths, resolve_path

    if item.lower() == "m4_hourly":
        train, test, ids = load_m4_hourly(data_dir, with_ids=True)
        src = m4_hourly_paths(data_dir)[1].parent
        return Dataset("m4_hourly", train, test, ids, M4_HOURLY_SEASONALITY, str(src))
    name, horizon, m = _dataset_spec(item)
    path = resolve_path(name, data_dir)
    return _split_last(name, _read_series(path), horizon, m, path)


def auto_datasets(data_dir) -> list[str]:
    """M4 Hourly, plus the ETT / weather files that ``data_dir`` itself holds."""
    from jaxts.data import DataError, resolve_path

    found = ["m4_hourly"]
    if data_dir is None:
        return found
    root = Path(data_dir).expanduser().resolve()
    for name in AUTO:
        try:
            path = resolve_path(name, data_dir).resolve()
        except DataError:
            continue
        if root in path.parents:
            found.append(name)
    return found


# ---- forecasting and scoring --------------------------------------------------------------------


def series_keys(seed: int, dataset: str, n: int) -> list:
    """Key of series ``i`` of ``dataset``: independent of the other datasets and series."""
    import jax

    root = jax.random.fold_in(jax.random.key(seed), zlib.crc32(dataset.encode()) & 0x7FFFFFFF)
    return [jax.random.fold_in(root, i) for i in range(n)]


def forecast(pipe, data: Dataset, keys, num_samples: int, role: str, bar=None) -> np.ndarray:
    """Quantiles ``[N, H, Q]`` of one arm, one series per call with its own key."""
    from eval.forecast import require_finite

    n, h = data.test.shape
    out = np.empty((n, h, len(QUANTILES)), np.float32)
    for i, (hist, key) in enumerate(zip(data.train, keys, strict=True)):
        ctx = np.asarray(hist[-pipe.model_context_length :])
        samples = pipe.predict(ctx, h, num_samples=num_samples, key=key)  # [1, S, H]
        require_finite(samples, f"{data.name} {data.ids[i]!r}", role)
        out[i] = np.quantile(samples[0], QUANTILES, axis=0).T  # [H, Q] (linear, torch.quantile)
        if bar is not None:
            bar.update(1)
    return out


def score(data: Dataset, quantiles: np.ndarray) -> dict[str, np.ndarray]:
    """Per-series metrics ``{metric: [N]}`` (float64, NaN/inf where undefined)."""
    y = data.test.astype(np.float64)  # [N, H]
    median = quantiles[..., QUANTILES.index(0.5)].astype(np.float64)  # [N, H]
    err = median - y  # [N, H]
    scales = np.array([mase_scale(s, data.seasonality) for s in data.train])  # [N]
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "MASE": mase(y, median, scales),
            "WQL": quantile_loss(y, quantiles, QUANTILES).mean(axis=1) / np.abs(y).sum(axis=1),
            "MAE": np.abs(err).mean(axis=1),
            "RMSE": np.sqrt(np.square(err).mean(axis=1)),
            "MAPE": 100.0 * np.mean(np.abs(err) / np.abs(y), axis=1),
        }


def evaluate(pipes: dict, datasets: list[Dataset], *, num_samples: int = 20, seed: int = 0,
             n_boot: int = N_BOOTSTRAP, progress: bool = True) -> dict:  # fmt: skip
    """Forecast every dataset with every arm and compare them.

    ``pipes``: ``{"base": ..., "head": ..., ["control": ...]}`` (objects with ``predict`` and
    ``model_context_length``); the ``noise`` arm is ``base`` with other keys. Returns
    ``{"per_series": {dataset: {arm: {metric: [N]}}}, "aggregate": ..., "summary": [rows]}``."""
    import jax

    arms = [*pipes, "noise"]
    total = sum(len(d.test) for d in datasets) * len(arms)
    bar = tqdm(total=total, desc="forecast", unit="series", disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    per_series, aggregate = {}, {}
    for data in datasets:
        keys = series_keys(seed, data.name, len(data.test))
        noise_keys = [jax.random.fold_in(k, NOISE_STREAM) for k in keys]
        per_series[data.name], aggregate[data.name] = {}, {}
        for arm in arms:
            pipe, arm_keys = (pipes["base"], noise_keys) if arm == "noise" else (pipes[arm], keys)
            q = forecast(pipe, data, arm_keys, num_samples, arm, bar)
            per_series[data.name][arm] = score(data, q)
            aggregate[data.name][arm] = _aggregate(data, q, per_series[data.name][arm])
        naive = seasonal_naive(data.train, data.test.shape[1], data.seasonality)
        naive_q = np.repeat(naive[..., None], len(QUANTILES), axis=-1)
        aggregate[data.name]["seasonal_naive"] = _aggregate(data, naive_q, score(data, naive_q))
    bar.close()
    return {"per_series": per_series, "aggregate": aggregate,
            "summary": summarize(per_series, n_boot=n_boot, seed=seed)}  # fmt: skip


def _aggregate(data: Dataset, q: np.ndarray, scores: dict) -> dict[str, float]:
    """Dataset-level scores: mean MASE and the sum-weighted WQL, as ``eval.chronos_t5``."""
    return {"MASE": float(np.nanmean(scores["MASE"])), "WQL": wql(data.test, q, QUANTILES)}


def summarize(per_series: dict, *, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> list[dict]:
    """One row per (dataset or ``all``, comparison, metric) with :func:`eval.paired.paired_stats`."""
    groups = dict(per_series)
    if len(per_series) > 1:
        arms = set.intersection(*(set(v) for v in per_series.values()))
        groups["all"] = {
            arm: {m: np.concatenate([v[arm][m] for v in per_series.values()]) for m in SCALE_FREE}
            for arm in arms
        }
    rows = []
    for group, by_arm in groups.items():
        for arm, ref in COMPARISONS:
            if arm not in by_arm or ref not in by_arm:
                continue
            for metric in by_arm[arm]:
                a, b = by_arm[ref][metric], by_arm[arm][metric]
                if not np.any(np.isfinite(a) & np.isfinite(b)):
                    continue  # undefined on every series (MAPE of all-zero horizons)
                stats = paired_stats(a, b, n_boot=n_boot, seed=seed)
                rows.append({"dataset": group, "arm": arm, "reference": ref, "metric": metric,
                             **stats})  # fmt: skip
    return rows


# ---- outputs ------------------------------------------------------------------------------------


def _label(row: dict) -> str:
    return "noise floor" if row["arm"] == "noise" else f"{row['arm']} vs {row['reference']}"


def format_table(rows: list[dict]) -> str:
    """The summary as text: one line per dataset, comparison and metric."""
    lines = [f"{'dataset':14s} {'comparison':16s} {'metric':6s} {'n':>5s} {'reference':>10s} "
             f"{'arm':>10s} {'diff [95% CI]':>32s} {'rel. change [95% CI]':>26s} {'win':>5s} "
             f"{'p':>8s}"]  # fmt: skip
    for r in rows:
        ci = f"{r['mean_diff']:+.4g} [{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]"
        rel = (f"{100 * r['rel_change']:+.2f}% [{100 * r['rel_ci_low']:+.2f}, "
               f"{100 * r['rel_ci_high']:+.2f}]" if r["rel_change"] is not None else "n/a")  # fmt: skip
        lines.append(f"{r['dataset']:14s} {_label(r):16s} {r['metric']:6s} {r['n']:5d} "
                     f"{r['mean_a']:10.4g} {r['mean_b']:10.4g} {ci:>32s} {rel:>26s} "
                     f"{r['win_rate']:5.2f} {r['p_wilcoxon']:8.2g}")  # fmt: skip
    return "\n".join(lines)


def _write_csvs(out: Path, datasets: list[Dataset], res: dict) -> None:
    arms = list(next(iter(res["per_series"].values())))
    with open(out / "per_series.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "id", "history_length"]
                   + [f"{m}_{a}" for a in arms for m in METRICS])  # fmt: skip
        for data in datasets:
            scores = res["per_series"][data.name]
            for i, sid in enumerate(data.ids):
                w.writerow([data.name, sid, len(data.train[i])]
                           + [f"{scores[a][m][i]:.6g}" for a in arms for m in METRICS])  # fmt: skip
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(res["summary"][0]))
        w.writeheader()
        w.writerows(res["summary"])


def plot_differences(res: dict, path: Path, title: str) -> None:
    """Per metric (MASE, WQL): each comparison's per-series differences (dots, one colour per
    dataset) with the mean and its 95% interval (black) over all datasets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group = "all" if len(res["per_series"]) > 1 else next(iter(res["per_series"]))
    rows = {(r["arm"], r["reference"], r["metric"]): r for r in res["summary"]
            if r["dataset"] == group}  # fmt: skip
    comps = [c for c in COMPARISONS if (*c, "MASE") in rows]
    fig, axes = plt.subplots(1, 2, figsize=(1.9 * len(comps) + 3, 3.8), squeeze=False)
    rng = np.random.default_rng(0)  # jitter only
    for ax, metric in zip(axes[0], ("MASE", "WQL"), strict=True):
        for x, (arm, ref) in enumerate(comps):
            for k, (name, scores) in enumerate(res["per_series"].items()):
                d = scores[arm][metric] - scores[ref][metric]  # [N]
                ax.scatter(x + rng.uniform(-0.25, 0.25, len(d)), d, s=6, alpha=0.5,
                           color=f"C{k}", label=name if x == 0 else None)  # fmt: skip
            r = rows[(arm, ref, metric)]
            err = [[r["mean_diff"] - r["ci_low"]], [r["ci_high"] - r["mean_diff"]]]
            ax.errorbar([x], [r["mean_diff"]], yerr=err, fmt="o", color="k", capsize=5, zorder=3)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xticks(range(len(comps)))
        ax.set_xticklabels([_label({"arm": a, "reference": b}) for a, b in comps], fontsize=8)
        ax.set_title(f"{metric}: arm - reference per series (lower: arm better)", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, datasets: list[Dataset], res: dict, settings: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    per_series = [
        {"dataset": d.name, "id": sid,
         **{arm: {m: v[m][i] for m in METRICS} for arm, v in res["per_series"][d.name].items()}}
        for d in datasets for i, sid in enumerate(d.ids)
    ]  # fmt: skip
    info = {d.name: {"series": len(d.test), "horizon": int(d.test.shape[1]),
                     "seasonality": d.seasonality, "source": d.source} for d in datasets}  # fmt: skip
    doc = {"settings": settings, "datasets": info, "aggregate": res["aggregate"],
           "summary": res["summary"], "per_series": per_series}  # fmt: skip
    (out / "results.json").write_text(json.dumps(json_safe(doc), indent=1))
    _write_csvs(out, datasets, res)
    plot_differences(
        res,
        out / "differences.png",
        f"head {Path(settings['head']).name} on base {Path(settings['base']).name}, "
        f"{settings['num_samples']} samples",
    )
    return [out / n for n in ("results.json", "per_series.csv", "summary.csv", "differences.png")]


# ---- command line -------------------------------------------------------------------------------


def arg_parser():
    from eval.cli import parser

    p = parser("python -m eval.distance_head", __doc__)
    p.add_argument("--base", required=True, help="Chronos-T5: jaxts checkpoint, HF dir or hub id")
    p.add_argument(
        "--head",
        required=True,
        help="distance-aware head: jaxts distance_head checkpoint or distance_output.pt",
    )
    p.add_argument(
        "--control",
        default=None,
        help="head trained with plain cross-entropy (default: no control arm)",
    )
    p.add_argument(
        "--upstream-compat",
        action="store_true",
        help="run --head and --control with the published tokenizer and decoder feeding",
    )
    p.add_argument("--data-dir", default=None, help="folder with the dataset files")
    p.add_argument("--datasets", default="auto", help="comma-separated; see above")
    p.add_argument("--num-samples", type=int, default=20, help="sample paths per series")
    p.add_argument("--max-series", type=int, default=None,
                   help="only the first N series of each dataset (default: all)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="JAX key of the samplers and bootstrap")
    p.add_argument("--n-bootstrap", type=int, default=N_BOOTSTRAP, help="bootstrap resamples")
    p.add_argument("--out", default="runs/eval_distance_head", help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite earlier results in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from jaxts._cli import exit_code

    args = arg_parser().parse_args(argv)
    return exit_code(lambda: _main(args))


def _pipelines(args) -> dict:
    from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline
    from jaxts.pipelines.distance_aware_chronos import DistanceAwareChronosPipeline

    pipes = {"base": ChronosT5Pipeline.from_pretrained(args.base)}
    for arm in ("head", "control"):
        path = getattr(args, arm)
        if path is None:
            continue
        try:
            pipes[arm] = DistanceAwareChronosPipeline.from_pretrained(
                args.base, path, upstream_compat=args.upstream_compat
            )
        except ValueError as e:  # e.g. a head made for another base: say which one
            raise ValueError(e if str(path) in str(e) else f"--{arm} {path}: {e}") from None
    return pipes


def _main(args) -> None:
    from eval.cli import check_output_dir
    from eval.forecast import NonFiniteForecast

    for name in ("num_samples", "n_bootstrap", "max_series"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    out = check_output_dir(args.out, args.force)
    names = (auto_datasets(args.data_dir) if args.datasets.strip() == "auto"
             else [n.strip() for n in args.datasets.split(",") if n.strip()])  # fmt: skip
    if not names:
        raise ValueError("--datasets is empty")
    datasets = [load_dataset(n, args.data_dir).head(args.max_series) for n in names]
    pipes = _pipelines(args)
    try:
        res = evaluate(pipes, datasets, num_samples=args.num_samples, seed=args.seed,
                       n_boot=args.n_bootstrap, progress=not args.no_progress)  # fmt: skip
    except NonFiniteForecast as e:
        source = {"head": args.head, "control": args.control}.get(e.role, args.base)
        raise ValueError(f"{source} ({e.role} arm): {e}") from None
    settings = {k: getattr(args, k) for k in ("base", "head", "control", "upstream_compat",
                "num_samples", "seed", "n_bootstrap", "max_series")}  # fmt: skip
    settings["quantiles"] = list(QUANTILES)
    written = write_outputs(out, datasets, res, settings)
    print(f"{args.num_samples} samples per series; diff = arm - reference (lower is better), "
          f"win = share of series where the arm is lower, p = Wilcoxon signed-rank")  # fmt: skip
    print(format_table(res["summary"]))
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    sys.exit(main())
