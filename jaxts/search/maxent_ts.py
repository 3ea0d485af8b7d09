"""The seed's depth-limited MaxEnt-TS: expand the top-k tokens, estimate their soft Q values by
rollouts, move one token, repeat ``max_depth`` times, finish with a rollout.

At a node ``s`` (``depth < max_depth`` and not finished): take the ``expansion_k`` most likely next
tokens ``a`` under ``p_theta(. | s)``; roll out ``num_rollouts`` continuations under each (all
``k * R`` in ONE ``rollout`` call; a child that is already finished is rewarded once, exactly);
estimate ``Q(s, a) = (1/lam) log mean_i exp(lam r_i)`` (the mean at lam = 0); then move to

* ``greedy=False``: a child drawn ``∝ p(a | s) exp(lam Q(s, a))`` renormalised over the k. With
  ``k = V`` and ``R -> inf``, ``Q -> V(s a)`` and the move is exactly the soft-optimal policy
  ``pi*(a | s) ∝ p(a | s) exp(lam V(s a))``, whose product over steps is ``p exp(lam r) / Z``;
  with ``max_depth >= max_new_tokens`` the answer is a sample of that target. Finite R biases Q
  low (Jensen: E log mean exp <= log E exp) and noisy; top-k samples the target conditioned on
  each move being among the k likeliest tokens; after ``max_depth`` moves the finishing rollout
  samples ``p_theta``, not the tilted target.
* ``greedy=True``: the child with the largest ``Q(s, a)`` (ties: the likelier token): a search for
  high reward, not a sample.

A moved-to token that is EOS (or reaches ``max_new_tokens``) ends the walk. ``p_theta`` is the
adapter at its own sampling temperature (the seed's 0.8): the target is the tempered model's
tilt, see :mod:`jaxts.search.protocol`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import jax
import numpy as np

from jaxts.search._util import (
    KeyStream,
    Reward,
    boltzmann_index,
    check_common,
    check_positive,
    eos_ids,
    finish,
    host_rng,
    soft_mean,
)
from jaxts.search.result import SearchResult

__all__ = ["maxent_ts"]


def _q_values(lm, prompt, gen, tokens, reward, lam, num_rollouts, max_new_tokens, next_key):
    """``Q(s, a)`` for each token ``a`` after ``gen``, from one batched rollout call."""
    rewards: list[list[float]] = []
    to_roll = []  # (index into tokens, child gen)
    for i, a in enumerate(tokens):
        child = [*gen, a]
        if a in eos_ids(lm) or len(child) == max_new_tokens:
            rewards.append([float(reward(child))])
        else:
            rewards.append([])
            to_roll.append((i, child))
    if to_roll:
        budget = max_new_tokens - len(gen) - 1
        prefixes = [prompt + child for _, child in to_roll for _ in range(num_rollouts)]
        conts = lm.rollout(prefixes, budget, next_key())
        for j, cont in enumerate(conts):
            i, child = to_roll[j // num_rollouts]
            rewards[i].append(float(reward(child + [int(t) for t in cont])))
    return [soft_mean(rs, [1.0] * len(rs), lam) for rs in rewards]


def maxent_ts(
    lm,
    prompt_ids: Sequence[int],
    reward: Reward,
    *,
    lam: float,
    num_rollouts: int,
    expansion_k: int,
    max_depth: int,
    max_new_tokens: int,
    key: jax.Array,
    greedy: bool = False,
) -> SearchResult:
    """The seed's variant (module docstring). ``stats["root_q"]``: ``{token: Q}`` at the root,
    ``stats["root_probs"]``: the root move distribution over those tokens."""
    check_common(prompt_ids, max_new_tokens, lam)
    check_positive("num_rollouts", num_rollouts)
    check_positive("expansion_k", expansion_k)
    check_positive("max_depth", max_depth)
    if expansion_k > lm.vocab_size:
        raise ValueError(f"expansion_k must be <= vocab_size ({lm.vocab_size}), got {expansion_k}")
    t0, nfe0 = time.perf_counter(), lm.nfe
    host_key, roll_key = jax.random.split(key)
    rng, next_key = host_rng(host_key), KeyStream(roll_key, chunk=max_depth + 1)
    prompt, gen = list(prompt_ids), []
    steps: list[dict] = []
    eos = eos_ids(lm)

    def finished() -> bool:
        return len(gen) == max_new_tokens or bool(gen and gen[-1] in eos)

    while len(steps) < max_depth and not finished():
        logp = lm.next_logprobs([prompt + gen])[0]  # [V]
        tokens = [int(t) for t in np.argsort(-logp, kind="stable")[:expansion_k]]
        q = _q_values(lm, prompt, gen, tokens, reward, lam, num_rollouts, max_new_tokens, next_key)
        weights = [math.exp(logp[a] - logp[tokens[0]]) for a in tokens]  # p(a|s) / p(top|s)
        logits = np.array([logp[a] + lam * v for a, v in zip(tokens, q, strict=True)])  # [k]
        probs = np.exp(logits - np.logaddexp.reduce(logits))
        if greedy:
            i = max(range(len(tokens)), key=lambda j: (q[j], logp[tokens[j]], -j))
        else:
            i = boltzmann_index(q, weights, lam, rng)
        steps.append({"tokens": tokens, "q": q, "probs": probs.tolist(), "move": tokens[i]})
        gen.append(tokens[i])
    if not finished():
        gen += [
            int(t) for t in lm.rollout([prompt + gen], max_new_tokens - len(gen), next_key())[0]
        ]
    root = steps[0]
    return finish(
        "maxent_ts*" if greedy else "maxent_ts", gen, float(reward(list(gen))), lm.nfe - nfe0, t0,
        steps=len(steps), root_q=dict(zip(root["tokens"], root["q"], strict=True)),
        root_probs=dict(zip(root["tokens"], root["probs"], strict=True)),
        moves=[s["move"] for s in steps],
    )  # fmt: skip
