"""Chronos-2 forecasting: jaxts vs chronos-forecasting's ``Chronos2Pipeline`` on the same weights.

    python -m bench.chronos2 [--contexts 512,2048] [--batches 1,32] [--out ...] [--force]

One random upstream ``Chronos2Model`` at amazon/chronos-2's size (d_model 768, d_kv 64, 12
layers, 12 heads, d_ff 3072, patches of 16, 21 quantiles, its published ``chronos_config``),
every weight drawn from N(0, 0.02) (RMSNorm weights 1 + N(0, 0.02): upstream's own init,
``initializer_factor`` 0.05, leaves a nearly constant model whose parity would prove little),
written with ``save_pretrained`` and loaded by both pipelines (jaxts through its bridge).
Random-walk contexts, each series its own task (``(B, 1, T)``), ``predict`` with H = 64.

Per point, both pipelines first run once on the same inputs: the outputs must agree within
1e-3 relative (``max |jaxts - upstream| / max |upstream|``, recorded), else the run stops;
jaxts' first call is its compile (trace + XLA), reported apart. Then ``--repeats`` steady-state
runs of each, alternated (a load change on the shared machine hits both sides), medians.
PyTorch runs under ``torch.inference_mode`` with its default thread count. The ratio is
chronos-forecasting / jaxts (> 1: jaxts faster). GFLOP/s count the model's executed
floating-point work (2 per multiply-add: patch embeddings, time and group attention over the
whole padded batch, feed-forward, output head) and are compared with a 2048x2048 float32
matmul on the same machine (``bench.chronos.matmul_gflops``). The machine's load (``uptime``)
is recorded at the start and the end.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench._timing import machine_meta
from bench.chronos import matmul_gflops
from bridges.reference.chronos2_hf import (
    CHRONOS2_CORE,
    TINY_CHRONOS,
    TINY_CORE,
    chronos2_config,
    tiny_chronos2,
)
from eval.cli import check_output_file, int_list, parser
from jaxts._cli import exit_code

PARITY_RTOL = 1e-3
WEIGHT_STD = 0.02
# name: (core overrides, chronos_config overrides); "tiny" is for smoke runs
# (tiny_chronos2 defaults to the tiny chronos_config: the published one is given in full)
SIZES = {
    "published": ({}, chronos2_config()),  # CHRONOS2_CORE and CHRONOS2_CONFIG
    "tiny": (TINY_CORE, TINY_CHRONOS),
}
QUICK = dict(size="tiny", contexts="64", batches="1,3", horizon=16, repeats=1)


def chronos2_flops(core: dict, chronos: dict, batch: int, context: int, horizon: int) -> float:
    """Executed FLOPs of one ``predict`` of ``batch`` series of ``context`` steps (one model
    call: ``horizon <= max_output_patches * P``); 2 per multiply-add."""
    d, dff, inner = core["d_model"], core["d_ff"], core["num_heads"] * core["d_kv"]
    p, q = chronos["input_patch_size"], len(chronos["quantiles"])
    n_ctx = math.ceil(context / p)
    n_out = math.ceil(horizon / chronos["output_patch_size"])
    s = n_ctx + int(chronos["use_reg_token"]) + n_out  # tokens per series
    embed = 2 * (3 * p * dff + dff * d + 3 * p * d)  # hidden, output and residual layers
    layer = 2 * (
        2 * 4 * d * inner  # q, k, v, o of time and of group attention
        + 2 * s * inner  # time attention: scores and values over the series' S tokens
        + 2 * batch * inner  # group attention: over all B series at each step
        + 2 * d * dff  # feed-forward
    )
    head = 2 * (d * dff + dff * q * chronos["output_patch_size"] + d * q * p)
    return batch * ((n_ctx + n_out) * embed + s * core["num_layers"] * layer + n_out * head)


def build(directory: Path, size: str) -> tuple[dict, dict]:
    """The random upstream model written to ``directory``; its (core, chronos_config) dicts."""
    core_over, chronos_over = SIZES[size]
    model = tiny_chronos2(
        directory, std=WEIGHT_STD, **{**CHRONOS2_CORE, **core_over}, **chronos_over
    )
    return model.config.to_dict(), dict(model.config.chronos_config)


# ---- shared by bench.chronos_bolt ---------------------------------------------------------------


def random_walks(rng, batch: int, context: int) -> np.ndarray:
    """``[B, T]`` float32 random walks around 10."""
    return np.cumsum(rng.standard_normal((batch, context)), axis=1).astype(np.float32) + 10


def parity(jax_out: np.ndarray, torch_out: np.ndarray, where: str) -> dict:
    """The two sides' forecasts: max abs and relative error; a ValueError past PARITY_RTOL."""
    if jax_out.shape != torch_out.shape:
        raise ValueError(f"{where}: jaxts {jax_out.shape} vs upstream {torch_out.shape}")
    err = float(np.abs(jax_out - torch_out).max())
    rel = err / max(float(np.abs(torch_out).max()), 1e-30)
    if not rel <= PARITY_RTOL:  # NaN fails too
        raise ValueError(f"{where}: jaxts and chronos-forecasting differ by {rel:.2e} relative")
    return {"max_abs_err": err, "max_rel_err": rel, "rtol": PARITY_RTOL, "ok": True}


def time_point(jax_fn: Callable, torch_fn: Callable, repeats: int, where: str) -> dict:
    """First calls (jaxts: compile + run; torch: warm-up), parity, then ``repeats`` alternated
    steady-state runs of each side. ``*_fn()`` return ``[B, Q, H]`` numpy forecasts."""
    t0 = time.perf_counter()
    j_out = jax_fn()  # numpy: the device work is done
    first = time.perf_counter() - t0
    with torch.inference_mode():
        t_out = torch_fn()
    res = {"parity": parity(j_out, t_out, where)}
    j_runs, t_runs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax_fn()
        j_runs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            torch_fn()
        t_runs.append(time.perf_counter() - t0)
    j_med, t_med = statistics.median(j_runs), statistics.median(t_runs)
    res |= {"jax_compile_s": max(first - j_med, 0.0), "jax_median_s": j_med}
    res |= {"torch_median_s": t_med, "speedup": t_med / j_med}
    return res | {"jax_runs_s": j_runs, "torch_runs_s": t_runs}


def add_rate(row: dict, flops: float, peak: float) -> dict:
    row["gflop"] = flops / 1e9
    row["jax_gflops"] = flops / row["jax_median_s"] / 1e9
    row["torch_gflops"] = flops / row["torch_median_s"] / 1e9
    row["jax_fraction_of_matmul"] = row["jax_gflops"] / peak
    row["torch_fraction_of_matmul"] = row["torch_gflops"] / peak
    return row


def machine_load() -> dict:
    """``uptime`` and the load averages: other processes on the machine skew every figure."""
    try:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        uptime = None
    return {"uptime": uptime, "loadavg": list(os.getloadavg())}


def meta(peak: float) -> dict:
    return machine_meta(peak)


def table_header(peak: float) -> str:
    return (
        "| context | batch | jaxts median | jaxts compile | chronos-forecasting median | "
        f"ratio | jaxts GFLOP/s (% of matmul {peak:.0f}) | torch GFLOP/s | max rel err |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )


def table_line(r: dict) -> str:
    return (
        f"| {r['context']} | {r['batch']} | {r['jax_median_s'] * 1e3:.1f} ms | "
        f"{r['jax_compile_s']:.2f} s | {r['torch_median_s'] * 1e3:.1f} ms | "
        f"x{r['speedup']:.2f} | {r['jax_gflops']:.1f} ({100 * r['jax_fraction_of_matmul']:.0f}%)"
        f" | {r['torch_gflops']:.1f} | {r['parity']['max_rel_err']:.1e} |"
    )


def write_report(out: Path, report: dict, rows: list[dict], peak: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("\n" + table_header(peak))
    print("\n".join(table_line(r) for r in rows))
    print(f"wrote {out}")


# ---- Chronos-2 -------------------------------------------------------------------------------


def run(size, contexts, batches, horizon, repeats, peak) -> tuple[dict, list[dict]]:
    from chronos import Chronos2Pipeline as TorchPipeline

    from jaxts import Chronos2Pipeline

    with tempfile.TemporaryDirectory() as tmp:
        core, chronos = build(Path(tmp), size)
        tp = TorchPipeline.from_pretrained(tmp)
        jp = Chronos2Pipeline.from_pretrained(tmp)
    if horizon > chronos["max_output_patches"] * chronos["output_patch_size"]:
        raise ValueError(f"--horizon {horizon} would unroll; this benchmark times one model call")
    rng = np.random.default_rng(0)
    rows = []
    for context in contexts:
        for b in batches:
            x = random_walks(rng, b, context)[:, None, :]  # [B, 1, T]: B univariate tasks
            xt = torch.from_numpy(x)

            def jax_fn(x=x):
                return np.concatenate(jp.predict(x, horizon))  # [B, Q, H]

            def torch_fn(xt=xt):
                return torch.cat(tp.predict(xt, horizon)).numpy()

            row = {"context": context, "batch": b}
            row |= time_point(jax_fn, torch_fn, repeats, f"context {context}, batch {b}")
            rows.append(add_rate(row, chronos2_flops(core, chronos, b, context, horizon), peak))
            print(table_line(row), flush=True)
    model = {
        "name": f"amazon/chronos-2 shape ({size}), random weights N(0, {WEIGHT_STD})",
        "core": {k: core[k] for k in CHRONOS2_CORE},
        "chronos_config": chronos,
        "horizon": horizon,
    }
    return model, rows


def add_common_arguments(p, out: str, quick: dict) -> None:
    """Options of both Chronos benchmarks (after their own)."""
    p.add_argument("--contexts", default="512,2048", help="comma-separated context lengths")
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=3, help="steady-state runs per side (median)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a seconds-long smoke run: {', '.join(f'{k}={v}' for k, v in quick.items())}",
    )
    p.add_argument("--out", default=out, help="JSON report")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")


def bench_main(args, run_points: Callable) -> None:
    """Check the options, run ``run_points(contexts, batches, peak) -> (model info, rows)`` and
    write the report with the machine's details and load."""
    out = check_output_file(args.out, args.force, flag="--out")
    if args.repeats <= 0:
        raise ValueError(f"--repeats must be a positive integer, got {args.repeats}")
    contexts = int_list(args.contexts, "--contexts")
    batches = int_list(args.batches, "--batches")
    load_start = machine_load()
    peak = matmul_gflops()
    print(table_header(peak), flush=True)
    t0 = time.perf_counter()
    model, rows = run_points(contexts, batches, peak)
    info = meta(peak) | {"wall_s": time.perf_counter() - t0}
    info["load"] = {"start": load_start, "end": machine_load()}
    write_report(out, {"meta": info, "model": model, "rows": rows}, rows, peak)


def arg_parser():
    p = parser("python -m bench.chronos2", __doc__)
    p.add_argument("--size", choices=sorted(SIZES), default="published", help="model size")
    p.add_argument("--horizon", type=int, default=64, help="prediction length")
    add_common_arguments(p, "bench/results/chronos2.json", QUICK)
    return p


def main(argv=None) -> int:
    args = arg_parser().parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    return exit_code(lambda: _main(args))


def _main(args) -> None:
    if args.horizon <= 0:
        raise ValueError(f"--horizon must be a positive integer, got {args.horizon}")
    bench_main(args, lambda c, b, peak: run(args.size, c, b, args.horizon, args.repeats, peak))


if __name__ == "__main__":
    sys.exit(main())
