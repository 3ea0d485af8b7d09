"""Patch-model input/output pieces shared by Chronos-Bolt and Chronos-2.

Same semantics as ``chronos.chronos_bolt.{InstanceNorm, Patch, ResidualBlock}``:

* instance norm: NaN-aware mean and *population* std over the last axis (NaN-only rows get
  loc 0 / scale 1), a scale of exactly 0 replaced by ``eps``; optional ``arcsinh`` after scaling;
* patching: left-pad with NaN to a multiple of the patch size, then non-overlapping windows
  (upstream's ``unfold`` with ``stride == size``; other strides are rejected, no checkpoint
  uses them);
* residual block: ``output(act(hidden(x))) + residual(x)``, optional T5 RMS norm after the sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxts.layers.init import torch_linear
from jaxts.layers.norms import RMSNorm

__all__ = ["ResidualBlock", "instance_norm", "instance_norm_inverse", "patch", "ACTIVATIONS"]

# transformers' ACT2FN names used by Chronos configs ("gelu" is the exact erf form there).
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"activation {name!r} is not supported; supported: {sorted(ACTIVATIONS)}"
        ) from None


def instance_norm(
    x: jnp.ndarray,
    loc_scale: tuple[jnp.ndarray, jnp.ndarray] | None = None,
    *,
    use_arcsinh: bool = False,
    eps: float = 1e-5,
) -> tuple[jnp.ndarray, tuple[jnp.ndarray, jnp.ndarray]]:
    """``x [..., T]`` -> ``((x - loc) / scale [..., T], (loc, scale) [..., 1])``, NaNs kept."""
    x = x.astype(jnp.float32)
    if loc_scale is None:
        observed = ~jnp.isnan(x)
        count = observed.sum(-1, keepdims=True)
        # nanmean of an all-NaN row is NaN in torch; nan_to_num then makes it 0 (loc) / 1 (scale)
        loc = jnp.where(count > 0, jnp.nansum(x, -1, keepdims=True) / count, 0.0)
        var = jnp.nansum(jnp.square(x - loc), -1, keepdims=True) / count
        scale = jnp.where(count > 0, jnp.sqrt(var), 1.0)
        scale = jnp.where(scale == 0, eps, scale)
    else:
        loc, scale = loc_scale
    y = (x - loc) / scale
    if use_arcsinh:
        y = jnp.arcsinh(y)
    return y, (loc, scale)


def instance_norm_inverse(
    y: jnp.ndarray, loc_scale: tuple[jnp.ndarray, jnp.ndarray], *, use_arcsinh: bool = False
) -> jnp.ndarray:
    y = y.astype(jnp.float32)
    if use_arcsinh:
        y = jnp.sinh(y)
    loc, scale = loc_scale
    return y * scale + loc


def patch(x: jnp.ndarray, size: int, stride: int | None = None) -> jnp.ndarray:
    """``x [..., T]`` -> ``[..., ceil(T / size), size]``, left-padded with NaN."""
    if stride is not None and stride != size:
        raise ValueError(f"patch stride {stride} != patch size {size} is not supported")
    pad = (-x.shape[-1]) % size
    if pad:
        widths = [(0, 0)] * (x.ndim - 1) + [(pad, 0)]
        x = jnp.pad(x, widths, constant_values=jnp.nan)
    return x.reshape(*x.shape[:-1], x.shape[-1] // size, size)


class ResidualBlock(nnx.Module):
    """Upstream ``ResidualBlock``: parameter names ``hidden_layer``, ``output_layer``,
    ``residual_layer`` (all with bias) and ``layer_norm`` when ``use_layer_norm``."""

    def __init__(
        self,
        in_dim: int,
        h_dim: int,
        out_dim: int,
        act_fn_name: str,
        *,
        dropout_p: float = 0.0,
        use_layer_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        self.act = activation(act_fn_name)
        self.hidden_layer = torch_linear(in_dim, h_dim, rngs=rngs)
        self.output_layer = torch_linear(h_dim, out_dim, rngs=rngs)
        self.residual_layer = torch_linear(in_dim, out_dim, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_p, rngs=rngs)
        self.layer_norm = RMSNorm(out_dim) if use_layer_norm else None

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        out = self.dropout(self.output_layer(self.act(self.hidden_layer(x))))
        out = out + self.residual_layer(x)
        return self.layer_norm(out) if self.layer_norm is not None else out
