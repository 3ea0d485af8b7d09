"""``LlamaLM``: the search protocol (:class:`jaxts.search.protocol.LanguageModel`) on a jaxts
:class:`~jaxts.models.llama.Llama`, batched and jitted.

A search asks for the next-token distribution or for rollouts of many prefixes that share one
prompt. The prompt is prefilled once into a KV cache (batch 1, left-padded to a bucket of
``prompt_bucket`` slots) and reused while every prefix still starts with it; each call
broadcasts that cache to the batch, appends the prefixes' own suffixes (generated ids so far,
left-padded to a bucket of 16) in one forward, then

* ``next_logprobs``: returns ``log softmax`` of the last position's logits at the adapter's
  ``temperature`` (and ``top_k``, if set): that tempered model *is* p_theta for the search;
* ``rollout``: decodes all rows in the jitted ``lax.while_loop`` of
  :func:`jaxts.models.llama.decode_loop` (same temperature and top-k; ``top_p`` and ``greedy``
  per call, as HF's warpers), each row stopping at its first EOS;
* ``beam``: HF-exact beam search (:mod:`jaxts.models.llama_beam`) after the prompt.

Shapes are bucketed (batch rows, suffix width to 16, new tokens to 64, prompt to
``prompt_bucket``) so a whole evaluation compiles a handful of programs.

NFE (``nfe``) counts tokens passed through the model: the prompt once per prefill, every
suffix token of every call (suffixes are recomputed, not cached per node), and every generated
token (beam search: each beam's tokens).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxts.models.llama import KVCache, Llama, decode_loop
from jaxts.models.llama_sampling import warp_logits

__all__ = ["LlamaLM"]

_SUFFIX_BUCKET = 16
_NEW_BUCKET = 64  # a search's remaining budgets all share one program (the limit is traced)


def _round_up(n: int, k: int) -> int:
    return max(k, -(-n // k) * k)


def _rows(n: int) -> int:
    """Batch bucket: powers of two up to 16, then multiples of 16 (75 rows run as 80)."""
    return 1 << max(n - 1, 0).bit_length() if n <= 16 else _round_up(n, 16)


@dataclasses.dataclass(frozen=True)
class _Prompt:
    ids: tuple[int, ...]
    cache: KVCache  # batch 1, ``slots`` prompt slots (left pads not filled)
    logits: jnp.ndarray  # [V] last prompt position


class LlamaLM:
    """``LlamaLM(model_or_pipeline, temperature=1.0, top_k=0)``: see the module docstring.
    ``temperature`` must be positive (p_theta is a distribution; greedy decoding is
    ``rollout(..., greedy=True)``)."""

    def __init__(self, model, *, temperature: float = 1.0, top_k: int = 0, prompt_bucket: int = 64):
        if not isinstance(model, Llama):  # a LlamaPipeline
            model = getattr(model, "model", model)
        if not isinstance(model, Llama):
            raise TypeError(f"LlamaLM needs a jaxts Llama or LlamaPipeline, got {type(model)}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive (p_theta), got {temperature}")
        if top_k < 0 or prompt_bucket < 1:
            raise ValueError(
                f"need top_k >= 0 and prompt_bucket >= 1, got {top_k}, {prompt_bucket}"
            )
        cfg = model.config
        if not cfg.eos_ids:
            raise ValueError("the model's config has no eos_token_id: rollouts could not end")
        self.model = model
        self.vocab_size = cfg.vocab_size
        self.eos_id = cfg.eos_ids[0]
        self.eos_ids = cfg.eos_ids
        self.temperature, self.top_k = float(temperature), int(top_k)
        self.prompt_bucket = prompt_bucket
        self.nfe = 0
        self._graphdef, self._state = nnx.split(model)
        self._prompt: _Prompt | None = None
        self._unpaid = False  # the cached prompt's tokens are charged again at next use

    def reset(self) -> None:
        """Start a new search: the next call pays the prompt's tokens in ``nfe`` again, as a
        fresh model would (the cached KV is reused: an accounting reset, not a recompute), so
        methods run one after another on one prompt each report their full cost."""
        self._unpaid = True

    # ---- the protocol ----------------------------------------------------------------------

    def next_logprobs(self, prefixes: list[list[int]]) -> np.ndarray:
        ids, mask, prompt = self._batch(prefixes)
        out = _step(self._graphdef, self._state, prompt.cache, prompt.logits, ids, mask,
                    jax.random.key(0), 0, 0, self._sampling(1.0, False), self.eos_ids)  # fmt: skip
        return np.asarray(out)[: len(prefixes)]

    def rollout(self, prefixes, max_new_tokens: int, key, *, top_p: float = 1.0, greedy=False):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        ids, mask, prompt = self._batch(prefixes)
        n = _round_up(max_new_tokens, _NEW_BUCKET)
        out = _step(self._graphdef, self._state, prompt.cache, prompt.logits, ids, mask, key,
                    n, max_new_tokens, self._sampling(top_p, greedy), self.eos_ids)  # fmt: skip
        rows = [self._cut(r, max_new_tokens) for r in np.asarray(out)[: len(prefixes)]]
        self.nfe += sum(len(r) for r in rows)
        return rows

    def beam(self, prefixes, num_beams: int, max_new_tokens: int) -> list[list[int]]:
        """HF-exact beam search (length_penalty 1, early_stopping False) after each prefix."""
        from jaxts.models.llama_beam import beam_search
        from jaxts.pipelines.llama import left_pad

        ids, mask = left_pad(prefixes, self.eos_id)
        out = beam_search(self.model, ids, mask, max_new_tokens, num_beams=num_beams)
        self.nfe += int(mask.sum()) + num_beams * len(prefixes) * max_new_tokens
        return [self._cut(r, max_new_tokens) for r in np.asarray(out)]

    def token_logprobs(self, prompt: list[int], generated: list[int]) -> np.ndarray:
        """``[len(generated)]`` log-probabilities of ``generated`` after ``prompt`` under the
        *base* model (temperature 1, no top-k): how far an answer is from p_1. An evaluation
        measurement, not counted in ``nfe``."""
        if not generated:
            return np.zeros(0, np.float32)
        nfe = self.nfe
        if self._prompt is None or self._prompt.ids != tuple(prompt):
            self._prompt = self._prefill(list(prompt))
        ids, mask, p = self._batch([list(prompt) + list(generated[:-1])])
        logp = np.asarray(_all_logprobs(self._graphdef, self._state, p.cache, ids, mask))[0]
        first = np.asarray(jax.nn.log_softmax(p.logits))[generated[0]]
        w, rest = ids.shape[1], len(generated) - 1
        cols = np.arange(w - rest, w)  # the suffix's positions predict generated[1:]
        self.nfe = nfe
        return np.concatenate([[first], logp[cols, generated[1:]]]).astype(np.float32)

    # ---- internals -------------------------------------------------------------------------

    def _sampling(self, top_p: float, greedy: bool) -> tuple[float, int, float]:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        return (0.0, 0, 1.0) if greedy else (self.temperature, self.top_k, float(top_p))

    def _cut(self, row: np.ndarray, limit: int) -> list[int]:
        out = []
        for t in row[:limit].tolist():
            out.append(int(t))
            if t in self.eos_ids:
                break
        return out

    def _batch(self, prefixes):
        """(suffix ids [Bb, W], mask [Bb, W], the prompt) for ``prefixes`` (padded rows repeat
        row 0 and are dropped by the caller); prefills a new prompt when needed."""
        prefixes = [[int(t) for t in p] for p in prefixes]
        if not prefixes or any(not p for p in prefixes):
            raise ValueError("prefixes must be a non-empty list of non-empty id lists")
        if min(min(p) for p in prefixes) < 0 or max(max(p) for p in prefixes) >= self.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        prompt = self._prompt
        if prompt is None or any(tuple(p[: len(prompt.ids)]) != prompt.ids for p in prefixes):
            prompt = self._prompt = self._prefill(_common_prefix(prefixes))
        elif self._unpaid:
            self.nfe += len(prompt.ids)
        self._unpaid = False
        suffixes = [p[len(prompt.ids) :] for p in prefixes]
        width = _round_up(max(len(s) for s in suffixes), _SUFFIX_BUCKET)
        rows = _rows(len(prefixes))
        ids = np.zeros((rows, width), np.int32)  # [Bb, W] left-padded
        mask = np.zeros((rows, width), np.int32)
        for b in range(rows):
            s = suffixes[b] if b < len(suffixes) else suffixes[0]
            if s:
                ids[b, width - len(s) :], mask[b, width - len(s) :] = s, 1
        self.nfe += sum(len(s) for s in suffixes)
        return jnp.asarray(ids), jnp.asarray(mask), prompt

    def _prefill(self, ids: list[int]) -> _Prompt:
        slots = _round_up(len(ids), self.prompt_bucket)
        x = np.zeros((1, slots), np.int32)
        m = np.zeros((1, slots), np.int32)
        x[0, slots - len(ids) :], m[0, slots - len(ids) :] = ids, 1
        cache, logits = _prefill(self._graphdef, self._state, jnp.asarray(x), jnp.asarray(m))
        self.nfe += len(ids)
        self._unpaid = False
        return _Prompt(tuple(ids), cache, logits)


def _common_prefix(rows: list[list[int]]) -> list[int]:
    first = rows[0]
    n = min(len(r) for r in rows)
    for r in rows[1:]:
        n = next((i for i in range(n) if r[i] != first[i]), n)
    if n == 0:
        raise ValueError("the prefixes share no prompt: a search keeps one prompt per call")
    return first[:n]


@functools.partial(jax.jit, static_argnums=(0,))
def _prefill(graphdef, state, ids, mask):
    model = nnx.merge(graphdef, state)
    logits, cache = model.extend(ids, mask, model.init_cache(1, ids.shape[1]))
    return cache, logits[0, -1]


@functools.partial(jax.jit, static_argnums=(0,))
def _all_logprobs(graphdef, state, prompt: KVCache, ids, mask):
    """Base-model log-probabilities ``[Bb, W, V]`` at every suffix position."""
    logits, _ = nnx.merge(graphdef, state).extend(ids, mask, _broadcast(prompt, ids.shape, 0))
    return jax.nn.log_softmax(logits, axis=-1)


def _broadcast(prompt: KVCache, shape, n: int) -> KVCache:
    """The batch-1 prompt cache repeated for ``shape = (Bb, W)`` rows, with ``W + n`` free
    slots after the prompt's."""
    b, w = shape
    pad = w + n

    def grow(x):  # the prompt's [1, K, P, E] -> [Bb, K, P + W + n, E]
        return jnp.pad(jnp.broadcast_to(x, (b, *x.shape[1:])), [(0, 0), (0, 0), (0, pad), (0, 0)])

    filled = jnp.broadcast_to(prompt.filled, (b, prompt.filled.shape[1]))
    return KVCache(
        k=tuple(grow(k) for k in prompt.k),
        v=tuple(grow(v) for v in prompt.v),
        filled=jnp.pad(filled, [(0, 0), (0, pad)]),
        count=jnp.broadcast_to(prompt.count, (b,)),
        index=prompt.index,
    )


@functools.partial(jax.jit, static_argnums=(0, 7, 9, 10))
def _step(graphdef, state, prompt: KVCache, prompt_logits, ids, mask, key, n: int, limit,
          sampling, eos):  # fmt: skip
    """``n == 0``: log p_theta ``[Bb, V]`` after each row's suffix; else ``n`` (static) tokens
    ``[Bb, n]`` decoded after it (``limit`` of them real)."""
    model = nnx.merge(graphdef, state)
    cache = _broadcast(prompt, ids.shape, n)
    logits, cache = model.extend(ids, mask, cache)
    # a row without a suffix continues the prompt itself
    last = jnp.where(mask.any(axis=1)[:, None], logits[:, -1], prompt_logits[None])  # [Bb, V]
    if n == 0:
        temperature, top_k, _ = sampling
        return jax.nn.log_softmax(warp_logits(last, temperature, top_k, 1.0), axis=-1)
    return decode_loop(model, last, cache, key, n, eos, eos[0], sampling, limit)
