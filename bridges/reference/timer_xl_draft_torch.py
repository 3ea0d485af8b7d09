"""A faithful PyTorch reference of STRIDE's draft Timer-XL (``models/timer_xl_draft.py`` in
PranavSubbaraman/STRIDE): the OpenLTM block with scaled sizes and, with ``draft_stochastic``,
``head_mean`` + ``head_logvar`` heads. Parameter names are STRIDE's, so its draft checkpoints load
with ``strict=True``. The size rule is written here independently of ``jaxts.draft_config`` so
the tests cross-check the two. The optional ``adapter_to_target`` and timing hooks are left out
(the adapter feeds no head; jaxts reports its keys as unexpected).

``configs`` carries the *target's* sizes plus ``draft_scale_d_model`` / ``draft_scale_n_heads`` /
``draft_scale_d_ff`` / ``draft_scale_e_layers`` (None keeps the target's value) and
``draft_stochastic``.
"""

from __future__ import annotations

import torch
from torch import nn

from bridges.reference.timer_xl_torch import Forecaster, encode, normalise, timer_blocks, to_series


def draft_sizes(configs) -> tuple[int, int, int, int]:
    """(d_model, n_heads, d_ff, e_layers) of the draft, STRIDE's search."""
    sd, sh = (
        getattr(configs, "draft_scale_d_model", None),
        getattr(configs, "draft_scale_n_heads", None),
    )
    if sd is None and sh is None:
        d_model, n_heads = int(configs.d_model), int(configs.n_heads)
    else:
        target_d = int(round(configs.d_model * (1.0 if sd is None else float(sd))))
        target_h = int(round(configs.n_heads * (1.0 if sh is None else float(sh))))
        best_d = best_h = None
        best = float("inf")
        for heads in range(max(1, target_h - 2), target_h + 3):
            head_dim = max(4, (target_d // heads // 4) * 4)
            cand = head_dim * heads
            diff = abs(cand - target_d) + abs(heads - target_h) * 20
            if diff < best:
                best, best_d, best_h = diff, cand, heads
        d_model, n_heads = max(16, best_d), max(1, best_h)
    sf, se = (
        getattr(configs, "draft_scale_d_ff", None),
        getattr(configs, "draft_scale_e_layers", None),
    )
    d_ff = int(configs.d_ff) if sf is None else max(64, int(round(configs.d_ff * float(sf))))
    e_layers = (
        int(configs.e_layers) if se is None else max(1, int(round(configs.e_layers * float(se))))
    )
    return d_model, n_heads, d_ff, e_layers


class Model(Forecaster):
    def __init__(self, configs):
        super().__init__()
        self.d_model, self.n_heads, self.d_ff, self.e_layers = draft_sizes(configs)
        self.input_token_len = configs.input_token_len
        self.output_attention = getattr(configs, "output_attention", False)
        self.use_norm = configs.use_norm
        self.embedding = nn.Linear(self.input_token_len, self.d_model)
        self.blocks = timer_blocks(
            configs, self.d_model, self.n_heads, self.d_ff, self.e_layers, self.output_attention
        )
        self.draft_stochastic = bool(getattr(configs, "draft_stochastic", False))
        if self.draft_stochastic:
            self.head_mean = nn.Linear(self.d_model, configs.output_token_len)
            self.head_logvar = nn.Linear(self.d_model, configs.output_token_len)
            nn.init.constant_(self.head_logvar.bias, -2.0)
        else:
            self.head = nn.Linear(self.d_model, configs.output_token_len)

    def forecast(self, x, x_mark=None, y_mark=None):
        if self.use_norm:
            x, means, stdev = normalise(x)
        embed_out, attns, shape = encode(self, x)
        if self.draft_stochastic:
            mean_out = to_series(self.head_mean(embed_out), *shape)
            logvar_out = to_series(
                torch.clamp(self.head_logvar(embed_out), min=-10, max=10), *shape
            )
            if self.use_norm:
                mean_out = mean_out * stdev + means
                logvar_out = logvar_out + 2 * torch.log(stdev)
            out = (mean_out, logvar_out)
        else:
            out = to_series(self.head(embed_out), *shape)
            if self.use_norm:
                out = out * stdev + means
        return self.with_attention(out, attns)
