"""The seed's depth-limited MaxEnt-TS run the way the seed runs it: PyTorch, transformers
``generate``, ONE rollout per call — the baseline of ``bench.maxent``.

Algorithm: exactly :func:`jaxts.search.maxent_ts` (see its docstring). At a node ``s`` (fewer than
``max_depth`` moves, not finished): the ``expansion_k`` likeliest next tokens ``a`` under the
tempered model ``p_T(. | s)`` (ties: the lower id); ``num_rollouts`` rollouts under each child (a
child that is EOS or reaches ``max_new_tokens`` is rewarded once, exactly);
``Q(s, a) = (1/lam) log mean exp(lam r)`` (the mean at lam = 0); a move drawn
``∝ p_T(a | s) exp(lam Q(s, a))`` over the k (``greedy``: the largest Q, ties the likelier token);
after ``max_depth`` moves, one finishing rollout.

Execution, unlike :class:`jaxts.search.llama_lm.LlamaLM`: ``next_logprobs`` is one full forward
over the whole prompt + prefix per prefix; ``rollout`` is one
``model.generate(do_sample=True, temperature=T, top_k=0, top_p=1.0, max_new_tokens=n)`` call
per prefix (each re-reads the prompt: no cache is shared between calls); Q values, moves and the
random draws are host-side torch code.

Two counters:

* ``nfe``: counted as ``LlamaLM`` counts it, so both sides are compared at equal NFE: the
  prompt once per search (``set_prompt``), every prefix's generated-so-far tokens per call,
  and every generated token;
* ``tokens_passed``: the tokens this side really feeds the model, measured by a forward
  pre-hook (a full forward: ``len(prefix)``; a ``generate`` of ``n`` tokens:
  ``len(prefix) + n - 1``, the prompt included every time).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from jaxts.search.result import SearchResult

__all__ = ["TorchLM", "maxent_ts_torch", "soft_q"]


class TorchLM:
    """A transformers causal LM (``LlamaForCausalLM``) as the search sees it, one call per prefix.

    ``temperature``: the rollout temperature; ``next_logprobs`` returns the same tempered
    ``log softmax(logits / T)``, so p_theta is the same distribution on both sides (as in
    ``LlamaLM``). ``eos_ids``: the ids that end a rollout (default: the model config's).
    """

    def __init__(self, model, *, temperature: float = 1.0, eos_ids: Sequence[int] | None = None):
        if not temperature > 0:
            raise ValueError(f"temperature must be positive (p_theta), got {temperature}")
        if eos_ids is None:
            eos = model.config.eos_token_id
            eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if not eos_ids:
            raise ValueError("need at least one EOS id (rollouts could not end)")
        self.model = model.eval()
        self.vocab_size = int(model.config.vocab_size)
        self.eos_ids = tuple(int(t) for t in eos_ids)
        self.eos_id = self.eos_ids[0]
        self.temperature = float(temperature)
        self.nfe = self.tokens_passed = 0
        self.forward_calls = self.generate_calls = self.generated_tokens = 0
        self._prompt_len = 0
        self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def close(self) -> None:
        """Remove the counting hook from the model."""
        self._hook.remove()

    def _count(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.tokens_passed += int(ids.numel())

    def set_prompt(self, prompt_ids: Sequence[int]) -> None:
        """Start a search on ``prompt_ids``: counts the prompt once in ``nfe`` (LlamaLM's prefill)."""
        self._prompt_len = len(prompt_ids)
        self.nfe += len(prompt_ids)

    def _suffix(self, prefix: Sequence[int]) -> int:
        return max(len(prefix) - self._prompt_len, 0)

    def generate_kwargs(self, max_new_tokens: int) -> dict:
        """The sampling arguments of every rollout's ``generate`` call (pure ancestral sampling at
        ``temperature``: top-k and top-p explicitly off, overriding the checkpoint's defaults)."""
        return dict(do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0,
                    max_new_tokens=max_new_tokens, eos_token_id=list(self.eos_ids),
                    pad_token_id=self.eos_id)  # fmt: skip

    @torch.inference_mode()
    def next_logprobs(self, prefixes: list[list[int]]) -> np.ndarray:
        """``[B, V]`` float32 tempered log-probabilities, one full forward per prefix."""
        rows = []
        for prefix in prefixes:
            logits = self.model(input_ids=torch.tensor([list(prefix)])).logits  # [1, T, V]
            rows.append(torch.log_softmax(logits[0, -1].float() / self.temperature, dim=-1))
            self.forward_calls += 1
            self.nfe += self._suffix(prefix)
        return torch.stack(rows).numpy()

    @torch.inference_mode()
    def rollout(self, prefixes: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """One ``generate`` call per prefix (torch's global RNG: seed it); the continuation only,
        cut after its first EOS."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        out = []
        for prefix in prefixes:
            x = torch.tensor([list(prefix)])  # [1, T]
            ids = self.model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                **self.generate_kwargs(max_new_tokens),
            )[0, x.shape[1] :].tolist()
            new = []
            for t in ids:
                new.append(int(t))
                if t in self.eos_ids:
                    break
            out.append(new)
            self.generate_calls += 1
            self.generated_tokens += len(new)
            self.nfe += self._suffix(prefix) + len(new)
        return out


def soft_q(rewards: Sequence[float], lam: float) -> float:
    """``(1/lam) log mean_i exp(lam r_i)`` in float64; the mean at lam 0.

    Evaluated as ``r_max + log1p(mean expm1(lam (r - r_max))) / lam``: ``logsumexp - log n``
    cancels to ~1e-16 / lam absolute error as lam -> 0 (1e-7 at lam = 1e-9)."""
    r = torch.tensor(list(rewards), dtype=torch.float64)  # [n]
    if r.numel() == 0:
        raise ValueError("soft_q needs at least one reward")
    if lam == 0.0:
        return float(r.mean())
    top = r.max()
    return float(top + torch.log1p(torch.expm1(lam * (r - top)).mean()) / lam)


def _check(lam, num_rollouts, expansion_k, max_depth, max_new_tokens, vocab_size, prompt_ids):
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids must be a non-empty list of token ids")
    if not (math.isfinite(lam) and lam >= 0.0):
        raise ValueError(f"lam must be finite and >= 0, got {lam!r}")
    for name, v in [("num_rollouts", num_rollouts), ("expansion_k", expansion_k),
                    ("max_depth", max_depth), ("max_new_tokens", max_new_tokens)]:  # fmt: skip
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if expansion_k > vocab_size:
        raise ValueError(f"expansion_k must be <= vocab_size ({vocab_size}), got {expansion_k}")


def _child_q(lm, prompt, gen, tokens, reward, lam, num_rollouts, max_new_tokens) -> list[float]:
    """Q for each child token, its rollouts run one ``generate`` call after another."""
    q = []
    for a in tokens:
        child = [*gen, a]
        if a in lm.eos_ids or len(child) == max_new_tokens:
            q.append(soft_q([float(reward(child))], lam))
            continue
        budget = max_new_tokens - len(child)
        rewards = [
            float(reward(child + lm.rollout([prompt + child], budget)[0]))
            for _ in range(num_rollouts)
        ]
        q.append(soft_q(rewards, lam))
    return q


def maxent_ts_torch(
    lm: TorchLM,
    prompt_ids: Sequence[int],
    reward: Callable[[list[int]], float],
    *,
    lam: float,
    num_rollouts: int,
    expansion_k: int,
    max_depth: int,
    max_new_tokens: int,
    seed: int = 0,
    greedy: bool = False,
) -> SearchResult:
    """The seed's variant (module docstring) with ``torch.manual_seed(seed)`` for the rollouts
    and a ``seed``-ed generator for the moves. ``SearchResult.nfe``: LlamaLM-style NFE; stats:
    ``tokens_passed``, ``generate_calls``, ``forward_calls``, ``generated_tokens``,
    ``root_q`` / ``root_probs`` (``{token: value}``), ``moves``, ``steps``, ``wall_s``."""
    _check(lam, num_rollouts, expansion_k, max_depth, max_new_tokens, lm.vocab_size, prompt_ids)
    before = {k: getattr(lm, k) for k in
              ("nfe", "tokens_passed", "generate_calls", "forward_calls", "generated_tokens")}  # fmt: skip
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    moves_rng = torch.Generator().manual_seed(seed)
    prompt, gen = [int(t) for t in prompt_ids], []
    lm.set_prompt(prompt)
    steps: list[dict] = []

    def finished() -> bool:
        return len(gen) == max_new_tokens or bool(gen and gen[-1] in lm.eos_ids)

    while len(steps) < max_depth and not finished():
        logp = torch.from_numpy(lm.next_logprobs([prompt + gen])[0]).double()  # [V]
        top = torch.argsort(-logp, stable=True)[:expansion_k]  # [k]
        tokens = [int(t) for t in top]
        q = _child_q(lm, prompt, gen, tokens, reward, lam, num_rollouts, max_new_tokens)
        probs = torch.softmax(logp[top] + lam * torch.tensor(q, dtype=torch.float64), dim=0)
        if greedy:
            i = max(range(len(tokens)), key=lambda j: (q[j], float(logp[tokens[j]]), -j))
        else:
            i = int(torch.multinomial(probs, 1, generator=moves_rng))
        steps.append({"tokens": tokens, "q": q, "probs": probs.tolist(), "move": tokens[i]})
        gen.append(tokens[i])
    if not finished():
        gen += lm.rollout([prompt + gen], max_new_tokens - len(gen))[0]
    root = steps[0]
    stats = {"method": "maxent_ts*" if greedy else "maxent_ts", "wall_s": time.perf_counter() - t0}
    stats |= {k: getattr(lm, k) - v for k, v in before.items() if k != "nfe"}
    stats |= {
        "steps": len(steps),
        "root_q": dict(zip(root["tokens"], root["q"], strict=True)),
        "root_probs": dict(zip(root["tokens"], root["probs"], strict=True)),
        "moves": [s["move"] for s in steps],
    }
    return SearchResult(gen, float(reward(list(gen))), lm.nfe - before["nfe"], stats)
