"""Faithful PyTorch reference of the HF Timer (``thuml/timer-base-84m``: ``modeling_timer.py``,
``configuration_timer.py``, ``ts_generation_mixin.py``), written from reading upstream.

Module and parameter names are upstream's, so ``load_state_dict(..., strict=True)`` of a
``model.safetensors`` written for the remote code works here and vice versa. Only the inference
path is kept (no training loss, no gradient checkpointing, no flash attention); the KV cache is
upstream's legacy tuple form ``((k, v) per layer)``, which is what its ``generate`` threads
through when transformers 4.40 runs it.

:func:`reference_generate` replays upstream's ``generate`` (``TSGenerationMixin._greedy_search``
+ ``prepare_inputs_for_generation`` + ``_update_model_kwargs_for_generation``) step by step,
without transformers' ``GenerationMixin``: left truncation to a multiple of ``input_token_len``,
``revin=True`` on every forward (mean and *unbiased* std of that forward's own input, no
epsilon), the head chosen from the remaining length, and either the KV cache (each new patch is
normalised by its own statistics, cached keys keep the context's) or, with ``use_cache=False``,
the whole growing series recomputed and re-normalised each step.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class TimerConfig:
    """``configuration_timer.TimerConfig``: upstream's field names and defaults."""

    input_token_len: int = 1
    hidden_size: int = 1024
    intermediate_size: int = 2048
    output_token_lens: list = dataclasses.field(default_factory=lambda: [1, 8, 32, 64])
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    hidden_act: str = "silu"
    use_cache: bool = True
    rope_theta: int = 10000  # recorded, but upstream's rotary embedding always uses 10000
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    max_position_embeddings: int = 10000

    @classmethod
    def from_json_file(cls, path) -> TimerConfig:
        """A ``config.json``; PretrainedConfig's bookkeeping fields are skipped."""
        data = json.loads(Path(path).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


ACT = {"silu": F.silu}


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class TimerPatchEmbedding(nn.Module):
    def __init__(self, config: TimerConfig):
        super().__init__()
        self.input_token_len = config.input_token_len
        self.emb = nn.Linear(config.input_token_len, config.hidden_size, bias=False)

    def forward(self, x):  # [B, L] -> [B, N, D]
        p = self.input_token_len
        return self.emb(x.unfold(dimension=-1, size=p, step=p))


class TimeMoeRotaryEmbedding(nn.Module):
    """cos/sin tables over positions, ``cat(freqs, freqs)`` layout; base fixed at 10000."""

    def __init__(self, dim, max_position_embeddings=10000, base=10000):
        super().__init__()
        self.dim, self.base = dim, base
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._set_cache(max_position_embeddings)

    def _set_cache(self, seq_len):
        self.max_seq_len_cached = seq_len
        t = torch.arange(seq_len, dtype=torch.int64).type_as(self.inv_freq)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self, seq_len):
        if seq_len > self.max_seq_len_cached:
            self._set_cache(seq_len)
        return self.cos_cached[:seq_len], self.sin_cached[:seq_len]


class TimerAttention(nn.Module):
    def __init__(self, config: TimerConfig, layer_idx: int):
        super().__init__()
        d = config.hidden_size
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = d // self.num_heads
        self.attention_dropout = config.attention_dropout
        self.q_proj = nn.Linear(d, d, bias=True)
        self.k_proj = nn.Linear(d, d, bias=True)
        self.v_proj = nn.Linear(d, d, bias=True)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.rotary_emb = TimeMoeRotaryEmbedding(
            self.head_dim, max_position_embeddings=config.max_position_embeddings
        )

    def forward(self, x, attention_mask, position_ids, past=None):
        """x ``[B, T, D]``; ``past`` this layer's ``(k, v)`` ``[B, H, S, E]`` or None; returns
        the output and the layer's keys/values including the new ones."""
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)  # [B, H, T, E]
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        kv_len = t + (past[0].shape[2] if past is not None else 0)
        cos, sin = self.rotary_emb(seq_len=kv_len)
        cos, sin = cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # upstream passes dropout_p whatever the mode; 0.0 in every published config
        out = F.scaled_dot_product_attention(
            q, k, v, attention_mask, dropout_p=self.attention_dropout
        )
        out = out.transpose(1, 2).reshape(b, t, -1)
        return self.o_proj(out), (k, v)


class TimerMLP(nn.Module):
    def __init__(self, hidden_size, intermediate_size, hidden_act):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn = ACT[hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class TimerDecoderLayer(nn.Module):
    """Post-LN: attention -> add -> norm1 -> SwiGLU -> add -> norm2."""

    def __init__(self, config: TimerConfig, layer_idx: int):
        super().__init__()
        self.self_attn = TimerAttention(config, layer_idx)
        self.ffn_layer = TimerMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size)

    def forward(self, x, attention_mask, position_ids, past=None):
        a, present = self.self_attn(x, attention_mask, position_ids, past)
        x = self.norm1(x + a)
        return self.norm2(x + self.ffn_layer(x)), present


def causal_mask(q_len: int, past_len: int, dtype=torch.float32):
    """``_prepare_4d_causal_attention_mask`` for an all-ones attention mask: ``[1, 1, T, S]``
    additive, the dtype's minimum where key ``s`` is after query ``past_len + t``."""
    key = torch.arange(past_len + q_len)
    query = torch.arange(q_len)[:, None] + past_len
    mask = torch.zeros(q_len, past_len + q_len, dtype=dtype)
    mask[key[None, :] > query] = torch.finfo(dtype).min
    return mask[None, None]


class TimerModel(nn.Module):
    def __init__(self, config: TimerConfig):
        super().__init__()
        self.embed_layer = TimerPatchEmbedding(config)
        self.layers = nn.ModuleList(
            [TimerDecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.norm = nn.LayerNorm(config.hidden_size)

    def forward(self, input_ids, position_ids=None, past_key_values=None):
        """``input_ids [B, L]`` -> (hidden ``[B, N, D]``, new legacy cache)."""
        h = self.embed_layer(input_ids)
        past_len = past_key_values[0][0].shape[2] if past_key_values is not None else 0
        n = h.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + n)
        position_ids = position_ids.view(-1, n).long()
        mask = causal_mask(n, past_len, h.dtype)
        cache = []
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values is not None else None
            h, present = layer(h, mask, position_ids, past)
            cache.append(present)
        return self.norm(h), tuple(cache)


@dataclasses.dataclass
class TimerOutput:
    logits: torch.Tensor
    past_key_values: tuple | None
    last_hidden_state: torch.Tensor


class TimerForPrediction(nn.Module):
    def __init__(self, config: TimerConfig):
        super().__init__()
        self.config = config
        self.model = TimerModel(config)
        self.lm_heads = nn.ModuleList(
            [nn.Linear(config.hidden_size, n, bias=False) for n in config.output_token_lens]
        )
        self.output_token_len_map = {n: i for i, n in enumerate(config.output_token_lens)}

    def head_for(self, max_output_length: int | None) -> int:
        """Upstream's choice: the first head, then each next one while it is <= the remaining
        length (the first longer one stops the search)."""
        lens = self.config.output_token_lens
        chosen = lens[0]
        if max_output_length is not None:
            for h in lens[1:]:
                if h > max_output_length:
                    break
                chosen = h
        return self.output_token_len_map[chosen]

    def forward(
        self,
        input_ids,
        position_ids=None,
        past_key_values=None,
        use_cache=True,
        max_output_length=None,
        revin=False,
    ) -> TimerOutput:
        """``input_ids [B, L]`` -> ``logits [B, min(len, max_output_length)]``: the chosen head
        on the last token (``revin``: normalised by this input's mean / unbiased std, then
        de-normalised)."""
        if revin:
            mean = input_ids.mean(dim=-1, keepdim=True)
            std = input_ids.std(dim=-1, keepdim=True)
            input_ids = (input_ids - mean) / std
        hidden, cache = self.model(input_ids, position_ids, past_key_values)
        j = self.head_for(max_output_length)
        limit = self.config.output_token_lens[0] if max_output_length is None else max_output_length
        logits = self.lm_heads[j](hidden)[:, -1, :][:, :limit]
        if revin:
            logits = logits * std + mean
        return TimerOutput(logits, cache if use_cache else None, hidden)


@torch.no_grad()
def reference_generate(model: TimerForPrediction, x, max_new_tokens: int, use_cache: bool = True):
    """Upstream ``model.generate(x, max_new_tokens=H, use_cache=...)`` -> ``[B, H]``."""
    p = model.config.input_token_len
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() != 2:
        raise ValueError("Input shape must be: [batch_size, seq_len]")
    if x.shape[1] < p:
        raise ValueError(f"Input length must be at least {p}")
    x = x[:, -(x.shape[1] // p) * p :]
    cur_len = x.shape[1]
    max_length = cur_len + max_new_tokens
    ids, past, att_len = x, None, cur_len // p
    while True:
        inp = ids
        if past is not None:
            past_length = past[0][0].shape[2]
            if past_length < ids.shape[1] // p:  # drop the cached prefix
                inp = ids[:, past_length * p :]
        n_tok = inp.shape[1] // p
        positions = torch.arange(att_len)  # attention_mask.cumsum(-1) - 1, all ones
        if past is not None:
            positions = positions[-n_tok:]
        out = model(
            inp,
            position_ids=positions[None],
            past_key_values=past,
            use_cache=use_cache,
            max_output_length=max_length - ids.shape[1],
            revin=True,
        )
        nxt = out.logits
        ids = torch.cat([ids, nxt], dim=-1)
        att_len += nxt.shape[1] // p
        past = out.past_key_values
        if ids.shape[1] >= max_length:
            break
    return ids[:, :max_length][:, -(max_length - cur_len) :]


@torch.no_grad()
def recompute_generate(model: TimerForPrediction, x, max_new_tokens: int):
    """jaxts' ``"context"`` decoding without a cache: normalise the context once (mean,
    unbiased std), then each step recomputes the whole growing series in that normalisation
    and appends the chosen head's forecast; de-normalised at the end -> ``[B, H]``."""
    p = model.config.input_token_len
    x = torch.as_tensor(x, dtype=torch.float32)
    x = x[:, -(x.shape[1] // p) * p :]
    mean, std = x.mean(dim=-1, keepdim=True), x.std(dim=-1, keepdim=True)
    series, done = (x - mean) / std, 0
    while done < max_new_tokens:
        out = model(series, use_cache=False, max_output_length=max_new_tokens - done)
        series = torch.cat([series, out.logits], dim=-1)
        done += out.logits.shape[1]
    return series[:, -max_new_tokens:] * std + mean


def init_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights for tests: matrices N(0, 1/fan_in), vectors (biases, LayerNorm terms)
    away from their defaults so every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif (
                name.endswith("norm1.weight")
                or name.endswith("norm2.weight")
                or name.endswith("norm.weight")
            ):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model
