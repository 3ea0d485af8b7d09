"""T5 bucketed relative position bias (Raffel et al. 2020; HF ``T5Attention.compute_bias``).

Bucket ids are computed in numpy at trace time into a lookup table over the clipped relative
position, so they are bit-identical to the PyTorch reference (a float32 ``log`` that lands one
ulp apart would move a position into the next bucket) and cost nothing at run time.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def relative_position_bucket(
    relative_position: np.ndarray,
    *,
    bidirectional: bool,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> np.ndarray:
    """Bucket of ``memory_position - query_position`` (int array in, int32 array out).

    Half the buckets hold exact small distances, the other half log-spaced distances up to
    ``max_distance``; farther positions share the last bucket. With ``bidirectional=False``
    (decoder) future positions (> 0) all map to bucket 0.
    """
    rel = np.asarray(relative_position, np.int64)
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).astype(np.int64) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    # float32 arithmetic in the reference's order: log(f32) / python float * int, then trunc.
    with np.errstate(divide="ignore"):
        scaled = np.log(rel.astype(np.float32) / np.float32(max_exact))
    scaled = scaled / np.float32(math.log(max_distance / max_exact))
    scaled = scaled * np.float32(num_buckets - max_exact)
    large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return (buckets + np.where(is_small, rel, large)).astype(np.int32)


def bucket_table(*, bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """Buckets of relative positions ``-max_distance .. max_distance`` (index ``rel + max_distance``).

    Every farther position falls in the same bucket as the nearest end, so clipping the relative
    position into this range before the lookup is exact.
    """
    rel = np.arange(-max_distance, max_distance + 1)
    return relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )


def relative_position_bias(
    embedding: jnp.ndarray,
    query_position: jnp.ndarray,
    key_position: jnp.ndarray,
    *,
    bidirectional: bool,
    max_distance: int,
) -> jnp.ndarray:
    """Bias ``[1, N, Q, K]`` from the ``[num_buckets, N]`` embedding table.

    ``query_position [Q]`` and ``key_position [K]`` may be traced (the decode step's position is).
    """
    table = jnp.asarray(
        bucket_table(
            bidirectional=bidirectional,
            num_buckets=embedding.shape[0],
            max_distance=max_distance,
        )
    )
    rel = key_position[None, :] - query_position[:, None]  # [Q, K]
    buckets = table[jnp.clip(rel, -max_distance, max_distance) + max_distance]
    values = embedding[buckets]  # [Q, K, N]
    return jnp.transpose(values, (2, 0, 1))[None]  # [1, N, Q, K]
