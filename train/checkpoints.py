"""The resumable training state of a run folder: orbax checkpoints of a state pytree plus a JSON
metadata dict (epoch, step, early-stopping state), in ``RUN/checkpoints/<step>``.

Saves are synchronous and atomic (orbax writes a temporary folder and renames it), so a crash
never leaves a half checkpoint as the latest. Restoring tries the newest step first; a damaged
one (a kill while the disk was failing, a truncated copy) is reported in one note and the one
before it is used.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from jaxts import checkpoint as jaxts_checkpoint

__all__ = ["CheckpointError", "TrainCheckpoints"]


class CheckpointError(jaxts_checkpoint.CheckpointError):
    """No training checkpoint of a run folder can be restored."""


class TrainCheckpoints:
    """Checkpoints of one run (a context manager: the orbax manager is open inside).

    ``directory``: where the steps live; ``aside``: where damaged steps are moved once an older
    one has been restored (so that the resumed run can write those steps again)."""

    def __init__(self, directory: Path, max_to_keep: int, aside: Path):
        self.directory, self.aside = Path(directory).absolute(), Path(aside)
        self.max_to_keep = max_to_keep
        self.mgr: ocp.CheckpointManager | None = None

    def __enter__(self) -> TrainCheckpoints:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.max_to_keep, enable_async_checkpointing=False, create=True
        )
        with jaxts_checkpoint.quiet_orbax():
            self.mgr = ocp.CheckpointManager(self.directory, options=options)
        return self

    def __exit__(self, *exc) -> None:
        self.mgr.close()

    def latest_step(self) -> int | None:
        return self.mgr.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        self.mgr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self.mgr.wait_until_finished()

    def _restore_step(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        got = self.mgr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(like), meta=ocp.args.JsonRestore()
            ),
        )
        meta = dict(got.meta)
        if meta.get("global_step") != step:
            raise ValueError(f"its metadata says step {meta.get('global_step')}")
        return got.state, meta

    def restore(self, like: Any) -> tuple[Any, dict[str, Any]] | None:
        """``(state, meta)`` of the newest readable step (``like``: the state's pytree of
        ``jax.ShapeDtypeStruct`` with shardings), None for a fresh run; a CheckpointError (one
        line) when there are steps but none is readable, and then nothing is moved."""
        failed: list[tuple[int, str]] = []
        with jaxts_checkpoint.quiet_orbax():
            for step in sorted(self.mgr.all_steps(), reverse=True):
                try:
                    got = self._restore_step(step, like)
                except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many types)
                    failed.append((step, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"))
                    continue
                self._set_aside(failed, step)
                return got
        if failed:
            problems = "; ".join(f"step {step}: {reason}" for step, reason in failed)
            raise CheckpointError(
                f"no readable training checkpoint in {self.directory} ({problems}); "
                "delete that folder to start the run over"
            )
        return None

    def _set_aside(self, failed: list[tuple[int, str]], restored: int) -> None:
        for bad, reason in failed:
            dst = self.aside / str(bad)
            shutil.rmtree(dst, ignore_errors=True)
            dst.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(bad)).rename(dst)
            tqdm.write(
                f"note: training checkpoint {self.directory / str(bad)} is unreadable "
                f"({reason}); moved to {dst}; resuming from step {restored}"
            )
        if failed:
            self.mgr.reload()
