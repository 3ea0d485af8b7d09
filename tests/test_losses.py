"""jaxts.losses against the PyTorch reference of upstream's OrdinalLoss and v2 loss: values and
gradients w.r.t. the logits, with masks, -100 labels and targets at both edges; jit; memory."""

from __future__ import annotations

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from jaxts import losses
from tests.helpers import LAYER_TOL

torch = pytest.importorskip("torch")
from bridges.reference.ordinal_loss_torch import OrdinalLoss, distance_aware_loss  # noqa: E402

# (leading shape, N): a single row, odd sizes, and the published head (batch 8 x 16, 4096 bins).
CASES = [((1,), 2), ((5,), 7), ((2, 3), 16), ((8, 16), 4096)]

# name -> (jaxts loss, keyword arguments, torch reference on the kept rows [M, N], [M])
LOSSES = {
    "ordinal_ce": (
        losses.ordinal_cross_entropy,
        dict(alpha=0.7),
        lambda n: OrdinalLoss(n, alpha=0.7).ordinal_cross_entropy,
    ),
    "smooth_label": (
        losses.smooth_label_loss,
        dict(beta=0.3),
        lambda n: OrdinalLoss(n, beta=0.3).smooth_label_loss,
    ),
    "emd": (losses.earth_movers_distance, {}, lambda n: OrdinalLoss(n).earth_movers_distance),
    "combined": (
        losses.combined_ordinal_loss,
        dict(weights=(0.5, 0.3, 0.2), alpha=1.0, beta=0.1),
        lambda n: OrdinalLoss(n, alpha=1.0, beta=0.1).combined_loss,
    ),
    "gaussian": (
        losses.gaussian_soft_label_loss,
        dict(sigma=2.5),
        lambda n: lambda x, t: upstream_v2_mean(x, t, n, sigma=2.5),
    ),
}


def upstream_v2_mean(rows, targets, n, sigma):
    """Upstream's v2 loss takes one scalar target: call it row by row and average."""
    per_row = [
        distance_aware_loss(r, int(k), vocab_size=n, sigma=sigma)
        for r, k in zip(rows, targets, strict=True)
    ]
    return torch.stack(per_row).mean()


def make_inputs(shape, n, seed=0):
    """logits [*shape, N] (scale 3: peaked softmaxes), targets with 0 and N-1 present, a mask
    with some False rows and some -100 labels among the rows it keeps."""
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((*shape, n))).astype(np.float32)
    targets = rng.integers(0, n, shape).astype(np.int32)
    mask = rng.random(shape) > 0.25
    flat_t, flat_m = targets.reshape(-1), mask.reshape(-1)
    flat_t[0], flat_m[0] = 0, True  # edges always counted
    if flat_t.size > 1:
        flat_t[1], flat_m[1] = n - 1, True
    if flat_t.size > 3:
        flat_t[2] = losses.IGNORE_INDEX
    if flat_t.size > 4:
        flat_m[3] = False
    return logits, targets, mask


def torch_value_and_grad(ref, logits, targets, keep):
    """The reference on the kept rows only (boolean indexing: independent of jaxts' masking)."""
    x = torch.tensor(logits, requires_grad=True)
    keep_t = torch.tensor(keep)
    value = ref(x[keep_t], torch.tensor(targets, dtype=torch.long)[keep_t])
    value.backward()
    return value.item(), x.grad.numpy()


def assert_close_grad(grad, ref_grad):
    """Relative to the gradient's scale: elements far below it are rounding noise in both."""
    scale = np.abs(ref_grad).max()
    np.testing.assert_allclose(grad, ref_grad, rtol=LAYER_TOL, atol=LAYER_TOL * scale)


@pytest.mark.parametrize("shape,n", CASES)
@pytest.mark.parametrize("name", list(LOSSES))
def test_matches_torch_reference(name, shape, n):
    fn, kwargs, make_ref = LOSSES[name]
    logits, targets, mask = make_inputs(shape, n, seed=n)
    keep = mask & (targets != losses.IGNORE_INDEX)
    value, grad = jax.jit(jax.value_and_grad(lambda x: fn(x, targets, mask=mask, **kwargs)))(logits)
    ref_value, ref_grad = torch_value_and_grad(make_ref(n), logits, targets, keep)
    np.testing.assert_allclose(float(value), ref_value, rtol=LAYER_TOL)
    assert_close_grad(np.asarray(grad), ref_grad)
    assert not np.asarray(grad)[~keep].any()  # rows that do not count get no gradient


def test_ordinal_ce_distance_term_is_in_the_value_not_the_gradient():
    logits, targets, _ = make_inputs((4,), 32)
    ce = losses.ordinal_cross_entropy(logits, targets, alpha=0.0)
    penalised = losses.ordinal_cross_entropy(logits, targets, alpha=5.0)
    assert float(penalised) > float(ce)  # random logits: argmax != target somewhere
    grad = jax.jit(jax.grad(losses.ordinal_cross_entropy))
    g0, g5 = grad(logits, targets, 0.0), grad(logits, targets, 5.0)
    np.testing.assert_array_equal(np.asarray(g0), np.asarray(g5))


def test_gaussian_reductions():
    logits, targets, mask = make_inputs((3, 4), 64)
    keep = mask & (targets != losses.IGNORE_INDEX)
    per_row = np.asarray(
        losses.gaussian_soft_label_loss(logits, targets, mask=mask, reduction="none")
    )
    assert per_row.shape == (3, 4) and not per_row[~keep].any()
    for i, j in zip(
        *np.nonzero(keep), strict=True
    ):  # one row with its target is exactly upstream's call
        ref = distance_aware_loss(torch.tensor(logits[i, j]), int(targets[i, j]), vocab_size=64)
        np.testing.assert_allclose(per_row[i, j], ref.item(), rtol=LAYER_TOL)
    mean = losses.gaussian_soft_label_loss(logits, targets, mask=mask)
    np.testing.assert_allclose(float(mean), per_row[keep].mean(), rtol=LAYER_TOL)
    # upstream's batch call: one scalar target for every row, summed
    same = np.full((3, 4), 17, np.int32)
    total = losses.gaussian_soft_label_loss(logits, same, reduction="sum")
    ref = distance_aware_loss(torch.tensor(logits), 17, vocab_size=64)
    np.testing.assert_allclose(float(total), ref.item(), rtol=LAYER_TOL)


@pytest.mark.parametrize("name", list(LOSSES))
def test_no_counted_row_gives_zero_and_no_gradient(name):
    fn, kwargs, _ = LOSSES[name]
    logits = np.full((2, 3, 8), np.nan, np.float32)  # garbage must not leak out of masked rows
    targets = np.full((2, 3), losses.IGNORE_INDEX, np.int32)
    value, grad = jax.jit(jax.value_and_grad(lambda x: fn(x, targets, **kwargs)))(logits)
    assert float(value) == 0.0 and not np.asarray(grad).any()


def test_target_out_of_range():
    logits, targets, _ = make_inputs((4,), 8)
    targets[1] = 8
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 8\) or be -100; got 8"):
        losses.smooth_label_loss(logits, targets)
    # under jit values cannot raise: the loss is NaN instead of a silently clipped target
    assert np.isnan(float(jax.jit(losses.smooth_label_loss)(logits, targets)))
    targets[1] = losses.IGNORE_INDEX  # unless the row does not count
    assert np.isfinite(float(jax.jit(losses.smooth_label_loss)(logits, targets)))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: losses.earth_movers_distance(np.zeros((3, 1)), np.zeros(3, int)), "N >= 2"),
        (lambda: losses.earth_movers_distance(np.zeros((3, 5)), np.zeros(4, int)), r"\(3,\)"),
        (lambda: losses.earth_movers_distance(np.zeros((3, 5)), np.zeros(3)), "integer"),
        (
            lambda: losses.earth_movers_distance(np.zeros((3, 5)), np.zeros(3, int), np.ones(3)),
            "mask must be boolean",
        ),
        (
            lambda: losses.combined_ordinal_loss(
                np.zeros((3, 5)), np.zeros(3, int), weights=(1, 1)
            ),
            "weights must be 3",
        ),
        (
            lambda: losses.gaussian_soft_label_loss(np.zeros((3, 5)), np.zeros(3, int), sigma=0),
            "sigma must be > 0",
        ),
        (
            lambda: losses.gaussian_soft_label_loss(
                np.zeros((3, 5)), np.zeros(3, int), reduction="avg"
            ),
            "reduction must be one of",
        ),
    ],
)
def test_bad_inputs_raise_one_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_reference_distance_matrix_is_upstreams_double_loop():
    n = 6
    loop = [[abs(i - j) for j in range(n)] for i in range(n)]  # how upstream fills it
    np.testing.assert_array_equal(OrdinalLoss(n).distance_matrix.numpy(), np.array(loop))


def _intermediate_sizes(jaxpr):
    """Sizes of every value a jaxpr (and the jaxprs nested in its equations) produces."""
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield int(np.prod(var.aval.shape))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if isinstance(inner, jax.extend.core.Jaxpr):
                    yield from _intermediate_sizes(inner)


@pytest.mark.parametrize("name", list(LOSSES))
def test_memory_is_rows_times_bins_never_bins_squared(name):
    fn, kwargs, _ = LOSSES[name]
    logits, targets, mask = make_inputs((8, 16), 4096)
    grad_fn = jax.value_and_grad(lambda x: fn(x, targets, mask=mask, **kwargs))
    largest = max(_intermediate_sizes(jax.make_jaxpr(grad_fn)(jnp.asarray(logits)).jaxpr))
    assert largest == logits.size  # [8, 16, 4096]; an [N, N] matrix would be 32x that
