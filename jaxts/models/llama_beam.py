"""Beam search for :class:`jaxts.models.llama.Llama`, exact to transformers'
``generate(num_beams=K, do_sample=False)`` (``_beam_search`` of transformers 5).

The semantics reproduced, step by step (``i`` tokens generated so far, ``N = max_new_tokens``):

* each running beam's accumulated log-probability plus ``log_softmax`` of its next-token logits
  gives ``K * V`` candidates per row; the best ``keep = max(2, 1 + n_eos) * K`` are kept, so at
  least ``K`` of them do not end in EOS. At the start only beam 0 is live (the others score
  ``-1e9``), so the first step does not pick the same token K times;
* a candidate is *finished* when its token is an EOS or it reaches ``N`` tokens. Only the first
  ``K`` of the ``keep`` candidates may enter the finished set, scored
  ``logp / (i + 1) ** length_penalty``; the set keeps the best ``K`` ever seen;
* the next running beams are the best ``K`` unfinished candidates (finished ones get ``-1e9``);
* a row stops accepting hypotheses once its ``K`` finished slots are full and the best running
  score divided by ``i ** length_penalty`` (``N ** length_penalty`` when
  ``early_stopping="never"`` and ``length_penalty > 0``) cannot beat the worst finished one;
  ``early_stopping=True`` stops accepting as soon as the slots are full. The loop ends when no row
  accepts, when every candidate of every row is finished (``N`` reached), or, with
  ``early_stopping=True``, when all slots of all rows are full;
* the answer is the best finished hypothesis.

The ``-1e9`` penalties are added in float32 in HF's order, and the length-penalty divisors are
HF's Python floats rounded to float32 (torch divides a float32 tensor by a float32 scalar), so
every comparison sees the same numbers up to the model's own float error.

Beams are batch rows ``B * K`` (row ``b * K + beam``, HF's ``repeat_interleave`` order): the prompt
is prefilled once per row and its cache repeated ``K`` times; after each step the cache rows are
gathered by the chosen beams' parents. One jitted prefill plus a ``lax.while_loop``, fixed shapes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxts.models.llama import KVCache, Llama, generate

__all__ = ["beam_search", "beam_search_with_margin"]

_NEG = -1.0e9  # HF's "never pick this" score offset
_REAL = -1.0e8  # scores above this are real log-probabilities, not penalised placeholders


class _State(NamedTuple):
    i: jnp.ndarray  # [] tokens generated so far
    stop: jnp.ndarray  # [] bool
    run_seq: jnp.ndarray  # [B, K, N] running beams' new tokens
    run_score: jnp.ndarray  # [B, K] accumulated log-probabilities
    fin_seq: jnp.ndarray  # [B, K, N] finished hypotheses, best first
    fin_score: jnp.ndarray  # [B, K] length-penalised scores
    fin_done: jnp.ndarray  # [B, K] bool: slot holds a real hypothesis
    open_: jnp.ndarray  # [B] bool: HF's is_early_stop_heuristic_unsatisfied
    logits: jnp.ndarray  # [B * K, V] next-token logits of the running beams
    cache: KVCache
    margin: jnp.ndarray  # [] smallest score gap a decision hinged on


def beam_search(
    model: Llama,
    ids,
    attention_mask=None,
    max_new_tokens: int = 16,
    *,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
) -> jnp.ndarray:
    """The best beam-search continuation ``[B, max_new_tokens]`` int32 of the left-padded batch
    ``ids [B, T]`` (``attention_mask [B, T]``, 1 = token), as transformers'
    ``generate(num_beams=num_beams, do_sample=False, length_penalty=..., early_stopping=...)``
    with ``num_return_sequences=1``. A hypothesis ending at an EOS (any of
    ``config.eos_token_id``) is padded with the first EOS (``pad_token_id``, else 0, without EOS),
    as :func:`jaxts.models.llama.generate` pads. ``num_beams=1`` is greedy decoding (HF does not
    run beam search then)."""
    return beam_search_with_margin(
        model, ids, attention_mask, max_new_tokens, num_beams=num_beams,
        length_penalty=length_penalty, early_stopping=early_stopping,
    )[0]  # fmt: skip


def beam_search_with_margin(
    model: Llama,
    ids,
    attention_mask=None,
    max_new_tokens: int = 16,
    *,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """:func:`beam_search` and the smallest gap (float32 ``[]``) between two real scores whose
    order a selection depended on (adjacent kept candidates, running and finished beams, the
    early-stop comparison). A parity check against another implementation is only meaningful
    when this margin exceeds both sides' float error; ``inf`` for ``num_beams=1``."""
    if not isinstance(num_beams, (int, np.integer)) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    ids = jnp.asarray(ids, jnp.int32)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"ids must be [B, T] with T >= 1, got shape {ids.shape}")
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask must have the shape of ids {ids.shape}, got {mask.shape}")
    num_beams, max_new_tokens = int(num_beams), int(max_new_tokens)  # static: Python ints
    if num_beams == 1:
        return generate(model, ids, mask, max_new_tokens), jnp.float32(jnp.inf)
    cfg = model.config
    keep = max(2, 1 + len(cfg.eos_ids)) * num_beams
    if cfg.vocab_size * num_beams < keep + 1:
        raise ValueError(f"vocab_size {cfg.vocab_size} too small for {num_beams} beams")
    fill = cfg.fill_id
    n = max_new_tokens
    # Python's int ** float, rounded to float32 as torch does with a scalar divisor.
    lengths = np.arange(1, n + 1, dtype=np.float64)
    fin_div = np.asarray([float(m) ** length_penalty for m in lengths], np.float32)  # [N]
    if early_stopping == "never" and length_penalty > 0.0:
        open_div = np.full(n, float(n) ** length_penalty, np.float32)
    else:
        open_div = fin_div
    graphdef, state = nnx.split(model)
    static = (n, num_beams, keep, cfg.eos_ids, fill, early_stopping is True)
    return _search(graphdef, state, ids, mask, jnp.asarray(fin_div), jnp.asarray(open_div), static)


def _sorted_gap(vals: jnp.ndarray) -> jnp.ndarray:
    """Smallest difference between neighbours of descending ``vals [B, M]`` that are both real."""
    real = (vals[:, :-1] > _REAL) & (vals[:, 1:] > _REAL)
    return jnp.min(jnp.where(real, vals[:, :-1] - vals[:, 1:], jnp.inf))


def _take(x: jnp.ndarray, idx: jnp.ndarray) -> jnp.ndarray:
    """``x [B, M, ...]`` gathered along axis 1 by ``idx [B, J]`` -> ``[B, J, ...]``."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def _reorder(cache: KVCache, rows: jnp.ndarray) -> KVCache:
    """The cache with its batch rows replaced by ``rows [B * K]`` (each beam's parent)."""
    return dataclasses.replace(
        cache,
        k=tuple(k[rows] for k in cache.k),
        v=tuple(v[rows] for v in cache.v),
        filled=cache.filled[rows],
        count=cache.count[rows],
    )


def _select(s: _State, fin_div, open_div, static) -> _State:
    """One beam step without the model call: candidates, running beams, finished set, stop."""
    n, k, keep, eos, _, stop_when_full = static
    b = s.run_score.shape[0]
    v = s.logits.shape[-1]
    logp = jax.nn.log_softmax(s.logits, axis=-1).reshape(b, k, v)  # [B, K, V]
    logp = (logp + s.run_score[:, :, None]).reshape(b, k * v)  # [B, K * V]
    vals, idx = jax.lax.top_k(logp, keep + 1)  # one extra, for the margin at the cut
    margin = jnp.minimum(s.margin, _sorted_gap(vals))
    vals, idx = vals[:, :keep], idx[:, :keep]  # [B, keep]
    parent, tok = idx // v, idx % v  # [B, keep]
    cand = _take(s.run_seq, parent)  # [B, keep, N]
    cand = jax.lax.dynamic_update_slice_in_dim(cand, tok[:, :, None], s.i, axis=2)
    hits = jnp.isin(tok, jnp.asarray(eos, jnp.int32)) | (s.i + 1 >= n)  # [B, keep]

    # Running beams: the best K candidates that did not finish.
    run_lp = vals + hits.astype(jnp.float32) * _NEG
    run_score, pick = jax.lax.top_k(run_lp, k)  # [B, K]
    run_seq, run_parent = _take(cand, pick), _take(parent, pick)

    # Finished set: only the first K candidates may enter, and only while the row is open.
    did = hits & (jnp.arange(keep) < k)[None]  # [B, keep]
    fin = vals / fin_div[s.i]
    full = jnp.all(s.fin_done, axis=-1, keepdims=True) & stop_when_full  # [B, 1]
    fin = fin + full.astype(jnp.float32) * _NEG
    fin = fin + (~s.open_)[:, None].astype(jnp.float32) * _NEG
    fin = fin + (~did).astype(jnp.float32) * _NEG
    merged = jnp.concatenate([s.fin_score, fin], axis=1)  # [B, K + keep]
    top, best = jax.lax.top_k(merged, k + 1)
    margin = jnp.minimum(margin, _sorted_gap(top))
    best = best[:, :k]
    fin_seq = _take(jnp.concatenate([s.fin_seq, cand], axis=1), best)
    fin_score = top[:, :k]
    fin_done = _take(jnp.concatenate([s.fin_done, did], axis=1), best)

    # HF's early-stop heuristic, with the length after this step.
    bound = run_score[:, :1] / open_div[s.i]  # [B, 1]
    worst = jnp.where(fin_done, jnp.min(fin_score, axis=1, keepdims=True), _NEG)  # [B, K]
    open_ = s.open_ & jnp.any(bound > worst, axis=-1)
    decided = s.open_ & jnp.all(fin_done, axis=-1) & (bound[:, 0] > _REAL)
    gap = jnp.where(decided, jnp.abs(bound[:, 0] - worst[:, 0]), jnp.inf)
    margin = jnp.minimum(margin, jnp.min(gap))
    stop = ~jnp.any(open_) | (jnp.all(fin_done) & stop_when_full) | jnp.all(hits)

    rows = (jnp.arange(b)[:, None] * k + run_parent).reshape(-1)  # [B * K]
    return s._replace(
        i=s.i + 1, stop=stop, run_seq=run_seq, run_score=run_score, fin_seq=fin_seq,
        fin_score=fin_score, fin_done=fin_done, open_=open_, cache=_reorder(s.cache, rows),
        margin=margin,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnums=(0, 6))
def _search(graphdef, state, ids, mask, fin_div, open_div, static):
    n, k, _, _, fill, _ = static
    model = nnx.merge(graphdef, state)
    b, t = ids.shape
    # The K beams of a row share the prompt: prefill B rows, then repeat (HF prefills B * K).
    logits, cache = model.extend(ids, mask, model.init_cache(b, t + n))
    logits = jnp.repeat(logits[:, -1], k, axis=0)  # [B * K, V]
    cache = _reorder(cache, jnp.repeat(jnp.arange(b), k))

    def body(s: _State) -> _State:
        s = _select(s, fin_div, open_div, static)
        # The model call is wasted on the last step; skipping it would need a cond on the cache.
        tok = s.run_seq[:, :, s.i - 1].reshape(-1)  # [B * K]
        logits, cache = model.extend(tok[:, None], jnp.ones((b * k, 1), jnp.int32), s.cache)
        return s._replace(logits=logits[:, -1], cache=cache)

    init = _State(
        i=jnp.zeros((), jnp.int32),
        stop=jnp.zeros((), bool),
        run_seq=jnp.full((b, k, n), fill, jnp.int32),
        run_score=jnp.zeros((b, k), jnp.float32).at[:, 1:].set(_NEG),
        fin_seq=jnp.full((b, k, n), fill, jnp.int32),
        fin_score=jnp.full((b, k), _NEG, jnp.float32),
        fin_done=jnp.zeros((b, k), bool),
        open_=jnp.ones((b,), bool),
        logits=logits,
        cache=cache,
        margin=jnp.float32(jnp.inf),
    )
    out = jax.lax.while_loop(lambda s: ~s.stop, body, init)
    return out.fin_seq[:, 0], out.margin
