"""Shared building blocks (RoPE, masks, attention pieces, torch-compatible initialisers)."""

from jaxts.layers.attention_bias import BinaryAttentionBias
from jaxts.layers.init import torch_linear
from jaxts.layers.masks import (
    causal_mask,
    same_variable,
    timer_covariate_mask,
    timer_multivariate_mask,
)
from jaxts.layers.norms import RMSNorm
from jaxts.layers.relative_position import relative_position_bias, relative_position_bucket
from jaxts.layers.rope import (
    apply_rope,
    apply_rope_half,
    partial_rope,
    rope_tables,
    rotate_interleaved,
)
from jaxts.layers.swiglu import SwiGLU

__all__ = [
    "BinaryAttentionBias",
    "RMSNorm",
    "SwiGLU",
    "apply_rope",
    "apply_rope_half",
    "causal_mask",
    "partial_rope",
    "relative_position_bias",
    "relative_position_bucket",
    "rope_tables",
    "rotate_interleaved",
    "same_variable",
    "timer_covariate_mask",
    "timer_multivariate_mask",
    "torch_linear",
]
