"""Random multi-series tasks for Chronos-2 training (``train.chronos2``).

A Chronos-2 batch is a set of rows (series) split into groups by ``group_ids``: group attention
lets a row read the rows of its own group only. To teach the model to use that attention, each
training example here is a *slot* of ``max_group_size`` rows holding one random task:

* ``univariate``: every row of the slot is an independent series window, each in its own group;
* ``multivariate``: 2..min(C, max_group_size) random variates of one window of a multivariate
  source (ETT: 7, weather: 21), one group, all of them targets;
* ``covariates``: as ``multivariate``, but 1..n-1 of the variates are known covariates: their
  future values go in ``future_covariates`` and their future target is NaN (upstream's
  ``Chronos2Dataset`` does the same; upstream's loss also masks known future values);
* ``cross_learning``: 2..max_group_size unrelated series of one many-series source (M4 Hourly),
  each with its own window, one group (Chronos-2's pretraining mixes such groups in too).

Rows a group task leaves free are filled with independent univariate windows (``fill:
univariate``) or are padding (``fill: nan``): all-NaN context and target in a group of their
own, so they change nothing for the other rows and nothing in the loss. Every slot has the same
shape, so the batch shape (and the compiled step) never changes.

Context lengths vary: with probability ``short_context_prob`` a task's context is drawn
uniformly in ``[min_past, context_length]`` instead of the full ``context_length``; either way
a window shorter than its history takes what there is, left-padded with NaN.

Slot ``i`` is a pure function of ``(seed, i)`` (its own ``numpy`` generator), so a batch is a
pure function of the indices the Trainer draws from its ``(seed, epoch)`` shuffle, and a
resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from jaxts.data import DataError
from train.chronos2_synthetic import SYNTHETIC, lead_lag_members

__all__ = [
    "FILLS",
    "M4_HOURLY",
    "TASK_KINDS",
    "Source",
    "Task",
    "TaskSampler",
    "Ungrouped",
    "load_sources",
]

M4_HOURLY = "m4_hourly"
TASK_KINDS = ("univariate", "multivariate", "covariates", "cross_learning")
FILLS = ("univariate", "nan")


@dataclasses.dataclass(frozen=True)
class Source:
    """One data set: ``members`` are float32 arrays ``[T, C]`` (ETT: one array of 7 columns; M4
    Hourly: 414 arrays of one column), ``first_start[j]`` the first forecast start allowed in
    member ``j`` (train: ``min_past``; val: the first row of the val part)."""

    name: str
    members: tuple[np.ndarray, ...]
    first_start: tuple[int, ...]

    @property
    def n_columns(self) -> int:
        return min(m.shape[1] for m in self.members)


class Task(NamedTuple):
    """One slot: ``context [G, C]`` (NaN = missing / left padding), ``future_target [G, H]``
    (NaN = not a target), ``future_covariates [G, H]`` (NaN = unknown), ``group_ids [G]``
    (slot-local), ``kind`` (one of :data:`TASK_KINDS`) and ``group_rows`` (rows of its group
    task; for ``univariate`` 0)."""

    context: np.ndarray
    future_target: np.ndarray
    future_covariates: np.ndarray
    group_ids: np.ndarray
    kind: str
    group_rows: int


def _usable(source: Source, horizon: int) -> Source | None:
    """``source`` without the members too short for one window (None if none is left)."""
    keep = [(m, s) for m, s in zip(source.members, source.first_start, strict=True)
            if len(m) - horizon >= s]  # fmt: skip
    if not keep:
        return None
    return Source(source.name, tuple(m for m, _ in keep), tuple(s for _, s in keep))


def load_sources(
    datasets: Sequence[str],
    split: str,
    context_length: int,
    horizon: int,
    min_past: int,
    data_dir=None,
    log=print,
) -> list[Source]:
    """The ``split`` ("train" or "val") of every data set found, raw values (Chronos-2's
    instance norm makes scaling irrelevant).

    ETT*/weather/any CSV: :func:`jaxts.data.load_split` rows, all columns in one member; the val
    part comes with ``context_length`` rows of history before it, and its forecasts start in the
    val rows. ``m4_hourly``: the 414 train series, the last ``horizon`` values of each held out
    for validation (train windows end before them; the one val window forecasts them). A data
    set whose file is not found is skipped with a note (a malformed file is an error)."""
    from jaxts.data import load_m4_hourly, load_split, m4_hourly_paths, resolve_path

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    out: list[Source] = []
    for name in datasets:
        if name == SYNTHETIC:  # generated, never missing: train and val members differ
            length = 4096 if split == "train" else context_length + 4 * horizon
            members = lead_lag_members(64 if split == "train" else 16, length,
                                       seed=0 if split == "train" else 1)  # fmt: skip
            start = min_past if split == "train" else context_length
            out.append(Source(name, tuple(members), (start,) * len(members)))
            continue
        is_m4 = name.lower() == M4_HOURLY
        try:
            m4_hourly_paths(data_dir) if is_m4 else resolve_path(name, data_dir)
        except DataError as e:
            log(f"note: skipping {name}: not found ({str(e).splitlines()[0]})")
            continue
        if is_m4:
            series = load_m4_hourly(data_dir)[0]
            if split == "train":
                members = [s[:-horizon, None] for s in series]  # [T - H, 1]
                starts = [min_past] * len(members)
            else:
                members = [s[:, None] for s in series]
                starts = [len(s) - horizon for s in series]
        else:
            seq_len = 1 if split == "train" else context_length
            rows = load_split(name, split, seq_len, scale=False, data_dir=data_dir)  # [T, C]
            members = [np.ascontiguousarray(rows, np.float32)]
            starts = [min_past if split == "train" else max(seq_len, min_past)]
        source = _usable(Source(name, tuple(np.asarray(m, np.float32) for m in members),
                                tuple(starts)), horizon)  # fmt: skip
        if source is None:
            log(f"note: skipping {name}: no series has room for a {horizon}-step window")
            continue
        out.append(source)
    if not out:
        raise DataError(f"no {split} series: none of {list(datasets)} was found")
    return out


class TaskSampler:
    """A :class:`train.trainer.BatchSource` of ``size`` random task slots over ``sources``.

    ``batch(idx)`` returns ``(context [B, G, C], future_target [B, G, H], future_covariates
    [B, G, H], group_ids [B, G] int32)`` with ``G = max_group_size``, ``C = context_length``,
    ``H = horizon``; slot ``i`` is :meth:`task` ``(i)``, a pure function of ``(seed, salt, i)``
    (``salt`` tells the train and val samplers of one seed apart).
    ``weights`` maps task kinds to mixture weights; a kind no source can serve (no
    multivariate source, no many-series source) gets weight 0, and :attr:`weights` says what
    is used."""

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        size: int,
        seed: int,
        context_length: int,
        horizon: int,
        weights: Mapping[str, float],
        max_group_size: int = 8,
        min_past: int = 16,
        short_context_prob: float = 0.3,
        fill: str = "univariate",
        salt: int = 0,
        source_weights: Mapping[str, float] | None = None,
    ):
        unknown = set(weights) - set(TASK_KINDS)
        if unknown:
            raise ValueError(f"unknown task kinds {sorted(unknown)}; expected {TASK_KINDS}")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        if max_group_size < 2:
            raise ValueError(f"max_group_size must be >= 2 (a group task), got {max_group_size}")
        if not 1 <= min_past <= context_length:
            raise ValueError(f"min_past must be in [1, context_length {context_length}], "
                             f"got {min_past}")  # fmt: skip
        self.sources = [s for s in (_usable(s, horizon) for s in sources) if s is not None]
        if not self.sources:
            raise DataError(f"no series has room for a {horizon}-step window")
        self.size, self.seed, self.salt = int(size), int(seed), int(salt)
        self.context_length, self.horizon = int(context_length), int(horizon)
        self.max_group_size, self.min_past = int(max_group_size), int(min_past)
        self.short_context_prob, self.fill = float(short_context_prob), fill
        # the sources each kind draws from
        self.pools = {
            "univariate": list(range(len(self.sources))),
            "multivariate": [i for i, s in enumerate(self.sources) if s.n_columns >= 2],
            "cross_learning": [i for i, s in enumerate(self.sources) if len(s.members) >= 2],
        }
        self.pools["covariates"] = self.pools["multivariate"]
        # a kind draws its source with these weights (default 1 each; names not found ignored)
        sw = dict(source_weights or {})
        self._source_p = {}
        for kind, pool in self.pools.items():
            p = np.array([float(sw.get(self.sources[i].name, 1.0)) for i in pool])
            uniform = not pool or np.all(p == p[0])  # None: the draw of an unweighted run
            self._source_p[kind] = None if uniform else p / p.sum()
        w = {k: float(weights.get(k, 0.0)) if self.pools[k] else 0.0 for k in TASK_KINDS}
        total = sum(w.values())
        if total <= 0:
            raise DataError(
                f"no task kind can be drawn: weights {dict(weights)} over sources "
                f"{[s.name for s in self.sources]}"
            )
        self.weights = {k: v / total for k, v in w.items()}
        self._p = np.array([self.weights[k] for k in TASK_KINDS])

    def __len__(self) -> int:
        return self.size

    # ---- windows ---------------------------------------------------------------------------

    def _length(self, rng: np.random.Generator) -> int:
        if rng.random() < self.short_context_prob:
            return int(rng.integers(self.min_past, self.context_length + 1))
        return self.context_length

    def _start(self, rng: np.random.Generator, source: Source, member: int) -> int:
        """A forecast start uniform over the member's allowed positions."""
        lo = source.first_start[member]
        return int(rng.integers(lo, len(source.members[member]) - self.horizon + 1))

    def _put(self, task, row, values: np.ndarray, start: int, length: int) -> None:
        """Context (the ``length`` values before ``start``, right-aligned) and future of one
        1-D series into ``row`` of the slot arrays ``task``."""
        ctx, target = task[0], task[1]
        past = values[max(0, start - length) : start]
        ctx[row, self.context_length - len(past) :] = past
        target[row] = values[start : start + self.horizon]

    def _draw_source(self, rng, kind: str) -> int:
        pool, p = self.pools[kind], self._source_p[kind]
        return int(pool[int(rng.choice(len(pool), p=p))])

    def _univariate(self, rng, task, rows: range) -> None:
        for row in rows:
            src = self.sources[self._draw_source(rng, "univariate")]
            j = int(rng.integers(len(src.members)))
            col = int(rng.integers(src.members[j].shape[1]))
            self._put(task, row, src.members[j][:, col], self._start(rng, src, j),
                      self._length(rng))  # fmt: skip

    def _variates(self, rng, task, kind: str) -> int:
        """One window of 2..min(C, G) random variates of a multivariate source (some of them
        known covariates for ``kind == "covariates"``); returns the rows used."""
        src = self.sources[self._draw_source(rng, kind)]
        j = int(rng.integers(len(src.members)))
        m = src.members[j]  # [T, C]
        n = int(rng.integers(2, min(m.shape[1], self.max_group_size) + 1))
        cols = rng.choice(m.shape[1], n, replace=False)
        start, length = self._start(rng, src, j), self._length(rng)
        for row, col in enumerate(cols):
            self._put(task, row, m[:, col], start, length)
        if kind == "covariates":
            known = rng.choice(n, int(rng.integers(1, n)), replace=False)
            task[2][known] = task[1][known]  # future values known ...
            task[1][known] = np.nan  # ... so they are not targets
        return n

    def _cross(self, rng, task) -> int:
        """2..G unrelated members of one many-series source, each its own window."""
        src = self.sources[self._draw_source(rng, "cross_learning")]
        n = int(rng.integers(2, min(len(src.members), self.max_group_size) + 1))
        length = self._length(rng)
        for row, j in enumerate(rng.choice(len(src.members), n, replace=False)):
            col = int(rng.integers(src.members[j].shape[1]))
            self._put(task, row, src.members[j][:, col], self._start(rng, src, j), length)
        return n

    def task(self, i: int) -> Task:
        """Slot ``i``: drawn from its own generator seeded with ``(seed, salt, i)``."""
        rng = np.random.default_rng([self.seed, self.salt, int(i)])
        g, c, h = self.max_group_size, self.context_length, self.horizon
        arrays = (np.full((g, c), np.nan, np.float32), np.full((g, h), np.nan, np.float32),
                  np.full((g, h), np.nan, np.float32))  # fmt: skip
        group_ids = np.arange(g, dtype=np.int32)  # every row its own group ...
        kind = TASK_KINDS[int(rng.choice(len(TASK_KINDS), p=self._p))]
        if kind == "univariate":
            self._univariate(rng, arrays, range(g))
            return Task(*arrays, group_ids, kind, 0)
        n = self._cross(rng, arrays) if kind == "cross_learning" else self._variates(
            rng, arrays, kind)  # fmt: skip
        group_ids[:n] = 0  # ... but the group task's rows share one
        if self.fill == "univariate":
            self._univariate(rng, arrays, range(n, g))
        return Task(*arrays, group_ids, kind, n)

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        tasks = [self.task(i) for i in np.asarray(idx, np.int64).reshape(-1)]
        return tuple(np.stack([t[k] for t in tasks]) for k in range(4))


class Ungrouped:
    """``data`` with every row in a group of its own (the same series, windows and targets):
    the loss on it minus the loss on ``data`` is what group attention contributes."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        *arrays, group_ids = self.data.batch(idx)
        alone = np.broadcast_to(np.arange(group_ids.shape[1], dtype=np.int32), group_ids.shape)
        return (*arrays, alone.copy())
