"""Checkpoint conversion CLI.

    python -m bridges.convert timer_xl IN.pth OUT_DIR [--use-norm | --no-use-norm] [--config cfg.json]
    python -m bridges.convert timer_xl CKPT_DIR OUT.pth
    python -m bridges.convert chronos HF_DIR_OR_HUB_ID OUT_DIR
    python -m bridges.convert chronos CKPT_DIR OUT_HF_DIR

The direction follows the input. timer_xl: a ``.pth``/``.pt`` file becomes a jaxts checkpoint
directory (``config.json`` + orbax ``params/``); a jaxts checkpoint directory becomes an OpenLTM
``.pth``. chronos: an HF Chronos-T5 directory (``config.json`` with ``chronos_config`` +
``model.safetensors`` or ``pytorch_model.bin``) or a hub id such as ``amazon/chronos-t5-small``
becomes a jaxts checkpoint directory; a jaxts checkpoint directory (``params/`` + ``config.json``
with ``"model"``) becomes an HF directory that ``ChronosPipeline.from_pretrained`` loads.
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


def _chronos(args) -> None:
    from bridges import chronos_t5 as bridge
    from jaxts.checkpoint import is_checkpoint_dir, load_model, save_model

    timer_only = {
        "--config": args.config,
        "--use-norm": args.use_norm,
        "--activation": args.activation,
        "--covariate": args.covariate,
    }
    given = [name for name, value in timer_only.items() if value is not None]
    if given:
        raise ValueError(f"{given} apply to timer_xl only; chronos reads config.json")
    src, dst = Path(args.src).expanduser(), Path(args.dst)
    if is_checkpoint_dir(src):
        model = load_model(src, family="chronos_t5")
        bridge.save_hf(model, dst)
        print(f"wrote HF Chronos-T5 directory {dst} ({model.config.t5})")
        return
    model = bridge.from_hf(args.src)  # an HF directory, or a hub id
    save_model(model, dst, extra={"source": str(args.src)})
    print(f"wrote jaxts checkpoint {dst} ({model.config.t5})")


CONVERTERS = {"timer_xl": _timer_xl, "chronos": _chronos}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bridges.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", choices=sorted(CONVERTERS))
    p.add_argument(
        "src",
        help="OpenLTM .pth file, HF Chronos directory or hub id, or a jaxts checkpoint directory",
    )
    p.add_argument(
        "dst", help="output jaxts directory, or output .pth file (timer_xl) / HF directory"
    )
    p.add_argument(
        "--config", help="timer_xl: JSON file with the full model config (else inferred)"
    )
    p.add_argument(
        "--use-norm",
        dest="use_norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="timer_xl: OpenLTM --use_norm (not stored in .pth files)",
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
