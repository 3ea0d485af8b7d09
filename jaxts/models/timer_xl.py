"""Timer-XL (Liu et al., arXiv 2410.04803) in Flax NNX, numerically identical to OpenLTM's
``models/timer_xl.py`` (default, non-flash attention path).

Module and parameter names mirror OpenLTM (``embedding``, ``blocks.attn_layers[i].attention.
query_projection``, ``...inner_attention.attn_bias.emb``, ``conv1``, ``norm1``, ``head``) so the
bridge in ``bridges/timer_xl.py`` is a name table, and a reader can hold both side by side.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxts.config import DictConfig, require_positive
from jaxts.layers.attention import AttentionLayer, softmax_attention
from jaxts.layers.attention_bias import BinaryAttentionBias
from jaxts.layers.init import torch_linear
from jaxts.layers.masks import same_variable, timer_covariate_mask, timer_multivariate_mask
from jaxts.layers.rope import partial_rope, partial_split

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm default
INSTANCE_NORM_EPS = 1e-5  # OpenLTM's use_norm: sqrt(biased var + 1e-5)


@dataclasses.dataclass(frozen=True)
class TimerXLConfig(DictConfig):
    """Hyper-parameters with OpenLTM's argument names (shared with the PyTorch reference)."""

    input_token_len: int = 96
    output_token_len: int = 96
    d_model: int = 512
    n_heads: int = 8
    e_layers: int = 1
    d_ff: int = 2048
    dropout: float = 0.1
    activation: str = "relu"
    use_norm: bool = False
    covariate: bool = False
    stochastic: bool = False  # STRIDE's draft_stochastic: head_mean + head_logvar

    def __post_init__(self):
        require_positive(
            self, "input_token_len", "output_token_len", "d_model", "n_heads", "e_layers", "d_ff"
        )
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        partial_split(self.d_model // self.n_heads, ROPE_PARTIAL)


ROPE_PARTIAL = (0.0, 0.5)  # OpenLTM rotates the first half of each head's dimensions
LOGVAR_CLAMP = (-10.0, 10.0)  # STRIDE clamps the normalised log-variance before de-normalising
LOGVAR_BIAS_INIT = -2.0  # STRIDE: log sigma^2 = -2 at init (sigma ~ 0.37, confident)


def draft_config(
    target: TimerXLConfig,
    scale_d_model: float | None = None,
    scale_n_heads: float | None = None,
    scale_d_ff: float | None = None,
    scale_e_layers: float | None = None,
    **overrides,
) -> TimerXLConfig:
    """A scaled-down draft of ``target`` with STRIDE's rule (``models/timer_xl_draft.py``).

    d_model and n_heads are searched jointly so the head dimension stays a multiple of 4 (the
    partial RoPE needs an even rotated width): for heads within +-2 of round(n_heads*s), the
    candidate is max(4, floor(tD/heads/4)*4)*heads with cost |cand - tD| + 20|heads - tH|, first
    minimum wins. A scale of None keeps the target's value (STRIDE's convention); ``overrides``
    set other fields (e.g. ``stochastic=True``). Target 1024/8/2048/1 at 0.25 -> 256/2/512/1.
    """
    for name, s in (
        ("scale_d_model", scale_d_model),
        ("scale_n_heads", scale_n_heads),
        ("scale_d_ff", scale_d_ff),
        ("scale_e_layers", scale_e_layers),
    ):
        if s is not None and not float(s) > 0:
            raise ValueError(f"{name} must be positive, got {s}")
    if scale_d_model is None and scale_n_heads is None:
        d_model, n_heads = target.d_model, target.n_heads
    else:
        t_d = round(target.d_model * (1.0 if scale_d_model is None else float(scale_d_model)))
        t_h = round(target.n_heads * (1.0 if scale_n_heads is None else float(scale_n_heads)))
        best, best_cost = None, math.inf
        for heads in range(max(1, t_h - 2), t_h + 3):
            cand = max(4, (t_d // heads // 4) * 4) * heads
            cost = abs(cand - t_d) + 20 * abs(heads - t_h)
            if cost < best_cost:
                best, best_cost = (cand, heads), cost
        d_model, n_heads = max(16, best[0]), max(1, best[1])
    d_ff = target.d_ff if scale_d_ff is None else max(64, round(target.d_ff * float(scale_d_ff)))
    e_layers = (
        target.e_layers
        if scale_e_layers is None
        else max(1, round(target.e_layers * float(scale_e_layers)))
    )
    return dataclasses.replace(
        target, d_model=d_model, n_heads=n_heads, d_ff=d_ff, e_layers=e_layers, **overrides
    )


def timer_visible(q_var, q_time, k_var, k_time, n_vars: int, covariate: bool, known: int):
    """True where query token (variable ``q_var``, time ``q_time``) may attend to key token
    (``k_var``, ``k_time``); arguments broadcast (numpy for static masks, jnp inside a cache).

    Multivariate: every variable's past and present, ``k_time <= q_time``. Covariate: a
    covariate (variables 0..C-2) sees its own past; the target (variable C-1) sees its own past
    and every covariate token of the first ``known`` time steps (OpenLTM treats the context's
    covariates as known) plus, beyond them, the covariate tokens up to its own time (generated
    covariates are forecasts, revealed causally). With ``known`` = N this is OpenLTM's
    ``TimerCovariateMask``; with ``known`` = the context's N0 it is what a KV cache can hold.
    """
    causal = k_time <= q_time
    if not covariate:
        return causal
    own = (k_var == q_var) & causal
    target_sees = (q_var == n_vars - 1) & (k_var < n_vars - 1) & ((k_time < known) | causal)
    return own | target_sees


class TimeAttention(nnx.Module):
    """OpenLTM ``TimeAttention``: partial interleaved RoPE over the flattened token index,
    a binary same/different-variable bias, and the Timer mask; bias added before scaling."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, covariate: bool, *, rngs):
        self.covariate = covariate
        self.attn_bias = BinaryAttentionBias(n_heads, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def additive_mask(self, n_vars: int, n_tokens: int, position_stride=None) -> jnp.ndarray:
        """Bias with -inf where masked: ``[H, C*N, C*N]``. ``position_stride`` (N0, the
        context's tokens) limits the target's view of covariates beyond N0 to its own time
        (:func:`timer_visible`); None: OpenLTM's masks."""
        bias = self.attn_bias(same_variable(n_vars, n_tokens))
        if position_stride is not None:
            var = np.repeat(np.arange(n_vars), n_tokens)  # variable-major flat index
            time = np.tile(np.arange(n_tokens), n_vars)
            visible = timer_visible(
                var[:, None], time[:, None], var[None], time[None], n_vars, self.covariate,
                position_stride,
            )  # fmt: skip
            mask = ~visible
        elif self.covariate:
            mask = timer_covariate_mask(n_vars, n_tokens)
        else:
            mask = timer_multivariate_mask(n_vars, n_tokens)
        return jnp.where(mask[None], -jnp.inf, bias)

    def __call__(
        self, q, k, v, *, n_vars: int, n_tokens: int, query_rows=None, position_stride=None
    ):
        """q ``[B, Tq, H, E]``, k, v ``[B, T, H, E]`` with T = C*N -> ``[B, Tq, H, E]``.

        ``query_rows`` gives the flat token index of each query (all T tokens when None).
        Token (c, n) has RoPE position ``c * stride + n`` with stride = ``position_stride``,
        or N when None (OpenLTM)."""
        e = q.shape[-1]
        stride = n_tokens if position_stride is None else position_stride
        # position id = c * stride + n (variable-major)
        seq_id = (np.arange(n_vars)[:, None] * stride + np.arange(n_tokens)[None]).reshape(-1)
        q_id = seq_id if query_rows is None else seq_id[query_rows]
        q = partial_rope(q.transpose(0, 2, 1, 3), q_id, ROPE_PARTIAL)  # [B, H, Tq, E]
        k = partial_rope(k.transpose(0, 2, 1, 3), seq_id, ROPE_PARTIAL)  # [B, H, T, E]
        v = v.transpose(0, 2, 1, 3)
        additive = self.additive_mask(n_vars, n_tokens, position_stride)[None]  # [1, H, T, T]
        if query_rows is not None:
            additive = additive[:, :, query_rows]  # [1, H, Tq, T]
        return softmax_attention(q, k, v, additive, 1.0 / math.sqrt(e), self.dropout)


class TimerLayer(nnx.Module):
    """Post-LN block: attention -> add -> LN -> FFN (two 1x1 convs) -> add -> LN."""

    def __init__(self, cfg: TimerXLConfig, *, rngs: nnx.Rngs):
        inner = TimeAttention(cfg.d_model, cfg.n_heads, cfg.dropout, cfg.covariate, rngs=rngs)
        self.attention = AttentionLayer(inner, cfg.d_model, cfg.n_heads, rngs=rngs)
        # Conv1d(kernel_size=1) == Linear; the bridge squeezes/unsqueezes the kernel axis.
        self.conv1 = torch_linear(cfg.d_model, cfg.d_ff, rngs=rngs)
        self.conv2 = torch_linear(cfg.d_ff, cfg.d_model, rngs=rngs)
        self.norm1 = nnx.LayerNorm(cfg.d_model, epsilon=LAYER_NORM_EPS, rngs=rngs)
        self.norm2 = nnx.LayerNorm(cfg.d_model, epsilon=LAYER_NORM_EPS, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.activation = cfg.activation

    def __call__(self, x, *, n_vars: int, n_tokens: int, query_rows=None, position_stride=None):
        """x ``[B, T, D]`` -> ``[B, T, D]`` (or ``[B, Tq, D]`` for the ``query_rows`` only)."""
        attn = self.attention(
            x, n_vars=n_vars, n_tokens=n_tokens, query_rows=query_rows,
            position_stride=position_stride,
        )  # fmt: skip
        x = (x if query_rows is None else x[:, query_rows]) + self.dropout(attn)
        x = self.norm1(x)
        act = (
            jax.nn.relu
            if self.activation == "relu"
            else functools.partial(
                jax.nn.gelu,
                approximate=False,  # torch F.gelu default is the exact erf form
            )
        )
        y = self.dropout(act(self.conv1(x)))  # [B, T, d_ff]
        y = self.dropout(self.conv2(y))
        return self.norm2(x + y)


class TimerBlock(nnx.Module):
    def __init__(self, cfg: TimerXLConfig, *, rngs: nnx.Rngs):
        self.attn_layers = nnx.List([TimerLayer(cfg, rngs=rngs) for _ in range(cfg.e_layers)])
        self.norm = nnx.LayerNorm(cfg.d_model, epsilon=LAYER_NORM_EPS, rngs=rngs)

    def __call__(
        self, x, *, n_vars: int, n_tokens: int, last_only: bool = False, position_stride=None
    ):
        """x ``[B, C*N, D]`` -> ``[B, C*N, D]``; with ``last_only`` -> ``[B, C, D]``, each
        variable's last token only (all a rolling forecast reads). The last layer then computes
        queries, attention rows and FFN for C tokens instead of C*N: same values, N x less work."""
        last = len(self.attn_layers) - 1
        rows = np.arange(n_vars) * n_tokens + n_tokens - 1 if last_only else None
        for i, layer in enumerate(self.attn_layers):
            x = layer(
                x, n_vars=n_vars, n_tokens=n_tokens, query_rows=rows if i == last else None,
                position_stride=position_stride,
            )  # fmt: skip
        return self.norm(x)


def check_context(x, input_token_len: int, *, truncate: bool = False) -> int:
    """Validate a context ``[B, L, C]``; return how many oldest points to drop (0 unless truncate).

    Value checks (NaN/inf) run only on concrete arrays: inside ``jit`` values are unknown.
    """
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"context must be [batch, length, variables], got shape {np.shape(x)}")
    b, length, c = x.shape
    if b == 0 or c == 0:
        raise ValueError(f"context has an empty axis: shape {x.shape}")
    if length < input_token_len:
        raise ValueError(f"context too short: length {length} < input_token_len {input_token_len}")
    extra = length % input_token_len
    if extra and not truncate:
        raise ValueError(
            f"context length {length} is not a multiple of input_token_len {input_token_len}; "
            f"OpenLTM would silently drop the {extra} most recent points. Pass truncate=True to "
            f"drop the {extra} oldest points instead, or trim the context yourself."
        )
    if not isinstance(x, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError("context contains NaN or inf values")
    return extra


def _check_norm_stats(norm_stats, use_norm: bool, batch: int, n_vars: int):
    """``norm_stats`` as ``(means, stdev)`` float32 ``[B, 1, C]`` arrays, or None."""
    if norm_stats is None:
        return None
    if not (isinstance(norm_stats, (tuple, list)) and len(norm_stats) == 2):
        raise ValueError("norm_stats must be a (means, stdev) pair")
    if all(s is None for s in norm_stats):
        return None
    if not use_norm:
        raise ValueError("norm_stats given but the model has use_norm=False: pass None")
    out = tuple(jnp.asarray(s, jnp.float32) for s in norm_stats)
    for name, s in zip(("means", "stdev"), out, strict=True):
        if s.shape != (batch, 1, n_vars):
            raise ValueError(
                f"norm_stats {name} must have shape {(batch, 1, n_vars)}, got {s.shape}"
            )
    return out


class TimerXL(nnx.Module):
    """Decoder-only Timer-XL. ``model(x)`` with x ``[B, L, C]`` -> ``[B, N * P_out, C]``,
    N = L / input_token_len; output token n forecasts the patch that follows input token n.

    With ``config.stochastic`` (STRIDE's stochastic draft) the single ``head`` is replaced by
    ``head_mean`` and ``head_logvar`` and every forecast is a ``(mean, logvar)`` pair, both
    ``[B, N * P_out, C]`` in the input's scale (logvar of the per-point Gaussian variance).
    """

    def __init__(self, config: TimerXLConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embedding = torch_linear(config.input_token_len, config.d_model, rngs=rngs)
        self.blocks = TimerBlock(config, rngs=rngs)
        d, p_out = config.d_model, config.output_token_len
        if config.stochastic:
            self.head_mean = torch_linear(d, p_out, rngs=rngs)
            self.head_logvar = torch_linear(d, p_out, rngs=rngs)
            self.head_logvar.bias[...] = jnp.full((p_out,), LOGVAR_BIAS_INIT, jnp.float32)
        else:
            self.head = torch_linear(d, p_out, rngs=rngs)

    def features(
        self,
        x,
        *,
        truncate: bool = False,
        last_only: bool = False,
        position_stride: int | None = None,
        norm_stats=None,
    ):
        """Backbone: returns (hidden ``[B, C*N, D]`` or ``[B, C, D]`` with ``last_only``,
        means, stdev, n_tokens) for the heads.

        ``position_stride`` (N0): token (c, n) gets RoPE position ``c * N0 + n`` and the
        covariate mask treats only the first N0 steps as known (:func:`timer_visible`); this is
        the forward that KV-cached decoding (``jaxts.models.timer_xl_cache``) reproduces on a
        context grown past its N0 tokens. None: OpenLTM (stride N, every step known).
        ``norm_stats = (means, stdev)`` ``[B, 1, C]`` each (use_norm only): normalise with these
        instead of the window's own statistics (None, or ``(None, None)`` without use_norm)."""
        cfg = self.config
        extra = check_context(x, cfg.input_token_len, truncate=truncate)
        x = jnp.asarray(x, jnp.float32)[:, extra:]
        b, length, c = x.shape
        if position_stride is not None and not (
            isinstance(position_stride, (int, np.integer)) and position_stride > 0
        ):
            raise ValueError(f"position_stride must be a positive int, got {position_stride!r}")
        stats = _check_norm_stats(norm_stats, cfg.use_norm, b, c)
        if cfg.use_norm and stats is not None:
            means, stdev = stats
            x = (x - means) / stdev
        elif cfg.use_norm:
            means = jax.lax.stop_gradient(x.mean(axis=1, keepdims=True))  # [B, 1, C]
            x = x - means
            stdev = jnp.sqrt(jnp.var(x, axis=1, keepdims=True) + INSTANCE_NORM_EPS)
            x = x / stdev
        else:
            means = stdev = None
        n = length // cfg.input_token_len
        # [B, L, C] -> [B, C, N, P]: variable-major tokens, flattened index c * N + n
        patches = x.transpose(0, 2, 1).reshape(b, c, n, cfg.input_token_len)
        h = self.embedding(patches).reshape(b, c * n, cfg.d_model)  # [B, C*N, D]
        stride = None if position_stride is None else int(position_stride)
        h = self.blocks(h, n_vars=c, n_tokens=n, last_only=last_only, position_stride=stride)
        return h, means, stdev, n

    def denormalize(self, out, means, stdev, n_tokens: int):
        """Head output ``[B, C*N, P_out]`` -> ``[B, N*P_out, C]`` in the input's scale."""
        b, cn, p_out = out.shape
        c = cn // n_tokens
        out = out.reshape(b, c, n_tokens * p_out).transpose(0, 2, 1)  # [B, N*P_out, C]
        if self.config.use_norm:
            out = out * stdev + means
        return out

    def denormalize_logvar(self, logvar, stdev, n_tokens: int):
        """Normalised log-variance ``[B, C*N, P_out]`` -> ``[B, N*P_out, C]``: clamped first
        (STRIDE), then shifted by 2 log(stdev) since the variance scales with stdev^2."""
        b, cn, p_out = logvar.shape
        c = cn // n_tokens
        logvar = jnp.clip(logvar, *LOGVAR_CLAMP)
        logvar = logvar.reshape(b, c, n_tokens * p_out).transpose(0, 2, 1)
        if self.config.use_norm:
            logvar = logvar + 2.0 * jnp.log(stdev)
        return logvar

    def _heads(self, h, means, stdev, n_tokens: int):
        if not self.config.stochastic:
            return self.denormalize(self.head(h), means, stdev, n_tokens)
        mean = self.denormalize(self.head_mean(h), means, stdev, n_tokens)
        return mean, self.denormalize_logvar(self.head_logvar(h), stdev, n_tokens)

    def __call__(self, x, *, truncate: bool = False, position_stride=None, norm_stats=None):
        """``position_stride`` / ``norm_stats``: see :meth:`features` (None: OpenLTM)."""
        h, means, stdev, n = self.features(
            x, truncate=truncate, position_stride=position_stride, norm_stats=norm_stats
        )
        return self._heads(h, means, stdev, n)

    def forecast_next(self, x, *, truncate: bool = False, position_stride=None, norm_stats=None):
        """The next patch after the context: ``model(x)[:, -P_out:]`` ``[B, P_out, C]`` (a
        ``(mean, logvar)`` pair when stochastic), computing the last layer for each variable's
        last token only. ``position_stride`` / ``norm_stats``: see :meth:`features`."""
        h, means, stdev, _ = self.features(
            x, truncate=truncate, last_only=True, position_stride=position_stride,
            norm_stats=norm_stats,
        )  # fmt: skip
        return self._heads(h, means, stdev, 1)

    def forecast_next_mean(
        self, x, *, truncate: bool = False, position_stride=None, norm_stats=None
    ):
        """The point forecast of the next patch ``[B, P_out, C]`` (the mean when stochastic)."""
        out = self.forecast_next(
            x, truncate=truncate, position_stride=position_stride, norm_stats=norm_stats
        )
        return out[0] if self.config.stochastic else out


def rolling_forecast(model: TimerXL, x, pred_len: int, *, truncate: bool = False):
    """OpenLTM's test loop as one compiled program: ``ceil(pred_len / P_out)`` steps; each step
    forecasts the next patch from the last token, drops the ``input_token_len`` oldest points and
    appends that patch; the result is truncated to ``pred_len``. Always runs in eval mode. A
    stochastic model rolls its mean (STRIDE's deterministic draft evaluation).

    x ``[B, L, C]`` -> ``[B, pred_len, C]``.
    """
    if int(pred_len) <= 0:
        raise ValueError(f"pred_len must be positive, got {pred_len}")
    cfg = model.config
    extra = check_context(x, cfg.input_token_len, truncate=truncate)
    x = jnp.asarray(x, jnp.float32)[:, extra:]
    if cfg.input_token_len != cfg.output_token_len:
        # Each step changes the context length by P_out - P; every length must stay usable.
        length = x.shape[1]
        for _ in range(math.ceil(pred_len / cfg.output_token_len) - 1):
            length += cfg.output_token_len - cfg.input_token_len
            if length < cfg.input_token_len or length % cfg.input_token_len:
                raise ValueError(
                    f"rolling with input_token_len {cfg.input_token_len} != output_token_len "
                    f"{cfg.output_token_len} reaches context length {length}, not a positive "
                    "multiple of input_token_len"
                )
    graphdef, state = nnx.split(model)
    return _rolling_jit(graphdef, state, x, int(pred_len))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _rolling_jit(graphdef, state, x, pred_len: int):
    model = nnx.merge(graphdef, state)
    model.eval()
    cfg = model.config
    p, p_out = cfg.input_token_len, cfg.output_token_len
    steps = math.ceil(pred_len / p_out)

    def step(ctx):
        nxt = model.forecast_next_mean(ctx)  # [B, P_out, C] == model(ctx)[:, -P_out:]
        return jnp.concatenate([ctx[:, p:], nxt], axis=1), nxt

    if p == p_out:
        # Fixed context shape: one scanned body, compiled once, whatever the horizon.
        _, outs = jax.lax.scan(lambda c, _: step(c), x, None, length=steps)  # [S, B, P_out, C]
        preds = outs.transpose(1, 0, 2, 3).reshape(x.shape[0], steps * p_out, x.shape[2])
    else:
        outs = []
        for _ in range(steps):
            x, nxt = step(x)
            outs.append(nxt)
        preds = jnp.concatenate(outs, axis=1)
    return preds[:, :pred_len]
