"""Chronos-Bolt forecasting: jaxts vs chronos-forecasting's ``ChronosBoltPipeline``, same weights.

    python -m bench.chronos_bolt [--contexts 512,2048] [--batches 1,32] [--out ...] [--force]

One random upstream ``ChronosBoltModelForForecasting`` at chronos-bolt-small's size (T5 d_model
512, d_kv 64, 6 + 6 layers, 8 heads, d_ff 2048; context 2048, patches of 16, 9 quantiles, H = 64:
``bridges.reference.chronos_bolt_hf``), every weight drawn from N(0, 0.02) (RMS norm weights
1 + N(0, 0.02)), written with ``save_pretrained`` and loaded by both pipelines (jaxts through its
bridge). Random-walk contexts, ``predict`` at the model's own prediction length (one model call).

Method as ``bench.chronos2``: a first call of each side on the same inputs, whose outputs must
agree within 1e-3 relative (recorded); jaxts' first call is its compile, reported apart; then
alternated steady-state runs, medians; PyTorch under ``torch.inference_mode`` with its default
thread count; ratio = chronos-forecasting / jaxts; GFLOP/s (input patch block, encoder over the
patches and REG, one decoder step with cross-attention, output block; 2 per multiply-add)
against a 2048x2048 float32 matmul; ``uptime`` at the start and the end.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.chronos2 import (
    WEIGHT_STD,
    add_common_arguments,
    add_rate,
    bench_main,
    random_walks,
    table_line,
    time_point,
)
from bridges.reference.chronos_bolt_hf import (
    BOLT_T5_SIZES,
    TINY_CHRONOS,
    TINY_T5,
    chronos_bolt_config,
    tiny_chronos_bolt,
)
from eval.cli import parser
from jaxts._cli import exit_code

# name: (T5 fields, chronos_config overrides); "tiny" is for smoke runs
# (tiny_chronos_bolt defaults to the tiny chronos_config: the published one is given in full)
SIZES = {
    "small": (BOLT_T5_SIZES["small"], chronos_bolt_config()),
    "tiny": (TINY_T5, TINY_CHRONOS),
}
QUICK = dict(size="tiny", contexts="64", batches="1,3", repeats=1)


def bolt_flops(t5: dict, chronos: dict, batch: int, context: int) -> float:
    """Executed FLOPs of one ``predict`` of ``batch`` series of ``context`` steps at the model's
    prediction length (one encoder pass, one decoder step); 2 per multiply-add."""
    d, dff, inner = t5["d_model"], t5["d_ff"], t5["num_heads"] * t5["d_kv"]
    p, q, h = chronos["input_patch_size"], len(chronos["quantiles"]), chronos["prediction_length"]
    n = math.ceil(min(context, chronos["context_length"]) / p)
    s = n + int(chronos["use_reg_token"])  # encoder tokens
    embed = 2 * (2 * p * dff + dff * d + 2 * p * d)  # per patch: hidden, output, residual
    enc_layer = 2 * (4 * d * inner + 2 * d * dff + 2 * s * inner)  # per token
    dec_layer = 2 * (
        4 * d * inner + 2 * inner  # self-attention over the one decoder token
        + 2 * d * inner + 2 * d * inner * s  # cross q, o; k, v of every encoder token
        + 2 * s * inner  # cross scores and values
        + 2 * d * dff
    )  # fmt: skip
    head = 2 * (d * dff + dff * q * h + d * q * h)
    enc = s * t5["num_layers"] * enc_layer
    return batch * (n * embed + enc + t5["num_decoder_layers"] * dec_layer + head)


def build(directory: Path, size: str) -> tuple[dict, dict]:
    """The random upstream model written to ``directory``; its T5 fields and chronos_config."""
    t5_fields, chronos_over = SIZES[size]
    model = tiny_chronos_bolt(directory, std=WEIGHT_STD, chronos=chronos_over, **t5_fields)
    return dict(t5_fields), dict(model.config.chronos_config)


def run(size, contexts, batches, repeats, peak) -> tuple[dict, list[dict]]:
    from chronos import ChronosBoltPipeline as TorchPipeline

    from jaxts import ChronosBoltPipeline

    with tempfile.TemporaryDirectory() as tmp:
        t5_fields, chronos = build(Path(tmp), size)
        tp = TorchPipeline.from_pretrained(tmp)
        jp = ChronosBoltPipeline.from_pretrained(tmp)
    horizon = chronos["prediction_length"]
    rng = np.random.default_rng(0)
    rows = []
    for context in contexts:
        for b in batches:
            x = random_walks(rng, b, context)  # [B, T]
            xt = torch.from_numpy(x)

            def jax_fn(x=x):
                return jp.predict(x, horizon)  # [B, Q, H]

            def torch_fn(xt=xt):
                return tp.predict(xt, horizon).numpy()

            row = {"context": context, "batch": b}
            row |= time_point(jax_fn, torch_fn, repeats, f"context {context}, batch {b}")
            rows.append(add_rate(row, bolt_flops(t5_fields, chronos, b, context), peak))
            print(table_line(row), flush=True)
    info = {
        "name": f"amazon/chronos-bolt-{size} shape, random weights N(0, {WEIGHT_STD})",
        "t5": t5_fields,
        "chronos_config": chronos,
        "horizon": horizon,
    }
    return info, rows


def arg_parser():
    p = parser("python -m bench.chronos_bolt", __doc__)
    p.add_argument("--size", choices=sorted(SIZES), default="small", help="model size")
    add_common_arguments(p, "bench/results/chronos_bolt.json", QUICK)
    return p


def main(argv=None) -> int:
    args = arg_parser().parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    return exit_code(
        lambda: bench_main(args, lambda c, b, peak: run(args.size, c, b, args.repeats, peak))
    )


if __name__ == "__main__":
    sys.exit(main())
