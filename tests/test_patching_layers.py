"""Layer parity of the shared patch-model pieces against chronos-forecasting (float32)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
chronos_bolt = pytest.importorskip("chronos.chronos_bolt")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxts.layers.patching import (  # noqa: E402
    ResidualBlock,
    instance_norm,
    instance_norm_inverse,
    patch,
)
from tests.helpers import LAYER_TOL  # noqa: E402


def _ragged(seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(3, 2, (5, 37))).astype(np.float32)
    x[0, :10] = np.nan  # left padding
    x[1, 5:9] = np.nan  # gaps
    x[2] = np.nan  # nothing observed: loc 0, scale 1
    x[3] = 4.0  # constant: scale 0 -> eps
    return x


@pytest.mark.parametrize("use_arcsinh", [False, True])
def test_instance_norm_matches_upstream(use_arcsinh):
    x = _ragged()
    ref = chronos_bolt.InstanceNorm(use_arcsinh=use_arcsinh)
    y_t, (loc_t, scale_t) = ref(torch.from_numpy(x))
    y, (loc, scale) = instance_norm(jnp.asarray(x), use_arcsinh=use_arcsinh)
    np.testing.assert_allclose(np.asarray(loc), loc_t.numpy(), atol=LAYER_TOL)
    np.testing.assert_allclose(np.asarray(scale), scale_t.numpy(), rtol=LAYER_TOL)
    np.testing.assert_allclose(np.asarray(y), y_t.numpy(), atol=LAYER_TOL, equal_nan=True)
    back_t = ref.inverse(y_t, (loc_t, scale_t))
    back = instance_norm_inverse(y, (loc, scale), use_arcsinh=use_arcsinh)
    np.testing.assert_allclose(np.asarray(back), back_t.numpy(), atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("length", [32, 37, 5])
def test_patch_matches_upstream(length):
    x = _ragged()[:, :length]
    ref = chronos_bolt.Patch(patch_size=8, patch_stride=8)(torch.from_numpy(x)).numpy()
    out = np.asarray(patch(jnp.asarray(x), 8))
    assert out.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.nan_to_num(out), np.nan_to_num(ref))


def test_patch_rejects_overlapping_stride():
    with pytest.raises(ValueError, match="stride"):
        patch(jnp.zeros((2, 16)), 8, 4)


@pytest.mark.parametrize("use_layer_norm", [False, True])
def test_residual_block_matches_upstream(use_layer_norm):
    torch.manual_seed(0)
    ref = chronos_bolt.ResidualBlock(6, 12, 5, "relu", use_layer_norm=use_layer_norm).eval()
    if use_layer_norm:
        with torch.no_grad():
            ref.layer_norm.weight.copy_(1 + 0.3 * torch.randn(5))
    block = ResidualBlock(6, 12, 5, "relu", use_layer_norm=use_layer_norm, rngs=nnx.Rngs(0))
    for name in ("hidden_layer", "output_layer", "residual_layer"):
        layer = getattr(ref, name)
        getattr(block, name).kernel[...] = jnp.asarray(layer.weight.detach().numpy().T)
        getattr(block, name).bias[...] = jnp.asarray(layer.bias.detach().numpy())
    if use_layer_norm:
        block.layer_norm.weight[...] = jnp.asarray(ref.layer_norm.weight.detach().numpy())
    x = np.random.default_rng(1).normal(size=(3, 4, 6)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(block(jnp.asarray(x))), want, atol=LAYER_TOL)
