"""The model protocol the searches are written against, and ``TabularLM``, a toy that
implements it with exactly enumerable distributions for tests.

``p_theta`` is the model *at its own sampling temperature*: an adapter with
``temperature = T`` returns ``log softmax(logits / T)`` from ``next_logprobs`` and samples the
same distribution in ``rollout``, so every search targets ``p_T(y|x) exp(lam r) / Z`` with
``p_T`` the per-step tempered model, not the base model ``p_1`` (T = 0.8, the seed's value,
sharpens each step; no lam makes up for it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import jax
import numpy as np

from jaxts.search._util import eos_ids, host_rng, soft_mean

__all__ = ["LanguageModel", "TabularLM", "top_p_logprobs"]


@runtime_checkable
class LanguageModel(Protocol):
    """Host-side view of an autoregressive LM. ``prefixes`` are full sequences (prompt ids +
    generated ids so far). ``nfe`` counts tokens passed through the model; both calls add to
    it, so a search's NFE is ``lm.nfe`` after minus before. An adapter whose model ends
    sequences with several ids may also have ``eos_ids`` (a collection, ``eos_id`` among them);
    the searches then treat each as EOS."""

    vocab_size: int
    eos_id: int
    nfe: int

    def next_logprobs(self, prefixes: list[list[int]]) -> np.ndarray:
        """``[B, V]`` float ``log p_theta(. | prefix)``."""
        ...

    def rollout(
        self,
        prefixes: list[list[int]],
        max_new_tokens: int,
        key: jax.Array,
        *,
        top_p: float = 1.0,
        greedy: bool = False,
    ) -> list[list[int]]:
        """Per prefix, the sampled continuation only: ends with EOS (included) or after
        ``max_new_tokens`` ids; ``greedy`` = argmax decoding; ``top_p < 1`` = HF's TopP warper."""
        ...


def top_p_logprobs(logp: np.ndarray, top_p: float) -> np.ndarray:
    """HF ``TopPLogitsWarper`` on a log-probability row ``[V]``: sort ascending, drop tokens whose
    cumulative probability is <= 1 - top_p (keeping at least the top one), renormalise."""
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    if top_p == 1.0:
        return logp
    order = np.argsort(logp, kind="stable")  # [V] ascending; ties by index as torch's CPU sort
    cum = np.cumsum(np.exp(logp[order]))  # [V]
    drop = cum <= 1.0 - top_p
    drop[-1] = False
    out = logp.copy()
    out[order[drop]] = -np.inf
    return out - np.logaddexp.reduce(out[np.isfinite(out)])


class TabularLM:
    """A deterministic toy LM over ``vocab_size`` tokens (one of them EOS).

    The logits of a prefix are ``scale`` times standard normals from a generator seeded by
    ``(seed, len(prefix), *prefix)`` (or ``logits_fn(prefix)`` when given), so every prefix has
    its own known next-token table; ``temperature`` divides them as an LLM adapter would.
    Accounting: ``next_logprobs`` adds one NFE per prefix (as if the prefix were KV-cached),
    ``rollout`` adds the number of tokens it generated. A subclass may set ``eos_ids``.
    """

    def __init__(
        self,
        vocab_size: int = 3,
        eos_id: int = 0,
        *,
        seed: int = 0,
        scale: float = 1.5,
        temperature: float = 1.0,
        logits_fn: Callable[[tuple[int, ...]], np.ndarray] | None = None,
    ):
        if vocab_size < 2 or not 0 <= eos_id < vocab_size:
            raise ValueError(
                f"need vocab_size >= 2 and 0 <= eos_id < vocab_size, got {vocab_size}, {eos_id}"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.vocab_size, self.eos_id, self.seed = vocab_size, eos_id, seed
        self.scale, self.temperature, self.logits_fn = scale, temperature, logits_fn
        self.nfe = 0
        self._cache: dict[tuple[int, ...], np.ndarray] = {}

    def logprobs(self, prefix: Sequence[int]) -> np.ndarray:
        """Exact ``log p_theta(. | prefix)`` ``[V]`` (float64); no NFE is counted."""
        key = tuple(int(t) for t in prefix)
        row = self._cache.get(key)
        if row is None:
            if self.logits_fn is not None:
                logits = np.asarray(self.logits_fn(key), np.float64)
            else:
                rng = np.random.default_rng([self.seed, len(key), *key])
                logits = self.scale * rng.standard_normal(self.vocab_size)
            z = logits / self.temperature  # [V]
            row = z - np.logaddexp.reduce(z)
            self._cache[key] = row
        return row

    def next_logprobs(self, prefixes: list[list[int]]) -> np.ndarray:
        self.nfe += len(prefixes)
        return np.stack([self.logprobs(p) for p in prefixes])  # [B, V]

    def rollout(self, prefixes, max_new_tokens, key, *, top_p=1.0, greedy=False):
        rng, ends = host_rng(key), eos_ids(self)
        out = []
        for prefix in prefixes:
            seq, new = list(prefix), []
            while len(new) < max_new_tokens:
                logp = self.logprobs(seq)
                if greedy:
                    tok = int(np.argmax(logp))
                else:
                    cum = np.cumsum(np.exp(top_p_logprobs(logp, top_p)))  # [V]
                    tok = min(
                        int(np.searchsorted(cum, rng.random() * cum[-1], side="right")),
                        len(cum) - 1,
                    )
                seq.append(tok)
                new.append(tok)
                if tok in ends:
                    break
            self.nfe += len(new)
            out.append(new)
        return out

    # -- exact enumeration (tests) ------------------------------------------------------------

    def sequences(
        self, prompt: Sequence[int], max_new_tokens: int
    ) -> list[tuple[tuple[int, ...], float]]:
        """All terminal continuations (EOS or ``max_new_tokens`` ids) with their ``log p``."""
        out: list[tuple[tuple[int, ...], float]] = []
        ends = eos_ids(self)

        def walk(gen: tuple[int, ...], logp: float) -> None:
            if (gen and gen[-1] in ends) or len(gen) == max_new_tokens:
                out.append((gen, logp))
                return
            row = self.logprobs([*prompt, *gen])
            for tok in range(self.vocab_size):
                walk((*gen, tok), logp + float(row[tok]))

        walk((), 0.0)
        return out

    def target(
        self, prompt: Sequence[int], reward, *, lam: float, max_new_tokens: int
    ) -> tuple[list[tuple[int, ...]], np.ndarray]:
        """The exact ``p_theta(y) exp(lam r(y)) / Z`` over :meth:`sequences` (same order)."""
        seqs = self.sequences(prompt, max_new_tokens)
        logits = np.array([lp + lam * reward(list(g)) for g, lp in seqs])  # [S]
        probs = np.exp(logits - np.logaddexp.reduce(logits))
        return [g for g, _ in seqs], probs

    def soft_value(
        self,
        prompt: Sequence[int],
        generated: Sequence[int],
        reward,
        *,
        lam: float,
        max_new_tokens: int,
    ) -> float:
        """``V(s) = (1/lam) log E_p[exp(lam r) | s]`` for ``s = prompt + generated`` (``E_p[r | s]``
        at lam == 0); ``r(generated)`` at a terminal ``s``."""
        gen = tuple(generated)
        if (gen and gen[-1] in eos_ids(self)) or len(gen) == max_new_tokens:
            return float(reward(list(gen)))
        row = self.logprobs([*prompt, *gen])
        values = [self.soft_value(prompt, (*gen, t), reward, lam=lam, max_new_tokens=max_new_tokens)
                  for t in range(self.vocab_size)]  # fmt: skip
        return soft_mean(values, np.exp(row).tolist(), lam)

    def soft_policy(
        self,
        prompt: Sequence[int],
        generated: Sequence[int],
        reward,
        *,
        lam: float,
        max_new_tokens: int,
    ) -> np.ndarray:
        """``pi*(a | s) ∝ p(a | s) exp(lam V(s a))`` ``[V]``: the soft-optimal next-token policy."""
        row = self.logprobs([*prompt, *generated])
        q = np.array([self.soft_value(prompt, (*generated, t), reward, lam=lam, max_new_tokens=max_new_tokens)
                      for t in range(self.vocab_size)])  # fmt: skip
        z = row + lam * q
        return np.exp(z - np.logaddexp.reduce(z))
