"""Shared building blocks (RoPE, masks, attention pieces, torch-compatible initialisers)."""

from jaxts.layers.attention_bias import BinaryAttentionBias
from jaxts.layers.init import torch_linear
from jaxts.layers.masks import (
    causal_mask,
    same_variable,
    timer_covariate_mask,
    timer_multivariate_mask,
)
from jaxts.layers.rope import apply_rope, partial_rope, rope_tables, rotate_interleaved

__all__ = [
    "BinaryAttentionBias",
    "apply_rope",
    "causal_mask",
    "partial_rope",
    "rope_tables",
    "rotate_interleaved",
    "same_variable",
    "timer_covariate_mask",
    "timer_multivariate_mask",
    "torch_linear",
]
