"""Checkpoint conversion between jaxts and each model family's upstream format.

    python -m bridges.convert FAMILY SRC DST [--force] [FAMILY's options]

    python -m bridges.convert timer_xl checkpoint.pth OUT_DIR --use-norm
    python -m bridges.convert timer_xl CKPT_DIR checkpoint.pth
    python -m bridges.convert chronos_t5 HF_DIR_OR_HUB_ID OUT_DIR
    python -m bridges.convert chronos_t5 CKPT_DIR OUT_HF_DIR

FAMILY is a family of ``jaxts.registry.FAMILIES``. The direction follows SRC: a jaxts checkpoint
directory (``config.json`` naming the model + orbax ``params/``) is written in the family's
upstream format; anything else is read as the upstream format and written as a jaxts checkpoint
directory. ``python -m bridges.convert FAMILY --help`` lists the family's own options.

DST must not exist (or be an empty directory) unless ``--force``. The result is written next
to DST and moved into place when complete, so a failed conversion leaves DST as it was; inputs
are checked (names, shapes, finite weights) before anything is written.

The bridge protocol: the module that ``jaxts.registry.Family.bridge`` names provides

``from_upstream(src: str, **options) -> model``
    Read the upstream checkpoint ``src`` (a file, a directory or a hub id) and return the jaxts
    model in eval mode. Damaged or mismatching input raises ``jaxts.checkpoint.CheckpointError``
    (a ValueError) naming the file; ``options`` are the values of ``add_arguments``' options.
``to_upstream(model, dst: Path) -> Path``
    Write ``model`` in the upstream format at ``dst``, a path that does not exist yet (a file
    or a directory, as the format has it).
``add_arguments(parser: argparse.ArgumentParser) -> None`` (optional)
    The family's own command-line options, each help text stating its default; omit it when
    the upstream checkpoint records everything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from jaxts._cli import HelpFormatter, exit_code
from jaxts._cli import parser as cli_parser
from jaxts.checkpoint import atomic_replace_dir, is_checkpoint_dir, load_model, save_model
from jaxts.registry import FAMILIES


def parser() -> tuple[argparse.ArgumentParser, dict[str, dict]]:
    """The CLI parser and, per family, its own options: ``{dest: default}``."""
    p = cli_parser("python -m bridges.convert", __doc__)
    families = p.add_subparsers(dest="family", required=True, metavar="FAMILY")
    own: dict[str, dict] = {}
    for name, fam in FAMILIES.items():
        sub = families.add_parser(
            name,
            help=f"jaxts <-> {fam.upstream}",
            description=f"{name}: a jaxts checkpoint directory <-> {fam.upstream}.",
            formatter_class=HelpFormatter,
        )
        sub.add_argument("src", help="jaxts checkpoint directory, or an upstream checkpoint")
        sub.add_argument("dst", help="output path (must not exist or be empty, unless --force)")
        sub.add_argument(
            "--force",
            action="store_true",
            help="replace an existing non-empty DST (default: refuse)",
        )
        before = {a.dest for a in sub._actions}
        add_arguments = getattr(fam.bridge_module(), "add_arguments", None)
        if add_arguments is not None:
            add_arguments(sub)
        own[name] = {a.dest: a.default for a in sub._actions if a.dest not in before}
    return p, own


def _occupied(path: Path) -> bool:
    return path.is_file() or path.is_symlink() or (path.is_dir() and any(path.iterdir()))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _move_into_place(tmp: Path, dst: Path) -> None:
    if tmp.is_dir() and dst.is_dir():
        atomic_replace_dir(tmp, dst)
    elif tmp.is_file() and dst.is_file():
        os.replace(tmp, dst)
    else:  # nothing there, an empty directory, or (with --force) the other kind of thing
        _remove(dst)
        tmp.rename(dst)


def write_aside(dst: Path, force: bool, write) -> None:
    """``write(tmp)`` to a fresh path next to ``dst``, then move it into place; an existing
    non-empty ``dst`` is a FileExistsError unless ``force``."""
    if _occupied(dst) and not force:
        raise FileExistsError(f"{dst} exists and is not empty; pass --force to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    _remove(tmp)
    try:
        write(tmp)
        _move_into_place(tmp, dst)
    finally:
        if tmp.exists():
            _remove(tmp)


def convert(args: argparse.Namespace, options: dict, defaults: dict) -> str:
    """Run one conversion (``options``: the family's own, ``defaults`` theirs); returns what
    was written, in words."""
    fam = FAMILIES[args.family]
    bridge = fam.bridge_module()
    src, dst = Path(args.src).expanduser(), Path(args.dst).expanduser()
    if is_checkpoint_dir(src):
        given = sorted(k for k, v in options.items() if v != defaults[k])
        if given:
            raise ValueError(
                f"{src} is a jaxts checkpoint: its config.json says everything; drop "
                + ", ".join("--" + k.replace("_", "-") for k in given)
            )
        model = load_model(src, family=fam.name)
        write_aside(dst, args.force, lambda tmp: bridge.to_upstream(model, tmp))
        return f"{fam.upstream} {dst}"
    if _occupied(dst) and not args.force:  # before the (possibly long) read
        raise FileExistsError(f"{dst} exists and is not empty; pass --force to replace it")
    model = bridge.from_upstream(args.src, **options)
    extra = {"source": str(args.src)}
    write_aside(dst, args.force, lambda tmp: save_model(model, tmp, extra=extra))
    return f"jaxts {fam.name} checkpoint {dst}"


def main(argv=None) -> int:
    p, own = parser()
    args = p.parse_args(argv)
    defaults = own[args.family]
    options = {k: getattr(args, k) for k in defaults}
    return exit_code(lambda: print(f"wrote {convert(args, options, defaults)}"))


if __name__ == "__main__":
    sys.exit(main())
