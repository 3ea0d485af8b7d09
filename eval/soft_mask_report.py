"""Statistics and outputs of ``python -m eval.soft_mask`` (see its docstring): per-unit metrics,
paired comparisons against hard, breakdowns, ``results.json``, the CSVs and the sweep plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from eval.cli import json_safe
from eval.paired import N_BOOTSTRAP, paired_stats

__all__ = ["METRICS", "format_table", "summarize", "unit_steps", "write_outputs"]

METRICS = {"MSE": "se", "MAE": "ae", "WQL": "ql"}
BUCKET = 16  # horizon steps per breakdown bucket: one output patch of Chronos-2
NOTE = ("The model is deterministic: hard_rerun repeats hard exactly, so its paired difference "
        "and bootstrap interval are 0. The noise floor of a comparison is its own interval: "
        "ci_width.")  # fmt: skip


def unit_steps(r, arm: str, metric: str) -> np.ndarray:
    """``[U, H]``: the metric per statistical unit (mean over its series) and horizon step; WQL
    divided by the dataset's ``mean |y|``, so that its mean over units and steps is the WQL."""
    x = r.errors[arm][METRICS[metric]].astype(np.float64)  # [N, H]
    counts = np.bincount(r.unit, minlength=len(r.units))  # [U]
    sums = np.zeros((len(r.units), x.shape[1]))
    np.add.at(sums, r.unit, x)
    out = sums / counts[:, None]
    return out / r.abs_y if metric == "WQL" else out


def _groups(results: dict) -> dict[str, list[str]]:
    """Datasets per reported group: each dataset, ``related`` (ETT / weather pooled, when more
    than one), ``all`` (when more than one dataset)."""
    from eval.soft_mask import RELATED

    groups = {name: [name] for name in results}
    related = [n for n in results if n in RELATED]
    if len(related) > 1:
        groups["related"] = related
    if len(results) > 1:
        groups["all"] = list(results)
    return groups


def _pooled(results, names, arm, metric) -> np.ndarray:
    """``[U, H]`` over the datasets ``names`` (which must share the horizon)."""
    return np.concatenate([unit_steps(results[n], arm, metric) for n in names])


def _unit_values(results, names, arm, metric) -> np.ndarray:
    """``[U]``: each unit's metric over its horizon, the units of ``names`` pooled."""
    return np.concatenate([unit_steps(results[n], arm, metric).mean(1) for n in names])


def _agreement(results, names, arm):
    merged = results[names[0]].agreement[arm]
    for n in names[1:]:
        merged = merged.merged(results[n].agreement[arm])
    return merged


def _comparison_rows(results, groups, arms, n_boot, seed) -> list[dict]:
    rows = []
    for group, names in groups.items():
        hard = {m: _unit_values(results, names, "hard", m) for m in METRICS}  # [U] each
        for arm in arms[1:]:
            agree = _agreement(results, names, arm.name)
            for metric in METRICS:
                values = _unit_values(results, names, arm.name, metric)  # [U]
                stats = paired_stats(hard[metric], values, n_boot=n_boot, seed=seed)
                rows.append({"group": group, "arm": arm.name, "similarity": arm.similarity,
                             "temperature": arm.temperature, "metric": metric, **stats,
                             "ci_width": stats["ci_high"] - stats["ci_low"],
                             "corr_vs_hard": agree.corr(),
                             "share_close_to_hard": agree.share_close()})  # fmt: skip
    return rows


def _by_horizon(results, groups, arms) -> dict:
    """``{group: {"1-16": {arm: {metric: mean}}}}``."""
    out = {}
    for group, names in groups.items():
        h = unit_steps(results[names[0]], "hard", "MSE").shape[1]
        if any(unit_steps(results[n], "hard", "MSE").shape[1] != h for n in names):
            continue  # datasets of different horizons: no common buckets
        out[group] = {}
        for lo in range(0, h, BUCKET):
            hi = min(lo + BUCKET, h)
            out[group][f"{lo + 1}-{hi}"] = {
                arm.name: {m: float(_pooled(results, names, arm.name, m)[:, lo:hi].mean())
                           for m in METRICS} for arm in arms
            }  # fmt: skip
    return out


def _by_variate(results, arms) -> dict:
    """``{dataset: {variate: {arm: {metric: mean}}}}`` for the related datasets (M4's series
    are all different: nothing to break down)."""
    from eval.soft_mask import RELATED

    out = {}
    for name, r in results.items():
        if name not in RELATED:
            continue
        labels = np.array(r.labels)
        out[name] = {}
        for label in dict.fromkeys(r.labels):
            rows = labels == label
            out[name][label] = {
                arm.name: {m: float(r.errors[arm.name][k][rows].astype(np.float64).mean()
                                    / (r.abs_y if m == "WQL" else 1.0))
                           for m, k in METRICS.items()} for arm in arms
            }  # fmt: skip
    return out


def _per_window(results, arms) -> list[dict]:
    rows = []
    for name, r in results.items():
        counts = np.bincount(r.unit, minlength=len(r.units))
        per_arm = {a.name: {m: unit_steps(r, a.name, m).mean(1) for m in METRICS} for a in arms}
        for arm in arms:
            for u, unit in enumerate(r.units):
                rows.append({"dataset": name, "unit": unit, "series": int(counts[u]),
                             "arm": arm.name, "similarity": arm.similarity,
                             "temperature": arm.temperature,
                             **{m: float(per_arm[arm.name][m][u]) for m in METRICS}})  # fmt: skip
    return rows


def summarize(results: dict, arms, *, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """Everything the outputs hold, from :func:`eval.soft_mask.evaluate`'s results."""
    groups = _groups(results)
    means = {g: {a.name: {m: float(_unit_values(results, names, a.name, m).mean()) for m in METRICS}
                 for a in arms} for g, names in groups.items()}  # fmt: skip
    return {
        "note": NOTE,
        "groups": groups,
        "means": means,
        "comparisons": _comparison_rows(results, groups, arms, n_boot, seed),
        "by_horizon": _by_horizon(results, groups, arms),
        "by_variate": _by_variate(results, arms),
        "per_window": _per_window(results, arms),
        "datasets": {
            n: {
                "units": len(r.units),
                "series": len(r.labels),
                "horizon": int(r.errors["hard"]["se"].shape[1]),
                "mean_abs_y": r.abs_y,
            }
            for n, r in results.items()
        },  # fmt: skip
    }


# ---- outputs ------------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def format_table(summary: dict, groups=None) -> str:
    """One line per group (``groups``, default all), arm and metric: means, difference with its
    interval, win rate, p and the agreement with hard."""
    lines = [f"{'group':10s} {'arm':26s} {'metric':6s} {'n':>5s} {'hard':>9s} {'arm':>9s} "
             f"{'diff [95% CI]':>34s} {'win':>5s} {'p':>8s} {'corr':>7s} {'same':>6s}"]  # fmt: skip
    for r in summary["comparisons"]:
        if groups is not None and r["group"] not in groups:
            continue
        ci = f"{r['mean_diff']:+.3g} [{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]"
        corr = "n/a" if r["corr_vs_hard"] is None else f"{r['corr_vs_hard']:.4f}"
        lines.append(f"{r['group']:10s} {r['arm']:26s} {r['metric']:6s} {r['n']:5d} "
                     f"{r['mean_a']:9.4g} {r['mean_b']:9.4g} {ci:>34s} {r['win_rate']:5.2f} "
                     f"{r['p_wilcoxon']:8.2g} {corr:>7s} "
                     f"{100 * r['share_close_to_hard']:5.1f}%")  # fmt: skip
    return "\n".join(lines)


def plot_sweep(summary: dict, arms, path: Path, title: str) -> None:
    """Per plotted group (ETT / weather, M4) and metric: the soft arms' mean against the
    temperature, one line per similarity; hard (solid) and full (dashed) as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval.soft_mask import M4, RELATED

    means = summary["means"]
    related = "related" if "related" in means else next((g for g in means if g in RELATED), None)
    panels = [(g, label) for g, label in ((related, "ETT / weather"), (M4, "M4 Hourly"))
              if g in means]  # fmt: skip
    fig, axes = plt.subplots(len(panels), len(METRICS), figsize=(4 * len(METRICS),
                             3.2 * len(panels)), squeeze=False)  # fmt: skip
    sims = list(dict.fromkeys(a.similarity for a in arms if a.similarity))
    for row, (group, label) in zip(axes, panels, strict=True):
        for ax, metric in zip(row, METRICS, strict=True):
            for k, sim in enumerate(sims):
                pts = sorted((a.temperature, means[group][a.name][metric]) for a in arms
                             if a.similarity == sim)  # fmt: skip
                ax.plot(*zip(*pts, strict=True), "o-", color=f"C{k}", label=sim)
            ax.axhline(means[group]["hard"][metric], color="k", lw=1, label="hard")
            ax.axhline(means[group]["full"][metric], color="k", lw=1, ls="--", label="full")
            ax.set_xlabel("temperature (larger = stricter)", fontsize=8)
            ax.set_title(f"{label}: {metric}", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, results, arms, summary: dict, settings: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"settings": settings, **{k: v for k, v in summary.items() if k != "per_window"}}
    (out / "results.json").write_text(json.dumps(json_safe(doc), indent=1))
    _write_csv(out / "per_window.csv", summary["per_window"])
    _write_csv(out / "summary.csv", summary["comparisons"])
    plot_sweep(summary, arms, out / "temperature_sweep.png",
               f"soft group masking, {Path(str(settings['ckpt'])).name}: lower is better")  # fmt: skip
    return [out / n for n in ("results.json", "per_window.csv", "summary.csv",
                              "temperature_sweep.png")]  # fmt: skip
