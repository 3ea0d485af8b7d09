"""A faithful PyTorch reference of OpenLTM's Timer-XL (``models/timer_xl.py`` with
``layers/SelfAttention_Family.py``, ``Attn_Bias.py``, ``Attn_Projection.py``, ``Transformer_EncDec.py``
and ``utils/masking.py``), default non-flash path.

Module and parameter names are OpenLTM's, so an OpenLTM ``checkpoint.pth`` loads with
``strict=True``. Written for the parity tests; no pip package ships Timer-XL. ``Model`` accepts any
object with OpenLTM's argument names (``jaxts.models.timer_xl.TimerXLConfig`` works).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------- utils/masking.py


class TimerMultivariateMask:
    def __init__(self, B, n_vars, n_tokens, device="cpu"):
        causal = torch.triu(torch.ones([B, 1, n_tokens, n_tokens], dtype=torch.bool), diagonal=1)
        self.mask = torch.kron(torch.ones((n_vars, n_vars), dtype=torch.bool), causal).to(device)


class TimerCovariateMask:
    def __init__(self, B, n_vars, n_tokens, device="cpu"):
        lower = torch.tril(torch.ones([B, 1, n_tokens, n_tokens], dtype=torch.bool))
        mask = ~torch.kron(torch.eye(n_vars, dtype=torch.bool), lower)
        mask[:, :, -n_tokens:, :-n_tokens] = False
        self.mask = mask.to(device)


# ---------------------------------------------------------------- layers/Attn_Bias.py


class BinaryAttentionBias(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.emb = nn.Embedding(num_embeddings=2, embedding_dim=num_heads)

    def forward(self, query_id, kv_id):
        ind = torch.eq(query_id.unsqueeze(-1), kv_id.unsqueeze(-2))  # [B, 1, L, S]
        weight = self.emb.weight[:, :, None, None]  # [2, H, 1, 1]
        return ~ind * weight[:1] + ind * weight[1:]  # [B, H, L, S]


# ---------------------------------------------------------------- layers/Attn_Projection.py


class RotaryProjection(nn.Module):
    def __init__(self, *, proj_width, num_heads, max_len=512, base=10000):
        super().__init__()
        assert proj_width % 2 == 0
        self.proj_width = proj_width
        theta = 1.0 / torch.pow(
            base, torch.arange(0, proj_width, 2, dtype=torch.float) / proj_width
        )
        self.register_buffer("theta", theta, persistent=False)
        self.register_buffer("cos", None, persistent=False)
        self.register_buffer("sin", None, persistent=False)
        self._init_freq(max_len)

    def _init_freq(self, max_len):
        if self.cos is None or self.cos.size(-2) < max_len:
            position = torch.arange(max_len, device=self.theta.device, dtype=self.theta.dtype)
            m_theta = torch.outer(position, self.theta).repeat_interleave(2, dim=-1)
            self.register_buffer("cos", torch.cos(m_theta), persistent=False)
            self.register_buffer("sin", torch.sin(m_theta), persistent=False)

    @staticmethod
    def _rotate(x):
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([-x2, x1], dim=-1).flatten(-2)

    def forward(self, x, seq_id):
        self._init_freq(int(seq_id.max()) + 1)
        return self.cos[seq_id] * x + self.sin[seq_id] * self._rotate(x)


class QueryKeyProjection(nn.Module):
    def __init__(self, dim, num_heads, proj_layer, kwargs=None, partial_factor=None):
        super().__init__()
        self.head_dim = dim // num_heads
        self.partial_factor = partial_factor
        lo, hi = partial_factor if partial_factor is not None else (0.0, 1.0)
        self.proj_width = int(self.head_dim * (hi - lo))
        self.split_sizes = (
            int(lo * self.head_dim),
            self.proj_width,
            int((1.0 - hi) * self.head_dim),
        )
        self.query_proj = proj_layer(
            proj_width=self.proj_width, num_heads=num_heads, **(kwargs or {})
        )
        self.key_proj = self.query_proj

    def forward(self, query, key, query_id, kv_id):
        queries = list(query.split(self.split_sizes, dim=-1))
        keys = list(key.split(self.split_sizes, dim=-1))
        queries[1] = self.query_proj(queries[1], seq_id=query_id)
        keys[1] = self.key_proj(keys[1], seq_id=kv_id)
        return torch.cat(queries, dim=-1), torch.cat(keys, dim=-1)


# ---------------------------------------------------------------- layers/SelfAttention_Family.py


class TimeAttention(nn.Module):
    def __init__(
        self,
        mask_flag=True,
        scale=None,
        attention_dropout=0.1,
        output_attention=False,
        d_model=512,
        num_heads=8,
        max_len=100,
        covariate=False,
        flash_attention=False,
    ):
        super().__init__()
        self.scale = scale
        self.mask_flag = mask_flag
        self.dropout = nn.Dropout(attention_dropout)
        self.covariate = covariate
        self.qk_proj = QueryKeyProjection(
            dim=d_model,
            num_heads=num_heads,
            proj_layer=RotaryProjection,
            kwargs=dict(max_len=max_len),
            partial_factor=(0.0, 0.5),
        )
        self.attn_bias = BinaryAttentionBias(dim=d_model, num_heads=num_heads)

    def forward(self, queries, keys, values, attn_mask, n_vars, n_tokens):
        B, L, H, E = queries.shape
        queries = queries.permute(0, 2, 1, 3)  # [B, H, L, E]
        keys = keys.permute(0, 2, 1, 3)
        seq_id = torch.arange(n_tokens * n_vars).expand(B, H, -1)
        queries, keys = self.qk_proj(queries, keys, query_id=seq_id, kv_id=seq_id)
        scale = self.scale or 1.0 / math.sqrt(E)
        var_id = torch.arange(n_vars).repeat_interleave(n_tokens).expand(B, 1, -1)
        attn_bias = self.attn_bias(var_id.to(queries.device), var_id.to(queries.device))
        if self.mask_flag:
            if attn_mask is None:
                cls = TimerCovariateMask if self.covariate else TimerMultivariateMask
                attn_mask = cls(B, n_vars, n_tokens, device=queries.device)
            attn_mask = attn_bias.masked_fill(attn_mask.mask, float("-inf"))
        else:
            attn_mask = attn_bias
        scores = torch.einsum("bhle,bhse->bhls", queries, keys)
        scores += attn_mask
        A = self.dropout(torch.softmax(scale * scores, dim=-1))
        V = torch.einsum("bhls,bshd->blhd", A, values)
        return V.contiguous(), None


class AttentionLayer(nn.Module):
    def __init__(self, attention, d_model, n_heads, d_keys=None, d_values=None):
        super().__init__()
        d_keys = d_keys or (d_model // n_heads)
        d_values = d_values or (d_model // n_heads)
        self.inner_attention = attention
        self.query_projection = nn.Linear(d_model, d_keys * n_heads)
        self.key_projection = nn.Linear(d_model, d_keys * n_heads)
        self.value_projection = nn.Linear(d_model, d_values * n_heads)
        self.out_projection = nn.Linear(d_values * n_heads, d_model)
        self.n_heads = n_heads

    def forward(self, queries, keys, values, attn_mask, n_vars=None, n_tokens=None):
        B, L, _ = queries.shape
        _, S, _ = keys.shape
        H = self.n_heads
        queries = self.query_projection(queries).view(B, L, H, -1)
        keys = self.key_projection(keys).view(B, S, H, -1)
        values = self.value_projection(values).view(B, S, H, -1)
        out, attn = self.inner_attention(
            queries, keys, values, attn_mask, n_vars=n_vars, n_tokens=n_tokens
        )
        return self.out_projection(out.view(B, L, -1)), attn


# ---------------------------------------------------------------- layers/Transformer_EncDec.py


class TimerLayer(nn.Module):
    def __init__(self, attention, d_model, d_ff=None, dropout=0.1, activation="relu"):
        super().__init__()
        d_ff = d_ff or 4 * d_model
        self.attention = attention
        self.conv1 = nn.Conv1d(in_channels=d_model, out_channels=d_ff, kernel_size=1)
        self.conv2 = nn.Conv1d(in_channels=d_ff, out_channels=d_model, kernel_size=1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.activation = F.relu if activation == "relu" else F.gelu

    def forward(self, x, n_vars, n_tokens, attn_mask=None):
        new_x, attn = self.attention(x, x, x, n_vars=n_vars, n_tokens=n_tokens, attn_mask=attn_mask)
        x = x + self.dropout(new_x)
        y = x = self.norm1(x)
        y = self.dropout(self.activation(self.conv1(y.transpose(-1, 1))))
        y = self.dropout(self.conv2(y).transpose(-1, 1))
        return self.norm2(x + y), attn


class TimerBlock(nn.Module):
    def __init__(self, attn_layers, norm_layer=None):
        super().__init__()
        self.attn_layers = nn.ModuleList(attn_layers)
        self.norm = norm_layer

    def forward(self, x, n_vars, n_tokens, attn_mask=None):
        attns = []
        for attn_layer in self.attn_layers:
            x, attn = attn_layer(x, n_vars, n_tokens, attn_mask=attn_mask)
            attns.append(attn)
        if self.norm is not None:
            x = self.norm(x)
        return x, attns


# ---------------------------------------------------------------- models/timer_xl.py


def timer_blocks(configs, d_model, n_heads, d_ff, e_layers, output_attention=False):
    """OpenLTM's ``TimerBlock`` of ``e_layers`` layers (shared with STRIDE's draft reference,
    which builds the same block with scaled sizes)."""
    return TimerBlock(
        [
            TimerLayer(
                AttentionLayer(
                    TimeAttention(
                        True,
                        attention_dropout=configs.dropout,
                        output_attention=output_attention,
                        d_model=d_model,
                        num_heads=n_heads,
                        covariate=configs.covariate,
                    ),
                    d_model,
                    n_heads,
                ),
                d_model,
                d_ff,
                dropout=configs.dropout,
                activation=configs.activation,
            )
            for _ in range(e_layers)
        ],
        norm_layer=nn.LayerNorm(d_model),
    )


def normalise(x):
    """OpenLTM's ``use_norm``: (x, means, stdev) with x centred and scaled per series."""
    means = x.mean(1, keepdim=True).detach()
    x = x - means
    stdev = torch.sqrt(torch.var(x, dim=1, keepdim=True, unbiased=False) + 1e-5)
    x /= stdev
    return x, means, stdev


def encode(model, x):
    """Patches of ``x [B, L, C]`` embedded and run through ``model.blocks``:
    (``[B, C*N, D]``, attentions, (B, C, N)). Shared with STRIDE's draft reference."""
    B, _, C = x.shape
    x = x.permute(0, 2, 1)  # [B, C, L]
    x = x.unfold(dimension=-1, size=model.input_token_len, step=model.input_token_len)
    N = x.shape[2]  # [B, C, N, P]
    embed_out = model.embedding(x).reshape(B, C * N, -1)  # [B, C*N, D]
    embed_out, attns = model.blocks(embed_out, n_vars=C, n_tokens=N)
    return embed_out, attns, (B, C, N)


def to_series(out, B, C, N):
    """Head output ``[B, C*N, P_out]`` -> ``[B, N*P_out, C]``."""
    return out.reshape(B, C, N, -1).reshape(B, C, -1).permute(0, 2, 1)


class Forecaster(nn.Module):
    """OpenLTM's model interface: ``forward`` is ``forecast``; the attention maps are returned
    too when ``output_attention`` is set."""

    def with_attention(self, out, attns):
        return (out, attns) if self.output_attention else out

    def forward(self, x, x_mark=None, y_mark=None):
        return self.forecast(x, x_mark, y_mark)


class Model(Forecaster):
    def __init__(self, configs):
        super().__init__()
        self.input_token_len = configs.input_token_len
        self.embedding = nn.Linear(self.input_token_len, configs.d_model)
        self.output_attention = getattr(configs, "output_attention", False)
        self.blocks = timer_blocks(
            configs, configs.d_model, configs.n_heads, configs.d_ff, configs.e_layers,
            self.output_attention,
        )  # fmt: skip
        self.head = nn.Linear(configs.d_model, configs.output_token_len)
        self.use_norm = configs.use_norm

    def forecast(self, x, x_mark=None, y_mark=None):
        if self.use_norm:
            x, means, stdev = normalise(x)
        embed_out, attns, shape = encode(self, x)
        dec_out = to_series(self.head(embed_out), *shape)
        if self.use_norm:
            dec_out = dec_out * stdev + means
        return self.with_attention(dec_out, attns)


@torch.no_grad()
def rolling_forecast(model, batch_x, pred_len, input_token_len, output_token_len):
    """OpenLTM ``Exp_Forecast.test`` inner loop (one batch)."""
    steps = pred_len // output_token_len
    dis = pred_len - steps * output_token_len
    if dis != 0:
        steps += 1
    pred_y = []
    for _ in range(steps):
        if pred_y:
            batch_x = torch.cat([batch_x[:, input_token_len:, :], pred_y[-1]], dim=1)
        outputs = model(batch_x, None, None)
        pred_y.append(outputs[:, -output_token_len:, :])
    pred_y = torch.cat(pred_y, dim=1)
    if dis != 0:
        pred_y = pred_y[:, : -output_token_len + dis, :]
    return pred_y
