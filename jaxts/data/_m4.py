"""M4 competition, Hourly subset: 414 series, train lengths 700-960, test horizon 48.

The files are the ones of Mcompetitions/M4-methods ``Dataset/`` (``Train/Hourly-train.csv``,
``Test/Hourly-test.csv``): a header ``"V1","V2",...``, the series id (``H1`` ... ``H414``) in
the first column, quoted values, and each row right-padded with empty cells up to the longest
series. Trailing empty cells are padding, not missing values; an empty cell *inside* a series
is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from jaxts.data._io import DataError
from jaxts.data._paths import ENV_VAR, SHARED_DIR, VENDOR_DIR

__all__ = ["M4_HOURLY_HORIZON", "M4_HOURLY_SEASONALITY", "load_m4_hourly", "m4_hourly_paths"]

M4_HOURLY_HORIZON = 48
M4_HOURLY_SEASONALITY = 24


def _names(part: str) -> list[str]:
    """Accepted file names of one part ('train' / 'test'), plain or gzip."""
    base = [f"Hourly-{part}.csv", f"M4-Hourly-{part}.csv"]
    return [n + ext for n in base for ext in ("", ".gz")]


def _dirs(data_dir: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """Folders searched, in order: data_dir, $JAXTS_DATA_DIR (each flat and ``M4/``), the
    vendored folder, then ``<repo>/../shared/data/M4``."""
    out: list[tuple[str, Path]] = []
    roots = [("data_dir", data_dir), (f"${ENV_VAR}", os.environ.get(ENV_VAR) or None)]
    for origin, root in roots:
        if root:
            r = Path(root).expanduser()
            out += [(origin, r), (origin, r / "M4")]
    out.append(("vendored", VENDOR_DIR))
    out += [("shared", SHARED_DIR), ("shared", SHARED_DIR / "M4")]
    return out


def m4_hourly_paths(data_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """``(train, test)`` files of M4 Hourly: both from the first folder that holds both.

    Raises :class:`DataError` listing the folders searched."""
    tried = []
    for origin, folder in _dirs(data_dir):
        found = []
        for part in ("train", "test"):
            hit = next((folder / n for n in _names(part) if (folder / n).is_file()), None)
            found.append(hit)
        if all(found):
            return found[0], found[1]
        tried.append(f"  [{origin}] {folder}")
    env_note = "" if os.environ.get(ENV_VAR) else f" (${ENV_VAR} is not set)"
    raise DataError(
        "M4 Hourly not found; looked for Hourly-train.csv[.gz] + Hourly-test.csv[.gz] (or "
        "M4-Hourly-*) in:\n" + "\n".join(tried) + f"\nPass data_dir / --data-dir or set "
        f"${ENV_VAR}{env_note}."
    )


def _read_rows(path: Path) -> tuple[list[str], list[np.ndarray]]:
    """Ids and the unpadded float32 rows of one M4 file."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeError, OSError) as e:
        raise DataError(f"{path}: cannot parse as CSV: {e}") from e
    if df.shape[0] == 0 or df.shape[1] < 2:
        raise DataError(f"{path}: expected an id column and values, got shape {df.shape}")
    ids = df.iloc[:, 0].str.strip().tolist()
    cells = df.iloc[:, 1:].apply(lambda c: c.str.strip()).to_numpy()  # [N, W] str
    empty = cells == ""
    rows = []
    for i, (sid, row, gap) in enumerate(zip(ids, cells, empty, strict=True)):
        n = int(len(row) - np.argmin(gap[::-1])) if not gap.all() else 0  # last filled + 1
        if n == 0:
            raise DataError(f"{path}: series {sid!r} (file line {i + 2}) has no values")
        if gap[:n].any():
            j = int(np.argmax(gap[:n]))
            raise DataError(
                f"{path}: series {sid!r} (file line {i + 2}) has an empty cell at position "
                f"{j + 1} before its last value; only trailing cells may be empty (padding)"
            )
        try:
            values = row[:n].astype(np.float64)
        except ValueError:
            bad = next(v for v in row[:n] if not _is_float(v))
            raise DataError(
                f"{path}: series {sid!r} (file line {i + 2}) has a non-numeric value {bad!r}"
            ) from None
        if not np.isfinite(values).all():
            raise DataError(f"{path}: series {sid!r} (file line {i + 2}) has NaN/inf values")
        rows.append(values.astype(np.float32))
    return ids, rows


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def load_m4_hourly(data_dir: str | os.PathLike | None = None, *, with_ids: bool = False):
    """``(train, test)``: 414 float32 train series (lengths 700-960, padding removed) and the
    test values float32 ``[414, 48]``, row ``i`` of test continuing ``train[i]``. With
    ``with_ids=True``, ``(train, test, ids)`` with the series ids (``'H1'`` ...).

    Files are looked up like :func:`jaxts.data.resolve_path` (``data_dir``,
    ``$JAXTS_DATA_DIR``, the vendored copy, ``<repo>/../shared/data``; flat or in ``M4/``).
    Raises :class:`DataError` for missing or malformed files (a gap inside a series, a
    non-numeric value, a test row that is not exactly 48 values, ids that do not match)."""
    train_path, test_path = m4_hourly_paths(data_dir)
    train_ids, train = _read_rows(train_path)
    test_ids, test_rows = _read_rows(test_path)
    if train_ids != test_ids:
        raise DataError(
            f"{train_path} and {test_path} list different series "
            f"({len(train_ids)} vs {len(test_ids)} rows, or another order)"
        )
    for sid, r in zip(test_ids, test_rows, strict=True):
        if len(r) != M4_HOURLY_HORIZON:
            raise DataError(
                f"{test_path}: series {sid!r} has {len(r)} test values, expected "
                f"{M4_HOURLY_HORIZON}"
            )
    test = np.stack(test_rows).astype(np.float32)
    return (train, test, train_ids) if with_ids else (train, test)
