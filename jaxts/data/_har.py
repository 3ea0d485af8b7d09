"""UCI Human Activity Recognition (HAR), test split: 2,947 windows of tri-axial total acceleration.

Each window is 128 samples (50 Hz, 2.56 s) of the smartphone's total acceleration in g on the
x, y and z axes; consecutive windows of one recording overlap by 50%. Labels 1..6 in the files
(``y_test.csv``) become 0..5 here, named by ``activity_labels.txt`` lower-cased.

Files (from the UCI HAR Dataset, ``test/Inertial Signals/total_acc_*_test.txt`` as comma
separated gzip CSVs, ``test/y_test.txt``, ``activity_labels.txt``): ``total_acc_{x,y,z}_test.csv.gz``,
``y_test.csv``, ``activity_labels.txt``, each optionally prefixed ``HAR-`` (the vendored copies
are). Folders searched, in order: ``data_dir``, ``$JAXTS_DATA_DIR`` (each flat and ``HAR/``), the
vendored folder, then ``<repo>/../shared/data/HAR``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from jaxts.data._io import DataError
from jaxts.data._paths import ENV_VAR, SHARED_DIR, VENDOR_DIR

__all__ = [
    "HAR_FS",
    "HAR_LABEL_NAMES",
    "HAR_WINDOW",
    "HarData",
    "har_paths",
    "load_har",
    "split_har",
]

HAR_FS = 50.0  # Hz
HAR_WINDOW = 128  # samples per window
# The order of activity_labels.txt (label k+1 in y_test is HAR_LABEL_NAMES[k]).
HAR_LABEL_NAMES = (
    "walking",
    "walking_upstairs",
    "walking_downstairs",
    "sitting",
    "standing",
    "laying",
)
_PARTS = ("total_acc_x_test.csv.gz", "total_acc_y_test.csv.gz", "total_acc_z_test.csv.gz")
_FILES = (*_PARTS, "y_test.csv", "activity_labels.txt")


@dataclass(frozen=True, eq=False)
class HarData:
    """HAR windows.

    ``windows``: float32 ``[N, 128, 3]`` total acceleration in g (axes x, y, z);
    ``labels``: int64 ``[N]`` in ``0..5``; ``label_names``: names of labels 0..5;
    ``index``: int64 ``[N]``, each window's row in the original test files (kept by
    :func:`split_har` so that a window can be traced back)."""

    windows: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]
    index: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, rows: np.ndarray) -> HarData:
        """The windows at positions ``rows`` (of this object, not of the original files)."""
        rows = np.asarray(rows, dtype=np.int64)
        return HarData(self.windows[rows], self.labels[rows], self.label_names, self.index[rows])


def _dirs(data_dir: str | os.PathLike | None) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    roots = [("data_dir", data_dir), (f"${ENV_VAR}", os.environ.get(ENV_VAR) or None)]
    for origin, root in roots:
        if root:
            r = Path(root).expanduser()
            out += [(origin, r), (origin, r / "HAR")]
    out.append(("vendored", VENDOR_DIR))
    out.append(("shared", SHARED_DIR / "HAR"))
    return out


def har_paths(data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The five HAR files (keys: the unprefixed names), all from the first folder holding all.

    A ``data_dir`` that does not exist is an error rather than silently skipped (a typo would
    otherwise fall back to the vendored copy). Raises :class:`DataError` naming the folders."""
    if data_dir and not Path(data_dir).expanduser().is_dir():
        raise DataError(
            f"HAR: --data-dir / data_dir {str(data_dir)!r} is not a folder; pass a folder holding "
            f"{', '.join(_FILES)} (flat or in HAR/), or omit it to use the vendored copy"
        )
    tried = []
    for origin, folder in _dirs(data_dir):
        found = {}
        for name in _FILES:
            hit = next((folder / n for n in (name, "HAR-" + name) if (folder / n).is_file()), None)
            if hit is not None:
                found[name] = hit
        if len(found) == len(_FILES):
            return found
        tried.append(f"  [{origin}] {folder}")
    env_note = "" if os.environ.get(ENV_VAR) else f" (${ENV_VAR} is not set)"
    raise DataError(
        f"UCI HAR not found; looked for {', '.join(_FILES)} (optionally prefixed 'HAR-') in:\n"
        + "\n".join(tried)
        + f"\nPass data_dir / --data-dir or set ${ENV_VAR}{env_note}."
    )


def _read_matrix(path: Path) -> np.ndarray:
    try:
        df = pd.read_csv(path, header=None, dtype=np.float64)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, ValueError, OSError) as e:
        raise DataError(f"{path}: cannot parse as a numeric CSV without header: {e}") from e
    x = df.to_numpy()
    if x.ndim != 2 or x.shape[1] != HAR_WINDOW:
        raise DataError(f"{path}: expected {HAR_WINDOW} columns per row, got shape {x.shape}")
    if not np.isfinite(x).all():
        row = int(np.argmax(~np.isfinite(x).all(axis=1)))
        raise DataError(f"{path}: NaN/inf/empty value in row {row} (file line {row + 1})")
    return x


def _read_label_names(path: Path) -> tuple[str, ...]:
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    # The UCI file is "1 WALKING"; the shared copy is just "WALKING": accept both.
    names = tuple((ln[-1] if len(ln) in (1, 2) else "").lower() for ln in lines)
    if len(names) != len(HAR_LABEL_NAMES) or "" in names:
        raise DataError(
            f"{path}: expected {len(HAR_LABEL_NAMES)} lines 'NAME' or 'ID NAME', got {lines}"
        )
    return names


@functools.lru_cache(maxsize=4)
def _load(paths: tuple[tuple[str, str], ...]) -> HarData:
    p = {k: Path(v) for k, v in paths}
    axes = [_read_matrix(p[name]) for name in _PARTS]
    n = axes[0].shape[0]
    if any(a.shape[0] != n for a in axes):
        raise DataError(f"HAR axis files have different row counts: {[a.shape[0] for a in axes]}")
    windows = np.stack(axes, axis=-1).astype(np.float32)  # [N, 128, 3]
    try:
        y = pd.read_csv(p["y_test.csv"], header=None).to_numpy()
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError) as e:
        raise DataError(f"{p['y_test.csv']}: cannot parse: {e}") from e
    names = _read_label_names(p["activity_labels.txt"])
    if y.shape != (n, 1) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{p['y_test.csv']}: expected {n} integer labels, got shape {y.shape}")
    labels = y[:, 0].astype(np.int64) - 1
    if labels.min() < 0 or labels.max() >= len(names):
        raise DataError(f"{p['y_test.csv']}: labels must be in 1..{len(names)}")
    for a in (windows, labels):
        a.setflags(write=False)  # cached: callers get views, never a mutable shared copy
    index = np.arange(n, dtype=np.int64)
    index.setflags(write=False)
    return HarData(windows, labels, names, index)


def load_har(data_dir: str | os.PathLike | None = None) -> HarData:
    """All 2,947 windows of the UCI HAR test split (see the module docstring for the files and
    where they are looked up). The arrays are read-only (the parse is cached); copy to edit.

    Raises :class:`DataError` for missing files (naming the folders searched and
    ``--data-dir``) or malformed ones (wrong width, NaN, labels outside 1..6)."""
    paths = har_paths(data_dir)
    return _load(tuple((k, str(v)) for k, v in sorted(paths.items())))


def _runs(labels: np.ndarray) -> list[np.ndarray]:
    """Maximal runs of consecutive windows with the same label (one activity bout of a subject)."""
    starts = np.r_[0, np.flatnonzero(np.diff(labels)) + 1]
    ends = np.r_[starts[1:], len(labels)]
    return [np.arange(s, e) for s, e in zip(starts, ends, strict=True)]


def split_har(data: HarData, seed: int = 0) -> tuple[HarData, HarData]:
    """``(verifier_half, eval_half)``: a fixed-seed split of ``data`` into two disjoint halves,
    stratified by label.

    Consecutive HAR windows overlap by 50%, so a window-level random split would put half of
    every evaluation window's samples into the verifier's training set. The split therefore
    assigns whole *runs* (maximal stretches of consecutive windows with one label, i.e. one
    activity bout) to a half: for each label, its runs are shuffled with ``seed`` and each goes
    to the half that holds fewer windows of that label so far (ties: verifier half). Per label
    the halves differ by at most the longest run (about 30 windows of about 500). Within each
    half the windows keep the file order."""
    rng = np.random.default_rng(seed)
    halves: list[list[np.ndarray]] = [[], []]
    for c in range(len(data.label_names)):
        runs = [r for r in _runs(data.labels) if data.labels[r[0]] == c]
        counts = [0, 0]
        for i in rng.permutation(len(runs)):
            h = int(counts[1] < counts[0])
            halves[h].append(runs[i])
            counts[h] += len(runs[i])
    verifier, evaluation = (np.sort(np.concatenate(h)) if h else np.zeros(0, int) for h in halves)
    return data.subset(verifier), data.subset(evaluation)
