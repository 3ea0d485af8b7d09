"""Speculative decoding: jaxts (one compiled ``while_loop``) vs the PyTorch STRIDE loop, on the
same target/draft weights and the same ETTh1 test windows, in one process.

    python -m bench.spec [--target DIR] [--draft DIR] [--batches 1,32] [--windows 32]
                         [--pred-len 720] [--k 3] [--sigma 0.25] [--tol 0.1] [--repeats 5]

Models: jaxts checkpoint directories (``jaxts.checkpoint.load_model``); a directory that does not
exist falls back to a random-init model of the CPU sizes (target d_model 256 / 8 heads / d_ff 512
/ 1 layer, use_norm; draft = ``draft_config(target, 0.25, 0.25, 0.25, 0.25, stochastic=True)``),
which is printed and recorded in the JSON. The PyTorch references (OpenLTM target, STRIDE draft)
get the identical weights through ``bridges.timer_xl.to_openltm`` + ``load_state_dict(strict=True)``.

Windows: ``--windows`` evenly spaced ETTh1 test windows (standardised), the same for every batch
size: a batch size ``b`` forecasts them as ``windows / b`` sequential batches, so every row
covers the same series and the times, call counts and errors are comparable across batch sizes.

Cases (per batch size), all over the same windows:

* ``jax rolling``: ``rolling_forecast`` of the target (deterministic, 1 target call per patch);
* ``jax sampling``: ``sample_target``, target-only ancestral sampling (the distribution that
  ``exact`` reproduces; its error is the reference for the sampling rules);
* ``jax exact`` / ``jax stride`` / ``jax tolerance``: ``jaxts.speculative.generate``;
* ``torch rolling``: OpenLTM's rolling loop; ``torch stride``: the STRIDE ``SpeculativeDecoder``
  (same k / sigma / accept_bias, no MSE tolerance, the draft's ``draft_stochastic``).

JAX: the first call (trace + compile + run) is reported apart as ``compile``; then the median of
``--repeats`` steady-state calls (results on the host). PyTorch: eval, ``no_grad``, float32, one
warm-up call, then the median. The random streams (fixed JAX key, a freshly seeded
``torch.Generator`` per call) repeat the same work on every call.

Ratios: ``speed-up`` = the same framework's target-only rolling time / the case's time;
``jax/torch`` = PyTorch time / jaxts time (> 1: jaxts faster) for rolling and the STRIDE loop;
``tgt-call ratio`` = target calls of the rolling forecast / the case's target calls.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import torch
from flax import nnx

from bench._timing import time_jax, time_torch
from bridges.timer_xl import to_openltm
from eval.cli import int_list, parser
from jaxts._cli import exit_code
from jaxts.checkpoint import load_model
from jaxts.data import forecast_windows
from jaxts.models.timer_xl import TimerXL, TimerXLConfig, draft_config, rolling_forecast
from jaxts.speculative import generate, sample_target

DEFAULT_TARGET = "runs/timer_xl_etth1_cpu/best"
DEFAULT_DRAFT = "runs/distill_etth1_cpu/best"
CPU_TARGET = TimerXLConfig(
    input_token_len=96, output_token_len=96, d_model=256, n_heads=8, e_layers=1, d_ff=512,
    use_norm=True,
)  # fmt: skip
DRAFT_SCALES = (0.25, 0.25, 0.25, 0.25)
JAX_RULES = ("exact", "stride", "tolerance")


# ----------------------------------------------------------------------------- models


def load_or_init(path, fallback: TimerXLConfig, seed: int) -> tuple[TimerXL, dict]:
    """The checkpoint at ``path`` or, when that directory does not exist, a random-init model."""
    p = Path(path)
    if p.exists():  # a broken checkpoint is an error, not a silent fallback
        model, info = load_model(p, family="timer_xl"), {"source": str(p), "trained": True}
    else:
        model = TimerXL(fallback, rngs=nnx.Rngs(seed))
        info = {"source": f"random init (seed {seed}); {p} not found", "trained": False}
    model.eval()
    info["config"] = model.config.to_dict()
    return model, info


def torch_pair(target: TimerXL, draft: TimerXL):
    """OpenLTM target and STRIDE draft holding the jaxts weights (strict load), eval, float32."""
    from bridges.reference import timer_xl_draft_torch as dref
    from bridges.reference import timer_xl_torch as tref

    def state(m):
        return {k: torch.from_numpy(np.array(v, np.float32)) for k, v in to_openltm(m).items()}

    tm = tref.Model(target.config)
    tm.load_state_dict(state(target), strict=True)
    # STRIDE's draft args: the target's fields with the draft's own sizes; no draft_scale_* keeps
    # them as they are (the draft may come from a checkpoint of any scale).
    dargs = SimpleNamespace(**draft.config.to_dict(), draft_stochastic=draft.config.stochastic)
    dm = dref.Model(dargs)
    dm.load_state_dict(state(draft), strict=True)
    return tm.float().eval(), dm.float().eval()


def parity(jm: TimerXL, tm, x: np.ndarray) -> float:
    """max |jaxts - PyTorch| of the next-patch mean on ``x`` (checks the weight transfer)."""
    with torch.no_grad():
        out = tm(torch.from_numpy(x))
    out = out[0] if isinstance(out, tuple) else out
    p = jm.config.output_token_len
    return float(np.abs(np.asarray(jm.forecast_next_mean(x)) - out[:, -p:].numpy()).max())


# ----------------------------------------------------------------------------- cases


def _stack(parts: list[dict]) -> dict:
    """Per-batch results -> one result over all windows (forecasts concatenated, counts summed)."""
    out = {"forecast": np.concatenate([p["forecast"] for p in parts], axis=0)}
    for key in parts[0]:
        if key != "forecast":
            out[key] = sum(p[key] for p in parts)
    return out


def jax_cases(target, draft, pred_len, a, key):
    """name -> fn(list of [b, L, C] batches) -> result dict (host values)."""
    steps = math.ceil(pred_len / target.config.output_token_len)

    def rolling(batches):
        return _stack(
            [
                {
                    "forecast": np.asarray(rolling_forecast(target, xb, pred_len)),
                    "target_calls": steps,
                }
                for xb in batches
            ]
        )

    def sampling(batches):
        return _stack(
            [
                {
                    "forecast": sample_target(target, xb, pred_len, sigma=a.sigma, key=key),
                    "target_calls": steps,
                }
                for xb in batches
            ]
        )

    def spec(rule):
        tol = a.tol if rule == "tolerance" else None

        def fn(batches):
            parts = []
            for xb in batches:
                r = generate(
                    target, draft, xb, pred_len, k=a.k, rule=rule, sigma=a.sigma,
                    accept_bias=a.accept_bias, tol=tol, key=key,
                )  # fmt: skip
                parts.append(
                    {
                        "forecast": r.forecast,
                        "target_calls": r.target_calls,
                        "draft_calls": r.draft_calls,
                        "accepted": int(r.accepted.sum()),
                        "attempted": int(r.attempted.sum()),
                        "rounds": r.rounds,
                        "residual_fallbacks": r.residual_fallbacks,
                    }
                )
            return _stack(parts)

        return fn

    cases = {"jax rolling": rolling, "jax sampling": sampling}
    cases.update({f"jax {rule}": spec(rule) for rule in JAX_RULES})
    return cases


def torch_cases(tm, dm, cfg: TimerXLConfig, draft_stochastic: bool, pred_len, a, seed):
    from bridges.reference import timer_xl_torch as tref
    from bridges.reference.stride_speculative_torch import SpeculativeDecoder

    p = cfg.output_token_len
    steps = math.ceil(pred_len / p)

    def rolling(batches):
        return _stack(
            [
                {
                    "forecast": tref.rolling_forecast(
                        tm, xb, pred_len, cfg.input_token_len, p
                    ).numpy(),
                    "target_calls": steps,
                }
                for xb in batches
            ]
        )

    def stride(batches):
        parts = []
        for i, xb in enumerate(batches):
            args = SimpleNamespace(
                spec_k=a.k, spec_sigma=a.sigma, spec_accept_bias=a.accept_bias,
                spec_accept_mse_tol=0.0, spec_adaptive=False,
                input_token_len=cfg.input_token_len, output_token_len=p,
                use_norm=cfg.use_norm, draft_stochastic=draft_stochastic,
                generator=torch.Generator().manual_seed(seed + i),
            )  # fmt: skip
            preds, acc, att, br = SpeculativeDecoder(tm, dm, args).generate(xb, steps)
            parts.append(
                {
                    "forecast": preds[:, :pred_len].numpy(),
                    "target_calls": br["n_target_verify_calls"] + br["n_target_sample_calls"],
                    "draft_calls": br["n_draft_calls"],
                    "accepted": acc,
                    "attempted": att,
                    "rounds": br["n_rounds"],
                }
            )
        return _stack(parts)

    return {"torch rolling": rolling, "torch stride": stride}


# ----------------------------------------------------------------------------- run


def select_windows(n: int, seq_len: int, pred_len: int, data_dir=None):
    """``n`` evenly spaced ETTh1 test windows: (x [n, L, C], y [n, H, C], window indices)."""
    x_all, y_all = forecast_windows("ETTh1", "test", seq_len, pred_len, data_dir=data_dir)
    if n > len(x_all):
        raise ValueError(f"--windows {n} > the {len(x_all)} ETTh1 test windows")
    idx = np.linspace(0, len(x_all) - 1, n).round().astype(int)
    return np.array(x_all[idx]), np.array(y_all[idx]), idx  # writable copies


def _row(name, framework, b, n_batches, timing, res, y, ref_forecast, steps):
    f = res["forecast"]
    acc, att = res.get("accepted"), res.get("attempted")
    row = {
        "case": name,
        "framework": framework,
        "batch": b,
        "n_batches": n_batches,
        "median_s": timing["median_s"],
        "runs_s": timing["runs_s"],
        "compile_s": timing.get("compile_s"),
        "ms_per_window": timing["median_s"] / len(f) * 1e3,
        "target_calls": int(res["target_calls"]),
        "draft_calls": int(res.get("draft_calls", 0)),
        "rounds": res.get("rounds"),
        "accepted": acc,
        "attempted": att,
        "acceptance_rate": (acc / att if att else 0.0) if att is not None else None,
        "residual_fallbacks": res.get("residual_fallbacks"),
        "mse_vs_truth": float(np.mean((f - y) ** 2)),
        "mae_vs_truth": float(np.mean(np.abs(f - y))),
        "mse_vs_rolling": float(np.mean((f - ref_forecast) ** 2)),
        "target_call_ratio": steps * n_batches / int(res["target_calls"]),
    }
    return row


def run(a) -> dict:
    load_start = _loadavg()
    if a.torch_threads > 0:
        torch.set_num_threads(a.torch_threads)
    target, t_info = load_or_init(a.target, CPU_TARGET, seed=0)
    draft, d_info = load_or_init(
        a.draft, draft_config(target.config, *DRAFT_SCALES, stochastic=True), seed=1
    )
    for role, info in (("target", t_info), ("draft", d_info)):
        print(f"{role}: {info['source']}" + ("" if info["trained"] else "  [RANDOM WEIGHTS]"))
    tm, dm = torch_pair(target, draft)
    cfg = target.config
    seq_len = a.seq_len
    steps = math.ceil(a.pred_len / cfg.output_token_len)
    x, y, idx = select_windows(a.windows, seq_len, a.pred_len, a.data_dir)
    par = {"target": parity(target, tm, x[:2]), "draft": parity(draft, dm, x[:2])}
    print(f"weights transfer: max |jax - torch| next patch target {par['target']:.2e}, "
          f"draft {par['draft']:.2e}")  # fmt: skip
    key = jax.random.key(a.seed)
    jcases = jax_cases(target, draft, a.pred_len, a, key)
    tcases = torch_cases(tm, dm, cfg, draft.config.stochastic, a.pred_len, a, a.seed)

    rows, summary = [], []
    for b in a.batches:
        if a.windows % b:
            raise ValueError(f"--windows {a.windows} is not a multiple of batch size {b}")
        n_b = a.windows // b
        xb = [x[i * b : (i + 1) * b] for i in range(n_b)]
        xt = [torch.from_numpy(v) for v in xb]
        block = {}
        for name, fn in jcases.items():
            t = time_jax(fn, xb, repeats=a.repeats, keep_result=True)
            block[name] = ("jax", t)
            _progress(name, b, t)
        for name, fn in tcases.items():
            t = time_torch(fn, xt, repeats=a.repeats, keep_result=True)
            block[name] = ("torch", t)
            _progress(name, b, t)
        ref = {fw: block[f"{fw} rolling"][1]["result"]["forecast"] for fw in ("jax", "torch")}
        base = {fw: block[f"{fw} rolling"][1]["median_s"] for fw in ("jax", "torch")}
        new = []
        for name, (fw, t) in block.items():
            r = _row(name, fw, b, n_b, t, t["result"], y, ref[fw], steps)
            r["speedup_vs_rolling"] = base[fw] / r["median_s"]
            new.append(r)
        by = {r["case"]: r for r in new}
        ratios = {
            "batch": b,
            "jax_vs_torch_rolling": by["torch rolling"]["median_s"] / by["jax rolling"]["median_s"],
            "jax_vs_torch_stride": by["torch stride"]["median_s"] / by["jax stride"]["median_s"],
            "rolling_max_abs_diff_jax_torch": float(np.abs(ref["jax"] - ref["torch"]).max()),
        }
        by["jax rolling"]["jax_vs_torch"] = ratios["jax_vs_torch_rolling"]
        by["jax stride"]["jax_vs_torch"] = ratios["jax_vs_torch_stride"]
        rows += new
        summary.append(ratios)

    meta = {
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "jax_threads": "XLA CPU default (intra-op pool over all cores) unless XLA_FLAGS says else",
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "loadavg_start_end": [load_start, _loadavg()],
        "jax": jax.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "command": "python -m bench.spec " + " ".join(a.argv),
    }
    settings = {
        "dataset": "ETTh1 test (standardised with the train scaler)",
        "seq_len": seq_len,
        "pred_len": a.pred_len,
        "patches": steps,
        "windows": a.windows,
        "window_indices": idx.tolist(),
        "batches": a.batches,
        "k": a.k,
        "sigma": a.sigma,
        "tol": a.tol,
        "accept_bias": a.accept_bias,
        "repeats": a.repeats,
        "seed": a.seed,
    }
    models = {"target": t_info, "draft": d_info, "weights_trained": {
        "target": t_info["trained"], "draft": d_info["trained"]}, "parity_max_abs": par}  # fmt: skip
    return {"meta": meta, "settings": settings, "models": models, "rows": rows, "ratios": summary}


def _loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def _progress(name, b, t):
    comp = f"  (compile {t['compile_s']:.2f} s)" if "compile_s" in t else ""
    print(f"  {name:>14} b={b:<3} {t['median_s']:8.3f} s{comp}", flush=True)


def _fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def table(report: dict) -> str:
    s = report["settings"]
    head = (
        f"ETTh1 test, {s['windows']} windows, L={s['seq_len']}, H={s['pred_len']} "
        f"({s['patches']} patches), k={s['k']}, sigma={s['sigma']}, tol={s['tol']}; "
        f"target {'trained' if report['models']['target']['trained'] else 'RANDOM'}, "
        f"draft {'trained' if report['models']['draft']['trained'] else 'RANDOM'}; "
        f"{report['meta']['device']}, torch threads {report['meta']['torch_threads']}"
    )
    cols = (
        "| case | batch | median s | ms/window | compile s | target calls | draft calls | accept "
        "| MSE truth | MSE vs rolling | speed-up vs rolling | jax/torch | tgt-call ratio |"
    )
    lines = [head, "", cols, "|" + "---|" * (cols.count("|") - 1)]
    for r in report["rows"]:
        lines.append(
            f"| {r['case']} | {r['batch']} | {r['median_s']:.3f} | {r['ms_per_window']:.1f} | "
            f"{_fmt(r['compile_s'], '.2f')} | {r['target_calls']} | {r['draft_calls']} | "
            f"{_fmt(r['acceptance_rate'], '.3f')} | {r['mse_vs_truth']:.4f} | "
            f"{r['mse_vs_rolling']:.4f} | x{r['speedup_vs_rolling']:.2f} | "
            f"{_fmt(r.get('jax_vs_torch'), '.2f')} | {r['target_call_ratio']:.2f} |"
        )
    return "\n".join(lines)


def write_csv(rows, path: Path):
    keys = [k for k in rows[0] if k != "runs_s"] + ["jax_vs_torch"]
    keys = list(dict.fromkeys(keys))
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def arg_parser():
    p = parser("python -m bench.spec", __doc__)
    p.add_argument("--target", default=DEFAULT_TARGET, help="jaxts checkpoint dir of the target")
    p.add_argument("--draft", default=DEFAULT_DRAFT, help="jaxts checkpoint dir of the draft")
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--windows", type=int, default=32, help="test windows (a multiple of batches)")
    p.add_argument("--pred-len", type=int, default=720, help="horizon")
    p.add_argument("--seq-len", type=int, default=672, help="context length")
    p.add_argument("--k", type=int, default=3, help="draft patches per round")
    p.add_argument("--sigma", type=float, default=0.25, help="target sampling noise std")
    p.add_argument("--tol", type=float, default=0.1, help="RMS tolerance of the tolerance rule")
    p.add_argument("--accept-bias", type=float, default=1.0, help="STRIDE's spec_accept_bias")
    p.add_argument("--repeats", type=int, default=5, help="steady-state runs (median)")
    p.add_argument("--seed", type=int, default=0, help="JAX key / torch generator seed")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads (0 keeps torch's default, one per core: on shared cores its "
        "OpenMP pool stalls, ~200 ms instead of ~4 ms per small forward)",
    )
    p.add_argument("--data-dir", default=None, help="folder with the dataset CSVs")
    p.add_argument("--out", default="bench/results/spec.json", help="JSON report")
    p.add_argument("--csv", default="bench/results/spec.csv", help="CSV of the rows ('': none)")
    return p


def main(argv=None) -> int:
    a = arg_parser().parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    return exit_code(lambda: _main(a))


def _main(a) -> None:
    a.batches = int_list(a.batches, "--batches")
    if a.repeats < 1 or a.windows < 1 or a.torch_threads < 0:
        raise ValueError("--repeats and --windows must be positive, --torch-threads >= 0")
    report = run(a)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if a.csv:
        write_csv(report["rows"], Path(a.csv))
    print()
    print(table(report))
    for r in report["ratios"]:
        print(
            f"b={r['batch']}: jax/torch rolling x{r['jax_vs_torch_rolling']:.2f}, "
            f"STRIDE loop x{r['jax_vs_torch_stride']:.2f} (> 1: jaxts faster); "
            f"rolling max |jax - torch| {r['rolling_max_abs_diff_jax_torch']:.1e}"
        )
    print(f"wrote {out}" + (f" and {a.csv}" if a.csv else ""))


if __name__ == "__main__":
    sys.exit(main())
