"""Task items for the MaxEnt-TS evaluation (issue 13, section 3): prompt, label-free reward, and
the evaluation target kept apart.

A :class:`TaskItem`'s ``reward`` is built from the prompt's input alone; ``label`` / ``truth``
are for the metrics only and are never passed to the reward. Three tasks:

- :func:`har_items`: UCI-HAR activity classification with a short chain of thought ending in
  ``Answer: <label>`` (metric: accuracy / macro-F1 of :func:`parse_har_answer` vs ``label``).
- :func:`m4_caption_items`: captions of M4 Hourly series (metric: the same faithfulness).
- :func:`m4_forecast_items`: LLMTime-style text forecasting of M4 Hourly (metric: :func:`mase`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxts.data._har import HAR_FS, load_har, split_har
from jaxts.data._m4 import M4_HOURLY_HORIZON, M4_HOURLY_SEASONALITY, load_m4_hourly
from jaxts.search.rewards import (
    HarVerifier,
    Reward,
    caption_faithfulness,
    har_reward,
    parse_har_answer,
    parse_numbers,
    spectral_reward,
)

__all__ = [
    "TaskItem",
    "har_items",
    "llmtime_deserialize",
    "llmtime_serialize",
    "m4_caption_items",
    "m4_forecast_items",
    "mase",
    "parse_har_answer",
]


@dataclass(frozen=True, eq=False)
class TaskItem:
    """One evaluation item.

    ``messages``: the chat messages (``[{"role", "content"}, ...]``) for the model's chat
    template; ``reward``: the label-free reward on the generated text; ``label`` (HAR: the true
    label name) and ``truth`` (forecasting: the held-out values, in original units) are for the
    metrics only; ``extra``: task data (series, scale, series id, window index, ...)."""

    name: str
    messages: list[dict[str, str]]
    reward: Reward
    label: str | None = None
    truth: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _check_n(n: int, available: int, what: str) -> None:
    if not 1 <= n <= available:
        raise ValueError(f"n must be in 1..{available} ({what}), got {n}")


def _fmt(values: np.ndarray, decimals: int) -> str:
    return ", ".join(f"{v:.{decimals}f}" for v in values)


# ----------------------------------------------------------------------------------------- HAR


def _downsample(x: np.ndarray, points: int) -> np.ndarray:
    """Block means (an anti-aliasing low-pass) of ``x [T]`` down to ``points`` values."""
    edges = np.linspace(0, x.size, points + 1).round().astype(int)
    return np.array([x[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)])


def _har_prompt(window: np.ndarray, labels: tuple[str, ...], points: int) -> list[dict[str, str]]:
    lines = []
    for axis, x in zip("xyz", window.T, strict=True):
        mu, sd = float(x.mean()), float(x.std())
        z = _downsample((x - mu) / (sd if sd > 0 else 1.0), points)
        lines.append(
            f"{axis}-axis: mean {mu:.3f} g, std {sd:.3f} g; z-normalised values: {_fmt(z, 2)}"
        )
    secs = window.shape[0] / HAR_FS
    user = (
        f"The following is {secs:.2f} s of tri-axial total acceleration from a smartphone worn "
        f"at the waist, sampled at {HAR_FS:.0f} Hz and shown as {points} averaged points per "
        "axis (each axis z-normalised by its own mean and std, given first).\n"
        + "\n".join(lines)
        + f"\nPossible activities: {', '.join(labels)}.\n"
        "Reason briefly about the signal, then finish with a last line of the form "
        "'Answer: <activity>' using one of the activities above."
    )
    system = "You are an expert in human activity recognition from accelerometer data."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _stratified_pick(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` positions taken round-robin over the classes, each class in a seeded random order."""
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    out: list[int] = []
    while len(out) < n:
        for pool in pools:
            if pool and len(out) < n:
                out.append(int(pool.pop(0)))
    return np.asarray(out)


def har_items(
    data_dir: str | os.PathLike | None = None, n: int = 30, seed: int = 0, points: int = 32
) -> tuple[list[TaskItem], HarVerifier]:
    """``(items, verifier)``: ``n`` HAR windows from the evaluation half of
    :func:`jaxts.data.split_har` (split with ``seed``), picked round-robin over the 6 classes
    (30 -> 5 per class) in a ``seed``-fixed order, and the :class:`HarVerifier` fitted on the
    verifier half only.

    OpenTSLM-style prompt: per-axis mean and std in g, then the axis z-normalised and averaged
    down to ``points`` values (2 decimals, LLMTime-style comma separated), the allowed labels,
    and the instruction to reason briefly and end with ``Answer: <label>``. ``item.label`` is
    the true label name (evaluation only); ``item.extra``: ``window`` ``[128, 3]``, ``index``
    (row in the HAR test files), ``label_id``."""
    data = load_har(data_dir)
    verifier_half, eval_half = split_har(data, seed=seed)
    _check_n(n, len(eval_half), "the HAR evaluation half")
    if points < 2 or points > data.windows.shape[1]:
        raise ValueError(f"points must be in 2..{data.windows.shape[1]}, got {points}")
    verifier = HarVerifier().fit(verifier_half.windows, verifier_half.labels)
    rows = _stratified_pick(eval_half.labels, n, np.random.default_rng(seed))
    items = []
    for r in rows:
        window = np.asarray(eval_half.windows[r])
        lab = int(eval_half.labels[r])
        items.append(
            TaskItem(
                name=f"har-{int(eval_half.index[r])}",
                messages=_har_prompt(window, data.label_names, points),
                reward=har_reward(window, verifier, data.label_names),
                label=data.label_names[lab],
                extra={"window": window, "index": int(eval_half.index[r]), "label_id": lab},
            )
        )
    return items, verifier


# ----------------------------------------------------------------------------- LLMTime format


def llmtime_serialize(
    x: np.ndarray, *, scale: float | None = None, digits: int = 3
) -> tuple[str, float]:
    """``(text, scale)``: ``x / scale`` rounded to integers, ``", "``-separated.

    ``scale=None`` picks the power of ten that gives the 99th percentile of ``|x|`` ``digits``
    digits (``x ~ 700`` -> scale 1, ``x ~ 45,000`` -> scale 100, ``x ~ 0.5`` -> scale 0.001), so
    the values have about ``digits`` significant digits, a readable decimal scaling in the
    spirit of LLMTime (which scales by a quantile and drops the decimal point)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"expected a finite non-empty 1-D series, got shape {x.shape}")
    if scale is None:
        q = float(np.quantile(np.abs(x), 0.99))
        scale = 10.0 ** (math.floor(math.log10(q)) - (digits - 1)) if q > 0 else 1.0
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return ", ".join(str(int(v)) for v in np.rint(x / scale)), float(scale)


def llmtime_deserialize(text: str, scale: float, *, horizon: int | None = None) -> np.ndarray:
    """The numbers in ``text`` (see :func:`parse_numbers`) times ``scale``, the first
    ``horizon`` of them when given (possibly fewer: no padding here)."""
    y = parse_numbers(text) * scale
    return y[:horizon] if horizon is not None else y


# ---------------------------------------------------------------------------------------- M4


def _pick_series(count: int, n: int, seed: int) -> np.ndarray:
    _check_n(n, count, "M4 Hourly series")
    return np.sort(np.random.default_rng(seed).choice(count, size=n, replace=False))


def _level_fmt(x: np.ndarray) -> int:
    """Decimals that show about 4 significant digits of the largest value."""
    top = float(np.max(np.abs(x)))
    return max(0, 3 - math.floor(math.log10(top))) if top > 0 else 0


def m4_caption_items(
    data_dir: str | os.PathLike | None = None, n: int = 30, seed: int = 0, context: int = 96
) -> list[TaskItem]:
    """``n`` M4 Hourly series (a ``seed``-fixed random choice of the 414), the last ``context``
    train values each, to be captioned.

    The prompt shows the values in original units (about 4 significant digits) and asks for a
    short caption of level (mean, min, max), start and end, trend and daily cycle. The reward
    is :func:`caption_faithfulness` of the shown series. No reference captions exist offline, so
    the task's METRIC is this same faithfulness score (say so next to the number): it measures
    consistency with the series' statistics, not caption quality. ``item.extra``: ``series``,
    ``series_id``."""
    train, _, ids = load_m4_hourly(data_dir, with_ids=True)
    items = []
    for i in _pick_series(len(train), n, seed):
        x = np.asarray(train[i][-context:], dtype=np.float64)
        user = (
            f"Here are the last {x.size} hourly values of a time series, oldest first:\n"
            f"{_fmt(x, _level_fmt(x))}\n"
            "Write a short caption (two or three sentences) of this series: its mean, minimum "
            "and maximum, where it starts and ends, its overall trend (up, down or flat) and "
            "whether it has a daily cycle."
        )
        messages = [
            {"role": "system", "content": "You describe time series accurately and concisely."},
            {"role": "user", "content": user},
        ]
        items.append(
            TaskItem(
                name=f"m4-caption-{ids[i]}",
                messages=messages,
                reward=caption_faithfulness(x),
                extra={"series": x, "series_id": ids[i]},
            )
        )
    return items


def m4_forecast_items(
    data_dir: str | os.PathLike | None = None,
    n: int = 30,
    seed: int = 0,
    context: int = 96,
    horizon: int = 24,
) -> list[TaskItem]:
    """``n`` M4 Hourly series (``seed``-fixed), the last ``context`` train values serialised
    with :func:`llmtime_serialize`; the model continues the comma-separated list.

    ``reward`` = :func:`spectral_reward` of the continuation (its first ``horizon`` numbers, in
    the serialised units) against the serialised CONTEXT, never the truth. ``truth`` = the
    first ``horizon`` test values (original units), scored with :func:`mase`. ``item.extra``:
    ``scale``, ``history`` (the whole train series, for the MASE scale), ``context`` (original
    units), ``horizon``, ``series_id``."""
    if not 1 <= horizon <= M4_HOURLY_HORIZON:
        raise ValueError(f"horizon must be in 1..{M4_HOURLY_HORIZON}, got {horizon}")
    if context < 8:
        raise ValueError(f"context must be >= 8 (a PSD needs it), got {context}")
    train, test, ids = load_m4_hourly(data_dir, with_ids=True)
    items = []
    for i in _pick_series(len(train), n, seed):
        history = np.asarray(train[i], dtype=np.float64)
        ctx = history[-context:]
        text, scale = llmtime_serialize(ctx)
        user = (
            f"Continue this hourly time series with the next {horizon} values. Reply with the "
            f"{horizon} numbers only, comma separated, in the same format.\n{text}"
        )
        messages = [
            {"role": "system", "content": "You are a time-series forecasting assistant."},
            {"role": "user", "content": user},
        ]
        items.append(
            TaskItem(
                name=f"m4-forecast-{ids[i]}",
                messages=messages,
                reward=spectral_reward(np.rint(ctx / scale), max_len=horizon),
                truth=np.asarray(test[i][:horizon], dtype=np.float64),
                extra={
                    "scale": scale,
                    "history": history,
                    "context": ctx,
                    "horizon": horizon,
                    "series_id": ids[i],
                },
            )
        )
    return items


def mase(forecast_text: str, item: TaskItem, season: int = M4_HOURLY_SEASONALITY) -> float:
    """MASE of the forecast written in ``forecast_text`` against ``item.truth``.

    The forecast is :func:`llmtime_deserialize` (first ``horizon`` numbers times the item's
    scale); a short forecast is padded with its last value, and one with no number at all is
    the naive forecast (the last context value repeated). MASE = mean ``|forecast - truth|``
    divided by the in-sample seasonal-naive error mean ``|h[t] - h[t - season]|`` over the whole
    train ``history`` (the M4 definition)."""
    if item.truth is None or "history" not in item.extra:
        raise ValueError(f"mase needs a forecasting item (truth and extra['history']): {item.name}")
    h = item.truth.size
    y = llmtime_deserialize(forecast_text, item.extra["scale"], horizon=h)
    history = item.extra["history"]
    if y.size == 0:
        y = history[-1:]
    y = np.concatenate([y, np.full(h - y.size, y[-1])])  # [h]
    denom = float(np.mean(np.abs(history[season:] - history[:-season])))
    if not denom > 0:
        raise ValueError(f"{item.name}: the seasonal-naive in-sample error is 0; MASE undefined")
    return float(np.mean(np.abs(y - item.truth)) / denom)
