"""``ChronosT5Pipeline``: chronos-forecasting's ``ChronosPipeline`` API over the jitted JAX model.

Differences from upstream, all deliberate:

* randomness is explicit: ``predict(..., key=jax.random.key(n))``; without a key the call is
  deterministic (key 0), so two identical calls give identical samples;
* contexts are left-padded with NaN to a length bucket (64, 128, 256, ..., ``context_length``)
  so that a handful of programs is compiled; padding is masked, so the forecast is unchanged;
* bad input (empty, all-NaN series, wrong rank, inf, ``prediction_length <= 0``) raises
  ``ValueError`` instead of producing garbage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from jaxts.models.chronos_t5 import ChronosT5, encode, sample_tokens

logger = logging.getLogger(__name__)

DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_MIN_BUCKET = 64


def prepare_context(context, *, allow_unobserved: bool = False) -> np.ndarray:
    """Array / list of 1-D series / pandas Series or DataFrame -> float32 ``[B, T]``.

    A list of series of different lengths is left-padded with NaN (upstream's
    ``left_pad_and_stack_1D``); a DataFrame is one series per column. A series with no
    observed value is an error unless ``allow_unobserved`` (models that forecast one, as
    Chronos-Bolt does from loc 0 / scale 1).
    """
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(context, pd.DataFrame):
        context = [context[c].to_numpy(np.float32) for c in context.columns]
    elif pd is not None and isinstance(context, pd.Series):
        context = context.to_numpy(np.float32)
    if isinstance(context, (list, tuple)) and context and all(np.ndim(c) == 0 for c in context):
        context = np.asarray(context, dtype=object)  # a flat list of numbers: one series
    if isinstance(context, (list, tuple)):
        if not context:
            raise ValueError("context is an empty list")
        try:
            series = [np.asarray(c, np.float32) for c in context]
        except (TypeError, ValueError) as e:
            raise ValueError(f"context is not numeric: {e}") from e
        for i, s in enumerate(series):
            if s.ndim != 1:
                raise ValueError(f"context[{i}] must be 1-D, got shape {s.shape}")
        width = max(len(s) for s in series)
        arr = np.full((len(series), width), np.nan, np.float32)
        for i, s in enumerate(series):
            if len(s):
                arr[i, width - len(s) :] = s
    else:
        try:
            arr = np.asarray(context).astype(np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"context is not numeric: {e}") from e
        if arr.ndim == 1:
            arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"context must be 1-D [T] or 2-D [B, T], got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"context is empty (shape {arr.shape})")
    if np.isinf(arr).any():
        raise ValueError("context contains inf; use NaN for missing values")
    empty = np.nonzero(np.isnan(arr).all(axis=1))[0]
    if empty.size and not allow_unobserved:
        raise ValueError(f"context rows {empty.tolist()} have no observed (non-NaN) value")
    return arr


def bucket_length(n: int, context_length: int) -> int:
    """Smallest of 64, 128, 256, ... (capped at ``context_length``) that holds ``n`` values."""
    size = _MIN_BUCKET
    while size < n:
        size *= 2
    return min(size, context_length) if n <= context_length else context_length


class ChronosT5Pipeline:
    """Forecast with a Chronos-T5 model: ``predict`` samples, ``predict_quantiles``, ``embed``."""

    def __init__(self, model: ChronosT5):
        model.eval()
        self.model = model
        self.tokenizer = model.tokenizer
        self.config = model.config.chronos

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path) -> ChronosT5Pipeline:
        """An HF Chronos directory or hub id (``amazon/chronos-t5-small``), or a jaxts
        checkpoint directory written by ``train.chronos`` / ``save_model``."""
        from jaxts.checkpoint import is_checkpoint_dir, load_model

        path = Path(path_or_repo_id).expanduser()
        if is_checkpoint_dir(path):
            return cls(load_model(path, family="chronos_t5"))
        from bridges.chronos_t5 import from_hf

        return cls(from_hf(path_or_repo_id))

    @property
    def model_context_length(self) -> int:
        return self.config.context_length

    @property
    def model_prediction_length(self) -> int:
        return self.config.prediction_length

    # ---- the token space: what a subclass with another tokenizer overrides ---------------

    def _context_tokens(self, context: np.ndarray):
        """Encoder ids, mask ``[B, T']`` and scale ``[B]`` of ``context [B, T]``."""
        return self.tokenizer.context_input_transform(context)

    def _decoder_inputs(self, ids: np.ndarray, mask: np.ndarray) -> dict:
        """Extra :func:`sample_tokens` arguments (a decoder prefix); Chronos starts from PAD."""
        return {}

    def _values(self, tokens: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Token ids ``[B, S, H]`` -> values ``[B, S, H]``."""
        return self.tokenizer.output_transform(tokens, scale)

    def _tokenize(self, context: np.ndarray):
        """Tokens padded on the left to a bucket length (masked, so results are unchanged)."""
        ids, mask, scale = self._context_tokens(context)
        n_values = min(context.shape[1], self.config.context_length)  # ids less EOS, if any
        pad = bucket_length(n_values, self.config.context_length) - n_values
        if pad > 0:
            ids = np.pad(ids, ((0, 0), (pad, 0)), constant_values=self.config.pad_token_id)
            mask = np.pad(mask, ((0, 0), (pad, 0)), constant_values=False)
        return ids, mask, scale

    def embed(self, context) -> tuple[np.ndarray, np.ndarray]:
        """Encoder embeddings ``[B, T (+1 for EOS), d_model]`` and the scale ``[B]``; T is the
        (truncated) context length, as upstream (no bucket padding here)."""
        arr = prepare_context(context)
        ids, mask, scale = self._context_tokens(arr)
        return np.asarray(encode(self.model, ids, mask)), scale

    def predict(
        self,
        inputs,
        prediction_length: int | None = None,
        num_samples: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        limit_prediction_length: bool = False,
        *,
        key: jax.Array | None = None,
    ) -> np.ndarray:
        """Sample paths ``[B, num_samples, prediction_length]`` (float32).

        Parameters are upstream's, in upstream's order (so positional and keyword callers of
        ``ChronosPipeline.predict`` work unchanged), plus the keyword-only ``key``.

        Horizons beyond the model's ``prediction_length`` are forecast in chunks: the median
        (lower middle sample, as ``torch.median``) of each chunk is appended to the context,
        which is re-tokenised (new scale) for the next chunk.
        """
        cfg = self.config
        arr = prepare_context(inputs)
        h = cfg.prediction_length if prediction_length is None else int(prediction_length)
        s = cfg.num_samples if num_samples is None else int(num_samples)
        temperature = cfg.temperature if temperature is None else float(temperature)
        top_k = cfg.top_k if top_k is None else int(top_k)
        top_p = cfg.top_p if top_p is None else float(top_p)
        if h <= 0:
            raise ValueError(f"prediction_length must be positive, got {h}")
        if s <= 0:
            raise ValueError(f"num_samples must be positive, got {s}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if h > cfg.prediction_length:
            msg = (
                f"We recommend keeping prediction length <= {cfg.prediction_length}. "
                "The quality of longer predictions may degrade since the model is not "
                "optimized for it. "
            )
            if limit_prediction_length:
                raise ValueError(
                    msg + "You can turn off this check by setting `limit_prediction_length=False`."
                )
            logger.warning(msg)
        key = jax.random.key(0) if key is None else key
        chunks, remaining, step = [], h, 0
        while remaining > 0:
            ids, mask, scale = self._tokenize(arr)
            n = min(remaining, cfg.prediction_length)
            tokens = sample_tokens(
                self.model,
                ids,
                mask,
                jax.random.fold_in(key, step),
                prediction_length=n,
                num_samples=s,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                **self._decoder_inputs(ids, mask),
            )
            values = self._values(np.asarray(tokens), scale)  # [B, S, n]
            chunks.append(values)
            remaining -= n
            step += 1
            if remaining > 0:
                median = np.sort(values, axis=1)[:, (s - 1) // 2]  # torch.median: lower middle
                arr = np.concatenate([arr, median], axis=-1)
        return np.concatenate(chunks, axis=-1).astype(np.float32)

    def predict_quantiles(
        self,
        inputs,
        prediction_length: int | None = None,
        quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
        **predict_kwargs,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Quantiles ``[B, H, Q]`` (linear interpolation, as ``torch.quantile``) and the sample
        mean ``[B, H]``."""
        levels = np.asarray(quantile_levels, np.float64)
        if levels.ndim != 1 or levels.size == 0 or (levels < 0).any() or (levels > 1).any():
            raise ValueError(f"quantile_levels must be a non-empty list in [0, 1], got {levels}")
        samples = self.predict(inputs, prediction_length, **predict_kwargs)  # [B, S, H]
        q = np.quantile(samples, levels, axis=1).astype(np.float32)  # [Q, B, H]
        return np.moveaxis(q, 0, -1), samples.mean(axis=1)
