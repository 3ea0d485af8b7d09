"""``DistanceAwareChronosPipeline``: Chronos-T5 forecasting with the distance-aware head.

Same API as :class:`ChronosT5Pipeline` (``predict``, ``predict_quantiles``, ``embed``; upstream
parameter names, explicit ``key``, the long-horizon loop) and the same jitted sampler (encoder
once, KV cache, all samples in parallel) with the head's logits in place of the LM head.

Token spaces (``DistanceAwareChronos.upstream_compat``):

* default: Chronos' own ``MeanScaleUniformBins`` ids and values, exactly as
  ``ChronosT5Pipeline`` (head bin k is Chronos token k; EOS is never sampled);
* ``upstream_compat=True``, the published tokenizer (``distance_aware_chronos.py``'s
  ``tokenize_time_series`` / ``detokenize``), as :func:`upstream_tokenize` reads it: ``scale =
  mean(|x|) + 1e-10`` over the observed context values, ``ids = clip(digitize(clip(x / scale,
  -15, 15), linspace(-15, 15, N)) - 1, 0, N - 1)``, no EOS; those ids are the encoder input and
  the decoder prefix (upstream fed the series to both), and token k decodes to
  ``linspace(-15, 15, N)[k] * scale``. Deviations, forced by the encoder-once sampler or by
  input upstream never handled: the encoder sees the context only (upstream's ``predict``
  re-encoded context + forecast at every step), the context is cut to its last
  ``context_length`` values before scaling, and missing values (NaN, left padding) are masked
  in the encoder and the decoder (upstream had none and padded with unmasked zeros).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxts.models.distance_head import LIMIT, DistanceAwareChronos
from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline

__all__ = ["DistanceAwareChronosPipeline", "upstream_detokenize", "upstream_tokenize"]


def upstream_tokenize(context: np.ndarray, num_bins: int):
    """The published tokenizer over ``context [B, T]`` float32 (NaN = missing) -> ids int32,
    mask bool ``[B, T]`` (missing values: id 0, masked) and scale float32 ``[B]``.

    Per row, numpy as upstream: ``np.abs(x).mean() + 1e-10`` over the observed values in
    float32 (one row at a time, so numpy's pairwise sum sees what upstream's did), then the
    float32 division and clip, and ``np.digitize`` against float64 ``np.linspace``."""
    context = np.asarray(context, np.float32)
    mask = ~np.isnan(context)
    bins = np.linspace(-LIMIT, LIMIT, num_bins)
    ids = np.zeros(context.shape, np.int32)
    scale = np.zeros(context.shape[0], np.float32)
    for i, (row, keep) in enumerate(zip(context, mask, strict=True)):
        x = row[keep]
        scale[i] = np.abs(x).mean() + np.float32(1e-10)
        scaled = np.clip(x / scale[i], -LIMIT, LIMIT)
        ids[i, keep] = np.clip(np.digitize(scaled, bins) - 1, 0, num_bins - 1)
    return ids, mask, scale


def upstream_detokenize(tokens: np.ndarray, scale: np.ndarray, num_bins: int) -> np.ndarray:
    """Ids ``[B, S, H]`` -> values ``[B, S, H]`` float32: upstream's ``bins[id] * scale``."""
    bins = np.linspace(-LIMIT, LIMIT, num_bins)
    values = bins[np.asarray(tokens)] * np.asarray(scale, np.float32)[:, None, None]
    return values.astype(np.float32)


class DistanceAwareChronosPipeline(ChronosT5Pipeline):
    """Forecast with a :class:`DistanceAwareChronos`; sampling settings default to the base
    model's ``chronos_config``."""

    model: DistanceAwareChronos

    def __init__(self, model: DistanceAwareChronos):
        if not isinstance(model, DistanceAwareChronos):
            raise TypeError(f"expected a DistanceAwareChronos, got {type(model).__name__}")
        model.eval()
        self.model = model
        self.tokenizer = model.base.tokenizer
        self.config = model.config.chronos
        self.upstream_compat = model.upstream_compat
        self.num_bins = model.head.config.num_bins

    @classmethod
    def from_pretrained(
        cls, base: str | Path, head: str | Path, upstream_compat: bool = False
    ) -> DistanceAwareChronosPipeline:
        """``base``: an HF Chronos directory / hub id or a jaxts ``chronos_t5`` checkpoint
        directory; ``head``: a jaxts ``distance_head`` checkpoint directory, or upstream's
        ``distance_output.pt``, a directory holding it, or a hub id
        (``Phoenix21/distance-aware-chronos-t``, with ``upstream_compat=True``)."""
        from jaxts.checkpoint import is_checkpoint_dir, load_model

        chronos = ChronosT5Pipeline.from_pretrained(base).model
        path = Path(head).expanduser()
        if is_checkpoint_dir(path):
            distance_head = load_model(path, family="distance_head")
        else:
            from bridges.distance_head import from_upstream

            distance_head = from_upstream(head)
        return cls(DistanceAwareChronos(chronos, distance_head, upstream_compat=upstream_compat))

    def _context_tokens(self, context: np.ndarray):
        if not self.upstream_compat:
            return super()._context_tokens(context)
        context = np.asarray(context, np.float32)[..., -self.config.context_length :]
        return upstream_tokenize(context, self.num_bins)

    def _decoder_inputs(self, ids: np.ndarray, mask: np.ndarray) -> dict:
        if not self.upstream_compat:
            return {}
        return {"decoder_prefix": ids, "prefix_mask": mask}

    def _values(self, tokens: np.ndarray, scale: np.ndarray) -> np.ndarray:
        if not self.upstream_compat:
            return super()._values(tokens, scale)
        return upstream_detokenize(tokens, scale, self.num_bins)
