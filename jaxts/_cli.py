"""What every jaxts command line (``train.*``, ``eval.*``, ``bridges.convert``) does with an error.

A wrong input (a bad config value, a missing or damaged file, a checkpoint of another family)
is the user's to fix and its message says how: it is printed as one line and the command exits
with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

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
