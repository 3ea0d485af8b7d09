"""Checkpoint conversion CLI.

    python -m bridges.convert timer_xl IN.pth OUT_DIR [--use-norm | --no-use-norm] [--config cfg.json]
    python -m bridges.convert timer_xl CKPT_DIR OUT.pth

The direction follows the input: a ``.pth``/``.pt`` file becomes a jaxts checkpoint directory
(``config.json`` + orbax ``params/``); a jaxts checkpoint directory becomes an OpenLTM ``.pth``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _timer_xl(args) -> None:
    from bridges import timer_xl as bridge
    from jaxts.checkpoint import load_model, save_model
    from jaxts.models.timer_xl import TimerXLConfig

    src, dst = Path(args.src), Path(args.dst)
    if src.is_dir():
        model = load_model(src)
        bridge.save_openltm(model, dst)
        print(f"wrote OpenLTM checkpoint {dst} ({model.config})")
        return
    if args.config:
        cfg = TimerXLConfig.from_dict(json.loads(Path(args.config).read_text()))
        model = bridge.from_openltm(src, cfg)
    else:
        overrides = {
            "use_norm": args.use_norm,
            "activation": args.activation,
            "covariate": args.covariate,
        }
        model = bridge.from_openltm(src, **{k: v for k, v in overrides.items() if v is not None})
    save_model(model, dst, extra={"source": str(src)})
    print(f"wrote jaxts checkpoint {dst} ({model.config})")


CONVERTERS = {"timer_xl": _timer_xl}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bridges.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", choices=sorted(CONVERTERS))
    p.add_argument("src", help="OpenLTM .pth file, or a jaxts checkpoint directory")
    p.add_argument("dst", help="output jaxts directory, or output .pth file")
    p.add_argument("--config", help="JSON file with the full model config (else inferred)")
    p.add_argument(
        "--use-norm",
        dest="use_norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="OpenLTM --use_norm (not stored in .pth files)",
    )
    p.add_argument("--activation", choices=["relu", "gelu"], default=None)
    p.add_argument("--covariate", action=argparse.BooleanOptionalAction, default=None)
    args = p.parse_args(argv)
    try:
        CONVERTERS[args.model](args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
