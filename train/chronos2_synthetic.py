"""Synthetic multivariate series whose variates inform each other (``train.chronos2``).

Trained only on ETT/weather/M4 windows, the CPU-sized Chronos-2 learned to ignore group
attention: after 2000 steps its val loss with every row in a group of its own was within 0.3% of
the grouped loss on every task kind (covariates included; docs/chronos2_training.md). Real
variates share little that a 1.4M-parameter model can exploit within minutes, so a series alone
is as good a bet. Chronos-2's own pretraining teaches in-context learning with synthetic
multivariate data ("multivariatizers" that mix univariate series at lags, tech. report §4); this
source does the same in its simplest form, so that reading the group pays off:

* each member has ``n_latent`` latent series: a sum of 1-3 sinusoids of random period (8-200
  steps) and phase, a random-walk level and noise;
* each variate is a random positive or negative mix of the latents, **delayed** by a random lag
  in ``[0, max_lag]`` (a variate with lag 0 leads one with lag 40 by 40 steps: the follower's
  next 40 values are in the leader's context), with its own scale, offset and noise.

So in a ``multivariate`` task the followers' futures are partly visible in the leaders'
contexts, and in a ``covariates`` task the known futures of the covariates carry the targets'
futures: a model that uses its group beats one that does not by a wide margin.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SYNTHETIC", "lead_lag_members"]

# the data set name that train.chronos2's `datasets` (and load_sources) know it by
SYNTHETIC = "synthetic_mv"


def _latent(rng: np.random.Generator, length: int) -> np.ndarray:
    t = np.arange(length, dtype=np.float64)
    x = np.zeros(length)
    for _ in range(int(rng.integers(1, 4))):
        period = rng.uniform(8, 200)
        x += rng.uniform(0.3, 1.5) * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    x += np.cumsum(rng.normal(0, rng.uniform(0.0, 0.05), length))  # slow level drift
    return x + rng.normal(0, 0.05, length)


def lead_lag_members(
    n_members: int,
    length: int,
    n_columns: int = 8,
    *,
    n_latent: int = 1,
    max_lag: int = 48,
    seed: int = 0,
) -> list[np.ndarray]:
    """``n_members`` float32 arrays ``[length, n_columns]`` as the module docstring says; a pure
    function of its arguments."""
    rng = np.random.default_rng([seed, n_members, length, n_columns])
    out = []
    for _ in range(n_members):
        latents = np.stack([_latent(rng, length + max_lag) for _ in range(n_latent)])  # [K, L+M]
        cols = []
        for _ in range(n_columns):
            # half the variates move in step (lag 0): the easiest signal to read across the group
            lag = 0 if rng.random() < 0.5 else int(rng.integers(1, max_lag + 1))
            mix = rng.normal(0, 1, n_latent)  # [K]
            x = mix @ latents[:, max_lag - lag : max_lag - lag + length]  # [length]
            x = x * rng.uniform(0.5, 5) + rng.uniform(-10, 10)
            cols.append(x + rng.normal(0, 0.05 * x.std() + 1e-3, length))
        out.append(np.stack(cols, axis=1).astype(np.float32))  # [length, C]
    return out
