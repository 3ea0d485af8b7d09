"""Timer-XL: jaxts (jit) vs the PyTorch reference of OpenLTM on the same weights and inputs.

    python -m bench.timer_xl [--batches 1,32] [--repeats 5] [--out bench/results/timer_xl.json]

ETTh1 config (seq_len 672 = 7 x 96, d_model 1024, d_ff 2048, 8 heads, 1 layer, C = 7 variables):
one forward pass and the 720-step rolling forecast (8 model calls). JAX compile time is reported
apart from the steady-state median; the ratio is torch median / jax median (> 1: jaxts faster).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import jax
import numpy as np
import torch
import yaml

from bench._timing import time_jax, time_torch
from bridges.reference import timer_xl_torch as ref
from bridges.timer_xl import from_openltm
from eval.cli import int_list, parser
from jaxts._cli import exit_code
from jaxts.data import forecast_windows
from jaxts.models.timer_xl import TimerXLConfig, rolling_forecast

CONFIG = Path(__file__).parents[1] / "configs/timer_xl_etth1.yaml"


def etth1_config() -> TimerXLConfig:
    """The ``model`` section of ``configs/timer_xl_etth1.yaml`` (OpenLTM's ETTh1 Timer-XL)."""
    with open(CONFIG) as f:
        section = dict(yaml.safe_load(f)["model"])
    section.pop("name", None)
    return TimerXLConfig.from_dict(section)


def run(cfg: TimerXLConfig, batches, repeats, pred_len=720):
    torch.manual_seed(0)
    tm = ref.Model(cfg).eval()
    jm = from_openltm(tm.state_dict(), cfg)
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


def arg_parser():
    p = parser("python -m bench.timer_xl", __doc__)
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=5, help="steady-state runs (median)")
    p.add_argument("--out", default="bench/results/timer_xl.json", help="JSON report")
    return p


def main(argv=None) -> int:
    args = arg_parser().parse_args(argv)
    return exit_code(lambda: _main(args))


def _main(args) -> None:
    cfg = etth1_config()
    rows = run(cfg, int_list(args.batches, "--batches"), args.repeats)
    meta = {
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "config": cfg.to_dict(),
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
    sys.exit(main())
