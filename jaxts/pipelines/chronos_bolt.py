"""``ChronosBoltPipeline``: chronos-forecasting's ``ChronosBoltPipeline`` API over the jitted model.

Same inputs and outputs as upstream (a 1-D series, a list of ragged 1-D series, or a 2-D batch
left-padded with NaN; quantiles ``[B, Q, H]`` as float32 numpy), including the long-horizon
heuristic. Differences, all deliberate:

* contexts are left-padded with NaN to a length bucket (64, 128, 256, ..., ``context_length``)
  so that a handful of programs is compiled; the padding patches are masked attention keys and
  T5's position bias is relative, so the forecast is unchanged;
* bad input (empty, wrong rank, inf, ``prediction_length <= 0``) raises ``ValueError``; a series
  with no observed value is forecast as upstream does (from loc 0 / scale 1).
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxts.models.chronos_bolt import ChronosBolt
from jaxts.pipelines.chronos_t5 import DEFAULT_QUANTILES, bucket_length, prepare_context

logger = logging.getLogger(__name__)


TRACES = [0]  # how many programs _forecast was traced for (one per shape bucket)


@nnx.jit
def _forecast(model, context):
    TRACES[0] += 1  # runs only while jax traces
    return model(context)  # [B, Q, H]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _encode(graphdef, state, context):
    enc, (loc, scale), _ = nnx.merge(graphdef, state).encode(context)
    return enc, loc[:, 0], scale[:, 0]


class ChronosBoltPipeline:
    """Forecast with a Chronos-Bolt model: ``predict`` (quantiles), ``predict_quantiles``,
    ``embed``."""

    def __init__(self, model: ChronosBolt):
        model.eval()
        self.model = model
        self.config = model.config.chronos
        self._forecaster = None  # (model, _forecast bound to it)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path) -> ChronosBoltPipeline:
        """An HF Chronos-Bolt directory or hub id (``amazon/chronos-bolt-small``), or a jaxts
        checkpoint directory written by ``save_model``."""
        from jaxts.checkpoint import is_checkpoint_dir, load_model

        path = Path(path_or_repo_id).expanduser()
        if is_checkpoint_dir(path):
            return cls(load_model(path, family="chronos_bolt"))
        from bridges.chronos_bolt import from_hf

        return cls(from_hf(path_or_repo_id))

    @property
    def model_context_length(self) -> int:
        return self.config.context_length

    @property
    def model_prediction_length(self) -> int:
        return self.config.prediction_length

    @property
    def quantiles(self) -> list[float]:
        return list(self.config.quantiles)

    def _quantile_preds(self, context: np.ndarray) -> np.ndarray:
        """The model on ``context [R, T]`` (T <= context_length), left-padded with NaN to its
        length bucket -> ``[R, Q, H]`` float32."""
        pad = bucket_length(context.shape[1], self.model_context_length) - context.shape[1]
        if pad > 0:
            context = np.pad(context, ((0, 0), (pad, 0)), constant_values=np.nan)
        # nnx.cached_partial walks the module graph once, not per call (nnx.split took 9 of
        # 36 ms per batch-1 predict of chronos-bolt-small), and still reads the weights' current
        # values; rebuilt when pipe.model is replaced
        if self._forecaster is None or self._forecaster[0] is not self.model:
            self._forecaster = (self.model, nnx.cached_partial(_forecast, self.model))
        return np.asarray(self._forecaster[1](context))

    def embed(self, context) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Encoder embeddings ``[B, N (+1 for REG), d_model]`` of the last ``context_length``
        steps (N patches, as upstream: no bucket padding here) and ``(loc, scale)`` ``[B]``."""
        arr = prepare_context(context, allow_unobserved=True)[:, -self.model_context_length :]
        enc, loc, scale = _encode(*nnx.split(self.model), arr)
        return np.asarray(enc), (np.asarray(loc), np.asarray(scale))

    def predict(
        self,
        inputs,
        prediction_length: int | None = None,
        limit_prediction_length: bool = False,
    ) -> np.ndarray:
        """Quantile forecasts ``[B, Q, prediction_length]`` (float32), Q the model's quantiles.

        Beyond the model's own horizon (a warning; an error with ``limit_prediction_length``),
        as upstream: every quantile path of the last chunk is appended to the context and
        forecast again, and the Q*Q resulting quantiles are reduced to Q by empirical
        quantiles (linear interpolation, as ``torch.quantile``) at the model's levels.
        """
        horizon = self.model_prediction_length
        h = horizon if prediction_length is None else int(prediction_length)
        if h <= 0:
            raise ValueError(f"prediction_length must be positive, got {h}")
        if h > horizon:
            msg = (
                f"We recommend keeping prediction length <= {horizon}. The quality of longer "
                "predictions may degrade since the model is not optimized for it. "
            )
            if limit_prediction_length:
                raise ValueError(
                    msg + "You can turn off this check by setting `limit_prediction_length=False`."
                )
            warnings.warn(msg, stacklevel=2)
        ctx_len = self.model_context_length
        context = prepare_context(inputs, allow_unobserved=True)[:, -ctx_len:]  # [B, T]
        prediction = self._quantile_preds(context)  # [B, Q, H]
        chunks, remaining = [prediction], h - prediction.shape[-1]
        levels = np.asarray(self.config.quantiles, np.float32)
        if remaining > 0:
            context = np.repeat(context[:, None], len(levels), axis=1)  # [B, Q, T]
        while remaining > 0:
            context = np.concatenate([context, prediction], axis=-1)[..., -ctx_len:]
            b, q, t = context.shape
            paths = self._quantile_preds(context.reshape(b * q, t))  # [B*Q, Q, H]
            paths = paths.reshape(b, q * q, -1)  # [B, Q*Q, H]
            prediction = np.quantile(paths, levels, axis=1).astype(np.float32)  # [Q, B, H]
            prediction = np.swapaxes(prediction, 0, 1)  # [B, Q, H]
            chunks.append(prediction)
            remaining -= prediction.shape[-1]
        return np.concatenate(chunks, axis=-1)[..., :h].astype(np.float32)

    def predict_quantiles(
        self,
        inputs,
        prediction_length: int | None = None,
        quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
        **predict_kwargs,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Quantiles ``[B, H, L]`` at ``quantile_levels`` and the median as the mean ``[B, H]``.

        Levels the model predicts are taken as they are; otherwise, as upstream, the model's
        quantiles (assumed an even grid) padded with their first and last value are
        interpolated linearly (``torch.quantile``), so levels outside the model's range get
        the extreme quantile (with a warning).
        """
        levels = [float(q) for q in quantile_levels]
        if not levels or not all(0 <= q <= 1 for q in levels):
            raise ValueError(f"quantile_levels must be a non-empty list in [0, 1], got {levels}")
        trained = self.quantiles
        if 0.5 not in trained:
            raise ValueError(f"the model's quantiles {trained} lack 0.5, the mean forecast")
        preds = np.swapaxes(self.predict(inputs, prediction_length, **predict_kwargs), 1, 2)
        if set(levels) <= set(trained):
            quantiles = preds[..., [trained.index(q) for q in levels]]  # [B, H, L]
        else:
            if min(levels) < min(trained) or max(levels) > max(trained):
                logger.warning(
                    "Quantiles to be predicted (%s) are not within the range of quantiles that "
                    "Chronos-Bolt was trained on (%s); they are set to the extreme levels.",
                    levels,
                    trained,
                )
            padded = np.concatenate([preds[..., :1], preds, preds[..., -1:]], axis=-1)
            quantiles = np.quantile(padded, np.asarray(levels, np.float32), axis=-1)  # [L, B, H]
            quantiles = np.moveaxis(quantiles, 0, -1).astype(np.float32)
        return quantiles, preds[..., trained.index(0.5)]
