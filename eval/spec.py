"""Speculative decoding on test windows against the target-only baselines.

``python -m eval.spec`` (no arguments) is the README's main job: ETTh1, horizon 720, the CPU-sized
target (``runs/timer_xl_etth1_cpu/best``) and its distilled 0.25x stochastic draft
(``runs/distill_etth1_cpu/best``), every rule at k = 1..4. ``make demo`` trains the two models
first where missing; run alone, this command names the commands that make a missing one. For
each setting it reports MSE/MAE against the truth, the change against the target's own mean
decoding and against the rule's own baseline (exact/stride: target-only sampling at the same
sigma; tolerance: the mean), acceptance, target and draft calls, seconds per batch (median;
compile time apart) and the speed-up. ``--decoding cached`` decodes baselines and speculation
over KV caches (growing context) instead of OpenLTM's sliding window.

    python -m eval.spec --rules exact --k 3 --sigma 0.25 --out runs/spec_exact
    python -m eval.spec --decoding cached --sweep k=1,2,3,4 rule=tolerance --out DIR
    python -m eval.spec --out runs/spec_debug --debug-csv runs/spec_debug/accept.csv

Writes ``OUT/spec_results.json``, ``OUT/spec_sweep.csv`` and ``OUT/spec_sweep.png`` (speed-up
against the MSE change vs the own baseline); an ``OUT`` holding files needs ``--force``.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

__all__ = ["Setting", "arg_parser", "check_checkpoints", "evaluate", "main", "parse_sweep"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TARGET = "runs/timer_xl_etth1_cpu/best"
DEFAULT_DRAFT = "runs/distill_etth1_cpu/best"
TARGET_CONFIG = "configs/timer_xl_etth1_cpu.yaml"
DISTILL_CONFIG = "configs/distill_etth1_cpu.yaml"
DEFAULT_SWEEP = ["rule=exact,stride,tolerance", "k=1,2,3,4"]
SWEEP_AXES = {"rule": str, "k": int, "sigma": float, "accept_bias": float, "tol": float}


@dataclasses.dataclass(frozen=True)
class Setting:
    rule: str = "exact"
    k: int = 3
    sigma: float = 0.25
    accept_bias: float = 1.0
    tol: float | None = None
    adaptive: bool = False

    def label(self) -> str:
        parts = [self.rule, f"k={self.k}"] + (["adaptive"] if self.adaptive else [])
        if self.rule == "tolerance":
            parts.append(f"tol={self.tol:g}" if self.tol is not None else "tol=?")
        else:
            parts.append(f"sigma={self.sigma:g}")
        if self.rule == "stride" and self.accept_bias != 1.0:
            parts.append(f"bias={self.accept_bias:g}")
        return " ".join(parts)


def parse_sweep(items: list[str], base: Setting) -> list[Setting]:
    """``["k=1,2", "rule=exact,stride"]`` -> the cartesian product of settings over ``base``."""
    axes: dict[str, list] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in SWEEP_AXES:
            raise ValueError(
                f"bad --sweep item {item!r}: use NAME=v1,v2 with NAME in {list(SWEEP_AXES)}"
            )
        try:
            axes[name] = [SWEEP_AXES[name](v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"bad value in --sweep {item!r}") from None
        if not axes[name]:
            raise ValueError(f"--sweep {item!r} has no values")
    names = list(axes)
    return [
        dataclasses.replace(base, **dict(zip(names, combo, strict=True)))
        for combo in itertools.product(*(axes[n] for n in names))
    ]


# ---------------------------------------------------------------- checkpoints

# How the default checkpoints are made; the Makefile's `demo` recipe runs the same commands
# (eval/ never trains: that would make the evaluation layer depend on the training one).
RECIPES = {
    "target": f"python -m train.target --config {TARGET_CONFIG}",
    "draft": f"python -m train.distill --config {DISTILL_CONFIG} --teacher {{target}}",
}


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (as the recipes are run)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def check_checkpoints(target_dir: Path, draft_dir: Path) -> None:
    """A FileNotFoundError naming every missing checkpoint and, for the default ones, the
    commands that make them."""
    dirs = {"target": target_dir, "draft": draft_dir}
    missing = [role for role, d in dirs.items() if not (d / "config.json").is_file()]
    if not missing:
        return
    where = " and ".join(f"no {role} checkpoint at {_shown(dirs[role])}" for role in missing)
    defaults = {"target": DEFAULT_TARGET, "draft": DEFAULT_DRAFT}
    if any(dirs[r].resolve() != (ROOT / defaults[r]).resolve() for r in missing):
        raise FileNotFoundError(f"{where} (no config.json found)")
    cmds = " then ".join(f"`{RECIPES[r].format(target=_shown(target_dir))}`" for r in missing)
    raise FileNotFoundError(f"{where}; make {'them' if len(missing) > 1 else 'it'} with "
                            f"`make demo`, or from {ROOT}: {cmds}")  # fmt: skip


# ---------------------------------------------------------------- evaluation


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _timing(secs: list[float]) -> dict[str, float]:
    """The first call compiles: the median of the others, and the first one's excess."""
    steady = secs[1:] or secs
    return {
        "compile_s": secs[0] - float(np.median(steady)),
        "s_per_batch": float(np.median(steady)),
    }


def _run_batches(fn, batches, padded, bar, what: str, role: str):
    """Apply ``fn(batch_index, xb)`` to all batches: (predictions [W, H, C] without the padding,
    seconds per batch, per-batch extras); non-finite predictions stop it (``what``, ``role``
    name them)."""
    from eval.forecast import require_finite

    preds, secs, extras = [], [], []
    for i, ((s, e), xb) in enumerate(zip(batches, padded, strict=True)):
        (pred, extra), dt = _timed(lambda: fn(i, xb))  # noqa: B023 (called at once)
        preds.append(np.asarray(pred)[: e - s])
        require_finite(preds[-1], what, role)
        secs.append(dt)
        extras.append(extra)
        bar.update(1)
    return np.concatenate(preds), secs, extras


def evaluate(
    target,
    draft,
    x: np.ndarray,
    y: np.ndarray,
    settings: list[Setting],
    *,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    debug_rows: list | None = None,
    window_ids: np.ndarray | None = None,
    decoding: str = "rolling",
) -> dict[str, Any]:
    """Run the baselines and every setting over windows ``x`` ``[W, L, C]`` (truth ``y``
    ``[W, H, C]``) in batches of ``batch_size`` (the last one padded), all decoding by
    ``decoding`` ("rolling" or "cached"). Returns ``baseline`` (the target's mean decoding keyed
    ``decoding``, sampling at each sigma) and ``settings`` (one record each)."""
    import jax

    from jaxts.data import pad_batch
    from jaxts.models.timer_xl import rolling_forecast
    from jaxts.models.timer_xl_cache import cached_forecast
    from jaxts.speculative import DECODINGS, generate, sample_target

    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    decode = rolling_forecast if decoding == "rolling" else cached_forecast

    w, h, _ = y.shape
    batches = [(s, min(s + batch_size, w)) for s in range(0, w, batch_size)]
    padded = [pad_batch((x[s:e],), batch_size)[0][0] for s, e in batches]
    sigmas = sorted({st.sigma for st in settings if st.rule != "tolerance"})
    total = len(batches) * (1 + len(sigmas) + len(settings))
    bar = tqdm(total=total, desc="eval.spec", disable=not progress, dynamic_ncols=True)
    steps = math.ceil(h / target.config.output_token_len)

    def run(fn, what, role="target"):
        return _run_batches(fn, batches, padded, bar, what, role)

    def scores(pred):
        err = pred.astype(np.float64) - y
        return float(np.mean(err**2)), float(np.mean(np.abs(err)))

    # warm-up call outside the timings would hide compile time; the first batch is the compile
    base, secs, _ = run(
        lambda i, xb: (np.asarray(decode(target, xb, h)), None), f"target-only {decoding}"
    )
    mse, mae = scores(base)
    baseline = {
        decoding: {"mse": mse, "mae": mae, "target_calls_per_batch": steps, **_timing(secs)}
    }
    for sig in sigmas:

        def samp(i, xb, sig=sig):
            key = jax.random.fold_in(jax.random.key(seed + 1), i)
            return sample_target(target, xb, h, sigma=sig, key=key, decoding=decoding), None

        pred, secs, _ = run(samp, f"target-only sampling (sigma {sig:g})")
        mse_s, mae_s = scores(pred)
        baseline[f"sampling_sigma={sig:g}"] = {"mse": mse_s, "mae": mae_s, **_timing(secs)}

    records = []
    for st in settings:
        key = jax.random.key(seed)

        def spec(i, xb, st=st, key=key):
            r = generate(
                target, draft, xb, h, k=st.k, rule=st.rule, sigma=st.sigma,
                accept_bias=st.accept_bias, tol=st.tol, adaptive=st.adaptive,
                key=jax.random.fold_in(key, i), decoding=decoding,
            )  # fmt: skip
            return r.forecast, r

        # the target's own forecasts were finite by now: the draft made these non-finite
        pred, secs, results = run(spec, f"speculative ({st.label()})", "draft")
        mse_p, mae_p = scores(pred)
        n = [e - s for s, e in batches]
        acc = np.concatenate([r.accepted[:m] for r, m in zip(results, n, strict=True)])
        att = np.concatenate([r.attempted[:m] for r, m in zip(results, n, strict=True)])
        records.append(_record(st, (mse_p, mae_p), (acc, att), results, _timing(secs), baseline,
                               steps, decoding))  # fmt: skip
        if debug_rows is not None:
            ids = window_ids if window_ids is not None else np.arange(w)
            per_mse = np.mean((pred.astype(np.float64) - y) ** 2, axis=(1, 2))
            for wi, a, b_, m in zip(ids, acc, att, per_mse, strict=True):
                debug_rows.append(
                    {"setting": st.label(), "window": int(wi), "accepted": int(a),
                     "attempted": int(b_), "acceptance": a / max(b_, 1), "mse": float(m)}
                )  # fmt: skip
    bar.close()
    return {"baseline": baseline, "settings": records}


def own_baseline(rule: str, sigma: float, decoding: str) -> str:
    """The baseline a rule is compared with: target-only sampling at the same sigma for the
    sampling rules (exact reproduces it; stride's patches all carry sigma noise), the target's
    mean decoding (key ``decoding``) for the deterministic "tolerance"."""
    return decoding if rule == "tolerance" else f"sampling_sigma={sigma:g}"


def _record(
    st: Setting, errors, counts, results, t: dict, baseline: dict, steps: int, decoding: str
) -> dict:
    """One setting's row: MSE/MAE and their change against the target's mean decoding and the
    rule's own baseline, acceptance (accepted / attempted draft patches over all windows), calls
    per batch, timing and speed-up against the mean decoding."""
    (mse_p, mae_p), (acc, att) = errors, counts
    mean = baseline[decoding]
    own_name = own_baseline(st.rule, st.sigma, decoding)
    own = baseline[own_name]
    rec = {
        **dataclasses.asdict(st),
        "label": st.label(),
        "decoding": decoding,
        "mse": mse_p,
        "mae": mae_p,
        f"mse_change_vs_{decoding}": mse_p / mean["mse"] - 1.0,
        f"mae_change_vs_{decoding}": mae_p / mean["mae"] - 1.0,
        "own_baseline": own_name,
        "mse_change_vs_own_baseline": mse_p / own["mse"] - 1.0,
        "acceptance": float(acc.sum() / max(att.sum(), 1)),
        "target_calls_per_batch": float(np.mean([r.target_calls for r in results])),
        "draft_calls_per_batch": float(np.mean([r.draft_calls for r in results])),
        "residual_fallbacks": int(sum(r.residual_fallbacks for r in results)),
        **t,
        "speedup": mean["s_per_batch"] / t["s_per_batch"],
        "target_call_ratio": steps / float(np.mean([r.target_calls for r in results])),
    }
    if st.rule != "tolerance":
        samp = baseline[f"sampling_sigma={st.sigma:g}"]
        rec["mse_change_vs_sampling"] = mse_p / samp["mse"] - 1.0
    return rec


# ---------------------------------------------------------------- outputs


def format_table(res: dict[str, Any]) -> str:
    """Baselines, then per setting dMSE% (vs the mean decoding) and dOwn% (vs own baseline)."""
    name = next(k for k in res["baseline"] if not k.startswith("sampling"))
    b = res["baseline"][name]
    lines = [
        f"target-only {name}: MSE {b['mse']:.4f}  MAE {b['mae']:.4f}  "
        f"{b['target_calls_per_batch']} target calls  {b['s_per_batch'] * 1e3:.1f} ms/batch",
    ]
    for key, v in res["baseline"].items():
        if key.startswith("sampling"):
            lines.append(f"target-only {name} {key}: MSE {v['mse']:.4f}  MAE {v['mae']:.4f}")
    head = (
        f"{'setting':<34}{'accept':>7}{'MSE':>8}{'dMSE%':>7}{'dOwn%':>7}{'MAE':>8}{'tgt':>6}"
        f"{'drf':>6}{'ms/b':>8}{'comp s':>7}{'speed':>7}"
    )
    lines += [head, "-" * len(head)]
    for r in res["settings"]:
        lines.append(
            f"{r['label']:<34}{r['acceptance']:>7.3f}{r['mse']:>8.4f}"
            f"{100 * r[f'mse_change_vs_{name}']:>+7.1f}"
            f"{100 * r['mse_change_vs_own_baseline']:>+7.1f}{r['mae']:>8.4f}"
            f"{r['target_calls_per_batch']:>6.2f}{r['draft_calls_per_batch']:>6.1f}"
            f"{r['s_per_batch'] * 1e3:>8.1f}{r['compile_s']:>7.1f}{r['speedup']:>6.2f}x"
        )
    lines.append("dMSE%: vs the target's mean decoding; dOwn%: exact/stride vs target sampling "
                 "at the same sigma, tolerance vs the mean")  # fmt: skip
    return "\n".join(lines)


def write_csv(records: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in records for k in r))
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        wr.writerows(records)


def plot_sweep(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for rule, color in (("exact", "tab:blue"), ("stride", "tab:red"), ("tolerance", "tab:green")):
        rs = [r for r in records if r["rule"] == rule]
        if not rs:
            continue
        own = "sampling at the same sigma" if rule != "tolerance" else "mean"
        dx = [100 * r["mse_change_vs_own_baseline"] for r in rs]
        ax.scatter(dx, [r["speedup"] for r in rs], color=color, label=f"{rule} (vs {own})")
        for r, d in zip(rs, dx, strict=True):
            ax.annotate(f"k={r['k']}", (d, r["speedup"]), fontsize=7)
    decoding = records[0]["decoding"] if records else "rolling"
    ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
    ax.axvline(1.0, color="0.8", lw=0.8, ls=":")
    ax.set_xlabel(f"MSE change vs the rule's own target-only {decoding} baseline (%)")
    ax.set_ylabel(f"wall-clock speed-up vs target-only {decoding} (x)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- CLI


def arg_parser():
    from eval.cli import parser

    p = parser("python -m eval.spec", __doc__)
    p.add_argument(
        "--target",
        default=DEFAULT_TARGET,
        help="jaxts target checkpoint dir (a relative one: from the repository)",
    )
    p.add_argument(
        "--draft",
        default=DEFAULT_DRAFT,
        help="jaxts draft checkpoint dir (a relative one: from the repository)",
    )
    p.add_argument("--dataset", default="ETTh1", help="name or CSV path")
    p.add_argument("--data-dir", default=None, help="folder with the dataset CSVs")
    p.add_argument("--seq-len", type=int, default=672, help="context length")
    p.add_argument("--decoding", choices=("rolling", "cached"), default="rolling",
                   help="rolling: OpenLTM's sliding window; cached: KV caches (growing context), "
                   "baselines included")  # fmt: skip
    p.add_argument("--pred-len", type=int, default=720, help="horizon")
    p.add_argument("--rules", default=None, help="comma-separated rules (default: all three)")
    p.add_argument("--k", default=None, help="draft patches per round, comma list (default: 3)")
    p.add_argument("--sigma", type=float, default=0.25, help="target sampling noise std")
    p.add_argument("--accept-bias", type=float, default=1.0, help="STRIDE's spec_accept_bias")
    p.add_argument("--tol", type=float, default=None, help="tolerance rule RMS (default: 0.1)")
    p.add_argument("--adaptive", action="store_true", help="STRIDE's adaptive k")
    p.add_argument("--sweep", nargs="+", default=None, metavar="NAME=v1,v2",
                   help=f"cartesian sweep over {list(SWEEP_AXES)} (default: {' '.join(DEFAULT_SWEEP)}"
                   " unless --rules or --k)")  # fmt: skip
    p.add_argument("--window-stride", type=int, default=8, help="use every n-th test window")
    p.add_argument("--max-windows", type=int, default=None, help="at most this many (default: all)")
    p.add_argument("--batch-size", type=int, default=1, help="1: the latency setting")
    p.add_argument("--seed", type=int, default=0, help="JAX key of the sampling rules")
    p.add_argument("--out", default="runs/spec_etth1", help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite earlier results in --out")
    p.add_argument("--debug-csv", default=None, help="write per-window acceptance here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from jaxts._cli import exit_code

    args = arg_parser().parse_args(argv)
    return exit_code(lambda: _main(args))


def _resolve(path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else ROOT / path


def _settings(args) -> list[Setting]:
    base = Setting(
        sigma=args.sigma, accept_bias=args.accept_bias, tol=args.tol, adaptive=args.adaptive
    )
    # Neither rules, k nor a sweep given: the main job's sweep (every rule at k = 1..4).
    if args.sweep is not None or (args.rules is None and args.k is None):
        settings = parse_sweep(args.sweep or DEFAULT_SWEEP, base)
    else:
        rules = args.rules or "exact,stride,tolerance"
        settings = parse_sweep([f"rule={rules}", f"k={args.k or 3}"], base)
    return [
        dataclasses.replace(s, tol=0.1 if s.tol is None else s.tol) if s.rule == "tolerance" else s
        for s in settings
    ]


def _main(args) -> None:
    from eval.cli import check_output_dir, check_output_file
    from eval.forecast import NonFiniteForecast
    from jaxts.checkpoint import load_model
    from jaxts.data import forecast_windows

    t_start = time.perf_counter()
    if args.window_stride < 1 or args.batch_size < 1:
        raise ValueError("--window-stride and --batch-size must be >= 1")
    out = check_output_dir(args.out, args.force)
    if args.debug_csv:
        check_output_file(args.debug_csv, args.force, flag="--debug-csv")
    target_dir, draft_dir = _resolve(args.target), _resolve(args.draft)
    check_checkpoints(target_dir, draft_dir)
    target = load_model(target_dir, family="timer_xl")
    draft = load_model(draft_dir, family="timer_xl")
    settings = _settings(args)
    x, y = forecast_windows(
        args.dataset, "test", args.seq_len, args.pred_len, data_dir=args.data_dir
    )
    ids = np.arange(0, x.shape[0], args.window_stride)[: args.max_windows]
    x, y = np.ascontiguousarray(x[ids]), np.ascontiguousarray(y[ids], dtype=np.float64)
    print(
        f"{args.dataset} test: {len(ids)} windows (every {args.window_stride}th), L={args.seq_len}, "
        f"H={args.pred_len}; target {target_dir} ({target.config.d_model}d), draft {draft_dir} "
        f"({draft.config.d_model}d, {'stochastic' if draft.config.stochastic else 'deterministic'});"
        f" {len(settings)} setting(s)",
        flush=True,
    )
    debug_rows = [] if args.debug_csv else None
    try:
        res = evaluate(
            target, draft, x, y, settings, batch_size=args.batch_size, seed=args.seed,
            progress=not args.no_progress, debug_rows=debug_rows, window_ids=ids,
            decoding=args.decoding,
        )  # fmt: skip
    except NonFiniteForecast as e:
        raise ValueError(f"{target_dir if e.role == 'target' else draft_dir}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    import jax

    res["meta"] = {
        "dataset": args.dataset, "seq_len": args.seq_len, "pred_len": args.pred_len,
        "windows": len(ids), "window_stride": args.window_stride, "batch_size": args.batch_size,
        "target": str(target_dir), "draft": str(draft_dir),
        "target_config": target.config.to_dict(), "draft_config": draft.config.to_dict(),
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "jax": jax.__version__, "seed": args.seed, "decoding": args.decoding,
        "total_s": time.perf_counter() - t_start,
    }  # fmt: skip
    print(format_table(res))
    (out / "spec_results.json").write_text(json.dumps(res, indent=2))
    write_csv(res["settings"], out / "spec_sweep.csv")
    plot_sweep(
        res["settings"],
        out / "spec_sweep.png",
        f"{args.dataset} H={args.pred_len}, {len(ids)} windows, {args.decoding} decoding",
    )
    if debug_rows is not None:
        write_csv(debug_rows, Path(args.debug_csv))
        print(f"wrote {args.debug_csv}")
    good = [
        r["label"]
        for r in res["settings"]
        if r["speedup"] >= 2.0 and r["mse_change_vs_own_baseline"] <= 0.01
    ]
    print(
        f">= 2x speed-up with MSE within 1% of the own target-only {args.decoding} baseline: "
        f"{', '.join(good) if good else 'none'}"
    )
    print(f"wrote {out}/spec_results.json, spec_sweep.csv, spec_sweep.png "
          f"({time.perf_counter() - t_start:.0f}s total)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
