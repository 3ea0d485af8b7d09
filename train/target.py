"""``python -m train.target``: the documented name of the Timer-XL trainer, :mod:`train.timer_xl`
(the *target* model of speculative decoding, which ``train.distill`` distils a draft from)."""

from __future__ import annotations

import sys

from train.timer_xl import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    sys.exit(main())
