"""Rolling long-horizon test evaluation (OpenLTM ``test`` with ``test_pred_len = H``).

``python -m eval.forecast --ckpt runs/timer_xl_etth1/best`` evaluates an exported model on the
test split at horizons 96/192/336/720: every stride-1 test window is forecast by
:func:`jaxts.models.timer_xl.rolling_forecast`, and MSE / MAE are taken over all windows x H x C
in the scaled space (the benchmark convention). Writes ``metrics_test.json`` and
``forecast_test.png`` (next to the checkpoint unless ``--out``; existing ones only with
``--force``).

``--decoding cached`` forecasts with :func:`jaxts.models.timer_xl_cache.cached_forecast`
instead: the context is encoded once into a KV cache and each forecast patch is appended to a
growing context (normalised with the context's statistics), a different forecast from OpenLTM's
sliding window; ``rolling`` (default) keeps OpenLTM's protocol, for reproducing its numbers.
Every entry of the results records the ``decoding`` used.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "NonFiniteForecast",
    "arg_parser",
    "evaluate_rolling",
    "format_table",
    "main",
    "plot_forecasts",
    "require_finite",
]

DEFAULT_HORIZONS = (96, 192, 336, 720)
DECODINGS = ("rolling", "cached")
OUTPUTS = ("metrics_test.json", "forecast_test.png")


class NonFiniteForecast(ValueError):
    """NaN or inf in a model's forecasts (damaged or diverged weights), which would turn every
    metric into nan; ``role`` says which model, for callers that name its checkpoint."""

    def __init__(self, what: str, role: str = "model"):
        super().__init__(
            f"{what} forecasts are not finite (NaN or inf): damaged or diverged weights"
        )
        self.role = role


def require_finite(pred, what: str, role: str = "model") -> None:
    if not np.isfinite(pred).all():
        raise NonFiniteForecast(what, role)


def evaluate_rolling(
    model,
    dataset: str | os.PathLike,
    seq_len: int,
    horizons=DEFAULT_HORIZONS,
    batch_size: int = 64,
    data_dir: str | os.PathLike | None = None,
    *,
    plot_path: str | os.PathLike | None = None,
    n_plot: int = 3,
    progress: bool = True,
    decoding: str = "rolling",
) -> dict[str, dict[str, float]]:
    """MSE/MAE of rolling (or KV-cached) forecasts on the test split for each horizon.

    Returns ``{"96": {"mse", "mae", "windows", "decoding"}, ..., "avg": {"mse", "mae",
    "decoding"}}`` where avg is the unweighted mean over horizons (how the benchmark tables
    average). ``decoding``: ``"rolling"`` (OpenLTM's sliding window, ``rolling_forecast``) or
    ``"cached"`` (a growing context over a KV cache, ``cached_forecast``). Sums are accumulated
    in float64 so thousands of windows do not lose precision. ``plot_path``: also save a PNG of
    ``n_plot`` windows' last variable per horizon.
    """
    from jaxts.data import forecast_windows, pad_batch
    from jaxts.models.timer_xl import rolling_forecast
    from jaxts.models.timer_xl_cache import cached_forecast

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {list(DECODINGS)}, got {decoding!r}")
    forecast = rolling_forecast if decoding == "rolling" else cached_forecast
    horizons = [int(h) for h in horizons]
    data = {h: forecast_windows(dataset, "test", seq_len, h, data_dir=data_dir) for h in horizons}
    total = sum(math.ceil(x.shape[0] / batch_size) for x, _ in data.values())
    bar = tqdm(total=total, desc=f"{decoding} test", disable=not progress, dynamic_ncols=True)
    results: dict[str, dict[str, float]] = {}
    plots = {}
    for h in horizons:
        x, y = data[h]  # [W, L, C], [W, H, C] (read-only views)
        w = x.shape[0]
        sq = ab = 0.0
        keep = set(np.linspace(0, w - 1, n_plot).astype(int).tolist()) if plot_path else set()
        picked: dict[int, np.ndarray] = {}
        for start in range(0, w, batch_size):
            (xb,), _ = pad_batch((x[start : start + batch_size],), batch_size)  # [bs, L, C]
            b = min(batch_size, w - start)
            pred = forecast(model, xb, h)  # [bs, H, C]
            pred = np.asarray(pred, dtype=np.float64)[:b]
            require_finite(pred, f"horizon {h}")
            err = pred - y[start : start + b].astype(np.float64)
            sq += float(np.sum(err * err))
            ab += float(np.sum(np.abs(err)))
            for i in keep & set(range(start, start + b)):
                picked[i] = pred[i - start]
            bar.update(1)
        n = w * h * y.shape[2]
        results[str(h)] = {"mse": sq / n, "mae": ab / n, "windows": int(w), "decoding": decoding}
        if plot_path:
            plots[h] = (x, y, picked)
    bar.close()
    results["avg"] = {
        "mse": float(np.mean([results[str(h)]["mse"] for h in horizons])),
        "mae": float(np.mean([results[str(h)]["mae"] for h in horizons])),
        "decoding": decoding,
    }
    if plot_path:
        plot_forecasts(plots, plot_path, title=f"{Path(str(dataset)).stem} test, L={seq_len}")
    return results


def plot_forecasts(plots: dict[int, tuple], path: str | os.PathLike, title: str = "") -> None:
    """Grid (rows: horizons, columns: windows) of the last variable: context tail, truth and
    forecast. ``plots[h] = (x [W, L, C], y [W, H, C], {window index: pred [H, C]})``."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    rows = len(plots)
    cols = max((len(p[2]) for p in plots.values()), default=1) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 2.6 * rows), squeeze=False)
    for r, (h, (x, y, picked)) in enumerate(sorted(plots.items())):
        for c, (i, pred) in enumerate(sorted(picked.items())):
            ax = axes[r][c]
            tail = min(x.shape[1], max(h, 192))  # enough context to judge the forecast
            t_ctx = np.arange(-tail, 0)
            t_out = np.arange(h)
            ax.plot(t_ctx, x[i, -tail:, -1], color="0.4", lw=0.8, label="context")
            ax.plot(t_out, y[i, :, -1], color="tab:blue", lw=0.9, label="truth")
            ax.plot(t_out, pred[:, -1], color="tab:red", lw=0.9, label="forecast")
            ax.axvline(0, color="0.7", lw=0.6, ls="--")
            ax.set_title(f"H={h}, window {i}", fontsize=9)
            ax.tick_params(labelsize=7)
            if r == 0 and c == 0:
                ax.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title + " (last variable, scaled)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'horizon':>8} {'windows':>8} {'MSE':>10} {'MAE':>10}"]
    for key, r in results.items():
        windows = str(r.get("windows", ""))
        lines.append(f"{key:>8} {windows:>8} {r['mse']:>10.6f} {r['mae']:>10.6f}")
    return "\n".join(lines)


def _run_config_defaults(ckpt: Path) -> dict[str, Any]:
    """dataset / seq_len / data_dir of the training run that exported ``ckpt`` (its parent's
    ``config.yaml``), so evaluating a run's best model needs no repeated flags."""
    path = ckpt.parent / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    with open(path) as f:
        data = (yaml.safe_load(f) or {}).get("data") or {}
    return {k: data[k] for k in ("dataset", "seq_len", "data_dir") if data.get(k) is not None}


def arg_parser():
    from eval.cli import parser

    p = parser(
        "python -m eval.forecast", "Rolling (or KV-cached) test-set evaluation of a checkpoint."
    )
    p.add_argument("--ckpt", required=True, help="model directory (jaxts.checkpoint format)")
    p.add_argument("--data-dir", default=None, help="folder with the dataset CSVs")
    p.add_argument("--horizons", default="96,192,336,720", help="comma-separated")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forecast call")
    p.add_argument("--decoding", choices=DECODINGS, default="rolling",
                   help="rolling: OpenLTM's sliding window; cached: growing context over a KV "
                   "cache")  # fmt: skip
    p.add_argument("--dataset", default=None,
                   help="name or CSV path (default: the training run's, else ETTh1)")  # fmt: skip
    p.add_argument("--seq-len", type=int, default=None,
                   help="context length (default: the training run's, else 672)")  # fmt: skip
    p.add_argument("--out", default=None, help="output folder (default: the checkpoint's)")
    p.add_argument("--force", action="store_true", help="overwrite earlier results in --out")
    p.add_argument("--no-plot", action="store_true", help=f"do not write {OUTPUTS[1]}")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from jaxts._cli import exit_code

    args = arg_parser().parse_args(argv)
    return exit_code(lambda: _main(args))


def _main(args) -> None:
    from eval.cli import check_output_dir, int_list
    from jaxts.checkpoint import load_model

    ckpt = Path(args.ckpt)
    horizons = int_list(args.horizons, "--horizons")
    out = Path(args.out) if args.out else ckpt
    written = OUTPUTS[:1] if args.no_plot else OUTPUTS
    check_output_dir(out, args.force, files=written)
    model = load_model(ckpt, family="timer_xl")
    run = _run_config_defaults(ckpt)
    dataset = args.dataset or run.get("dataset", "ETTh1")
    seq_len = args.seq_len or int(run.get("seq_len", 672))
    data_dir = args.data_dir or run.get("data_dir")
    out.mkdir(parents=True, exist_ok=True)
    try:
        results = evaluate_rolling(
            model,
            dataset,
            seq_len,
            horizons,
            args.batch_size,
            data_dir,
            plot_path=None if args.no_plot else out / OUTPUTS[1],
            progress=not args.no_progress,
            decoding=args.decoding,
        )
    except NonFiniteForecast as e:
        raise ValueError(f"{ckpt}: {e}") from None
    print(f"{dataset} test, seq_len {seq_len}, {args.decoding} forecast")
    print(format_table(results))
    with open(out / OUTPUTS[0], "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {out / OUTPUTS[0]}")


if __name__ == "__main__":
    sys.exit(main())
