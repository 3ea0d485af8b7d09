"""Model checkpoints on disk: ``config.json`` + an orbax checkpoint of the parameters.

This is the exchange format between ``train.*``, ``eval.*`` and ``bridges.convert``. Training
state (optimizer, step, rng) is checkpointed separately by the trainer's CheckpointManager.

Every loader here and in ``bridges/`` hands back a model in eval mode, or raises a
:class:`CheckpointError` whose one-line message names the file and the problem: unreadable or
damaged files, tensors missing, unexpected or shaped otherwise than the config says, non-finite
weights, and (for directories written by :func:`save_model`) weights whose CRC-32 differs from
the one recorded at save time.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import logging
import os
import shutil
import sys
import zlib
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxts.registry import FAMILIES, family_of
from jaxts.registry import family as get_family

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
CHECKSUMS = "params_crc32"  # config.json key: {parameter name: CRC-32 of its bytes}
_SHOWN = 5  # offending keys named in a message


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as what it claims to be (damaged, unreadable, or not
    matching its config); the message names the file. A ValueError, so every jaxts command
    line prints it as one line and exits with status 2."""


class CheckpointKeyError(CheckpointError):
    """The tensors of a checkpoint do not match the model: every missing, unexpected and
    mis-shaped key is listed at once (``(key, stored shape, expected shape)`` for the last)."""

    def __init__(self, missing=(), unexpected=(), misshaped=(), source=None):
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.misshaped, self.source = list(misshaped), source
        parts = []
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): {self.missing}")
        if self.unexpected:
            parts.append(f"unexpected keys ({len(self.unexpected)}): {self.unexpected}")
        if self.misshaped:
            shown = [f"{k}: checkpoint {a} vs expected {b}" for k, a, b in self.misshaped]
            parts.append(f"mis-shaped keys ({len(self.misshaped)}): {shown}")
        where = f"{source}: " if source is not None else ""
        super().__init__(where + "checkpoint does not match the model; " + "; ".join(parts))


def first_line(e: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (libraries' messages run to pages)."""
    lines = str(e).strip().splitlines()
    msg = lines[0] if lines else ""
    msg = msg if len(msg) <= limit else msg[:limit] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


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


def flatten(tree: Mapping, prefix=()) -> dict[tuple, object]:
    """Nested dict -> {key tuple: leaf}; keys keep their type (nnx.List indices are ints)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def check_finite(tensors: Mapping[str, np.ndarray], source) -> None:
    """Raise a CheckpointError naming the tensors of ``source`` that hold NaN or inf."""
    bad = [
        k
        for k, v in tensors.items()
        if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()
    ]
    if bad:
        raise CheckpointError(
            f"{source}: non-finite weights (NaN or inf) in {len(bad)} tensor(s): {_listed(bad)}; "
            "the file is damaged or the model diverged"
        )


def _crc32(params: Mapping) -> dict[str, str]:
    return {
        dotted(p): f"{zlib.crc32(np.ascontiguousarray(v)):08x}" for p, v in flatten(params).items()
    }


def load_params(model, params: Mapping):
    """Put the pure-dict ``params`` into ``model`` and switch it to eval mode (HF's convention
    for a loaded model: training code switches to train mode itself)."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    model.eval()
    return model


def model_name(model) -> str:
    """The registered family name of ``model`` (what ``config.json`` records as ``"model"``)."""
    return family_of(model).name


def _replaceable(directory: Path) -> bool:
    """Absent, empty, or holding nothing but a model: ``save_model`` may replace it."""
    if not directory.exists():
        return True
    return directory.is_dir() and {p.name for p in directory.iterdir()} <= {
        CONFIG_FILE,
        PARAMS_DIR,
    }


def save_model(model, directory, extra: dict | None = None) -> Path:
    """Write ``directory/config.json`` and ``directory/params`` (orbax), with the CRC-32 of every
    parameter in ``config.json``. The whole directory is written aside and swapped in with
    :func:`atomic_replace_dir`, so ``directory`` always holds a complete model, old or new.
    An existing directory holding anything but a model is not replaced (FileExistsError)."""
    directory = Path(directory).absolute()
    if not _replaceable(directory):
        raise FileExistsError(
            f"{directory} exists and holds more than a jaxts model; not replacing it"
        )
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    meta = {
        "model": model_name(model),
        "config": model.config.to_dict(),
        CHECKSUMS: _crc32(params),
        **(extra or {}),
    }
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, params)
            ckptr.wait_until_finished()
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        atomic_replace_dir(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_json(path: Path):
    """The JSON value in ``path``; not JSON is a CheckpointError naming the file."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def is_checkpoint_dir(path) -> bool:
    """A directory written by :func:`save_model`: ``params/`` and a ``config.json`` naming the
    model (an HF directory's ``config.json`` has no ``"model"`` key)."""
    path = Path(path)
    config = path / CONFIG_FILE
    if not ((path / PARAMS_DIR).is_dir() and config.is_file()):
        return False
    meta = read_json(config)
    return isinstance(meta, dict) and "model" in meta


def read_config(directory):
    """(model name, config dataclass, metadata dict) of a saved model directory."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a jaxts model checkpoint directory")
    meta = read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(
            f'{path}: expected a JSON object with "model" and a "config" object '
            "(a jaxts checkpoint's config.json)"
        )
    name = meta.get("model")
    if name not in FAMILIES:
        raise CheckpointError(f"{path}: unknown model family {name!r}; known: {sorted(FAMILIES)}")
    try:
        cfg = get_family(name).config_class().from_dict(meta["config"])
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return name, cfg, meta


def load_model(directory, *, family: str | None = None, rngs: nnx.Rngs | None = None):
    """Rebuild the model saved by :func:`save_model`, in eval mode; ``family``: the registered
    family it must hold (e.g. ``"timer_xl"``), else a ValueError saying what was found.
    Damaged or mismatching weights raise a :class:`CheckpointError` naming the file and key."""
    directory = Path(directory).absolute()
    name, cfg, meta = read_config(directory)
    if family is not None and name != family:
        raise ValueError(f"{directory} holds a {name} checkpoint; expected {family}")
    model = get_family(name).model_class()(cfg, rngs=rngs or nnx.Rngs(0))
    target = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    params_dir = directory / PARAMS_DIR
    restored = _restore(params_dir, target)
    named = {dotted(p): v for p, v in flatten(restored).items()}
    check_finite(named, params_dir)
    recorded = meta.get(CHECKSUMS)
    if isinstance(recorded, dict):  # absent in checkpoints written before it was recorded
        got = _crc32(restored)
        bad = sorted(k for k in got if recorded.get(k) != got[k])
        if bad:
            raise CheckpointError(
                f"{params_dir}: {len(bad)} tensor(s) differ from the CRC-32 recorded in "
                f"{CONFIG_FILE} when saved (damaged file): {_listed(bad)}"
            )
    return load_params(model, restored)


def _restore(params_dir: Path, target: dict) -> dict:
    """The orbax tree at ``params_dir`` restored onto ``target``; stored names and shapes are
    compared with the target first, so a config that does not fit the weights is reported
    as such (not as a reshape error deep inside the model)."""
    if not params_dir.is_dir():
        raise FileNotFoundError(f"{params_dir} not found: the checkpoint has no parameters")
    with _orbax_errors(params_dir), ocp.StandardCheckpointer() as ckptr:
        try:
            item = ckptr.metadata(params_dir).item_metadata
        except Exception as e:  # orbax/tensorstore raise many types; all mean "unreadable"
            raise CheckpointError(
                f"{params_dir}: not a readable orbax checkpoint ({first_line(e)})"
            ) from e
        stored = getattr(item, "tree", None)
        if not isinstance(stored, Mapping):  # orbax logs why and returns None
            raise CheckpointError(
                f"{params_dir}: damaged orbax checkpoint (its tensor index cannot be read)"
            )
        want = {dotted(p): tuple(np.shape(v)) for p, v in flatten(target).items()}
        have = {dotted(p): tuple(m.shape) for p, m in flatten(dict(stored)).items()}
        misshaped = [
            (k, have[k], want[k]) for k in sorted(want) if k in have and have[k] != want[k]
        ]
        missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing or unexpected or misshaped:
            raise CheckpointKeyError(missing, unexpected, misshaped, source=params_dir)
        try:
            return ckptr.restore(params_dir, target)
        except Exception as e:
            raise CheckpointError(
                f"{params_dir}: damaged orbax checkpoint ({first_line(e)})"
            ) from e


@contextlib.contextmanager
def quiet_orbax():
    """Hold back orbax's own log lines (absl ERRORs for every unreadable file it meets): the
    caller reports a damaged checkpoint in its own words, once."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl.setLevel(level)


@contextlib.contextmanager
def _orbax_errors(params_dir: Path):
    """Keep a damaged checkpoint to the one line of our CheckpointError. Inside: orbax's log
    lines are held back (:func:`quiet_orbax`). After a failure: tensorstore still completes the
    reads in flight, each calling back into orbax's closed event loop ("Event loop is closed",
    15-22 tracebacks for a small model) or leaving an unretrieved exception that asyncio logs;
    both echo the failure already reported and are dropped, for this directory only."""
    with quiet_orbax():
        try:
            yield
        except CheckpointError:
            _drop_echoes(str(params_dir))
            raise


def _drop_echoes(where: str) -> None:
    previous = sys.unraisablehook

    def hook(unraisable):
        exc = unraisable.exc_value
        if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook

    def keep(record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (record.getMessage().startswith("Future exception") and where in str(exc))

    logging.getLogger("asyncio").addFilter(keep)
    if "pytest" not in sys.modules and not _SHUTDOWN_QUIET:
        # Under load the last reads finish while the interpreter shuts down, when sys hooks are
        # gone and CPython prints their "Event loop is closed" straight to stderr. The failure
        # was reported (and stderr flushed) already: quiet fd 2 for the shutdown. Not inside
        # pytest, whose own shutdown output must stay visible.
        _SHUTDOWN_QUIET.append(True)
        atexit.register(_quiet_stderr_at_exit)


_SHUTDOWN_QUIET: list[bool] = []


def _quiet_stderr_at_exit() -> None:
    with contextlib.suppress(Exception):
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
