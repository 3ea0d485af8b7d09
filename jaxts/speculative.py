"""Speculative decoding for continuous patches: a draft Timer-XL proposes ``k`` patches, the target
verifies them in one call, and the whole horizon is one compiled ``lax.while_loop``.

Three acceptance rules (see docs/speculative.md for the derivations):

* ``"exact"``: speculative sampling generalised to densities (Leviathan et al. 2023, Chen et al.
  2023). The target's next patch is Gaussian, N(mu_p, sigma^2 I) (or the target's own variance
  when it is stochastic); a proposal x ~ q is kept with probability min(1, p(x)/q(x)); on the first
  rejection a patch is drawn from the residual max(0, p - q) / Z (by rejection from p, accepting y
  with probability 1 - q(y)/p(y)); when all k are kept the verification pass already holds the
  target's next patch, so one more is sampled from it. The output is distributed exactly as
  target-only ancestral sampling (:func:`sample_target`), whatever the draft.
* ``"stride"``: STRIDE's rule (``utils/speculative_decoder.py``), kept for comparison. It drops the
  Gaussian normalisers and uses the draft variance averaged over the patch, so it is *not*
  distribution-preserving. Computed, as upstream, on patches normalised with the initial
  context's statistics when the target uses instance normalisation.
* ``"tolerance"``: deterministic: the draft mean is kept while its RMS distance to the target mean
  is <= ``tol``; otherwise the target mean is emitted. ``tol=0`` reproduces
  :func:`jaxts.models.timer_xl.rolling_forecast` of the target.

Every sample of a batch has its own context and progresses at its own pace (1 to k+1 patches per
round); the loop runs until every sample has ``ceil(pred_len / P)`` patches. ``decoding="cached"``
runs the same rules over KV caches (:mod:`jaxts.speculative_cached`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxts.models.timer_xl import INSTANCE_NORM_EPS, TimerXL, check_context

RULES = ("exact", "stride", "tolerance")
DECODINGS = ("rolling", "cached")
K_MIN, K_MAX = 1, 8  # STRIDE's adaptive-k bounds
ADAPT_UP, ADAPT_DOWN = 0.7, 0.3  # STRIDE: k+1 above 70% acceptance, k-1 below 30%
LOG_RATIO_CAP = 20.0  # STRIDE caps the log-ratio before exp
MAX_RESIDUAL_TRIES = 64
_LOG_2PI = math.log(2.0 * math.pi)

__all__ = ["DECODINGS", "RULES", "SpecResult", "generate", "sample_target"]


@dataclasses.dataclass(frozen=True)
class SpecResult:
    """What :func:`generate` returns (host values).

    forecast ``[B, pred_len, C]``; accepted / attempted ``[B]``: draft patches kept / judged per
    sample; target_calls / draft_calls: model invocations (each over the whole batch);
    rounds: loop iterations; residual_fallbacks: ``"exact"`` corrections whose residual sampler
    ran out of tries and fell back to a target sample (0 in a correct run, reported to check);
    k_final: the last k (differs from k only with ``adaptive``).
    """

    forecast: np.ndarray
    accepted: np.ndarray
    attempted: np.ndarray
    target_calls: int
    draft_calls: int
    rounds: int
    residual_fallbacks: int
    k_final: int

    @property
    def acceptance_rate(self) -> float:
        att = int(self.attempted.sum())
        return float(self.accepted.sum()) / att if att else 0.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _LoopState:
    ctx: jax.Array  # [B, L, C] each sample's current context
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


def _roll(ctx, patch):
    """Drop the oldest patch of ``ctx`` ``[B, L, C]`` and append ``patch`` ``[B, P, C]``."""
    return jnp.concatenate([ctx[:, patch.shape[1] :], patch], axis=1)


def _next_patch(model: TimerXL, ctx):
    """(mean, variance or None) of the next patch, both ``[B, P, C]``."""
    if model.config.stochastic:
        mean, logvar = model.forecast_next(ctx)
        return mean, jnp.exp(logvar)
    return model.forecast_next(ctx), None


def _gauss_logpdf(x, mean, var):
    """Diagonal Gaussian log-density summed over the patch: ``[..., P, C]`` -> ``[...]``."""
    return -0.5 * jnp.sum((x - mean) ** 2 / var + jnp.log(var) + _LOG_2PI, axis=(-2, -1))


def _check_key(key) -> None:
    # Sampling has no sensible default seed: a hidden one would make every call draw the same
    # numbers, and None would fail deep inside the jitted loop.
    if key is None or not hasattr(key, "dtype"):
        raise ValueError(f"key must be a JAX PRNG key such as jax.random.key(0), got {key!r}")


def _check_decoding(decoding) -> None:
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")


def _check_pair(target: TimerXL, draft: TimerXL | None, context) -> int:
    tc = target.config
    if tc.input_token_len != tc.output_token_len:
        raise ValueError(
            "speculative decoding needs input_token_len == output_token_len (every emitted patch "
            f"becomes one context token); target has {tc.input_token_len} != {tc.output_token_len}"
        )
    if draft is not None:
        dc = draft.config
        if (dc.input_token_len, dc.output_token_len) != (tc.input_token_len, tc.output_token_len):
            raise ValueError(
                f"draft tokens {dc.input_token_len}/{dc.output_token_len} differ from the "
                f"target's {tc.input_token_len}/{tc.output_token_len}"
            )
    check_context(context, tc.input_token_len)  # shape, length % P, NaN/inf
    return tc.input_token_len


def generate(
    target: TimerXL,
    draft: TimerXL,
    context,
    pred_len: int,
    *,
    k: int = 3,
    rule: str = "exact",
    sigma: float = 0.25,
    accept_bias: float = 1.0,
    tol: float | None = None,
    key: jax.Array,
    adaptive: bool = False,
    max_residual_tries: int = MAX_RESIDUAL_TRIES,
    decoding: str = "rolling",
) -> SpecResult:
    """Forecast ``pred_len`` steps after ``context`` ``[B, L, C]`` by speculative decoding.

    ``sigma``: the target's sampling noise (std of N(mu_p, sigma^2 I), in the data's scale; the
    proposal noise of a deterministic draft too). ``accept_bias`` (``"stride"`` only) multiplies
    the ratio. ``tol``: the RMS tolerance of ``"tolerance"`` (required), or STRIDE's optional MSE
    tolerance for ``"stride"`` (normalised space; proposals within it are always accepted).
    ``adaptive``: STRIDE's adaptive k within [1, 8], starting at ``k``. Runs in eval mode; one
    compilation per (shapes, pred_len, k, rule, adaptive); sigma, accept_bias and tol are traced.
    ``decoding``: ``"rolling"`` (OpenLTM's sliding window: the target verifies k+1 windows) or
    ``"cached"`` (each model keeps a KV cache, the target verifies the k proposals in one call
    of (k+1)*C tokens; the growing-context forecast of ``cached_forecast``, and STRIDE's bonus
    call is free); see :mod:`jaxts.speculative_cached`.
    """
    _check_decoding(decoding)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if not isinstance(k, (int, np.integer)) or not K_MIN <= k <= K_MAX:
        raise ValueError(f"k must be an integer in [{K_MIN}, {K_MAX}], got {k!r}")
    if int(pred_len) <= 0:
        raise ValueError(f"pred_len must be positive, got {pred_len}")
    if rule != "tolerance" and not float(sigma) > 0:
        raise ValueError(f"sigma must be positive for rule {rule!r}, got {sigma}")
    if rule == "tolerance" and (tol is None or not float(tol) >= 0):
        raise ValueError(f"rule 'tolerance' needs tol >= 0, got {tol}")
    if rule == "stride" and tol is not None and not float(tol) >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if not float(accept_bias) > 0:
        raise ValueError(f"accept_bias must be positive, got {accept_bias}")
    if int(max_residual_tries) < 1:
        raise ValueError("max_residual_tries must be >= 1")
    _check_key(key)
    _check_pair(target, draft, context)
    tg, ts = nnx.split(target)
    dg, ds = nnx.split(draft)
    scalars = jnp.asarray(
        [sigma, accept_bias, -1.0 if tol is None else tol], jnp.float32
    )  # traced: sweeps over them reuse one compilation
    if decoding == "cached":
        from jaxts import speculative_cached as cached  # (it imports this module)

        cached.check_cached_context(context, target.config.input_token_len)
        loop = cached.generate_cached_state
    else:
        loop = _generate_jit
    st = loop(
        tg, ts, dg, ds, jnp.asarray(context, jnp.float32), key, scalars,
        int(pred_len), int(k), rule, bool(adaptive), int(max_residual_tries),
    )  # fmt: skip
    # to the host: the results only (a cached loop's state holds both KV caches too)
    got = jax.device_get((st.out[:, : int(pred_len)], st.accepted, st.attempted))
    counts = jax.device_get((st.target_calls, st.draft_calls, st.rounds, st.fallbacks, st.k))
    return SpecResult(*map(np.asarray, got), *map(int, counts))


@functools.partial(jax.jit, static_argnums=(0, 2, 7, 8, 9, 10, 11))
def _generate_jit(tg, ts, dg, ds, x, key, scalars, pred_len, k, rule, adaptive, max_tries):
    target, draft = nnx.merge(tg, ts), nnx.merge(dg, ds)
    target.eval()
    draft.eval()
    sigma = scalars[0]
    b, _, c = x.shape
    p = target.config.output_token_len
    steps = math.ceil(pred_len / p)
    norm0 = _initial_norm(target, x)

    def round_body(kk: int, s: _LoopState) -> _LoopState:
        """One round with a static k: k draft calls, one target call (+1 STRIDE bonus call)."""
        key, k_draft, k_u, k_fix, k_bonus = jax.random.split(s.key, 5)
        active = s.n_out < steps  # [B]

        def propose(ctx, kd):
            mu_q, var_q = _next_patch(draft, ctx)  # [B, P, C]
            xi, var_q = _proposal(rule, mu_q, var_q, sigma, kd)
            return _roll(ctx, xi), (xi, mu_q, var_q)

        _, (xs, mu_q, var_q) = jax.lax.scan(
            propose, s.ctx, jax.random.split(k_draft, kk)
        )  # each [k, B, P, C]

        # Verification windows W_0..W_k: W_i = context after i proposals. STRIDE's rule verifies
        # W_0..W_{k-1} and pays a separate call for the bonus; the others take W_k in the same
        # call, so the bonus patch comes with the verification.
        n_win = kk if rule == "stride" else kk + 1
        wins = [s.ctx]
        for i in range(n_win - 1):
            wins.append(_roll(wins[-1], xs[i]))
        mu_p, var_p = _next_patch(target, jnp.concatenate(wins, axis=0))  # [n_win*B, P, C]
        mu_p = mu_p.reshape(n_win, b, p, c)
        var_p = None if var_p is None else var_p.reshape(n_win, b, p, c)
        u = jax.random.uniform(k_u, (kk, b))
        accept = _judge(
            rule, xs, mu_q, var_q, mu_p[:kk], None if var_p is None else var_p[:kk], u,
            scalars, norm0, draft.config.stochastic,
        )  # fmt: skip
        n_acc = jnp.sum(jnp.cumprod(accept.astype(jnp.int32), axis=0), axis=0)  # [B] in [0, k]
        all_acc = n_acc == kk

        fallbacks = jnp.zeros((), jnp.int32)
        extra_calls = 0
        if rule == "stride":
            # rejection at i: target mean of W_i plus noise; all kept: one more target call on
            # the samples that need it (the call is made, and counted, only if any does).
            fix = _at(mu_p, jnp.minimum(n_acc, kk - 1)) + sigma * jax.random.normal(
                k_fix, (b, p, c)
            )
            w_k = _roll(wins[-1], xs[kk - 1])
            need = all_acc & active
            bonus = jax.lax.cond(
                jnp.any(need),
                lambda: _next_patch(target, w_k)[0],
                lambda: jnp.zeros((b, p, c), jnp.float32),
            )
            bonus = bonus + sigma * jax.random.normal(k_bonus, (b, p, c))
            extra = jnp.where(all_acc[:, None, None], bonus, fix)
            extra_calls = jnp.any(need).astype(jnp.int32)
        else:
            extra, fallbacks = _correction(
                rule, (k_fix, k_bonus), n_acc, mu_q, var_q, mu_p, var_p, active, sigma, max_tries
            )

        emitted = _emitted(xs, extra, n_acc)  # [k+1, B, P, C]
        flat = emitted.transpose(1, 0, 2, 3).reshape(b, (kk + 1) * p, c)  # [B, (k+1)P, C]
        ext = jnp.concatenate([s.ctx, flat], axis=1)  # [B, L + (k+1)P, C]
        ctx = jax.vmap(lambda e, n: jax.lax.dynamic_slice(e, (n * p, 0), s.ctx.shape[1:]))(
            ext, n_acc + 1
        )
        upd = _progress(s, active, n_acc, kk, emitted, 1 + extra_calls, fallbacks, key)
        return dataclasses.replace(s, ctx=jnp.where(active[:, None, None], ctx, s.ctx), **upd)

    init = _LoopState(ctx=x, **_init_progress(b, c, p, steps, k, adaptive, key))
    return _run_rounds(round_body, init, k, adaptive, steps)


# ------------------------------------------------ shared by the rolling and the cached loops


def _initial_norm(target: TimerXL, x):
    """(mean0, std0) ``[B, 1, C]``: STRIDE judges patches normalised with the initial context."""
    b, _, c = x.shape
    if target.config.use_norm:
        mean0 = x.mean(axis=1, keepdims=True)
        return mean0, jnp.sqrt(jnp.var(x, axis=1, keepdims=True) + INSTANCE_NORM_EPS)
    return jnp.zeros((b, 1, c)), jnp.ones((b, 1, c))


def _proposal(rule: str, mu_q, var_q, sigma, key):
    """(proposal, draft variance) ``[B, P, C]``: the draft mean under "tolerance", otherwise a
    draw from N(mu_q, var_q) (sigma^2 for a deterministic draft)."""
    if var_q is None:
        var_q = jnp.broadcast_to(sigma**2, mu_q.shape)
    if rule == "tolerance":
        return mu_q, var_q
    return mu_q + jnp.sqrt(var_q) * jax.random.normal(key, mu_q.shape), var_q


def _judge(rule, xs, mu_q, var_q, mu_p, var_p, u, scalars, norm0, draft_stochastic: bool):
    """Whether each proposal passes ``rule`` on its own: ``[k, B]`` (the caller cuts at the first
    rejection). xs, mu_q, var_q ``[k, B, P, C]``; mu_p, var_p (None: deterministic target) the
    target's forecasts judging x_1..x_k ``[k, B, P, C]``; u ``[k, B]`` uniforms."""
    sigma, accept_bias, tol = scalars[0], scalars[1], scalars[2]
    if rule == "exact":
        vp = jnp.broadcast_to(sigma**2, mu_p.shape) if var_p is None else var_p
        log_ratio = _gauss_logpdf(xs, mu_p, vp) - _gauss_logpdf(xs, mu_q, var_q)
        return jnp.log(u) <= jnp.minimum(log_ratio, 0.0)
    if rule == "tolerance":
        return jnp.sqrt(jnp.mean((mu_q - mu_p) ** 2, axis=(-2, -1))) <= tol
    mean0, std0 = norm0
    xn, pn, qn = ((a - mean0) / std0 for a in (xs, mu_p, mu_q))
    if draft_stochastic:  # patch-averaged draft variance, normalised units
        vq = jnp.mean(var_q / std0**2, axis=(-2, -1))  # [k, B]
    else:  # STRIDE: sigma^2 for both terms (normalised units, unlike the sampling)
        vq = sigma**2
    log_ratio = -jnp.sum((xn - pn) ** 2, axis=(-2, -1)) / (2 * sigma**2) + jnp.sum(
        (xn - qn) ** 2, axis=(-2, -1)
    ) / (2 * vq)
    alpha = jnp.minimum(
        1.0, jnp.exp(jnp.minimum(log_ratio, LOG_RATIO_CAP)) * jnp.maximum(accept_bias, 1.0)
    )
    within = (tol > 0) & (jnp.mean((pn - xn) ** 2, axis=(-2, -1)) <= tol)
    return (u <= alpha) | within


def _at(a, j):
    """``a[j_b, b]``: a ``[n, B, ...]``, j ``[B]`` -> ``[B, ...]``."""
    idx = j.reshape((1, -1) + (1,) * (a.ndim - 2))
    return jnp.take_along_axis(a, idx, axis=0)[0]


def _correction(rule, keys, n_acc, mu_q, var_q, mu_p, var_p, active, sigma, max_tries: int):
    """The patch emitted after the kept ones, rules "exact" and "tolerance": (patch ``[B, P, C]``,
    residual fallbacks ``[]``). mu_p, var_p ``[k+1, B, P, C]``: the target at W_0..W_k, so the
    bonus patch after k kept ones comes from W_k."""
    kk = mu_q.shape[0]
    if rule == "tolerance":
        return _at(mu_p, n_acc), jnp.zeros((), jnp.int32)
    k_fix, k_bonus = keys
    vp = jnp.broadcast_to(sigma**2, mu_p.shape) if var_p is None else var_p
    mp_j, vp_j = _at(mu_p, n_acc), _at(vp, n_acc)
    bonus = mp_j + jnp.sqrt(vp_j) * jax.random.normal(k_bonus, mp_j.shape)
    jq = jnp.minimum(n_acc, kk - 1)
    all_acc = n_acc == kk
    need = active & ~all_acc
    fix, ok = _sample_residual(k_fix, mp_j, vp_j, _at(mu_q, jq), _at(var_q, jq), need, max_tries)
    return jnp.where(all_acc[:, None, None], bonus, fix), jnp.sum(need & ~ok).astype(jnp.int32)


def _emitted(xs, extra, n_acc):
    """The round's patches ``[k+1, B, P, C]``: the kept proposals, then ``extra`` at position
    n_acc (positions after it are scratch, overwritten next round)."""
    b = xs.shape[1]
    emitted = jnp.concatenate([xs, jnp.zeros((1,) + xs.shape[1:], xs.dtype)], axis=0)
    here = jnp.arange(xs.shape[0] + 1)[:, None] == n_acc.reshape(1, b)  # [k+1, B]
    return jnp.where(here[..., None, None], extra[None], emitted)


def _init_progress(b, c, p, steps, k, adaptive, key) -> dict:
    """The output buffer and counters every loop state starts with."""
    zero = jnp.zeros((), jnp.int32)
    k_cap = K_MAX if adaptive else k
    return dict(
        out=jnp.zeros((b, (steps + k_cap + 1) * p, c), jnp.float32),
        n_out=jnp.zeros((b,), jnp.int32),
        accepted=jnp.zeros((b,), jnp.int32),
        attempted=jnp.zeros((b,), jnp.int32),
        target_calls=zero,
        draft_calls=zero,
        rounds=zero,
        fallbacks=zero,
        k=jnp.asarray(k, jnp.int32),
        key=key,
    )


def _progress(s, active, n_acc, kk: int, emitted, target_add, fallbacks, key) -> dict:
    """The output buffer and counters after a round that kept ``n_acc`` ``[B]`` proposals and
    emitted ``emitted`` ``[k+1, B, P, C]`` (rows not ``active`` ``[B]`` unchanged)."""
    _, b, p, c = emitted.shape
    flat = emitted.transpose(1, 0, 2, 3).reshape(b, (kk + 1) * p, c)  # [B, (k+1)P, C]
    out = jax.vmap(lambda buf, blk, n: jax.lax.dynamic_update_slice(buf, blk, (n * p, 0)))(
        s.out, flat, s.n_out
    )
    return dict(
        out=jnp.where(active[:, None, None], out, s.out),
        n_out=jnp.where(active, s.n_out + n_acc + 1, s.n_out),
        accepted=s.accepted + jnp.where(active, n_acc, 0),
        attempted=s.attempted + jnp.where(active, jnp.minimum(n_acc + 1, kk), 0),
        target_calls=s.target_calls + target_add,
        draft_calls=s.draft_calls + kk,
        rounds=s.rounds + 1,
        fallbacks=s.fallbacks + fallbacks,
        key=key,
    )


def _run_rounds(round_body, init, k: int, adaptive: bool, steps: int):
    """Rounds until every row has ``steps`` patches; with ``adaptive``, k (traced) picks one of
    the statically shaped round bodies and moves with the running acceptance rate."""

    def body(s):
        if not adaptive:
            return round_body(k, s)
        s = jax.lax.switch(
            s.k - K_MIN, [functools.partial(round_body, kk) for kk in range(K_MIN, K_MAX + 1)], s
        )
        rate = jnp.sum(s.accepted) / jnp.maximum(jnp.sum(s.attempted), 1)
        k_new = jnp.where(rate > ADAPT_UP, s.k + 1, jnp.where(rate < ADAPT_DOWN, s.k - 1, s.k))
        return dataclasses.replace(s, k=jnp.clip(k_new, K_MIN, K_MAX))

    return jax.lax.while_loop(lambda s: jnp.any(s.n_out < steps), body, init)


def _sample_residual(key, mp, vp, mq, vq, need, max_tries: int):
    """A draw from max(0, p - q) / Z for diagonal Gaussians p, q ``[B, P, C]``, by rejection from
    p: y ~ p is kept with probability 1 - min(1, q(y)/p(y)) (expected tries 1 / TV(p, q)).

    Tries run in a while loop that stops once every sample in ``need`` ``[B]`` has a draw, so the
    usual one or two tries cost one or two draws, not ``max_tries``. Returns (sample, found
    ``[B]``); where no try succeeded the last draw from p is returned (counted by the caller)."""

    def cond(st):
        t, _, found, _ = st
        return (t < max_tries) & jnp.any(need & ~found)

    def body(st):
        t, key, found, y_old = st
        key, k_y, k_u = jax.random.split(key, 3)
        y = mp + jnp.sqrt(vp) * jax.random.normal(k_y, mp.shape)  # [B, P, C] ~ p
        log_q_over_p = _gauss_logpdf(y, mq, vq) - _gauss_logpdf(y, mp, vp)  # [B]
        # keep with probability 1 - min(1, q/p)  <=>  u < 1 - q/p  <=>  log(1 - u) > log(q/p)
        ok = jnp.log1p(-jax.random.uniform(k_u, found.shape)) > log_q_over_p
        take = ~found  # samples still searching take this draw (success or latest fallback)
        y_new = jnp.where(take[:, None, None], y, y_old)
        return t + 1, key, found | ok, y_new

    init = (jnp.zeros((), jnp.int32), key, jnp.zeros(need.shape, bool), mp)
    _, _, found, y = jax.lax.while_loop(cond, body, init)
    return y, found


def sample_target(
    target: TimerXL,
    context,
    pred_len: int,
    *,
    sigma: float = 0.25,
    key,
    decoding: str = "rolling",
):
    """Target-only ancestral sampling, the distribution ``"exact"`` reproduces: each next patch is
    drawn from N(mu_p, sigma^2 I) (the target's own variance when it is stochastic) and appended
    to the sliding context (``decoding="rolling"``) or to the KV cache (``"cached"``: the
    growing context, normalised with the context's statistics). context ``[B, L, C]`` ->
    ``[B, pred_len, C]``."""
    _check_decoding(decoding)
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if int(pred_len) <= 0:
        raise ValueError(f"pred_len must be positive, got {pred_len}")
    _check_key(key)
    _check_pair(target, None, context)
    tg, ts = nnx.split(target)
    if decoding == "cached":
        from jaxts.speculative_cached import sample_target_cached as fn  # imports this module
    else:
        fn = _sample_target_jit
    out = fn(tg, ts, jnp.asarray(context, jnp.float32), key, jnp.float32(sigma), int(pred_len))
    return np.asarray(out)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _sample_target_jit(tg, ts, x, key, sigma, pred_len):
    target = nnx.merge(tg, ts)
    target.eval()
    p = target.config.output_token_len
    steps = math.ceil(pred_len / p)

    def step(ctx, kk):
        mu, var = _next_patch(target, ctx)
        std = sigma if var is None else jnp.sqrt(var)
        nxt = mu + std * jax.random.normal(kk, mu.shape)
        return _roll(ctx, nxt), nxt

    _, outs = jax.lax.scan(step, x, jax.random.split(key, steps))  # [S, B, P, C]
    return outs.transpose(1, 0, 2, 3).reshape(x.shape[0], steps * p, x.shape[2])[:, :pred_len]
