"""Rotary position embedding with interleaved pairs (Moirai / OpenLTM ``RotaryProjection``).

Pairs are ``(x[2i], x[2i+1])`` (interleaved), not the two halves of the vector as in Llama
(:func:`apply_rope_half`, HF's ``rotate_half`` layout: Llama, Chronos-2, the HF Timer).
``partial_rope`` rotates only a slice of each head's dimensions, as OpenLTM's
``QueryKeyProjection(partial_factor=(0.0, 0.5))`` does for Timer-XL.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def rope_tables(positions: np.ndarray, width: int, base: float = 10000.0):
    """cos/sin tables ``[..., width]`` for integer ``positions`` (each frequency repeated twice).

    Built in float32 with the same operation order as the reference (theta = 1 / base ** (2i / w),
    then position * theta) so the tables match it to the last ulp or so.
    """
    if width % 2:
        raise ValueError(f"rotary width must be even, got {width}")
    theta = 1.0 / jnp.power(
        jnp.float32(base), jnp.arange(0, width, 2, dtype=jnp.float32) / jnp.float32(width)
    )  # [width // 2]
    m_theta = jnp.asarray(positions, jnp.float32)[..., None] * theta  # [..., width // 2]
    m_theta = jnp.repeat(m_theta, 2, axis=-1)  # [..., width]: (t0, t0, t1, t1, ...)
    return jnp.cos(m_theta), jnp.sin(m_theta)


def rotate_interleaved(x: jnp.ndarray) -> jnp.ndarray:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    x1 = x[..., 0::2]
    x2 = x[..., 1::2]
    return jnp.stack([-x2, x1], axis=-1).reshape(x.shape)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate ``x [..., T, w]`` with tables ``[T, w]`` (broadcast over leading axes)."""
    return cos * x + sin * rotate_interleaved(x)


def partial_split(head_dim: int, partial_factor: tuple[float, float]) -> tuple[int, int, int]:
    """(left, rotated, right) sizes, truncated exactly as OpenLTM's ``int(...)`` arithmetic."""
    lo, hi = partial_factor
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"partial_factor must satisfy 0 <= lo < hi <= 1, got {partial_factor}")
    rotated = int(head_dim * (hi - lo))
    left = int(lo * head_dim)
    right = int((1.0 - hi) * head_dim)
    if left + rotated + right != head_dim or rotated % 2:
        raise ValueError(
            f"head_dim {head_dim} cannot be split by partial_factor {partial_factor} into an even "
            f"rotated part (got sizes {left}/{rotated}/{right}); use a head_dim divisible by 4"
        )
    return left, rotated, right


def partial_rope(
    x: jnp.ndarray,
    positions: np.ndarray,
    partial_factor: tuple[float, float] = (0.0, 0.5),
    base: float = 10000.0,
) -> jnp.ndarray:
    """Apply RoPE to the ``partial_factor`` slice of the last axis of ``x [..., T, E]``."""
    left, rotated, _ = partial_split(x.shape[-1], partial_factor)
    cos, sin = rope_tables(positions, rotated, base)  # [T, rotated]
    mid = apply_rope(x[..., left : left + rotated], cos, sin)
    return jnp.concatenate([x[..., :left], mid, x[..., left + rotated :]], axis=-1)


def apply_rope_half(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """``x [..., T, E]`` rotated with HF's ``rotate_half`` ((x1, x2) -> (-x2, x1), the two
    halves); cos/sin tables broadcast against it (``cat(freqs, freqs)`` layout)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
