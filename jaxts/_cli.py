"""What every jaxts command line (``train.*``, ``eval.*``, ``bench.*``, ``bridges.convert``) shares:
errors as one line, a ``--help`` that shows every default, outputs never silently replaced.

A wrong input (a bad config value, a missing or damaged file, a checkpoint of another family)
is the user's to fix and its message says how: it is printed as one line and the command exits
with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# ValueError covers ConfigError, DataError and the checkpoint errors; OSError the file ones.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def exit_code(job: Callable[[], object]) -> int:
    """Run ``job()``: 0, or 2 after printing ``error: <message>`` (first line) to stderr."""
    try:
        job()
    except USER_ERRORS as e:
        msg = str(e).strip() or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and ``(default: ...)`` after every option's help.

    Left out where it would say nothing: flags (``store_true``), options whose default is
    ``None`` (their help says what not giving them means) and helps that already name it."""

    def _get_help_string(self, action):
        help_ = action.help or ""
        if action.default is None or isinstance(action.const, bool) or "(default" in help_:
            return help_
        return super()._get_help_string(action)


def parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=HelpFormatter
    )


def check_output_dir(
    path, force: bool, *, files: Sequence[str] | None = None, flag: str = "--out"
) -> Path:
    """Refuse to write results into folder ``path`` over earlier ones unless ``force``.

    ``files``: the names the command writes there, for a folder that legitimately holds other
    things (a checkpoint directory); ``None``: the folder is the command's alone, so anything in
    it is an earlier result. An existing file where a folder is expected is always an error.
    Creates nothing: callers make the folder when they write, so a failed run leaves no trace.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; expected a folder for the results")
    if force or not path.is_dir():
        return path
    if files is None:
        found = sorted(p.name for p in path.iterdir())
    else:
        found = [name for name in files if (path / name).exists()]
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise ValueError(
            f"{flag} {path} already holds results ({shown}); pass --force to overwrite them "
            f"or choose another {flag}"
        )
    return path


def check_output_file(path, force: bool, *, flag: str) -> Path:
    """Refuse to replace an existing file ``path`` unless ``force``; a folder there is an error."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; expected a file name")
    if path.exists() and not force:
        raise ValueError(f"{flag} {path} exists; pass --force to overwrite it or choose another")
    return path
