"""``python -m train.chronos``: the earlier name of :mod:`train.chronos_t5` (the Chronos-T5
trainer), kept because documentation and scripts use it."""

from __future__ import annotations

import sys

from train.chronos_t5 import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    sys.exit(main())
