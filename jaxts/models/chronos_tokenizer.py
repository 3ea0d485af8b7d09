"""Chronos ``MeanScaleUniformBins`` tokenizer, bit-identical to chronos-forecasting.

Runs on the host in numpy float32. Two float details decide whether ids match torch exactly,
and both are reproduced here rather than approximated:

* ``torch.linspace`` for float32 computes ``start + step * i`` (first half) and
  ``end - step * (n - 1 - i)`` (second half) with a fused multiply-add;
* ``torch.nansum`` over the last axis is a cascade sum over 8-lane vectors (4 accumulators,
  levels of 16); a plain numpy sum differs in the last ulp for about a third of real series,
  which changes the scale (and, rarely, a token id).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from jaxts.config import DictConfig, require_positive

_LANES = 8  # torch's Vectorized<float> width in its reduction kernels
_ILP = 4  # accumulators per row in torch's row_sum
_LEVELS = 4


@dataclasses.dataclass(frozen=True)
class ChronosConfig(DictConfig):
    """``chronos_config`` of an HF Chronos ``config.json`` (same names, same meaning)."""

    tokenizer_class: str = "MeanScaleUniformBins"
    tokenizer_kwargs: dict = dataclasses.field(
        default_factory=lambda: {"low_limit": -15.0, "high_limit": 15.0}
    )
    context_length: int = 512
    prediction_length: int = 64
    n_tokens: int = 4096
    n_special_tokens: int = 2
    pad_token_id: int = 0
    eos_token_id: int = 1
    use_eos_token: bool = True
    model_type: str = "seq2seq"
    num_samples: int = 20
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0

    def __post_init__(self):
        if self.tokenizer_class != "MeanScaleUniformBins":
            raise ValueError(
                f"tokenizer_class {self.tokenizer_class!r} is not supported "
                "(only MeanScaleUniformBins, used by every released Chronos-T5)"
            )
        if self.model_type != "seq2seq":
            raise ValueError(f"model_type {self.model_type!r} is not supported (only seq2seq)")
        kw = set(self.tokenizer_kwargs)
        if kw != {"low_limit", "high_limit"}:
            raise ValueError(
                f"tokenizer_kwargs must be exactly low_limit and high_limit, got {sorted(kw)}"
            )
        if not self.tokenizer_kwargs["low_limit"] < self.tokenizer_kwargs["high_limit"]:
            raise ValueError("tokenizer_kwargs: low_limit must be below high_limit")
        if max(self.pad_token_id, self.eos_token_id) >= self.n_special_tokens:
            raise ValueError("special token ids must be smaller than n_special_tokens")
        if self.n_tokens - self.n_special_tokens - 1 < 2:
            raise ValueError("n_tokens leaves fewer than 2 bins")
        require_positive(self, "context_length", "prediction_length", "num_samples")

    def __hash__(self):  # tokenizer_kwargs is a dict; the config must hash (jit static arg)
        return hash(json.dumps(self.to_dict(), sort_keys=True))


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` in float32, bit for bit."""
    lo, hi = np.float32(start), np.float32(end)
    step = np.float32((hi - lo) / np.float32(steps - 1)) if steps > 1 else np.float32(0)
    i = np.arange(steps, dtype=np.float64)
    half = steps // 2
    # float64 holds the exact float32 product, so one rounding == torch's fused multiply-add
    first = np.float64(lo) + np.float64(step) * i[:half]
    second = np.float64(hi) - np.float64(step) * (steps - 1 - i[half:])
    return np.concatenate([first, second]).astype(np.float32)


def _multi_row_sum(x: np.ndarray) -> np.ndarray:
    """torch ``multi_row_sum``: x ``[B, size, rows, lanes]`` -> ``[B, rows, lanes]``."""
    size = x.shape[1]
    power = max(4, int(np.ceil(np.log2(size))) // _LEVELS if size > 1 else 0)
    step, mask = 1 << power, (1 << power) - 1
    acc = np.zeros((_LEVELS, x.shape[0], *x.shape[2:]), np.float32)
    i = 0
    while i + step <= size:
        for _ in range(step):
            acc[0] += x[:, i]
            i += 1
        for j in range(1, _LEVELS):
            acc[j] += acc[j - 1]
            acc[j - 1] = 0
            if i & (mask << (j * power)):
                break
    for rest in range(i, size):
        acc[0] += x[:, rest]
    for j in range(1, _LEVELS):
        acc[0] += acc[j]
    return acc[0]


def _row_sum(x: np.ndarray) -> np.ndarray:
    """torch ``row_sum`` with 4 interleaved accumulators: x ``[B, n, lanes]`` -> ``[B, lanes]``."""
    n = x.shape[1]
    size = n // _ILP
    if size:
        partial = _multi_row_sum(x[:, : size * _ILP].reshape(x.shape[0], size, _ILP, -1))
    else:
        partial = np.zeros((x.shape[0], _ILP, x.shape[2]), np.float32)
    for i in range(size * _ILP, n):
        partial[:, 0] += x[:, i]
    for k in range(1, _ILP):
        partial[:, 0] += partial[:, k]
    return partial[:, 0]


def torch_nansum_f32(x: np.ndarray) -> np.ndarray:
    """``torch.nansum(x, dim=-1)`` for float32 ``x [B, T]``, in torch's summation order."""
    x = np.where(np.isnan(x), np.float32(0), x).astype(np.float32)
    b, n = x.shape
    if n < _LANES:
        return _row_sum(x[:, :, None])[:, 0]
    n_vec = n // _LANES
    lanes = _row_sum(x[:, : n_vec * _LANES].reshape(b, n_vec, _LANES))
    total = np.zeros(b, np.float32)
    for k in range(n_vec * _LANES, n):
        total += x[:, k]
    for k in range(_LANES):
        total += lanes[:, k]
    return total


class MeanScaleUniformBins:
    """Mean-|x| scaling, then uniform bins over ``[low_limit, high_limit]``.

    ids: ``bucketize(x / scale, boundaries, right=True) + n_special_tokens`` clipped to the
    vocabulary; NaN -> ``pad_token_id`` with attention mask 0; EOS appended for seq2seq.
    """

    def __init__(self, config: ChronosConfig):
        self.config = config
        kw = config.tokenizer_kwargs
        n_bins = config.n_tokens - config.n_special_tokens - 1
        self.centers = torch_linspace_f32(kw["low_limit"], kw["high_limit"], n_bins)  # [n_bins]
        mids = (self.centers[1:] + self.centers[:-1]) / np.float32(2)
        self.boundaries = np.concatenate([np.float32([-1e20]), mids, np.float32([1e20])]).astype(
            np.float32
        )

    def _input_transform(self, x: np.ndarray, scale: np.ndarray | None = None):
        cfg = self.config
        x = np.asarray(x, np.float32)
        mask = ~np.isnan(x)  # [B, T]
        if scale is None:
            total = torch_nansum_f32(np.abs(x) * mask)
            with np.errstate(invalid="ignore", divide="ignore"):
                scale = (total / mask.sum(-1).astype(np.float32)).astype(np.float32)
            scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
        with np.errstate(invalid="ignore"):
            scaled = x / scale[:, None]
        ids = np.searchsorted(self.boundaries, scaled, side="right") + cfg.n_special_tokens
        ids = np.clip(ids, 0, cfg.n_tokens - 1)
        ids = np.where(mask, ids, cfg.pad_token_id).astype(np.int32)
        return ids, mask, scale

    def _append_eos(self, ids, mask):
        b = ids.shape[0]
        ids = np.concatenate([ids, np.full((b, 1), self.config.eos_token_id, np.int32)], 1)
        return ids, np.concatenate([mask, np.ones((b, 1), bool)], 1)

    def context_input_transform(self, context: np.ndarray):
        """``context [B, T]`` (NaN = missing or left padding) -> ids, mask ``[B, T' (+1)]``,
        scale ``[B]``; the context is cut to its last ``context_length`` values first."""
        context = np.asarray(context, np.float32)[..., -self.config.context_length :]
        ids, mask, scale = self._input_transform(context)
        if self.config.use_eos_token:
            ids, mask = self._append_eos(ids, mask)
        return ids, mask, scale

    def label_input_transform(self, label: np.ndarray, scale: np.ndarray):
        """Targets ``[B, H]`` tokenised with the context's scale (+ EOS)."""
        ids, mask, _ = self._input_transform(label, scale)
        if self.config.use_eos_token:
            ids, mask = self._append_eos(ids, mask)
        return ids, mask

    def output_transform(self, samples: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Token ids ``[B, S, H]`` -> values ``[B, S, H]`` (bin center times the scale)."""
        n_special = self.config.n_special_tokens
        idx = np.clip(np.asarray(samples) - n_special - 1, 0, len(self.centers) - 1)
        return self.centers[idx] * np.asarray(scale, np.float32)[:, None, None]
