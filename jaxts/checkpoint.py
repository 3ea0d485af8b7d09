"""Model checkpoints on disk: ``config.json`` + an orbax checkpoint of the parameters.

This is the exchange format between ``train.*``, ``eval.*`` and ``bridges.convert``. Training
state (optimizer, step, rng) is checkpointed separately by the trainer's CheckpointManager.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxts.registry import FAMILIES, family_of
from jaxts.registry import family as get_family

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the platform or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def atomic_replace_dir(new, dst) -> None:
    """Make directory ``new`` become ``dst`` so that ``dst`` is at every instant either the
    complete old directory or the complete new one (a kill in between never leaves no model).

    On Linux the two are exchanged with one ``renameat2`` call and the old content is removed
    afterwards; elsewhere ``dst`` is first renamed aside to ``dst.old`` (then a reader finds
    ``dst.old`` if killed in that instant) and removed once ``new`` is in place."""
    new, dst = Path(new).absolute(), Path(dst).absolute()
    if not dst.exists():
        new.rename(dst)
        return
    if _exchange(new, dst):
        shutil.rmtree(new)  # now holds the old content
        return
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    dst.rename(old)
    new.rename(dst)
    shutil.rmtree(old)


def model_name(model) -> str:
    """The registered family name of ``model`` (what ``config.json`` records as ``"model"``)."""
    return family_of(model).name


def save_model(model, directory, extra: dict | None = None) -> Path:
    """Write ``directory/config.json`` and ``directory/params`` (orbax). Overwrites atomically:
    orbax writes to a temporary directory and renames it when complete."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    params = jax.tree.map(np.asarray, params)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / PARAMS_DIR, params, force=True)
        ckptr.wait_until_finished()
    meta = {"model": model_name(model), "config": model.config.to_dict(), **(extra or {})}
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(directory / CONFIG_FILE)
    return directory


def is_checkpoint_dir(path) -> bool:
    """A directory written by :func:`save_model`: ``params/`` and a ``config.json`` naming the
    model (an HF directory's ``config.json`` has no ``"model"`` key)."""
    path = Path(path)
    config = path / CONFIG_FILE
    if not ((path / PARAMS_DIR).is_dir() and config.is_file()):
        return False
    try:
        meta = json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config}: not valid JSON ({e})") from e
    return isinstance(meta, dict) and "model" in meta


def read_config(directory):
    """(model name, config dataclass, metadata dict) of a saved model directory."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a jaxts model checkpoint directory")
    meta = json.loads(path.read_text())
    name = meta.get("model")
    if name not in FAMILIES:
        raise ValueError(f"{path}: unknown model {name!r}; known: {sorted(FAMILIES)}")
    return name, get_family(name).config_class().from_dict(meta["config"]), meta


def load_model(directory, *, family: str | None = None, rngs: nnx.Rngs | None = None):
    """Rebuild the model saved by :func:`save_model`, in eval mode; ``family``: the registered
    family it must hold (e.g. ``"timer_xl"``), else a ValueError saying what was found."""
    directory = Path(directory).absolute()
    name, cfg, _ = read_config(directory)
    if family is not None and name != family:
        raise ValueError(f"{directory} holds a {name} checkpoint; expected {family}")
    cls = get_family(name).model_class()
    model = cls(cfg, rngs=rngs or nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    target = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(directory / PARAMS_DIR, target)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    model.eval()
    return model
