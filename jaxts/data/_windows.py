"""Sliding windows (stride 1) over a split: next-patch training targets and forecast windows."""

from __future__ import annotations

import os

import numpy as np

from jaxts.data._io import DataError
from jaxts.data._splits import load_split

__all__ = ["n_windows", "NextPatchWindows", "forecast_windows"]


def n_windows(n_rows: int, seq_len: int, output_len: int) -> int:
    """Number of stride-1 windows of ``seq_len`` inputs + ``output_len`` targets in ``n_rows``.

    Raises :class:`DataError` (a ValueError) when there is not even one window.
    """
    if seq_len <= 0 or output_len <= 0:
        raise DataError(f"seq_len and output_len must be positive, got {seq_len}, {output_len}")
    w = n_rows - seq_len - output_len + 1
    if seq_len > n_rows or w <= 0:
        raise DataError(
            f"no window fits: split has {n_rows} rows, seq_len={seq_len} + "
            f"output_len={output_len} needs at least {seq_len + output_len}"
        )
    return w


def pad_batch(
    batch: tuple[np.ndarray, ...], size: int
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Pad a short (last) batch to ``size`` rows by repeating its last example; mask ``[size]``.

    Padding to the full batch size keeps a single compiled step/forecast for every batch;
    repeating real rows keeps the padding finite for any model.
    """
    n = batch[0].shape[0]
    mask = np.arange(size) < n
    if n == size:
        return batch, mask
    pad = [np.concatenate([a, np.repeat(a[-1:], size - n, axis=0)]) for a in batch]
    return tuple(pad), mask


def _as_index(idx: np.ndarray, n: int) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise DataError(f"window indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64).reshape(-1)
    # Negative indices would wrap around silently under fancy indexing: reject them.
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise DataError(f"window index out of range [0, {n}): min {idx.min()}, max {idx.max()}")
    return idx


class NextPatchWindows:
    """Windows for the OpenLTM autoregressive (next-token) objective.

    ``data`` ``[T, C]`` (one split, already scaled), ``seq_len`` ``L = N * P`` with
    ``P = input_token_len``, ``P_out = output_token_len``. Window ``s`` has input
    ``x = data[s : s + L]`` and, for every input token ``n``, the target patch that follows it:
    ``data[s + (n + 1) * P : s + (n + 1) * P + P_out]``, stacked time-major into
    ``y[n * P_out + p]`` ``[N * P_out, C]`` (OpenLTM's ``unfold(0, P_out, P)`` + reshape).
    ``len(ds) = T - L - P_out + 1``.
    """

    def __init__(self, data: np.ndarray, seq_len: int, input_token_len: int, output_token_len: int):
        data = np.asarray(data, dtype=np.float32)
        if data.ndim != 2:
            raise DataError(f"data must be [T, C], got shape {data.shape}")
        L, P, P_out = int(seq_len), int(input_token_len), int(output_token_len)
        if P <= 0 or P_out <= 0 or L <= 0:
            raise DataError(f"seq_len, input/output_token_len must be positive: {L}, {P}, {P_out}")
        if L % P != 0:
            raise DataError(f"seq_len={L} is not a multiple of input_token_len={P}")
        self.data = data  # [T, C]
        self.seq_len, self.input_token_len, self.output_token_len = L, P, P_out
        self.num_tokens = L // P  # N
        self._n = n_windows(data.shape[0], L, P_out)
        self._x_off = np.arange(L)  # [L]
        # Target offsets from s, token-major: (n + 1) * P + p  -> [N * P_out]
        n = np.arange(self.num_tokens)[:, None]
        self._y_off = ((n + 1) * P + np.arange(P_out)[None, :]).reshape(-1)
        self._last_off = L + np.arange(P_out)  # [P_out]

    def __len__(self) -> int:
        return self._n

    @property
    def num_channels(self) -> int:
        return self.data.shape[1]

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(x [B, L, C], y [B, N * P_out, C])`` float32 for window starts ``idx`` ``[B]``."""
        s = _as_index(idx, self._n)[:, None]  # [B, 1]
        return self.data[s + self._x_off], self.data[s + self._y_off]

    def last_patch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(x [B, L, C], y [B, P_out, C])``: y is the patch right after the window, i.e. the
        last token's target ``batch(idx)[1][:, -P_out:]`` (OpenLTM ``valid_last``)."""
        s = _as_index(idx, self._n)[:, None]  # [B, 1]
        return self.data[s + self._x_off], self.data[s + self._last_off]


def forecast_windows(
    path: str | os.PathLike,
    split: str,
    seq_len: int,
    pred_len: int,
    *,
    data_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All stride-1 forecast windows of a split, scaled with the train-row scaler.

    Returns ``x`` ``[W, seq_len, C]`` and ``y`` ``[W, pred_len, C]`` float32 with
    ``x[s] = rows[s : s + seq_len]``, ``y[s] = rows[s + seq_len : s + seq_len + pred_len]`` and
    ``W = rows - seq_len - pred_len + 1`` (2785 for ETTh1 test, 672 / 96).

    Both are read-only strided views of one ``[rows, C]`` array (no W-fold copy: weather test
    at L=672 would otherwise take ~0.6 GB); slice them or ``np.array(...)`` to get a copy.
    """
    rows = load_split(path, split, seq_len, data_dir=data_dir)  # [T, C] float32
    w = n_windows(rows.shape[0], seq_len, pred_len)
    rows.setflags(write=False)
    # sliding_window_view gives [T - k + 1, C, k]; move the window axis before C.
    win = np.lib.stride_tricks.sliding_window_view(rows, seq_len + pred_len, axis=0)
    win = win[:w].transpose(0, 2, 1)  # [W, L + H, C]
    return win[:, :seq_len], win[:, seq_len:]
