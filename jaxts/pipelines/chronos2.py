"""``Chronos2Pipeline``: chronos-forecasting 2.x's ``Chronos2Pipeline`` API over the jitted JAX
Chronos-2, plus similarity-weighted soft group masking (``soft_mask=``).

Same inputs, batching, long-horizon unrolling and outputs as upstream (numpy arrays where
upstream returns torch tensors). Differences, all deliberate:

* each batch is padded before the model call: rows up to a power of two with all-NaN series in
  groups of their own, the context on the left with NaN up to a power-of-two number of patches
  (capped at the model's context length). Padded series see nothing and are seen by no one, and
  left NaN padding is masked out, so forecasts are unchanged; what it buys is one compiled
  program per (rows, context, output patches, soft mask or not) bucket instead of one per call;
* ``soft_mask``: a :class:`jaxts.soft_mask.SoftGroupMask` whose ``group_bias`` of each batch's
  context and group ids is added to the model's cross-group attention scores;
* bad input (inf in a context, non-positive lengths or batch size) is one ``ValueError``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from jaxts.models.chronos2 import Chronos2Model
from jaxts.pipelines.chronos2_df import (
    from_data_frame,
    make_future_df,
    validate_and_normalize_df,
)
from jaxts.pipelines.chronos2_inputs import Batch, inference_batches, prepare_inputs
from jaxts.quantiles import interpolate_quantiles, prob_mass_per_quantile_level, weighted_quantile

__all__ = ["Chronos2Pipeline"]

logger = logging.getLogger(__name__)

DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MASK_VALUE = float(np.finfo(np.float32).min)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def expand_bias_for_paths(bias: np.ndarray, n_paths: int) -> np.ndarray:
    """``[B, B]`` -> ``[B*n, B*n]`` over the unrolled series ``(b, path)`` (row ``b*n + path``):
    series of one path keep their bias, different paths never see each other (as upstream's
    shifted group ids ``g*n + path`` make them different groups)."""
    b = bias.shape[0]
    same_path = np.eye(n_paths, dtype=bool)[None, :, None, :]  # [1, n, 1, n]
    out = np.where(same_path, bias[:, None, :, None], np.float32(MASK_VALUE))  # [B, n, B, n]
    return out.reshape(b * n_paths, b * n_paths).astype(np.float32)


class Chronos2Pipeline:
    """Forecast with a Chronos-2 model: ``predict``, ``predict_quantiles``, ``predict_df``."""

    def __init__(self, model: Chronos2Model):
        model.eval()
        self.model = model
        self.trace_count = 0  # how many programs the model step has been traced (compiled) for
        self._step = jax.jit(self._traced_step, static_argnames=("graphdef", "n"))

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path, **kwargs) -> Chronos2Pipeline:
        """An HF Chronos-2 directory or hub id (``amazon/chronos-2``), a PEFT LoRA adapter of
        one (``fit(finetune_mode="lora")``), or a jaxts checkpoint directory (``save_model``).
        ``kwargs`` go to ``bridges.chronos2.from_upstream`` (``lora=``)."""
        from jaxts.checkpoint import is_checkpoint_dir, load_model

        path = Path(path_or_repo_id).expanduser()
        if is_checkpoint_dir(path):
            return cls(load_model(path, family="chronos2"))
        from bridges.chronos2 import from_upstream

        return cls(from_upstream(path_or_repo_id, **kwargs))

    # ---- upstream's properties -------------------------------------------------------------

    @property
    def chronos_config(self):
        return self.model.config.chronos

    @property
    def model_context_length(self) -> int:
        return self.chronos_config.context_length

    @property
    def model_output_patch_size(self) -> int:
        return self.chronos_config.output_patch_size

    @property
    def model_prediction_length(self) -> int:
        return self.chronos_config.max_output_patches * self.chronos_config.output_patch_size

    @property
    def quantiles(self) -> list[float]:
        return list(self.chronos_config.quantiles)

    @property
    def max_output_patches(self) -> int:
        return self.chronos_config.max_output_patches

    # ---- one model call ---------------------------------------------------------------------

    def _traced_step(self, graphdef, state, context, group_ids, future, bias, *, n):
        self.trace_count += 1  # runs only while jax traces a new shape bucket
        model = nnx.merge(graphdef, state)
        return model(context, None, group_ids, future, n, bias)

    def _predict_step(self, split, context, group_ids, future, bias, n: int) -> np.ndarray:
        """Quantiles ``[B, Q, n*P]`` of ``context [B, T]``; ``future [B, F]`` is cut or
        NaN-padded to ``n*P`` steps (upstream); then rows and context are padded to buckets."""
        b, t = context.shape
        size = n * self.model_output_patch_size
        future = future[:, :size]
        future = np.pad(future, ((0, 0), (0, size - future.shape[1])), constant_values=np.nan)
        rows = _next_pow2(b) - b
        p = self.chronos_config.input_patch_size
        width = min(p * _next_pow2(math.ceil(t / p)), max(t, self.model_context_length))
        context = np.pad(context, ((0, rows), (width - t, 0)), constant_values=np.nan)
        future = np.pad(future, ((0, rows), (0, 0)), constant_values=np.nan)
        # padded rows: each in a group of its own (ids above every real one)
        ids = np.concatenate([group_ids, group_ids.max(initial=0) + 1 + np.arange(rows)])
        if bias is not None:
            bias = np.pad(bias, ((0, rows), (0, rows)), constant_values=np.float32(MASK_VALUE))
            bias = jnp.asarray(bias, jnp.float32)
        graphdef, state = split
        out = self._step(
            graphdef, state, jnp.asarray(context, jnp.float32), jnp.asarray(ids, jnp.int32),
            jnp.asarray(future, jnp.float32), bias, n=n,
        )  # fmt: skip
        return np.asarray(out, np.float32)[:b]

    # ---- predict ----------------------------------------------------------------------------

    def _check_predict_args(self, prediction_length, batch_size, context_length, unrolled):
        h = self.model_prediction_length if prediction_length is None else prediction_length
        h = _positive_int("prediction_length", h)
        _positive_int("batch_size", batch_size)
        c = self.model_context_length if context_length is None else context_length
        c = _positive_int("context_length", c)
        if not set(unrolled) <= set(self.quantiles):
            raise ValueError(
                "Unrolled quantiles must be a subset of the model's quantiles. Found: "
                f"unrolled_quantiles={list(unrolled)}, model_quantiles={self.quantiles}"
            )
        return h, c

    def predict(
        self,
        inputs,
        prediction_length: int | None = None,
        batch_size: int = 256,
        context_length: int | None = None,
        cross_learning: bool = False,
        soft_mask=None,
        limit_prediction_length: bool = False,
        max_output_patches: int | None = None,
        unrolled_quantiles: Sequence[float] = DEFAULT_QUANTILES,
        after_batch: Callable[[], Any] | None = None,
    ) -> list[np.ndarray]:
        """Quantile forecasts, one float32 ``(n_variates, Q, prediction_length)`` array per task
        of ``inputs`` (the forms of :mod:`jaxts.pipelines.chronos2_inputs`).

        Parameters are upstream's (``max_output_patches``, ``unrolled_quantiles`` and
        ``after_batch`` are keyword arguments there too), plus ``soft_mask``: a
        :class:`jaxts.soft_mask.SoftGroupMask` letting the tasks of a batch attend to each other
        with its per-batch ``group_bias``; not with ``cross_learning`` (one group: nothing is
        cross-group).
        """
        h, context_length = self._check_predict_args(
            prediction_length, batch_size, context_length, unrolled_quantiles
        )
        if soft_mask is not None and cross_learning:
            raise ValueError(
                "soft_mask and cross_learning=True exclude each other: with cross-learning "
                "every series is in one group and there is no cross-group attention to weight"
            )
        if h > self.model_prediction_length:
            msg = (
                f"We recommend keeping prediction length <= {self.model_prediction_length}. "
                "The quality of longer predictions may degrade since the model is not "
                "optimized for it. "
            )
            if limit_prediction_length:
                msg += "You can turn off this check by setting `limit_prediction_length=False`."
                raise ValueError(msg)
            warnings.warn(msg, stacklevel=2)
        if context_length > self.model_context_length:
            warnings.warn(
                f"The specified context_length {context_length} is greater than the model's "
                f"default context length {self.model_context_length}. Resetting context_length "
                f"to {self.model_context_length}.",
                stacklevel=2,
            )
            context_length = self.model_context_length
        max_patches = self.max_output_patches if max_output_patches is None else max_output_patches
        max_patches = _positive_int("max_output_patches", max_patches)
        prepared = prepare_inputs(inputs, h)
        for i, task in enumerate(prepared):
            if np.isinf(task["context"]).any() or np.isinf(task["future_covariates"]).any():
                raise ValueError(f"inputs[{i}] contains inf; use NaN for missing values")
        out: list[np.ndarray] = []
        # split once per predict, not per model call (12 ms at the published size), and fresh
        # each predict so that weights changed in between are seen
        split = nnx.split(self.model)
        for batch in inference_batches(prepared, context_length, batch_size):
            group_ids = batch.group_ids
            if cross_learning:
                group_ids = np.zeros_like(group_ids)
            bias = None
            if soft_mask is not None:
                bias = np.asarray(soft_mask.group_bias(batch.context, group_ids), np.float32)
            out.extend(
                self._predict_batch(
                    split, batch, group_ids, bias, h, max_patches, unrolled_quantiles
                )
            )
            if after_batch is not None:
                after_batch()
        return out

    def _predict_batch(
        self,
        split,
        batch: Batch,
        group_ids,
        bias,
        h: int,
        max_patches: int,
        unrolled: Sequence[float],
    ) -> list[np.ndarray]:
        p = self.model_output_patch_size

        def n_patches(remaining: int) -> int:
            return min(math.ceil(remaining / p), max_patches)

        context, future = batch.context, batch.future_covariates
        prediction = self._predict_step(split, context, group_ids, future, bias, n_patches(h))
        predictions, remaining = [prediction], h - prediction.shape[-1]
        if remaining > 0:
            n_paths = len(unrolled)
            # every series once per unrolled quantile path: [B, n, T], [B, n, F]
            context = np.repeat(context[:, None], n_paths, axis=1)
            future = np.repeat(future[:, None], n_paths, axis=1)
            # mixing only within a group and a path (upstream's group_ids * n + path)
            group_ids = (group_ids[:, None] * n_paths + np.arange(n_paths)).reshape(-1)
            bias = None if bias is None else expand_bias_for_paths(bias, n_paths)
            weights = np.outer(
                prob_mass_per_quantile_level(unrolled), prob_mass_per_quantile_level(self.quantiles)
            ).reshape(-1)  # [n * Q]
        while remaining > 0:
            prediction, context, future = self._unroll_step(
                split, context, group_ids, future, bias, prediction, unrolled, weights,
                n_patches(remaining),
            )  # fmt: skip
            predictions.append(prediction)
            remaining -= prediction.shape[-1]
        full = np.concatenate(predictions, axis=-1)[..., :h]  # [B, Q, H]
        return [full[start:end] for start, end in batch.target_idx_ranges]

    def _unroll_step(
        self, split, context, group_ids, future, bias, prediction, unrolled, weights, n
    ):
        """One long-horizon step: the previous forecast's unrolled quantiles appended to each
        path's context, known future covariates slid in, a forecast per path, and the
        weighted quantiles of all paths' quantiles."""
        b, n_paths = context.shape[:2]
        steps = prediction.shape[-1]
        paths = interpolate_quantiles(unrolled, self.quantiles, prediction.transpose(0, 2, 1))
        context = np.concatenate([context, paths.transpose(0, 2, 1)], axis=-1)  # [B, n, T+h]
        context = context[..., -self.model_context_length :]
        known = future[..., :steps]  # where a covariate's future is known, it replaces the path
        context[..., -steps:] = np.where(np.isnan(known), context[..., -steps:], known)
        future = future[..., steps:]
        rows = b * n_paths
        out = self._predict_step(
            split, context.reshape(rows, -1), group_ids, future.reshape(rows, -1), bias, n
        )  # [B*n, Q, h]
        q, h = out.shape[1:]
        samples = out.reshape(b, n_paths * q, h).transpose(0, 2, 1)  # [B, h, n*Q]
        prediction = weighted_quantile(self.quantiles, weights, samples).transpose(0, 2, 1)
        return prediction, context, future

    # ---- quantiles and data frames -----------------------------------------------------------

    def predict_quantiles(
        self,
        inputs,
        prediction_length: int | None = None,
        quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
        **predict_kwargs,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``(quantiles, mean)``: per task ``(n_variates, H, len(quantile_levels))`` and
        ``(n_variates, H)`` (the median, as upstream). Levels the model was not trained on are
        interpolated; beyond its outermost levels they are clamped (with upstream's warning)."""
        levels = [float(q) for q in quantile_levels]
        if not levels or min(levels) < 0 or max(levels) > 1:
            raise ValueError(f"quantile_levels must be a non-empty list in [0, 1], got {levels}")
        trained = self.quantiles
        if 0.5 not in trained:
            raise ValueError(f"the model's quantiles {trained} have no median (0.5)")
        preds = self.predict(inputs, prediction_length=prediction_length, **predict_kwargs)
        preds = [x.transpose(0, 2, 1) for x in preds]  # (n_variates, H, Q)
        if set(levels) <= set(trained):
            idx = [trained.index(q) for q in levels]
            quantiles = [x[..., idx] for x in preds]
        else:
            if min(levels) < min(trained) or max(levels) > max(trained):
                logger.warning(
                    f"\tQuantiles to be predicted ({levels}) are not within the range of "
                    f"quantiles that Chronos-2 was trained on ({trained}). Quantile predictions "
                    "will be set to the minimum/maximum levels at which Chronos-2 was trained "
                    "on. This may significantly affect the quality of the predictions."
                )
            quantiles = [interpolate_quantiles(levels, trained, x) for x in preds]
        mean = [x[..., trained.index(0.5)] for x in preds]
        return quantiles, mean

    def predict_df(
        self,
        df: pd.DataFrame,
        future_df: pd.DataFrame | None = None,
        id_column: str = "item_id",
        timestamp_column: str = "timestamp",
        target: str | Sequence[str] = "target",
        prediction_length: int | None = None,
        quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
        batch_size: int = 256,
        context_length: int | None = None,
        cross_learning: bool = False,
        validate_inputs: bool = True,
        freq: str | None = None,
        **predict_kwargs,
    ) -> pd.DataFrame:
        """Forecasts of a long-format ``df`` (one row per item and timestamp; columns other
        than id, timestamp and targets are covariates, known into the future when they are in
        ``future_df``), as upstream: columns ``id_column``, ``timestamp_column``,
        ``"target_name"``, ``"predictions"`` (the median) and one per quantile level
        (``str(level)``); rows item by item (first appearance), target by target, step by step.
        """
        h = self.model_prediction_length if prediction_length is None else prediction_length
        h = _positive_int("prediction_length", h)
        targets = [target] if isinstance(target, str) else list(target)
        if validate_inputs:
            df, future_df = validate_and_normalize_df(
                df, future_df, targets, h, None, id_column, timestamp_column
            )
        prepared = from_data_frame(
            df, targets, h, future_df, id_column=id_column, timestamp_column=timestamp_column,
            validate_inputs=False,
        )  # fmt: skip
        future = make_future_df(df, h, freq, id_column, timestamp_column)
        if validate_inputs and future_df is not None:
            expected = pd.DatetimeIndex(future[timestamp_column])
            if (pd.DatetimeIndex(future_df[timestamp_column]) != expected).any():
                raise ValueError(
                    "future_df timestamps do not match the expected prediction timestamps. "
                    "You can disable this check by setting `validate_inputs=False`"
                )
        quantiles, mean = self.predict_quantiles(
            prepared, prediction_length=h, quantile_levels=quantile_levels,
            limit_prediction_length=False, batch_size=batch_size,
            context_length=context_length, cross_learning=cross_learning, **predict_kwargs,
        )  # fmt: skip
        n_items, n_targets = len(prepared), len(targets)
        # rows (item, target, step): each item's block of future rows once per target
        item_rows = np.arange(len(future)).reshape(n_items, h)
        result = future.iloc[np.repeat(item_rows, n_targets, axis=0).ravel()]
        result = result.reset_index(drop=True)
        result["target_name"] = np.tile(np.repeat(targets, h), n_items)
        result["predictions"] = np.stack(mean).ravel()
        flat = np.stack(quantiles).reshape(len(result), len(quantile_levels))
        for i, level in enumerate(quantile_levels):
            result[str(level)] = flat[:, i]
        return result
