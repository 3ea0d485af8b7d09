"""Timer-XL: jaxts (jit) vs the PyTorch reference of OpenLTM on the same weights and inputs.

    python -m bench.timer_xl [--batches 1,32] [--repeats 5] [--out bench/results/timer_xl.json]

ETTh1 config (seq_len 672 = 7 x 96, d_model 1024, d_ff 2048, 8 heads, 1 layer, C = 7 variables):
one forward pass and the 720-step rolling forecast (8 model calls). JAX compile time is reported
apart from the steady-state median; the ratio is torch median / jax median (> 1: jaxts faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import jax
import numpy as np
import torch

from bench._timing import time_jax, time_torch
from bridges.reference import timer_xl_torch as ref
from bridges.timer_xl import from_openltm
from jaxts.data import forecast_windows
from jaxts.models.timer_xl import rolling_forecast
from train.config import load_config, model_config

CFG = model_config(load_config(Path(__file__).parents[1] / "configs/timer_xl_etth1.yaml"))


def run(batches, repeats, pred_len=720):
    torch.manual_seed(0)
    tm = ref.Model(CFG).eval()
    jm = from_openltm(tm.state_dict(), CFG)
    jm.eval()
    x_all, _ = forecast_windows("ETTh1", "test", 672, pred_len)
    fwd = jax.jit(lambda m, x: m(x))  # nnx.Module is a pytree: params are jit arguments
    rows = []
    for b in batches:
        x = np.array(x_all[:b])  # writable copy: forecast_windows returns read-only views
        xt = torch.from_numpy(x)
        max_err = float(np.abs(np.asarray(jm(x)) - tm(xt).detach().numpy()).max())
        cases = {  # name: (jax fn of x, torch fn of x)
            "forward": (lambda a: fwd(jm, a), tm),
            f"rolling_{pred_len}": (
                lambda a: rolling_forecast(jm, a, pred_len),
                lambda a: ref.rolling_forecast(tm, a, pred_len, 96, 96),
            ),
        }
        for name, (jax_fn, torch_fn) in cases.items():
            j = time_jax(jax_fn, x, repeats=repeats)
            t = time_torch(torch_fn, xt, repeats=repeats)
            rows.append(
                {
                    "case": name,
                    "batch": b,
                    "jax_compile_s": j["compile_s"],
                    "jax_median_s": j["median_s"],
                    "torch_median_s": t["median_s"],
                    "speedup": t["median_s"] / j["median_s"],
                    "forward_max_abs_err": max_err,
                }
            )
            r = rows[-1]
            print(
                f"{name:>12} b={b:<3} jax {r['jax_median_s'] * 1e3:9.2f} ms "
                f"(compile {r['jax_compile_s']:.2f} s)  torch {r['torch_median_s'] * 1e3:9.2f} ms"
                f"  speed-up x{r['speedup']:.2f}",
                flush=True,
            )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batches", default="1,32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="bench/results/timer_xl.json")
    args = p.parse_args(argv)
    rows = run([int(b) for b in args.batches.split(",")], args.repeats)
    meta = {
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "config": CFG.to_dict(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print("| case | batch | jaxts median | jaxts compile | PyTorch median | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['batch']} | {r['jax_median_s'] * 1e3:.1f} ms | "
            f"{r['jax_compile_s']:.2f} s | {r['torch_median_s'] * 1e3:.1f} ms | x{r['speedup']:.2f} |"
        )


if __name__ == "__main__":
    main()
