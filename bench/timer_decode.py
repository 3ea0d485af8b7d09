"""Timer-XL decode-step time against the number of new tokens: the regime evidence for
speculative decoding over a KV cache.

    python -m bench.timer_decode [--target CKPT_DIR | --shape etth1,etth1_4l,base84m,draft_4l]
                                 [--steps 1,2,3,4,5] [--repeats 7] [--quick] [--out DIR]

Per model: batch 1, C = 7 variables, a context of 672 points (7 tokens of 96) prefilled into a
cache with room for 720/96 + 9 more patches (24 time steps). One jitted
:func:`jaxts.models.timer_xl_cache.extend` call of T patches (T x C new tokens, one forward) is
timed for each T in ``--steps``, and univariate (C = 1) for 1 and 4 tokens. The cache is donated
and the call rewinds it, so every repeat is the in-place step a decoding loop runs. Compile time
is reported apart from the steady-state median.

Reported per row: ms, ms relative to the same C's one-patch step, weight bytes per call / time
(GB/s: a batch-1 step reads every weight once) and that as a share of the machine's read
bandwidth measured in the same run (a jitted sum over a 256 MB float32 array). If the time
barely grows with T, a step is bound by reading the weights: verifying k patches in one call
then costs little more than one step, which is where speculative decoding pays.

Shapes (random weights, fixed seed: timing only, the values do not matter): ``etth1`` (OpenLTM's
ETTh1 Timer-XL: d_model 1024, 8 heads, 1 layer, d_ff 2048), ``etth1_4l`` (the same with 4
layers), ``base84m`` (timer-base-84m-like stack: 1024 wide, 8 layers, d_ff 2048; Timer-XL's ReLU
FFN), ``draft_4l`` (``draft_config(etth1_4l, 0.25, 0.25, 0.25, 0.25, stochastic=True)``).
``--target``: a jaxts checkpoint instead. ``--quick``: tiny shapes, 2 repeats, 1-2 patches and one
univariate token (a smoke run).
Writes ``timer_decode.json``, ``timer_decode.csv`` and ``timer_decode.png`` into ``--out``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench._timing import machine_meta
from bench.chronos import matmul_gflops
from bench.chronos2 import machine_load
from bench.llama import bandwidth_gbs
from eval.cli import check_output_dir, int_list, parser
from jaxts._cli import exit_code
from jaxts.models import timer_xl_cache as tc
from jaxts.models.timer_xl import TimerXL, TimerXLConfig, draft_config

OUTPUTS = ("timer_decode.json", "timer_decode.csv", "timer_decode.png")
N_VARS, CONTEXT_TOKENS, HORIZON, SPARE = 7, 7, 720, 9
UNIVARIATE_TOKENS = (1, 4)
ETTH1 = TimerXLConfig(
    input_token_len=96, output_token_len=96, d_model=1024, n_heads=8, e_layers=1, d_ff=2048,
    use_norm=True,
)  # fmt: skip
TINY = TimerXLConfig(
    input_token_len=16, output_token_len=16, d_model=32, n_heads=2, e_layers=2, d_ff=64,
    use_norm=True,
)  # fmt: skip


def shapes(quick: bool) -> dict[str, TimerXLConfig]:
    """The default models by name (``--quick``: a tiny target and its draft)."""
    if quick:
        return {"tiny": TINY, "tiny_draft": draft_config(TINY, 0.5, 0.5, 0.5, 0.5, stochastic=True)}
    deep = dataclasses.replace(ETTH1, e_layers=4)
    return {
        "etth1": ETTH1,
        "etth1_4l": deep,
        "base84m": dataclasses.replace(ETTH1, e_layers=8),
        "draft_4l": draft_config(deep, 0.25, 0.25, 0.25, 0.25, stochastic=True),
    }


def weight_bytes(model: TimerXL) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def time_extend(model: TimerXL, n_vars: int, steps: int, repeats: int) -> dict:
    """Compile time and median ms of one jitted extend of ``steps`` patches x ``n_vars``."""
    cfg = model.config
    p = cfg.input_token_len
    max_tokens = CONTEXT_TOKENS + math.ceil(HORIZON / p) + SPARE
    rng = np.random.default_rng(0)
    context = jnp.asarray(rng.normal(size=(1, CONTEXT_TOKENS * p, n_vars)), jnp.float32)
    patches = jnp.asarray(rng.normal(size=(1, steps, p, n_vars)), jnp.float32)
    graphdef, state = nnx.split(model)

    @jax.jit
    def prefill(state, x):
        cache, stats, _ = tc.prefill(nnx.merge(graphdef, state), x, max_tokens)
        return cache, stats

    @_donating_jit
    def step(state, cache, patches, stats):
        new, out = tc.extend(nnx.merge(graphdef, state), cache, patches, stats)
        return tc.rewind(new, cache.next_index), out  # same index next call: a steady step

    cache, stats = prefill(state, context)
    t0 = time.perf_counter()
    cache, out = step(state, cache, patches, stats)
    jax.block_until_ready(out)
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cache, out = step(state, cache, patches, stats)
        jax.block_until_ready(out)
        runs.append(time.perf_counter() - t0)
    med = statistics.median(runs)
    cache_bytes = sum(a.nbytes for a in cache.k + cache.v)
    return {"compile_s": max(first - med, 0.0), "median_s": med, "runs_s": runs,
            "cache_bytes": cache_bytes, "max_tokens": max_tokens}  # fmt: skip


def _donating_jit(fn):
    """``jax.jit`` donating the cache (argument 1): XLA writes the new slots in place."""
    return jax.jit(fn, donate_argnums=(1,))


def run_model(name: str, model: TimerXL, steps, univariate, repeats: int, bw: float) -> list[dict]:
    """Rows for C = 7 at each of ``steps`` patches and C = 1 at each of ``univariate``."""
    model.eval()
    wbytes = weight_bytes(model)
    cases = [(N_VARS, t) for t in steps] + [(1, t) for t in univariate]
    rows: list[dict] = []
    for n_vars, t in cases:
        r = time_extend(model, n_vars, t, repeats)
        base = next((x for x in rows if x["n_vars"] == n_vars), None)
        ms = r["median_s"] * 1e3
        rows.append({
            "model": name, "n_vars": n_vars, "steps": t, "new_tokens": t * n_vars,
            "ms": ms, "ms_rel_one_step": ms / base["ms"] if base else 1.0,
            "compile_s": r["compile_s"], "runs_ms": [s * 1e3 for s in r["runs_s"]],
            "weight_bytes": wbytes, "cache_bytes": r["cache_bytes"],
            "weights_gbs": wbytes / r["median_s"] / 1e9,
            "share_of_bandwidth": wbytes / r["median_s"] / 1e9 / bw,
            "config": model.config.to_dict(),
        })  # fmt: skip
        x = rows[-1]
        print(f"{name:>10} C={n_vars} T={t} ({x['new_tokens']:>2} tokens): {ms:8.2f} ms "
              f"x{x['ms_rel_one_step']:.2f}  {x['weights_gbs']:6.1f} GB/s "
              f"(compile {x['compile_s']:.1f} s)", flush=True)  # fmt: skip
    return rows


def table(rows: list[dict], bw: float) -> str:
    lines = [f"| model | C | patches | new tokens | ms | vs 1 patch | weights GB/s (% of {bw:.0f}) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['n_vars']} | {r['steps']} | {r['new_tokens']} | {r['ms']:.2f} | "
            f"x{r['ms_rel_one_step']:.2f} | {r['weights_gbs']:.1f} "
            f"({100 * r['share_of_bandwidth']:.0f}%) |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, bw: float) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, name in enumerate(dict.fromkeys(r["model"] for r in rows)):
        color = f"C{i}"
        for n_vars, style in ((N_VARS, "-o"), (1, "--s")):
            pts = [r for r in rows if r["model"] == name and r["n_vars"] == n_vars]
            label = f"{name} (C={n_vars})"
            ax.plot([r["new_tokens"] for r in pts], [r["ms"] for r in pts], style,
                    color=color, label=label, ms=4)  # fmt: skip
    ax.set_xlabel("new tokens per extend call (patches x variables)")
    ax.set_ylabel("ms per call (median)")
    ax.set_yscale("log")
    ax.set_title(f"Timer-XL KV-cache step, batch 1 (read bandwidth {bw:.0f} GB/s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csv(rows: list[dict], path: Path) -> None:
    keys = [k for k in rows[0] if k not in ("runs_ms", "config")]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def arg_parser():
    p = parser("python -m bench.timer_decode", __doc__)
    p.add_argument(
        "--target", default=None, help="a jaxts Timer-XL checkpoint (instead of --shape)"
    )
    p.add_argument("--shape", default=None,
                   help="comma-separated shape names (default: all of them; see above)")  # fmt: skip
    p.add_argument("--steps", default="1,2,3,4,5", help="patches per extend call (C = 7)")
    p.add_argument("--repeats", type=int, default=7, help="steady-state calls (median)")
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 repeats (a smoke run)")
    p.add_argument("--out", default="bench/results", help="folder for the JSON, CSV and PNG")
    p.add_argument("--force", action="store_true", help="overwrite earlier results in --out")
    return p


def main(argv=None) -> int:
    return exit_code(lambda: _main(arg_parser().parse_args(argv)))


def _models(args) -> dict[str, TimerXL]:
    if args.target is not None:
        if args.shape is not None:
            raise ValueError("pass --target or --shape, not both")
        from jaxts.checkpoint import load_model

        return {Path(args.target).name: load_model(args.target, family="timer_xl")}
    known = shapes(args.quick)
    names = list(known) if args.shape is None else [s for s in args.shape.split(",") if s]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"--shape must name some of {list(known)}, got {args.shape!r}")
    return {n: TimerXL(known[n], rngs=nnx.Rngs(i)) for i, n in enumerate(names)}


def _main(args) -> None:
    univariate = UNIVARIATE_TOKENS
    if args.quick:  # 6 small compiles: a smoke run
        args.repeats, args.steps, univariate = 2, "1,2", (1,)
    out = check_output_dir(args.out, args.force, files=OUTPUTS)
    steps = int_list(args.steps, "--steps")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be a positive integer, got {args.repeats}")
    models = _models(args)
    load_start = machine_load()
    bw = bandwidth_gbs(32 if args.quick else 256)
    peak = matmul_gflops(256 if args.quick else 2048)
    print(f"read bandwidth {bw:.1f} GB/s, matmul {peak:.0f} GFLOP/s", flush=True)
    t0 = time.perf_counter()
    rows = [
        r
        for name, m in models.items()
        for r in run_model(name, m, steps, univariate, args.repeats, bw)
    ]
    meta = machine_meta(peak) | {
        "bandwidth_gbs": bw, "wall_s": time.perf_counter() - t0,
        "load": {"start": load_start, "end": machine_load()},
        "weights": "checkpoint" if args.target else "random (seed = shape index): timing only",
        "batch": 1, "context_tokens": CONTEXT_TOKENS, "quick": bool(args.quick),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / OUTPUTS[0]).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    write_csv(rows, out / OUTPUTS[1])
    plot(rows, out / OUTPUTS[2], bw)
    print(table(rows, bw))
    print(f"wrote {', '.join(str(out / n) for n in OUTPUTS)}")


if __name__ == "__main__":
    sys.exit(main())
