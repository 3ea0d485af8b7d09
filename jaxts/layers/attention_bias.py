"""Learned binary attention bias (same variable vs different variable), as Moirai/OpenLTM."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx


class BinaryAttentionBias(nnx.Module):
    """``emb [2, H]``: row 1 is added where query and key share a variable, row 0 elsewhere.

    The parameter is named ``emb`` (an ``nnx.Embed``) to mirror ``attn_bias.emb.weight``.
    """

    def __init__(self, num_heads: int, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        # torch.nn.Embedding initialises N(0, 1); keep that so training from scratch matches.
        self.emb = nnx.Embed(2, num_heads, embedding_init=nnx.initializers.normal(1.0), rngs=rngs)

    def __call__(self, same_var: np.ndarray) -> jnp.ndarray:
        """``same_var [L, S]`` bool -> bias ``[H, L, S]``."""
        w = self.emb.embedding[...]  # [2, H]
        same = jnp.asarray(same_var)[None]  # [1, L, S]
        return jnp.where(same, w[1][:, None, None], w[0][:, None, None])
