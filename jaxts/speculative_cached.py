"""Speculative decoding over the KV cache (``decoding="cached"`` of :mod:`jaxts.speculative`).

Target and draft each keep their own :class:`~jaxts.models.timer_xl_cache.TimerKVCache` and their
own context statistics (normalisation fixed by the context, positions with the context's stride):
the forecast is the growing-context one of
:func:`~jaxts.models.timer_xl_cache.cached_forecast`, not OpenLTM's sliding window.

Each cache holds every emitted patch except the latest one, the *pending* patch: a round starts
with the target's cache filled up to ``base`` time steps (pending is step ``base``).

* Draft: one call over [prev, pending] written at ``base - 1`` (re-writing the already cached
  ``prev`` with identical values, so the call has the same shape whether the last round kept
  everything or not: after a full acceptance the draft had never been fed x_k), giving x_1; then
  k-1 one-patch calls give x_2..x_k.
* Target: ONE call over [pending, x_1..x_k], (k+1)*C tokens. Its forecasts after pending, x_1,
  ..., x_k are exactly the k+1 windows W_0..W_k of the rolling loop, so every rule judges as
  there, and the bonus patch after k kept proposals comes with the same call, STRIDE's rule
  included (its separate bonus call of the rolling loop is free here).
* Both caches are then rewound per row to the accepted prefix: the next round starts at
  ``base + n_acc + 1``, pending the last emitted patch.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxts.models.timer_xl import TimerXL
from jaxts.models.timer_xl_cache import TimerKVCache, extend, prefill, rewind
from jaxts.speculative import (
    K_MAX,
    _at,
    _correction,
    _emitted,
    _init_progress,
    _initial_norm,
    _judge,
    _progress,
    _proposal,
    _run_rounds,
)

__all__ = ["cache_tokens", "check_cached_context", "generate_cached_state", "sample_target_cached"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _CachedState:
    tcache: TimerKVCache  # target: steps 0..base-1 filled (next_index may run ahead: rewound)
    dcache: TimerKVCache  # draft: the same steps (written again from base-1 each round)
    pending: jax.Array  # [B, P, C] the latest emitted patch (step base), not cached yet
    prev: jax.Array  # [B, P, C] the patch before it (step base-1)
    base: jax.Array  # [B] time steps before pending
    out: jax.Array  # [B, (S + K_max + 1) * P, C] emitted patches, S = patches needed
    n_out: jax.Array  # [B] patches emitted so far
    accepted: jax.Array  # [B]
    attempted: jax.Array  # [B]
    target_calls: jax.Array  # []
    draft_calls: jax.Array  # []
    rounds: jax.Array  # []
    fallbacks: jax.Array  # []
    k: jax.Array  # [] current k (adaptive)
    key: jax.Array


def cache_tokens(n_context: int, pred_len: int, p: int, k_cap: int) -> int:
    """Time steps a speculative cache needs: the context's, the horizon's patches, and room for
    the k+1 verified ones of the last round (+2 spare)."""
    return n_context + math.ceil(pred_len / p) + k_cap + 2


def check_cached_context(context, p: int) -> None:
    """A ValueError unless the context ``[B, L, C]`` has at least 2 patches of ``p`` steps."""
    # The draft's first call of a round re-writes the patch before the pending one.
    if context.shape[1] < 2 * p:
        raise ValueError(
            f"decoding='cached' needs a context of at least 2 patches ({2 * p} steps), got "
            f"length {context.shape[1]}"
        )


def _split(out):
    """A cached forecast -> (mean, variance or None), ``[B, T, P, C]`` each."""
    if isinstance(out, tuple):
        return out[0], jnp.exp(out[1])
    return out, None


def _prefill_state(model: TimerXL, x, max_tokens: int):
    """(cache, stats) of the whole context, its cache rewound by one: pending = last patch."""
    cache, stats, _ = prefill(model, x, max_tokens)
    return rewind(cache, cache.next_index - 1), stats


@functools.partial(jax.jit, static_argnums=(0, 2, 7, 8, 9, 10, 11))
def generate_cached_state(tg, ts, dg, ds, x, key, scalars, pred_len, k, rule, adaptive, max_tries):
    """The cached loop (called by :func:`jaxts.speculative.generate`, which checks the inputs):
    returns the final loop state, with the fields of ``SpecResult``."""
    target, draft = nnx.merge(tg, ts), nnx.merge(dg, ds)
    target.eval()
    draft.eval()
    sigma = scalars[0]
    b, length, c = x.shape
    p = target.config.output_token_len
    steps = math.ceil(pred_len / p)
    n0 = length // p
    size = cache_tokens(n0, pred_len, p, K_MAX if adaptive else k)
    tcache, tstats = _prefill_state(target, x, size)
    dcache, dstats = _prefill_state(draft, x, size)
    norm0 = _initial_norm(target, x)

    def round_body(kk: int, s: _CachedState) -> _CachedState:
        """One round with a static k: k draft calls, one target call of (k+1)*C tokens."""
        key, k_draft, k_u, k_fix, k_bonus = jax.random.split(s.key, 5)
        active = s.n_out < steps  # [B]
        # Finished rows idle at step 1 so their (discarded) writes stay inside the cache.
        base = jnp.where(active, s.base, 1)
        kds = jax.random.split(k_draft, kk)

        dcache, dout = extend(
            draft, rewind(s.dcache, base - 1), jnp.stack([s.prev, s.pending], axis=1), dstats
        )
        mu_q, var_q = _split(dout)
        x1, v1 = _proposal(rule, mu_q[:, 1], None if var_q is None else var_q[:, 1], sigma, kds[0])

        def propose(carry, kd):
            dcache, xi = carry
            dcache, dout = extend(draft, dcache, xi[:, None], dstats)
            mq, vq = _split(dout)
            nxt, vq = _proposal(rule, mq[:, 0], None if vq is None else vq[:, 0], sigma, kd)
            return (dcache, nxt), (nxt, mq[:, 0], vq)

        xs, mqs, vqs = x1[None], mu_q[None, :, 1], v1[None]  # [1, B, P, C]
        if kk > 1:
            (dcache, _), (xr, mr, vr) = jax.lax.scan(
                propose, (dcache, x1), kds[1:]
            )  # [k-1, B, P, C]
            xs, mqs, vqs = (jnp.concatenate(a, axis=0) for a in ((xs, xr), (mqs, mr), (vqs, vr)))

        # Verify: forecasts after pending, x_1, ..., x_k in one call (the rolling W_0..W_k).
        seq = jnp.concatenate([s.pending[None], xs], axis=0).transpose(1, 0, 2, 3)
        tcache, tout = extend(target, rewind(s.tcache, base), seq, tstats)  # [B, k+1, P, C]
        mu_p, var_p = (None if a is None else a.transpose(1, 0, 2, 3) for a in _split(tout))
        u = jax.random.uniform(k_u, (kk, b))
        accept = _judge(
            rule, xs, mqs, vqs, mu_p[:kk], None if var_p is None else var_p[:kk], u,
            scalars, norm0, draft.config.stochastic,
        )  # fmt: skip
        n_acc = jnp.sum(jnp.cumprod(accept.astype(jnp.int32), axis=0), axis=0)  # [B] in [0, k]
        fallbacks = jnp.zeros((), jnp.int32)
        if rule == "stride":  # target mean after the kept ones (the bonus when all) + noise
            extra = _at(mu_p, n_acc) + sigma * jax.random.normal(k_fix, s.pending.shape)
        else:
            extra, fallbacks = _correction(
                rule, (k_fix, k_bonus), n_acc, mqs, vqs, mu_p, var_p, active, sigma, max_tries
            )

        emitted = _emitted(xs, extra, n_acc)  # [k+1, B, P, C]
        seq = jnp.concatenate([s.pending[None], emitted], axis=0)  # [k+2, B, P, C]
        keep = active[:, None, None]
        upd = _progress(s, active, n_acc, kk, emitted, 1, fallbacks, key)
        # The target's cache now holds pending and the kept x_1..x_n_acc at base..base+n_acc,
        # the draft's up to x_(k-1): the next round rewinds both to the new base.
        return dataclasses.replace(
            s,
            tcache=tcache,
            dcache=dcache,
            pending=jnp.where(keep, _at(seq, n_acc + 1), s.pending),
            prev=jnp.where(keep, _at(seq, n_acc), s.prev),
            base=jnp.where(active, s.base + n_acc + 1, s.base),
            **upd,
        )

    init = _CachedState(
        tcache=tcache,
        dcache=dcache,
        pending=x[:, -p:],
        prev=x[:, -2 * p : -p],
        base=jnp.full((b,), n0 - 1, jnp.int32),
        **_init_progress(b, c, p, steps, k, adaptive, key),
    )
    return _run_rounds(round_body, init, k, adaptive, steps)


@functools.partial(jax.jit, static_argnums=(0, 5))
def sample_target_cached(tg, ts, x, key, sigma, pred_len: int):
    """Target-only ancestral sampling over the cache ``[B, pred_len, C]``: each next patch is
    drawn from N(mu_p, sigma^2 I) (the target's own variance when stochastic) and appended to
    the cache, the distribution the "exact" rule reproduces with ``decoding="cached"``."""
    target = nnx.merge(tg, ts)
    target.eval()
    b, length, c = x.shape
    p = target.config.output_token_len
    steps = math.ceil(pred_len / p)
    cache, stats, out = prefill(target, x, length // p + steps)

    def draw(out, kk):  # out: the forecast after the latest step, [B, 1, P, C] each
        mu, var = _split(out)
        std = sigma if var is None else jnp.sqrt(var[:, -1])
        return mu[:, -1] + std * jax.random.normal(kk, mu[:, -1].shape)

    keys = jax.random.split(key, steps)
    first = draw(out, keys[0])

    def step(carry, kk):
        cache, patch = carry
        cache, out = extend(target, cache, patch[:, None], stats)
        nxt = draw(out, kk)
        return (cache, nxt), nxt

    _, rest = jax.lax.scan(step, (cache, first), keys[1:])  # [S-1, B, P, C]
    outs = jnp.concatenate([first[None], rest], axis=0).transpose(1, 0, 2, 3)  # [B, S, P, C]
    return outs.reshape(b, steps * p, c)[:, :pred_len]
