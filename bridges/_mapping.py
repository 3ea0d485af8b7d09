"""Declarative checkpoint name maps, usable in both directions (MaxText style).

A model's bridge is a table of ``Rule(torch_key, flax_key, transform)``; ``{i}`` stands for a
layer index. Transforms are small named hooks, each with its exact inverse, so
PyTorch -> Flax -> PyTorch returns identical tensors.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
from flax import nnx

from jaxts.checkpoint import (
    CheckpointError,
    CheckpointKeyError,
    check_finite,
    dotted,
    first_line,
    flatten,
    load_params,
    read_json,
)

__all__ = [
    "CheckpointError",
    "CheckpointKeyError",
    "Rule",
    "expand_rules",
    "flatten",
    "flax_to_torch",
    "import_torch",
    "load_torch_state",
    "read_hf_config",
    "read_safetensors",
    "torch_load",
    "torch_save",
    "torch_state",
    "torch_to_flax",
    "unflatten",
    "write_hf_dir",
]


def _linear_to_flax(w):
    return np.ascontiguousarray(w.T)  # torch Linear [out, in] -> flax kernel [in, out]


def _conv1x1_to_flax(w):
    return np.ascontiguousarray(w[:, :, 0].T)  # Conv1d(k=1) [out, in, 1] -> [in, out]


def _conv1x1_to_torch(w):
    return np.ascontiguousarray(w.T[:, :, None])


TRANSFORMS = {
    # name: (torch -> flax, flax -> torch)
    "identity": (lambda w: w, lambda w: w),
    "linear": (_linear_to_flax, _linear_to_flax),
    "conv1x1": (_conv1x1_to_flax, _conv1x1_to_torch),
}


@dataclasses.dataclass(frozen=True)
class Rule:
    torch_key: str
    flax_key: str
    transform: str = "identity"


def expand_rules(rules: Iterable[Rule], n_layers: int) -> list[Rule]:
    """Concrete rules; a run of per-layer rules is expanded layer-major (all of layer 0, then
    layer 1, ...), the order in which torch registers them."""
    out: list[Rule] = []
    run: list[Rule] = []
    for rule in [*rules, None]:
        if rule is not None and "{i}" in rule.torch_key:
            run.append(rule)
            continue
        for i in range(n_layers):
            out.extend(
                Rule(r.torch_key.format(i=i), r.flax_key.format(i=i), r.transform) for r in run
            )
        run = []
        if rule is not None:
            out.append(rule)
    return out


def unflatten(flat: Mapping[tuple, object]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def import_torch(path: Path):
    """torch, an optional dependency needed only for PyTorch files (and bfloat16 ones)."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: a PyTorch file; handling it needs torch") from None
    return torch


def torch_load(path: Path):
    """``torch.load`` of a weights file (``weights_only``: no code runs); an empty, truncated
    or foreign file is a one-line CheckpointError naming it."""
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not found"
        raise FileNotFoundError(f"{path}: {what}; expected a PyTorch weights file")
    torch = import_torch(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # EOFError, RuntimeError (zip), UnpicklingError...
        raise CheckpointError(
            f"{path}: not a readable PyTorch weights file (empty, truncated or not written by "
            f"torch.save: {first_line(e, 120)})"
        ) from None


def torch_to_flax(
    state_dict: Mapping[str, np.ndarray],
    rules: list[Rule],
    flax_template: Mapping,
    source=None,
) -> dict:
    """Map a torch state dict onto a nested Flax pure-dict shaped like ``flax_template``.

    Every problem is collected first and reported together, never one at a time; then the
    weights must be finite. ``source`` (the file) heads every message.
    """
    by_dotted = {dotted(p): p for p in flatten(flax_template)}
    template = {dotted(p): v for p, v in flatten(flax_template).items()}
    expected = {r.torch_key for r in rules}
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    misshaped, out = [], {}
    for rule in rules:
        if rule.torch_key not in state_dict:
            continue
        value = TRANSFORMS[rule.transform][0](np.asarray(state_dict[rule.torch_key]))
        want = tuple(np.shape(template[rule.flax_key]))
        if tuple(value.shape) != want:
            shape = tuple(np.shape(state_dict[rule.torch_key]))
            torch_want = tuple(TRANSFORMS[rule.transform][1](np.zeros(want)).shape)
            misshaped.append((rule.torch_key, shape, torch_want))
            continue
        out[by_dotted[rule.flax_key]] = value.astype(np.asarray(template[rule.flax_key]).dtype)
    if missing or unexpected or misshaped:
        raise CheckpointKeyError(missing, unexpected, misshaped, source=source)
    check_finite({r.torch_key: state_dict[r.torch_key] for r in rules}, source or "checkpoint")
    not_covered = sorted(set(template) - {r.flax_key for r in rules})
    if not_covered:  # a bug in the table, not in the checkpoint
        raise AssertionError(f"bridge table does not cover Flax parameters {not_covered}")
    return unflatten(out)


def flax_to_torch(flax_params: Mapping, rules: list[Rule]) -> dict[str, np.ndarray]:
    flat = {dotted(p): np.asarray(v) for p, v in flatten(flax_params).items()}
    unknown = sorted(set(flat) - {r.flax_key for r in rules})
    if unknown:
        raise AssertionError(f"bridge table does not cover Flax parameters {unknown}")
    return {r.torch_key: TRANSFORMS[r.transform][1](flat[r.flax_key]) for r in rules}


def load_torch_state(model, state_dict: Mapping[str, np.ndarray], rules: list[Rule], source=None):
    """``model`` holding the torch-named tensors of ``state_dict``, in eval mode (see
    :func:`torch_to_flax` for the checks; ``source`` heads their messages)."""
    template = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return load_params(model, torch_to_flax(state_dict, rules, template, source))


def torch_state(model, rules: list[Rule]) -> dict[str, np.ndarray]:
    """The torch-named state dict (numpy arrays) of ``model``."""
    return flax_to_torch(nnx.to_pure_dict(nnx.state(model, nnx.Param)), rules)


def torch_save(state_dict: Mapping[str, np.ndarray], path: Path) -> Path:
    """Write ``state_dict`` as a PyTorch file (``torch.load(weights_only=True)`` reads it)."""
    torch = import_torch(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, path)
    return path


# ---- HF directories: config.json + model.safetensors ---------------------------------------


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file as numpy (bf16 through torch); a damaged file is
    one :class:`CheckpointError` naming it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        try:
            return load_file(str(path))
        except (TypeError, ValueError):  # bf16 has no numpy dtype: go through torch
            import_torch(path)
            from safetensors.torch import load_file as load_torch

            return {k: v.float().numpy() for k, v in load_torch(str(path)).items()}
    except SafetensorError as e:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (empty, truncated or damaged: "
            f"{first_line(e, 120)})"
        ) from None


def read_hf_config(directory: Path, parse: Callable[[dict], object]):
    """``parse`` of ``directory/config.json``; its ValueErrors come back headed by the file."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found")
    hf = read_json(config_path)  # its CheckpointError already names the file
    try:
        return parse(hf)
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from None


def write_hf_dir(directory: str | Path, state_dict: Mapping[str, np.ndarray], config: dict):
    """``model.safetensors`` (float32, torch's ``"pt"`` metadata) + ``config.json`` in
    ``directory``, the layout ``from_pretrained`` of transformers reads."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = {k: np.ascontiguousarray(v, np.float32) for k, v in state_dict.items()}
    save_file(sd, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory
