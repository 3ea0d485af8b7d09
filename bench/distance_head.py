"""The distance-aware Chronos head: jaxts vs the PyTorch reference of upstream, same weights.

    python -m bench.distance_head [--quick] [--out bench/results/distance_head.json] [--force]

Case 1, the head (``DistanceHead``: upstream's ``DistanceAwareOutputLayer`` + the learnable
temperature) at upstream's training sizes, batch 8 x 512 positions, hidden 512, N = 4096:
``forward`` (eval mode), ``forward_loss`` (+ the combined ordinal loss, eval mode) and
``train_step`` (train mode, dropout on: forward, loss, backward, global-norm clip 1.0 and AdamW
lr 1e-4 / weight decay 0.01, upstream's recipe; jaxts: one jitted step over the ``nnx.split``
state with optax; PyTorch: ``loss.backward()``, ``clip_grad_norm_``, ``optimizer.step()``).
The PyTorch side is ``bridges/reference/distance_head_torch.py`` and upstream's ``OrdinalLoss``
(``bridges/reference/ordinal_loss_torch.py``) holding the jaxts head's weights (bridge rules).

Case 2, forecasting: ``DistanceAwareChronosPipeline`` (Chronos' token space, and
``upstream_compat``: the context as decoder prefix) vs jaxts' ``ChronosT5Pipeline`` on a random
chronos-t5-small-shaped base (HF's init, ``save_pretrained`` to a temporary directory; the head
written by its bridge next to it), and chronos-forecasting's ``ChronosPipeline`` for reference;
same random-walk contexts and keys, context 512, H = 64, 20 samples, top_k 50.

JAX compile time is reported apart from the median of the steady-state runs. Ratios: PyTorch /
jaxts (> 1: jaxts faster) and, for forecasting, head / base (the head's cost). GFLOP/s count the
matrix multiplications (case 1: 3x the forward's for a step; case 2: encoder, cross-attention
keys/values, every decode step, with the head in place of the LM head) and are compared with a
2048x2048 float32 matmul on the same machine; ``upstream_compat`` (a 512-token decoder prefix)
is timed only.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

from bench._timing import machine_meta, time_jax, time_torch
from bench.chronos import SMALL, matmul_gflops, sampling_flops
from bridges._mapping import torch_state
from bridges.distance_head import RULES, to_upstream
from bridges.reference.chronos_t5_hf import TINY_T5, chronos_config, tiny_hf_chronos
from bridges.reference.distance_head_torch import DistanceAwareOutputLayer as TorchLayer
from bridges.reference.ordinal_loss_torch import OrdinalLoss
from eval.cli import check_output_file, int_list, parser
from jaxts._cli import exit_code
from jaxts.losses import combined_ordinal_loss
from jaxts.models.distance_head import ORDINAL_DIM, DistanceHead, DistanceHeadConfig

LR, WEIGHT_DECAY, CLIP = 1e-4, 0.01, 1.0  # upstream's head-training recipe
BASES = {"small": SMALL, "tiny": TINY_T5}  # chronos-t5-small's T5 shape; a tiny one for smoke runs
QUICK = dict(batch=2, positions=64, repeats=2, forecast_batches="1", horizon=16, samples=4)


def head_flops(rows: int, hidden: int, bins: int) -> float:
    """Matmul FLOPs of one head forward over ``rows`` hidden states (2 per multiply-add):
    value and confidence projections, ``mix_layer.0`` (H + 65 -> H), ``mix_layer.3`` (H -> N)."""
    return 2.0 * rows * (2 * hidden + (hidden + 1 + ORDINAL_DIM) * hidden + hidden * bins)


# ---- case 1: the head -----------------------------------------------------------------------


def torch_twin(head: DistanceHead) -> tuple[TorchLayer, torch.nn.Parameter]:
    """Upstream's layer holding ``head``'s weights (the bridge's rules) and its temperature."""
    cfg = head.config
    layer = TorchLayer(cfg.hidden_size, cfg.num_bins, dropout=cfg.dropout)
    state = {k: torch.from_numpy(np.array(v)) for k, v in torch_state(head.layer, RULES).items()}
    layer.load_state_dict(state, strict=True)
    temperature = torch.nn.Parameter(torch.tensor([float(head.temperature[...])]))
    return layer, temperature


def jax_train_step(head: DistanceHead, h, targets):
    """A no-argument callable: one jitted AdamW step on ``head`` in train mode (dropout on), its
    state carried from call to call as PyTorch updates in place; returns the loss. ``head``
    itself is left in eval mode."""
    head.train()
    graphdef, params, rest = nnx.split(head, nnx.Param, ...)  # rest: dropout's RNG state
    head.eval()  # the graphdef keeps train mode
    tx = optax.chain(optax.clip_by_global_norm(CLIP), optax.adamw(LR, weight_decay=WEIGHT_DECAY))

    @jax.jit
    def step(params, rest, opt_state, h, targets):
        def loss_fn(p, rest):
            # copy: fresh Variables of this trace, so that dropout may advance its RNG count
            model = nnx.merge(graphdef, p, rest, copy=True)
            loss = combined_ordinal_loss(model(h), targets)  # logits [B, S, N]
            return loss, nnx.state(model, nnx.Not(nnx.Param))  # the advanced RNG counts

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, loss

    carry = [params, rest, tx.init(params)]

    def run():
        params, rest, opt_state, loss = step(*carry, h, targets)
        carry[:] = [params, rest, opt_state]
        return loss

    return run


def torch_train_step(layer: TorchLayer, temperature, h, targets):
    """The same step in PyTorch, train mode (dropout on); ``time_torch`` runs under
    ``no_grad``, so the step turns gradients back on."""
    params = [*layer.parameters(), temperature]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    loss_fn = OrdinalLoss(layer.num_bins)
    layer.train()

    def run():
        with torch.enable_grad():
            opt.zero_grad()
            loss = loss_fn.combined_loss(layer(h, temperature), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
        return loss

    return run


def _parity(head, layer, temperature, h, targets) -> dict:
    """Eval-mode logits and loss of the two sides (dropout off), before any step."""
    layer.eval()  # ``head`` is in eval mode
    logits = np.asarray(jax.jit(lambda m, x: m(x))(head, h))  # [B, S, N]
    loss = float(combined_ordinal_loss(logits, targets))
    with torch.no_grad():
        t_logits = layer(torch.from_numpy(np.asarray(h)), temperature)
        t_loss = OrdinalLoss(layer.num_bins).combined_loss(
            t_logits, torch.from_numpy(np.asarray(targets)).long()
        )
    err = float(np.abs(logits - t_logits.numpy()).max())
    return {
        "logits_max_abs_err": err,
        # the Gaussian term reaches -2 * 30**2: an absolute error is read against the scale
        "logits_max_rel_err": err / float(np.abs(t_logits.numpy()).max()),
        "loss_rel_err": abs(loss - float(t_loss)) / abs(float(t_loss)),
    }


def bench_head(batch, positions, hidden, bins, repeats, peak) -> tuple[list[dict], dict]:
    """Rows of case 1 and the parity of the two sides."""
    head = DistanceHead(DistanceHeadConfig(hidden, bins), rngs=nnx.Rngs(0))
    layer, temperature = torch_twin(head)
    rng = np.random.default_rng(0)
    h = rng.standard_normal((batch, positions, hidden)).astype(np.float32)  # [B, S, H]
    targets = rng.integers(0, bins, (batch, positions)).astype(np.int32)  # [B, S]
    head.eval()
    parity = _parity(head, layer, temperature, h, targets)
    hj, tj = jnp.asarray(h), jnp.asarray(targets)
    ht, tt = torch.from_numpy(h), torch.from_numpy(targets).long()
    loss = OrdinalLoss(bins)
    fwd = jax.jit(lambda m, x: m(x))
    fwd_loss = jax.jit(lambda m, x, t: combined_ordinal_loss(m(x), t))
    cases = {  # name: () -> (jax callable, torch callable), made in turn: the step sets modes
        "forward": lambda: (lambda: fwd(head, hj), lambda: layer(ht, temperature)),
        "forward_loss": lambda: (
            lambda: fwd_loss(head, hj, tj),
            lambda: loss.combined_loss(layer(ht, temperature), tt),
        ),
        "train_step": lambda: (
            jax_train_step(head, hj, tj),
            torch_train_step(layer, temperature, ht, tt),
        ),
    }
    flops = head_flops(batch * positions, hidden, bins)
    rows = []
    for name, make in cases.items():
        jax_fn, torch_fn = make()
        j = time_jax(jax_fn, repeats=repeats)
        t = time_torch(torch_fn, repeats=repeats)
        gflop = (3 if name == "train_step" else 1) * flops / 1e9
        rows.append(_row(name, batch, j, t, gflop, peak, positions=positions))
        print(table_line(rows[-1]), flush=True)
    return rows, parity


def _row(case, batch, j, t, gflop, peak, **extra) -> dict:
    jax_s, torch_s = j["median_s"], t["median_s"]
    row = {"case": case, "batch": batch, **extra}
    row |= {"jax_compile_s": j["compile_s"], "jax_median_s": jax_s, "torch_median_s": torch_s}
    row["speedup"] = torch_s / jax_s
    if gflop is not None:
        row |= {"gflop": gflop, "jax_gflops": gflop / jax_s, "torch_gflops": gflop / torch_s}
        row["jax_fraction_of_matmul"] = gflop / jax_s / peak
    return row


# ---- case 2: forecasting ----------------------------------------------------------------------


def forecast_flops(t5: dict, batch, context, horizon, samples, with_head: bool) -> float:
    """``sampling_flops`` of the base, with the head's FLOPs in place of the LM head's."""
    base = sampling_flops(t5, batch, context, horizon, samples)
    if not with_head:
        return base
    steps, d, vocab = batch * samples * horizon, t5["d_model"], 4096
    return base - steps * 2 * d * vocab + head_flops(steps, d, vocab)


def build_pipelines(directory: Path, base: str):
    """The four forecasters on one random base and one random head (each loaded from disk)."""
    from chronos import ChronosPipeline

    from jaxts import ChronosT5Pipeline
    from jaxts.pipelines.distance_aware_chronos import DistanceAwareChronosPipeline

    t5 = BASES[base]
    # HF's own initialisation (Chronos' initializer_factor), not a redraw
    model = tiny_hf_chronos(chronos_config(), std=None, initializer_factor=0.05, **t5)
    model.save_pretrained(directory / "base")
    head = DistanceHead(DistanceHeadConfig(t5["d_model"], 4096), rngs=nnx.Rngs(0))
    to_upstream(head, directory / "head")
    b, hd = directory / "base", directory / "head"
    return {
        "base": ChronosT5Pipeline.from_pretrained(b),
        "head": DistanceAwareChronosPipeline.from_pretrained(b, hd),
        "head_upstream_compat": DistanceAwareChronosPipeline.from_pretrained(
            b, hd, upstream_compat=True
        ),
        "torch_base": ChronosPipeline.from_pretrained(b),
    }


def bench_forecast(base, batches, repeats, horizon, samples, peak, context=512) -> list[dict]:
    """Rows of case 2: one per jaxts forecaster and batch, each with chronos-forecasting's
    time on the same contexts (``speedup``) and the base's (``vs_base``)."""
    with tempfile.TemporaryDirectory() as tmp:
        pipes = build_pipelines(Path(tmp), base)
    torch_pipe = pipes.pop("torch_base")
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        # random walks: a realistic spread of tokens
        x = np.cumsum(rng.standard_normal((b, context)), axis=1).astype(np.float32) + 10
        t = time_torch(
            lambda x: torch_pipe.predict(torch.from_numpy(x), horizon, num_samples=samples),
            x,
            repeats=repeats,
        )
        base_s = None
        for name, pipe in pipes.items():
            j = time_jax(
                lambda x, p=pipe: p.predict(x, horizon, num_samples=samples, key=jax.random.key(0)),
                x,
                repeats=repeats,
            )
            gflop = None
            if name != "head_upstream_compat":
                gflop = forecast_flops(BASES[base], b, context, horizon, samples, name == "head")
                gflop /= 1e9
            base_s = base_s or j["median_s"]
            rows.append(_row(f"predict_{name}", b, j, t, gflop, peak))
            rows[-1]["vs_base"] = j["median_s"] / base_s
            print(table_line(rows[-1]), flush=True)
    return rows


# ---- command line ------------------------------------------------------------------------------


def arg_parser():
    p = parser("python -m bench.distance_head", __doc__)
    p.add_argument("--batch", type=int, default=8, help="case 1: sequences per batch")
    p.add_argument("--positions", type=int, default=512, help="case 1: positions per sequence")
    p.add_argument("--hidden", type=int, default=512, help="case 1: hidden size H")
    p.add_argument("--bins", type=int, default=4096, help="case 1: number of bins N")
    p.add_argument("--forecast-batches", default="1", help="case 2: comma-separated batches")
    p.add_argument("--horizon", type=int, default=64, help="case 2: prediction length")
    p.add_argument("--samples", type=int, default=20, help="case 2: sample paths per series")
    p.add_argument(
        "--base", choices=sorted(BASES), default="small", help="case 2: the base T5's shape"
    )
    p.add_argument("--repeats", type=int, default=3, help="steady-state runs (median)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a ~30 s run: {', '.join(f'{k}={v}' for k, v in QUICK.items())}, tiny base",
    )
    p.add_argument("--out", default="bench/results/distance_head.json", help="JSON report")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    return p


def main(argv=None) -> int:
    args = arg_parser().parse_args(argv)
    if args.quick:
        vars(args).update(QUICK, base="tiny")
    return exit_code(lambda: _main(args))


def _main(args) -> None:
    out = check_output_file(args.out, args.force, flag="--out")
    for flag in ("batch", "positions", "hidden", "bins", "horizon", "samples", "repeats"):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    batches = int_list(args.forecast_batches, "--forecast-batches")
    load_start = os.getloadavg()[0]  # other processes on the machine skew every figure
    peak = matmul_gflops()
    print(table_header(peak), flush=True)
    t0 = time.perf_counter()
    head_rows, parity = bench_head(
        args.batch, args.positions, args.hidden, args.bins, args.repeats, peak
    )
    fc_rows = bench_forecast(args.base, batches, args.repeats, args.horizon, args.samples, peak)
    meta = machine_meta(peak) | {
        "wall_s": time.perf_counter() - t0,
        "loadavg_1m": [load_start, os.getloadavg()[0]],  # at the start and at the end
    }
    head = {"hidden": args.hidden, "bins": args.bins, "parity": parity, "rows": head_rows}
    forecast = {
        "base": f"chronos-t5-{args.base} shape, random weights (HF init); random head",
        "context": 512,
        "horizon": args.horizon,
        "num_samples": args.samples,
        "rows": fc_rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "head": head, "forecast": forecast}, indent=2))
    print("\n" + table_header(peak))
    print("\n".join(table_line(r) for r in head_rows + fc_rows))
    print(f"parity (eval mode): {parity}\nwrote {out}")


def table_header(peak) -> str:
    return (
        "| case | batch | jaxts median | jaxts compile | PyTorch median | PyTorch/jaxts | "
        f"jaxts GFLOP/s (% of matmul {peak:.0f}) | head/base |\n|---|---|---|---|---|---|---|---|"
    )


def table_line(r: dict) -> str:
    rate = "-"
    if "jax_gflops" in r:
        rate = f"{r['jax_gflops']:.0f} ({100 * r['jax_fraction_of_matmul']:.0f}%)"
    vs = f"{r['vs_base']:.2f}" if "vs_base" in r else "-"
    return (
        f"| {r['case']} | {r['batch']} | {r['jax_median_s'] * 1e3:.1f} ms | "
        f"{r['jax_compile_s']:.2f} s | {r['torch_median_s'] * 1e3:.1f} ms | "
        f"x{r['speedup']:.2f} | {rate} | {vs} |"
    )


if __name__ == "__main__":
    sys.exit(main())
