"""Chronos-T5 sampling: jaxts vs chronos-forecasting's ``ChronosPipeline`` on the same weights.

    python -m bench.chronos [--batches 1,8] [--repeats 3] [--out bench/results/chronos.json]

Random chronos-t5-small weights (d_model 512, 6+6 layers, 8 heads, d_ff 2048, vocab 4096,
HF's init with initializer_factor 0.05), saved with ``save_pretrained`` and loaded by both
pipelines. Context 512, H = 64, 20 samples, default sampling (top_k 50). JAX compile time is
reported apart; the ratio is torch median / jax median. The achieved GFLOP/s counts the model's
executed floating-point work (encoder once per series, cross-attention keys/values once per
series, 64 decoder steps for every sample) and is compared with a 2048x2048 float32 matmul on
the same machine.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

from bench._timing import time_jax, time_torch
from bridges.reference.chronos_t5_hf import chronos_config, tiny_hf_chronos
from eval.cli import int_list, parser
from jaxts._cli import exit_code

SMALL = dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8)
CHRONOS = chronos_config()


def sampling_flops(cfg, batch: int, context: int, horizon: int, samples: int) -> float:
    """Executed FLOPs of one ``predict`` call (2 per multiply-add)."""
    d, inner, dff, v = cfg["d_model"], cfg["num_heads"] * cfg["d_kv"], cfg["d_ff"], 4096
    layers, t = cfg["num_layers"], context + 1  # + EOS
    enc_token = layers * (2 * 4 * d * inner + 2 * 2 * d * dff + 2 * 2 * t * inner)
    cross_kv = layers * 2 * 2 * d * inner * t  # once per series
    rows = batch * samples
    dec_step = layers * (
        2 * 4 * d * inner  # self q, k, v, o
        + 2 * 2 * d * inner  # cross q, o
        + 2 * 2 * d * dff  # feed-forward
        + 2 * 2 * horizon * inner  # self-attention over the fixed-size cache
        + 2 * 2 * t * inner  # cross-attention
    )
    dec_step += 2 * d * v  # lm head
    return batch * (t * enc_token + cross_kv) + rows * horizon * dec_step


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    res = time_jax(f, a, repeats=repeats)
    return 2 * n**3 / res["median_s"] / 1e9


def build(directory: Path):
    # HF's own initialisation (Chronos' initializer_factor), not a redraw
    model = tiny_hf_chronos(CHRONOS, std=None, initializer_factor=0.05, **SMALL)
    model.save_pretrained(directory)


def run(batches, repeats, samples=20, horizon=64, context=512):
    from chronos import ChronosPipeline

    from jaxts import ChronosT5Pipeline

    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        tp = ChronosPipeline.from_pretrained(tmp)
        jp = ChronosT5Pipeline.from_pretrained(tmp)
    rng = np.random.default_rng(0)
    peak = matmul_gflops()
    rows = []
    for b in batches:
        # random walks: a realistic spread of tokens
        x = np.cumsum(rng.standard_normal((b, context)), axis=1).astype(np.float32) + 10
        t0 = time.perf_counter()
        jres = time_jax(
            lambda x: jp.predict(x, horizon, num_samples=samples, key=jax.random.key(0)),
            x,
            repeats=repeats,
        )
        jax_wall = time.perf_counter() - t0
        tres = time_torch(
            lambda x: tp.predict(torch.from_numpy(x), horizon, num_samples=samples),
            x,
            repeats=repeats,
        )
        flops = sampling_flops(SMALL, b, context, horizon, samples)
        row = {
            "batch": b,
            "jax_compile_s": jres["compile_s"],
            "jax_median_s": jres["median_s"],
            "torch_median_s": tres["median_s"],
            "speedup": tres["median_s"] / jres["median_s"],
            "gflop": flops / 1e9,
            "jax_gflops": flops / jres["median_s"] / 1e9,
            "torch_gflops": flops / tres["median_s"] / 1e9,
            "jax_fraction_of_matmul": flops / jres["median_s"] / 1e9 / peak,
            "jax_wall_s": jax_wall,
        }
        rows.append(row)
        print(
            f"batch {b:3d}: jax {row['jax_median_s']:.3f} s (compile {row['jax_compile_s']:.1f} s)"
            f" | torch {row['torch_median_s']:.3f} s | x{row['speedup']:.2f}"
            f" | {row['jax_gflops']:.0f} GFLOP/s = {100 * row['jax_fraction_of_matmul']:.0f}% of"
            f" matmul ({peak:.0f}); torch {row['torch_gflops']:.0f} GFLOP/s",
            flush=True,
        )
    return {
        "model": "chronos-t5-small shape, random weights",
        "context": context,
        "horizon": horizon,
        "num_samples": samples,
        "matmul_2048_gflops": peak,
        "device": str(jax.devices()[0]),
        "jax_backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "rows": rows,
    }


def arg_parser():
    p = parser("python -m bench.chronos", __doc__)
    default = "1,8,32" if jax.default_backend() == "gpu" else "1,8"
    p.add_argument("--batches", default=default, help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=3, help="steady-state runs (median)")
    p.add_argument("--out", default="bench/results/chronos.json", help="JSON report")
    return p


def main(argv=None) -> int:
    args = arg_parser().parse_args(argv)

    def job():
        res = run(int_list(args.batches, "--batches"), args.repeats)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
        print(f"wrote {out}")

    return exit_code(job)


if __name__ == "__main__":
    sys.exit(main())
