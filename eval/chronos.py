"""``python -m eval.chronos``: the earlier name of :mod:`eval.chronos_t5`, kept for old commands."""

import sys

from eval.chronos_t5 import *  # noqa: F403
from eval.chronos_t5 import main

if __name__ == "__main__":
    sys.exit(main())
