"""``jaxts.quantiles`` against ``chronos.utils`` (numpy, eager jax and jitted jax)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from chronos.chronos2.pipeline import Chronos2Pipeline as UpstreamPipeline
from chronos.utils import interpolate_quantiles as ref_interpolate
from chronos.utils import weighted_quantile as ref_weighted

from jaxts.quantiles import interpolate_quantiles, prob_mass_per_quantile_level, weighted_quantile

CHRONOS2_LEVELS = [0.01, 0.05] + [round(0.1 * i, 1) for i in range(1, 10)] + [0.95, 0.99]
RNG = np.random.default_rng(0)
VALUES = np.sort(RNG.normal(size=(3, 5, len(CHRONOS2_LEVELS))).astype(np.float32), axis=-1)

INTERP_CASES = {
    # inside, exactly at, and outside (clamped) the trained levels, 0 and 1 included
    "chronos2_levels": ([0.0, 0.01, 0.025, 0.33, 0.5, 0.97, 0.99, 1.0], CHRONOS2_LEVELS, VALUES),
    "unsorted_levels": ([0.2, 0.7], [0.9, 0.1, 0.5], RNG.normal(size=(4, 3)).astype(np.float32)),
    "levels_with_0_and_1": (
        [0.0, 0.3, 1.0],
        [0.0, 0.5, 1.0],
        RNG.normal(size=(2, 3)).astype(np.float32),
    ),
    # per-row levels: one row reaches 1, the other does not (upstream then adds no level 1)
    "per_row_levels": (
        [0.1, 0.95, 1.0],
        np.array([[0.2, 0.6, 1.0], [0.1, 0.5, 0.9]], np.float32),
        RNG.normal(size=(2, 3)).astype(np.float32),
    ),
    # duplicate levels: 0/0 weights become 0 as torch.nan_to_num does
    "duplicate_levels": (
        [0.5, 1.0],
        np.array([[0.5, 0.5, 1.0], [0.2, 1.0, 1.0]], np.float32),
        np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 7.0]], np.float32),
    ),
}


def _ref_interp(query, levels, values):
    levels_t = (
        torch.tensor(np.asarray(levels, np.float32)) if not isinstance(levels, list) else levels
    )
    return ref_interpolate(query, levels_t, torch.from_numpy(values)).numpy()


@pytest.mark.parametrize("case", INTERP_CASES)
def test_interpolate_quantiles_matches_upstream(case):
    query, levels, values = INTERP_CASES[case]
    want = _ref_interp(query, levels, values)
    got = interpolate_quantiles(query, levels, values)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    eager = interpolate_quantiles(query, levels, jnp.asarray(values))
    assert isinstance(eager, jax.Array)
    np.testing.assert_allclose(np.asarray(eager), want, rtol=0, atol=1e-6)
    # levels as a traced array: the "add level 1?" choice is made inside the program
    jitted = jax.jit(lambda lv, v: interpolate_quantiles(query, lv, v))
    lv = jnp.broadcast_to(jnp.asarray(levels, jnp.float32), values.shape)
    np.testing.assert_allclose(np.asarray(jitted(lv, values)), want, rtol=0, atol=1e-6)


def _weighted_cases():
    samples = RNG.normal(size=(4, 6, 9 * len(CHRONOS2_LEVELS))).astype(np.float32)
    # Multiples of 2**-20: every partial sum is exact, so torch's and numpy's orders of summing
    # the weights agree bit for bit and the comparison can be tight.
    exact = (RNG.integers(1, 2000, samples.shape[-1]) * 2.0**-20).astype(np.float32)
    # The pipeline's weights (outer product of trapezoidal masses): their float32 sum differs by
    # an ulp between torch's vectorised and numpy's pairwise order, which moves the extreme
    # levels (masses ~1e-4 apart) by up to ~2e-5 on unit-scale samples.
    masses = np.outer(
        prob_mass_per_quantile_level([0.1 * i for i in range(1, 10)]),
        prob_mass_per_quantile_level(CHRONOS2_LEVELS),
    ).ravel()
    return [(samples, exact, 1e-6), (samples, masses, 5e-5)]


@pytest.mark.parametrize("case", [0, 1])
def test_weighted_quantile_matches_upstream(case):
    samples, weights, tol = _weighted_cases()[case]
    want = ref_weighted(CHRONOS2_LEVELS, torch.from_numpy(weights), torch.from_numpy(samples))
    got = weighted_quantile(CHRONOS2_LEVELS, weights, samples)
    assert got.shape == (4, 6, len(CHRONOS2_LEVELS))
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=tol)
    jitted = jax.jit(lambda s: weighted_quantile(CHRONOS2_LEVELS, weights, s))(samples)
    np.testing.assert_allclose(np.asarray(jitted), want.numpy(), rtol=0, atol=tol)


def test_prob_mass_matches_upstream():
    for levels in (CHRONOS2_LEVELS, [0.1 * i for i in range(1, 10)], [0.5]):
        want = UpstreamPipeline._get_prob_mass_per_quantile_level(torch.tensor(levels)).numpy()
        # 1 ulp apart at most: torch and numpy sum the masses in different orders
        np.testing.assert_allclose(prob_mass_per_quantile_level(levels), want, rtol=3e-7, atol=0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: interpolate_quantiles([1.5], [0.5], np.zeros((2, 1), np.float32)),
            "between 0 and 1",
        ),
        (lambda: interpolate_quantiles([0.5], [0.1, 0.5], np.zeros((2, 3), np.float32)), "length"),
        (lambda: interpolate_quantiles([0.5], [0.5], np.zeros((2, 1), np.int32)), "floating"),
        (lambda: weighted_quantile([0.5], [1.0, 0.0], np.zeros((2, 2), np.float32)), "> 0"),
        (lambda: weighted_quantile([0.5], [1.0], np.zeros((2, 2), np.float32)), "length"),
        (lambda: prob_mass_per_quantile_level([0.0, 0.5]), "strictly"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
