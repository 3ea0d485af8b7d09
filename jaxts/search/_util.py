"""Host-side helpers the searches share: argument checks, a stream of rollout keys, the
soft (log-mean-exp) value and Boltzmann draws. Pure Python/NumPy: tree bookkeeping runs on
the host, only the model calls go to the accelerator."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from jaxts.search.result import SearchResult

Reward = Callable[[list[int]], float]


def check_common(prompt_ids: Sequence[int], max_new_tokens: int, lam: float | None = None) -> None:
    """ValueErrors naming the argument for the inputs every method shares."""
    if len(prompt_ids) == 0:
        raise ValueError(
            "prompt_ids must be a non-empty list of token ids (the model needs a context)"
        )
    if not isinstance(max_new_tokens, int | np.integer) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if lam is not None and not (math.isfinite(lam) and lam >= 0.0):
        # lam < 0 would target p * exp(-|lam| r): pass the negated reward instead.
        raise ValueError(f"lam must be finite and >= 0 (0 = sample p_theta), got {lam!r}")


def eos_ids(lm) -> frozenset[int]:
    """The ids that end a sequence: ``lm.eos_ids`` when an adapter has several (chat models end
    turns with their own token), else ``{lm.eos_id}``."""
    return frozenset(int(t) for t in getattr(lm, "eos_ids", (lm.eos_id,)))


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def host_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key (typed or raw uint32), for host-side draws."""
    data = (
        jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    )
    return np.random.default_rng(np.asarray(data, dtype=np.uint32).ravel())


class KeyStream:
    """Fresh rollout keys split from one key in chunks: one dispatch per ``chunk`` keys instead
    of one ``split`` per rollout call (each is ~100 us of host overhead on CPU)."""

    def __init__(self, key: jax.Array, chunk: int = 64):
        self._key = key
        self._chunk = chunk
        self._data = np.zeros((0, 2), np.uint32)
        self._i = 0

    def __call__(self) -> jax.Array:
        if self._i == len(self._data):
            self._key, sub = jax.random.split(self._key)
            keys = jax.random.split(sub, self._chunk)
            self._data = np.asarray(jax.random.key_data(keys))  # [chunk, 2]
            self._i = 0
        self._i += 1
        return jax.random.wrap_key_data(self._data[self._i - 1])


def soft_mean(values: Sequence[float], weights: Sequence[float], lam: float) -> float:
    """``(1/lam) log(sum_i w_i exp(lam v_i) / sum_i w_i)``; the weighted mean at ``lam == 0``.

    Written as ``v_max + log1p(sum_i w_i expm1(lam (v_i - v_max)) / W) / lam``: exact as lam -> 0
    (expm1(x)/lam -> x, no cancellation of log W) and overflow-free for large lam.
    """
    total = float(sum(weights))
    if lam == 0.0:
        return sum(w * v for v, w in zip(values, weights, strict=True)) / total
    vmax = max(values)
    if vmax == -math.inf:  # every outcome impossible-reward: no finite soft value
        return vmax
    x = sum(w * math.expm1(lam * (v - vmax)) for v, w in zip(values, weights, strict=True)) / total
    return vmax + math.log1p(x) / lam


def boltzmann_index(
    values: Sequence[float], weights: Sequence[float], lam: float, rng: np.random.Generator
) -> int:
    """Index ``i`` drawn with probability ``∝ w_i exp(lam v_i)`` (max-shifted for stability;
    ``w_i = 0`` is never drawn)."""
    logits = [
        math.log(w) + lam * v if w > 0 else -math.inf for v, w in zip(values, weights, strict=True)
    ]
    top = max(logits)
    cum = np.cumsum([math.exp(z - top) for z in logits])
    return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)


def sample_index(logp: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from a log-probability row ``[V]`` by inverting its CDF."""
    cum = np.cumsum(np.exp(logp - logp.max()))  # [V]
    return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)


def finish(
    method: str, tokens: Sequence[int], reward: float, nfe: int, t0: float, **stats
) -> SearchResult:
    stats = {"method": method, "wall_s": time.perf_counter() - t0, **stats}
    return SearchResult([int(t) for t in tokens], float(reward), int(nfe), stats)
