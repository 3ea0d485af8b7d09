"""The Phoenix21 distance-aware Chronos head (``distance_output.pt``) <-> jaxts.

Upstream (``Phoenix21/distance-aware-chronos-t`` on the Hugging Face Hub) publishes the head as
``distance_output.pt``, the ``state_dict()`` of its ``DistanceAwareOutputLayer`` (11 tensors),
next to a ``config.json`` of bookkeeping (``model_type``, ``base_model``, ``num_bins``,
``training_epoch``, ``val_loss``, ``timestamp``). Sizes are read from the tensor shapes.

Read (``load_distance_head``, ``from_upstream``): a ``.pt`` file, a directory holding
``distance_output.pt`` (and, optionally, ``config.json``) or a hub id. The learnable
temperature of the registered family model ``DistanceHead`` is not in the published file:
``from_upstream`` takes it from the ``"temperature"`` field of the directory's ``config.json``
when there is one, else 1.0 (upstream's initial value). A bare ``.pt`` file has no
``config.json`` (temperature 1.0): pass its directory to keep one.

Write (``save_distance_head``, ``to_upstream``): ``to_upstream`` writes a directory in the Hub
layout, ``distance_output.pt`` (upstream's ``load_state_dict(strict=True)`` accepts it) plus a
``config.json`` holding upstream's ``model_type`` and ``num_bins`` and jaxts' ``hidden_size``,
``dropout`` and ``temperature`` (upstream readers ignore fields they do not use; ``base_model``
and the training bookkeeping are not recorded by jaxts checkpoints and are left out).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from bridges._mapping import Rule, load_torch_state, torch_load, torch_save, torch_state
from jaxts.checkpoint import CheckpointError, first_line, read_json
from jaxts.models.distance_head import DistanceAwareOutputLayer, DistanceHead, DistanceHeadConfig

WEIGHTS_FILE = "distance_output.pt"
CONFIG_FILE = "config.json"
MODEL_TYPE = "distance_aware_chronos"

# Upstream's registration order (``load_state_dict`` ignores order; files we write keep it).
RULES = [
    Rule("gaussian_centers", "gaussian_centers"),
    Rule("gaussian_widths", "gaussian_widths"),
    Rule("ordinal_embed.weight", "ordinal_embed.embedding"),
    *[
        Rule(f"{name}.{t}", f"{name}.{f}", tr)
        for name in ("value_projection", "confidence_projection", "mix_layer.0", "mix_layer.3")
        for t, f, tr in (("weight", "kernel", "linear"), ("bias", "bias", "identity"))
    ],
]
# Where each size can be read, most telling first: (torch key, axis of its torch shape).
_HIDDEN_FROM = (
    ("value_projection.weight", 1),
    ("confidence_projection.weight", 1),
    ("mix_layer.0.bias", 0),
    ("mix_layer.0.weight", 0),
)
_BINS_FROM = (
    ("gaussian_widths", 0),
    ("gaussian_centers", 1),
    ("ordinal_embed.weight", 0),
    ("mix_layer.3.bias", 0),
    ("mix_layer.3.weight", 0),
)
# config.json fields: upstream's Hub config, its training checkpoints' config, and ours.
_KNOWN_FIELDS = {
    "model_type",
    "base_model",
    "num_bins",
    "training_epoch",
    "val_loss",
    "timestamp",
    "epoch",
    "device",
    "hidden_size",
    "dropout",
    "temperature",
}


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """float32 numpy tensors of a ``.pt`` state dict (``torch.load(weights_only=True)``,
    onto the CPU whatever device it was saved from)."""
    sd = torch_load(path)
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: holds a {type(sd).__name__}, not a state dict")
    not_tensors = sorted(str(k) for k, v in sd.items() if not hasattr(v, "detach"))
    if not_tensors:
        raise CheckpointError(
            f"{path}: not a state dict of tensors ({len(not_tensors)} other entries: "
            f"{not_tensors[:5]}); expected the state_dict() of DistanceAwareOutputLayer"
        )
    return {k: v.detach().cpu().float().numpy() for k, v in sd.items()}


def _size(sd: Mapping[str, np.ndarray], where, what: str, source) -> tuple[int, str]:
    """The first size of ``where`` present in ``sd``, and the tensor it came from."""
    for key, axis in where:
        shape = np.shape(sd.get(key))
        if len(shape) > axis:
            return int(shape[axis]), f"{key} {tuple(shape)}"
    raise CheckpointError(
        f"{source}: cannot read the {what} from the shapes: none of "
        f"{[k for k, _ in where]} is there; expected a DistanceAwareOutputLayer state dict"
    )


def _sizes(sd, source, hidden_size: int | None) -> tuple[int, int]:
    """``(hidden_size, num_bins)`` from the tensor shapes; a given ``hidden_size`` must agree."""
    hidden, seen = _size(sd, _HIDDEN_FROM, "hidden size", source)
    if hidden_size is not None and hidden_size != hidden:
        raise ValueError(
            f"{source}: the head's hidden size is {hidden} ({seen}), not hidden_size="
            f"{hidden_size}; it must be the d_model of the Chronos-T5 it sits on"
        )
    return hidden, _size(sd, _BINS_FROM, "number of bins", source)[0]


def _resolve(path_or_repo_id) -> tuple[Path, Path | None]:
    """The ``.pt`` file to read and the ``config.json`` next to it (None: none, or a bare
    file was given); a hub id is downloaded with ``huggingface_hub``."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        pt, config = path / WEIGHTS_FILE, path / CONFIG_FILE
        if not pt.is_file():
            raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE} in this directory")
        return pt, config if config.is_file() else None
    if path.exists() or str(path_or_repo_id).count("/") != 1:
        return path, None  # a file, or nothing at all: torch_load says which
    from huggingface_hub import hf_hub_download

    repo = str(path_or_repo_id)
    try:
        config = hf_hub_download(repo, CONFIG_FILE)
        pt = hf_hub_download(repo, WEIGHTS_FILE)
    except Exception as e:  # offline, unknown or gated repo, missing file...
        raise FileNotFoundError(
            f"could not fetch {repo!r} from the Hugging Face Hub ({type(e).__name__}: "
            f"{first_line(e, 120)}); download {WEIGHTS_FILE} elsewhere and pass the local "
            "file or its directory"
        ) from e
    return Path(pt), Path(config)


def read_config(
    path: Path | None, hidden_size: int, num_bins: int
) -> tuple[DistanceHeadConfig, float]:
    """The head's config (sizes from the tensors, ``dropout`` from ``config.json`` if there,
    else upstream's 0.1) and its temperature (``config.json``'s, else 1.0); the fields of
    ``config.json`` (``path``, None when there is none) are checked against the tensors."""
    sizes = {"hidden_size": hidden_size, "num_bins": num_bins}
    if path is None:
        return DistanceHeadConfig(**sizes), 1.0
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: holds a {type(meta).__name__}, not a JSON object")
    unknown = sorted(set(meta) - _KNOWN_FIELDS)
    if unknown:
        raise ValueError(f"{path}: fields not handled by jaxts' distance head: {unknown}")
    if meta.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise ValueError(
            f"{path}: model_type {meta['model_type']!r} is not {MODEL_TYPE!r} (the published "
            "v1 head); other versions have other layers"
        )
    for name, size in sizes.items():
        if name in meta and meta[name] != size:
            raise ValueError(f"{path}: {name}={meta[name]!r} but the weights have {size}")
    t = meta.get("temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
        raise ValueError(f"{path}: temperature must be a finite number > 0, got {t!r}")
    try:
        config = DistanceHeadConfig.from_dict(
            {**sizes, **{k: meta[k] for k in ("dropout",) if k in meta}}
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return config, float(t)


def _read(path_or_repo_id, hidden_size: int | None):
    """``(state dict, the .pt it came from, the head's config, its temperature)``."""
    pt, config_path = _resolve(path_or_repo_id)
    sd = read_state_dict(pt)
    config, temperature = read_config(config_path, *_sizes(sd, pt, hidden_size))
    return sd, pt, config, temperature


def load_distance_head(path_or_repo_id, hidden_size: int | None = None) -> DistanceAwareOutputLayer:
    """Upstream's head as a :class:`DistanceAwareOutputLayer` in eval mode.

    ``path_or_repo_id``: ``distance_output.pt``, a directory holding it, or a hub id
    (``Phoenix21/distance-aware-chronos-t``). ``hidden_size`` and the number of bins come from
    the shapes; a given ``hidden_size`` must agree. Missing, unexpected and mis-shaped keys are
    listed in one ``CheckpointKeyError``; unreadable files and non-finite weights are a
    ``CheckpointError`` naming the file.
    """
    sd, pt, cfg, _ = _read(path_or_repo_id, hidden_size)
    layer = DistanceAwareOutputLayer(
        cfg.hidden_size, cfg.num_bins, dropout=cfg.dropout, rngs=nnx.Rngs(0)
    )
    return load_torch_state(layer, sd, RULES, pt)


def save_distance_head(layer: DistanceAwareOutputLayer, path) -> Path:
    """Write ``layer`` as upstream's ``distance_output.pt`` (its 11 keys, float32)."""
    return torch_save(torch_state(layer, RULES), Path(path))


# ---- the bridge protocol of bridges.convert ------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hidden-size",
        dest="hidden_size",
        type=int,
        default=None,
        help="the hidden size the head must have, checked against its tensors (default: none; "
        "read from the tensors)",
    )


def from_upstream(src, *, hidden_size: int | None = None) -> DistanceHead:
    """The family model: the head + its temperature (``config.json``'s, else 1.0), eval mode."""
    sd, pt, cfg, temperature = _read(src, hidden_size)
    model = DistanceHead(cfg, rngs=nnx.Rngs(0))
    load_torch_state(model.layer, sd, RULES, pt)
    model.temperature[...] = jnp.asarray(temperature, jnp.float32)
    model.eval()
    return model


def to_upstream(model: DistanceHead, dst) -> Path:
    """A directory in the Hub layout: ``distance_output.pt`` + ``config.json``."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    save_distance_head(model.layer, dst / WEIGHTS_FILE)
    cfg = model.config
    meta = {
        "model_type": MODEL_TYPE,
        "num_bins": cfg.num_bins,
        "hidden_size": cfg.hidden_size,
        "dropout": cfg.dropout,
        "temperature": float(np.asarray(model.temperature[...])),
    }
    (dst / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return dst
