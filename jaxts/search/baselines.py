"""Baselines of the MaxEnt-TS evaluation, all ``(lm, prompt_ids, reward, *, max_new_tokens, key,
...) -> SearchResult`` with the rollouts of one method in one batched ``rollout`` call.

* :func:`greedy`: argmax decoding; :func:`nucleus`: one top-p sample (HF's TopP warper).
* :func:`beam`: host-side beam search over ``next_logprobs`` as HF ``generate(num_beams=n)`` with
  ``early_stopping=False`` (or the adapter's own ``lm.beam``, see :func:`beam`): each step keeps
  the ``max(2, 1 + number of EOS ids) * n`` best continuations by summed log-prob, the
  best ``n`` unfinished ones continue, a finished one (EOS, or ``max_new_tokens`` reached) among the
  top ``n`` joins the kept hypotheses with score ``sum log p / len ** length_penalty`` (``len`` =
  generated tokens, EOS included), and the search stops once no running beam can beat the worst of
  ``n`` kept hypotheses by HF's heuristic (best running score over the current length). The first
  step expands the prompt once (HF passes n copies of it, so our NFE is n - 1 lower).
* :func:`best_of_n`: n samples, the best reward; :func:`soft_best_of_n`: n samples, one drawn
  ``∝ exp(lam r)`` (self-normalised importance resampling of ``p exp(lam r) / Z``).
* :func:`nfe_matched_n`: how many samples buy the NFE budget of another method.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import jax
import numpy as np

from jaxts.search._util import (
    Reward,
    boltzmann_index,
    check_common,
    check_positive,
    eos_ids,
    finish,
    host_rng,
)
from jaxts.search.result import SearchResult

__all__ = ["beam", "best_of_n", "greedy", "nfe_matched_n", "nucleus", "soft_best_of_n"]


def _one(lm, prompt_ids, reward, max_new_tokens, key, method, **kw) -> SearchResult:
    check_common(prompt_ids, max_new_tokens)
    t0, nfe0 = time.perf_counter(), lm.nfe
    key = jax.random.key(0) if key is None else key
    tokens = lm.rollout([list(prompt_ids)], max_new_tokens, key, **kw)[0]
    return finish(method, tokens, float(reward(list(tokens))), lm.nfe - nfe0, t0)


def greedy(lm, prompt_ids: Sequence[int], reward: Reward, *, max_new_tokens: int,
           key: jax.Array | None = None) -> SearchResult:  # fmt: skip
    """Argmax decoding (``key`` is unused: the protocol's rollout takes one)."""
    return _one(lm, prompt_ids, reward, max_new_tokens, key, "greedy", greedy=True)


def nucleus(lm, prompt_ids: Sequence[int], reward: Reward, *, max_new_tokens: int, key: jax.Array,
            top_p: float = 0.9) -> SearchResult:  # fmt: skip
    """One nucleus sample at ``top_p``."""
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    return _one(lm, prompt_ids, reward, max_new_tokens, key, "nucleus", top_p=top_p)


def _samples(lm, prompt_ids, reward, n, max_new_tokens, key):
    check_common(prompt_ids, max_new_tokens)
    check_positive("n", n)
    seqs = lm.rollout([list(prompt_ids)] * n, max_new_tokens, key)
    return [[int(t) for t in s] for s in seqs], [float(reward(list(s))) for s in seqs]


def best_of_n(lm, prompt_ids: Sequence[int], reward: Reward, *, max_new_tokens: int, key: jax.Array,
              n: int) -> SearchResult:  # fmt: skip
    """``n`` samples from ``p_theta`` in one call; the highest reward (first on ties)."""
    t0, nfe0 = time.perf_counter(), lm.nfe
    seqs, rewards = _samples(lm, prompt_ids, reward, n, max_new_tokens, key)
    i = int(np.argmax(rewards))
    return finish(
        "best_of_n",
        seqs[i],
        rewards[i],
        lm.nfe - nfe0,
        t0,
        n=n,
        mean_reward=float(np.mean(rewards)),
    )


def soft_best_of_n(lm, prompt_ids: Sequence[int], reward: Reward, *, max_new_tokens: int,
                   key: jax.Array, n: int, lam: float) -> SearchResult:  # fmt: skip
    """``n`` samples from ``p_theta``; one drawn with probability ``∝ exp(lam r)`` (lam = 0: uniform)."""
    check_common(prompt_ids, max_new_tokens, lam)
    t0, nfe0 = time.perf_counter(), lm.nfe
    sample_key, pick_key = jax.random.split(key)
    seqs, rewards = _samples(lm, prompt_ids, reward, n, max_new_tokens, sample_key)
    i = boltzmann_index(rewards, [1.0] * n, lam, host_rng(pick_key))
    return finish("soft_best_of_n", seqs[i], rewards[i], lm.nfe - nfe0, t0, n=n, lam=lam,
                  mean_reward=float(np.mean(rewards)))  # fmt: skip


def nfe_matched_n(nfe_budget: int, mean_tokens: float) -> int:
    """Samples that fit an NFE budget: ``max(1, floor(nfe_budget / mean_tokens))``, where
    ``mean_tokens`` is the mean NFE of one sample (e.g. measured by a pilot ``best_of_n`` as its
    ``nfe / n``; ``max_new_tokens`` is the conservative bound)."""
    if not nfe_budget >= 0 or not mean_tokens > 0:
        raise ValueError(
            f"need nfe_budget >= 0 and mean_tokens > 0, got {nfe_budget}, {mean_tokens}"
        )
    return max(1, int(math.floor(nfe_budget / mean_tokens)))


def beam(lm, prompt_ids: Sequence[int], reward: Reward, *, max_new_tokens: int,
         key: jax.Array | None = None, num_beams: int = 5, length_penalty: float = 1.0) -> SearchResult:  # fmt: skip
    """HF-style beam search; the best kept hypothesis. An adapter with its own ``lm.beam(prefixes,
    num_beams, max_new_tokens)`` (HF-exact, length_penalty 1; ``LlamaLM``'s is jitted over the
    base model's logits, as HF's beam ignores temperature) is used at ``length_penalty == 1``;
    otherwise the host search of the module docstring runs over ``next_logprobs`` (p_theta, at
    the adapter's temperature). ``stats["impl"]`` says which."""
    check_common(prompt_ids, max_new_tokens)
    check_positive("num_beams", num_beams)
    t0, nfe0 = time.perf_counter(), lm.nfe
    if callable(getattr(lm, "beam", None)) and length_penalty == 1.0:
        tokens = [int(t) for t in lm.beam([list(prompt_ids)], num_beams, max_new_tokens)[0]]
        stats = {"impl": "lm.beam"}
    else:
        score, tokens = _host_beam(lm, list(prompt_ids), max_new_tokens, num_beams, length_penalty)
        stats = {"impl": "host", "score": score}
    return finish("beam", tokens, float(reward(list(tokens))), lm.nfe - nfe0, t0,
                  num_beams=num_beams, **stats)  # fmt: skip


def _host_beam(lm, prompt, max_new_tokens, num_beams, length_penalty) -> tuple[float, list[int]]:
    eos = eos_ids(lm)
    width = max(2, 1 + len(eos)) * num_beams  # candidates kept per step, as HF
    running: list[tuple[float, list[int]]] = [(0.0, [])]  # (sum log p, generated ids), best first
    kept: list[tuple[float, list[int]]] = []  # (penalised score, generated ids), best first
    for step in range(1, max_new_tokens + 1):
        rows = lm.next_logprobs([prompt + g for _, g in running])  # [B, V]
        v = rows.shape[-1]
        flat = (np.array([s for s, _ in running])[:, None] + rows).ravel()  # [B * V]
        order = np.argsort(-flat, kind="stable")[:width]  # ties: lower beam, lower id
        cands = [(float(flat[j]), running[j // v][1] + [int(j % v)]) for j in order]
        done = [g[-1] in eos or step == max_new_tokens for _, g in cands]
        # only a finished candidate ranked among the top n may become a hypothesis (as HF)
        new = [
            (s / step**length_penalty, g)
            for r, (s, g) in enumerate(cands)
            if done[r] and r < num_beams
        ]
        kept = sorted(kept + new, key=lambda h: -h[0])[:num_beams]
        running = [c for c, d in zip(cands, done, strict=True) if not d][:num_beams]
        # HF's early_stopping=False heuristic: stop once the best running beam, scored at the
        # current length, cannot beat the worst of n kept hypotheses
        if not running or (
            len(kept) == num_beams and running[0][0] / step**length_penalty <= kept[-1][0]
        ):
            break
    return kept[0]
