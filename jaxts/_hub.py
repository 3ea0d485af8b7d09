"""Hugging Face Hub ids and local directories, one rule for every loader (jaxts pipelines and
the bridges above them): a local directory is used as is; an ``org/name`` id is fetched with
``huggingface_hub.snapshot_download`` (only the files a loader reads); anything else, or a hub
that cannot be reached, is a FileNotFoundError saying what to pass instead."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["resolve_dir"]


def resolve_dir(
    path_or_repo_id: str | Path, allow_patterns: Sequence[str], *, revision: str | None = None
) -> Path:
    """The local directory of ``path_or_repo_id``; a hub id downloads ``allow_patterns``."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(path_or_repo_id).count("/") != 1:
        raise FileNotFoundError(f"{path_or_repo_id}: not a model directory or a hub id (org/name)")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            str(path_or_repo_id), revision=revision, allow_patterns=list(allow_patterns)
        )
    except Exception as e:  # offline, unknown repo, gated repo...
        msg = " ".join(str(e).split())[:160]
        raise FileNotFoundError(
            f"could not fetch {path_or_repo_id!r} from the Hugging Face Hub ({type(e).__name__}: "
            f"{msg}); download it elsewhere and pass the local directory"
        ) from e
    return Path(local)
