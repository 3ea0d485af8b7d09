"""Aggregation of ``python -m eval.maxent``: per task and method the means, HAR macro-F1, paired
differences against greedy with bootstrap 95% CIs, a markdown table and the reward / task
metric against NFE plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eval.paired import paired_stats

# the task metric's name and direction (True: higher is better)
METRIC = {"har": ("accuracy", True), "caption": ("faithfulness", True), "forecast": ("MASE", False)}


def macro_f1(pred: list, true: list) -> float:
    """Mean F1 over the true classes (an unparsable answer is a wrong prediction)."""
    f1 = []
    for c in sorted(set(true)):
        tp = sum(p == c and t == c for p, t in zip(pred, true, strict=True))
        fp = sum(p == c and t != c for p, t in zip(pred, true, strict=True))
        fn = sum(p != c and t == c for p, t in zip(pred, true, strict=True))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1)) if f1 else float("nan")


def _paired(greedy: np.ndarray, other: np.ndarray) -> dict:
    """method - greedy per item, mean and bootstrap 95% CI (direction-free)."""
    s = paired_stats(greedy, other)
    return {"diff": s["mean_diff"], "ci_low": s["ci_low"], "ci_high": s["ci_high"], "n": s["n"]}


def summarise(rows: list[dict], task: str, methods: list[str]) -> dict:
    from jaxts.search.rewards import parse_har_answer

    by = {m: sorted((r for r in rows if r["task"] == task and r["method"] == m),
                    key=lambda r: r["item"]) for m in methods}  # fmt: skip
    col = lambda m, k: np.array([r[k] for r in by[m]], np.float64)  # noqa: E731
    out = {}
    for m in methods:
        s = {k: float(np.nanmean(col(m, k))) for k in
             ("reward", "metric", "nfe", "wall_s", "tokens", "loglik_per_token", "distinct_2")}  # fmt: skip
        s["metric_median"] = float(np.nanmedian(col(m, "metric")))
        if task == "har":
            pred = [parse_har_answer(r["answer"]) for r in by[m]]
            s["macro_f1"] = macro_f1(pred, [r["label"] for r in by[m]])
            s["answered"] = float(np.mean([p is not None for p in pred]))
        if m != "greedy":
            s["reward_vs_greedy"] = _paired(col("greedy", "reward"), col(m, "reward"))
            s["metric_vs_greedy"] = _paired(col("greedy", "metric"), col(m, "metric"))
        out[m] = s
    return out


def _ci(d: dict | None) -> str:
    if d is None:
        return "—"
    return f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def table(task: str, summary: dict) -> str:
    name, higher = METRIC[task]
    arrow = "↑" if higher else "↓"
    head = (f"| method | reward ↑ | Δ reward vs greedy [95% CI] | {name} {arrow} | "
            f"Δ {name} vs greedy [95% CI] | NFE | wall s | loglik/token | distinct-2 |")  # fmt: skip
    lines = [head, "|" + "---|" * 9]
    for m, s in summary.items():
        metric = f"{s['metric']:.3f}"
        if task == "har":
            metric += f" (F1 {s['macro_f1']:.3f}, answered {s['answered']:.0%})"
        if task == "forecast":
            metric += f" (median {s['metric_median']:.2f})"
        lines.append(
            f"| {m} | {s['reward']:.3f} | {_ci(s.get('reward_vs_greedy'))} | {metric} | "
            f"{_ci(s.get('metric_vs_greedy'))} | {s['nfe']:.0f} | {s['wall_s']:.1f} | "
            f"{s['loglik_per_token']:.2f} | {s['distinct_2']:.2f} |"
        )
    return "\n".join(lines)


def plot(summaries: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summaries)
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.5 * len(tasks), 7), squeeze=False)
    for j, task in enumerate(tasks):
        for i, (key, label) in enumerate((("reward", "mean reward"), ("metric", METRIC[task][0]))):
            ax = axes[i, j]
            for m, s in summaries[task].items():
                ax.scatter(s["nfe"], s[key], label=m)
                ax.annotate(m, (s["nfe"], s[key]), fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel("NFE (tokens through the model, mean per item)")
            ax.set_ylabel(label)
            ax.set_title(task)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(rows: list[dict], tasks: list[str], methods: list[str], out: Path) -> dict:
    """Summaries per task (returned for results.json), tables printed, nfe.png written."""
    summaries = {t: summarise(rows, t, methods) for t in tasks}
    for t in tasks:
        note = " (the metric is the reward itself: no reference captions)" if t == "caption" else ""
        print(f"\n### {t}{note}\n\n{table(t, summaries[t])}")
    plot(summaries, out / "nfe.png")
    return {"summary": summaries, "tables": {t: table(t, summaries[t]) for t in tasks}}
