"""Locating dataset files by name (``ETTh1``) or path."""

from __future__ import annotations

import os
from pathlib import Path

from jaxts.data._io import DataError

__all__ = ["ENV_VAR", "VENDOR_DIR", "SHARED_DIR", "resolve_path", "search_dirs"]

ENV_VAR = "JAXTS_DATA_DIR"
VENDOR_DIR = Path(__file__).resolve().parent / "vendor"
# <repo root>/../shared/data: only meaningful in a source checkout; harmless when absent.
SHARED_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
# Layout of a data folder: flat, or the upstream sub-folders (ETT-small/ETTh1.csv, ...).
SUBDIRS = ("", "ETT-small", "weather")


def _candidates(name: str) -> list[str]:
    """File names to try for a dataset name (``ETTh1`` -> ``ETTh1.csv``, ``ETTh1.csv.gz``)."""
    low = name.lower()
    if low.endswith(".csv.gz"):
        return [name]
    if low.endswith(".csv"):
        return [name, name + ".gz"]
    return [name + ".csv", name + ".csv.gz"]


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """``(origin, folder)`` pairs in search order: data_dir, $JAXTS_DATA_DIR, vendor, shared."""
    out: list[tuple[str, Path]] = []
    roots: list[tuple[str, Path | None]] = [
        ("data_dir", Path(data_dir).expanduser() if data_dir else None),
        (
            f"${ENV_VAR}",
            Path(os.environ[ENV_VAR]).expanduser() if os.environ.get(ENV_VAR) else None,
        ),
    ]
    for origin, root in roots:
        if root is not None:
            out += [(origin, root / sub if sub else root) for sub in SUBDIRS]
    out.append(("vendored", VENDOR_DIR))
    out += [("shared", SHARED_DIR / sub if sub else SHARED_DIR) for sub in SUBDIRS]
    return out


def resolve_path(
    name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None
) -> Path:
    """Find a dataset file.

    An existing file path is returned as is. A bare name (``'ETTh1'``, ``'weather'``,
    ``'ETTh1.csv'``) is looked up as ``NAME.csv`` / ``NAME.csv.gz`` in, in order: ``data_dir``,
    ``$JAXTS_DATA_DIR`` (each flat and in ``ETT-small/``, ``weather/``), the vendored folder
    ``jaxts/data/vendor/``, then ``<repo root>/../shared/data`` (same layout).

    A path with a folder part that does not exist is an error rather than a name lookup, so that
    a typo in ``/my/data/ETTh1.csv`` never silently falls back to another copy of ETTh1.

    Raises :class:`DataError` listing every place searched.
    """
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    if p.parent != Path(".") or p.is_absolute():
        raise DataError(f"no such file: {p} (a path with a folder part is not searched for)")
    names = _candidates(str(p))
    tried: list[str] = []
    for origin, folder in search_dirs(data_dir):
        for fname in names:
            cand = folder / fname
            if cand.is_file():
                return cand
        tried.append(f"  [{origin}] {folder}")
    env_note = "" if os.environ.get(ENV_VAR) else f" (${ENV_VAR} is not set)"
    raise DataError(
        f"dataset {str(name_or_path)!r} not found; tried {' / '.join(names)} in:\n"
        + "\n".join(tried)
        + f"\nPass data_dir / --data-dir or set ${ENV_VAR}{env_note}."
    )
