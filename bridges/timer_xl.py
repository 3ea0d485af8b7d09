"""OpenLTM Timer-XL and STRIDE draft checkpoints (``checkpoint.pth``) <-> jaxts ``TimerXL``.

The name tables below are the whole mapping; ``bridges._mapping`` applies them in either
direction. A STRIDE draft is the same network with other sizes; a stochastic draft (STRIDE's
``--draft_stochastic``) has ``head_mean.*`` + ``head_logvar.*`` instead of ``head.*``, which is how
it is detected.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flax import nnx

from bridges._mapping import (
    Rule,
    expand_rules,
    load_torch_state,
    torch_load,
    torch_save,
    torch_state,
)
from jaxts.checkpoint import CheckpointError, read_json
from jaxts.models.timer_xl import TimerXL, TimerXLConfig

_LAYER = "blocks.attn_layers.{i}"

# In the order torch registers the modules, so exported state dicts keep OpenLTM's key order.
RULES = [
    Rule("embedding.weight", "embedding.kernel", "linear"),
    Rule("embedding.bias", "embedding.bias"),
    Rule(
        f"{_LAYER}.attention.inner_attention.attn_bias.emb.weight",
        f"{_LAYER}.attention.inner_attention.attn_bias.emb.embedding",
    ),
    *[
        Rule(f"{_LAYER}.attention.{p}_projection.{t}", f"{_LAYER}.attention.{p}_projection.{f}", tr)
        for p in ("query", "key", "value", "out")
        for t, f, tr in (("weight", "kernel", "linear"), ("bias", "bias", "identity"))
    ],
    Rule(f"{_LAYER}.conv1.weight", f"{_LAYER}.conv1.kernel", "conv1x1"),
    Rule(f"{_LAYER}.conv1.bias", f"{_LAYER}.conv1.bias"),
    Rule(f"{_LAYER}.conv2.weight", f"{_LAYER}.conv2.kernel", "conv1x1"),
    Rule(f"{_LAYER}.conv2.bias", f"{_LAYER}.conv2.bias"),
    *[
        Rule(f"{_LAYER}.{n}.{t}", f"{_LAYER}.{n}.{f}")
        for n in ("norm1", "norm2")
        for t, f in (("weight", "scale"), ("bias", "bias"))
    ],
    Rule("blocks.norm.weight", "blocks.norm.scale"),
    Rule("blocks.norm.bias", "blocks.norm.bias"),
]
HEAD_RULES = {
    False: [Rule("head.weight", "head.kernel", "linear"), Rule("head.bias", "head.bias")],
    True: [  # STRIDE registers head_mean before head_logvar
        Rule(f"{h}.{t}", f"{h}.{f}", tr)
        for h in ("head_mean", "head_logvar")
        for t, f, tr in (("weight", "kernel", "linear"), ("bias", "bias", "identity"))
    ],
}


def rules_for(config: TimerXLConfig) -> list[Rule]:
    """The expanded name table of one model (backbone layers + its kind of head)."""
    return expand_rules(RULES + HEAD_RULES[config.stochastic], config.e_layers)


# Not recoverable from tensor shapes: they change the computation but own no parameters.
_SHAPELESS = ("use_norm", "activation", "covariate", "dropout")


def load_state_dict(path_or_state_dict) -> dict[str, np.ndarray]:
    """A ``.pth`` path (loaded with ``weights_only=True``) or a mapping -> numpy state dict.

    Strips the ``module.`` prefix that DDP/DataParallel training adds to every key.
    """
    if isinstance(path_or_state_dict, (str, Path)):
        path = Path(path_or_state_dict)
        if path.is_dir():
            raise ValueError(
                f"{path} is a directory; expected an OpenLTM / STRIDE checkpoint.pth file"
            )
        sd = torch_load(path)
        if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
        if not isinstance(sd, Mapping):
            raise CheckpointError(f"{path}: holds a {type(sd).__name__}, not a state dict")
    else:
        sd = path_or_state_dict
    if not isinstance(sd, Mapping):
        raise TypeError(f"expected a state dict mapping, got {type(sd).__name__}")
    out = {}
    for k, v in sd.items():
        k = k[len("module.") :] if k.startswith("module.") else k
        if hasattr(v, "detach"):
            v = v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
        out[k] = np.asarray(v)
    return out


def infer_config(state_dict: Mapping[str, np.ndarray], **shapeless) -> TimerXLConfig:
    """Read every shape-determined field from the tensors; the rest come from ``shapeless``
    (``use_norm`` is required: guessing it wrong silently changes every forecast)."""
    stochastic = "head_mean.weight" in state_dict
    try:
        d_model, input_token_len = state_dict["embedding.weight"].shape
        output_token_len = state_dict["head_mean.weight" if stochastic else "head.weight"].shape[0]
        n_heads = state_dict[
            "blocks.attn_layers.0.attention.inner_attention.attn_bias.emb.weight"
        ].shape[1]
        d_ff = state_dict["blocks.attn_layers.0.conv1.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"cannot infer the Timer-XL config: checkpoint lacks {e}") from None
    layers = {
        int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.attn_layers\.(\d+)\.", k))
    }
    unknown = sorted(set(shapeless) - set(_SHAPELESS))
    if unknown:
        raise ValueError(f"unknown config overrides {unknown}; allowed: {list(_SHAPELESS)}")
    if shapeless.get("use_norm") is None:
        raise ValueError(
            "an OpenLTM checkpoint does not record use_norm (instance normalisation has no "
            "parameters); pass use_norm=True (OpenLTM's --use_norm, used by its ETT scripts) or "
            "use_norm=False, or pass a full config"
        )
    extra = {k: v for k, v in shapeless.items() if v is not None}
    return TimerXLConfig(
        input_token_len=int(input_token_len),
        output_token_len=int(output_token_len),
        d_model=int(d_model),
        n_heads=int(n_heads),
        e_layers=max(layers) + 1 if layers else 0,
        d_ff=int(d_ff),
        stochastic=stochastic,
        **extra,
    )


def from_openltm(
    path_or_state_dict,
    config: TimerXLConfig | None = None,
    *,
    rngs: nnx.Rngs | None = None,
    **shapeless,
) -> TimerXL:
    """Build a ``TimerXL`` holding the weights of an OpenLTM Timer-XL or STRIDE draft checkpoint.

    ``config`` None: inferred from shapes plus ``shapeless`` overrides (``use_norm`` required,
    ``activation``/``covariate``/``dropout`` default to OpenLTM's argument defaults; a
    stochastic head is detected from ``head_mean.*`` keys).
    Returns the model in eval mode. Raises ``CheckpointKeyError`` listing missing, unexpected
    and mis-shaped keys, ``CheckpointError`` for unreadable files and non-finite weights.
    """
    is_file = isinstance(path_or_state_dict, (str, Path))
    source = Path(path_or_state_dict) if is_file else None
    sd = load_state_dict(path_or_state_dict)
    if config is None:
        try:
            config = infer_config(sd, **shapeless)
        except CheckpointError as e:
            raise CheckpointError(f"{source or 'state dict'}: {e}") from None
    elif shapeless:
        raise ValueError("pass either a config or keyword overrides, not both")
    model = TimerXL(config, rngs=rngs or nnx.Rngs(0))
    return load_torch_state(model, sd, rules_for(config), source)


def to_openltm(model: TimerXL) -> dict[str, np.ndarray]:
    """OpenLTM state dict (numpy arrays, OpenLTM key names) of a ``TimerXL``."""
    return torch_state(model, rules_for(model.config))


def save_openltm(model: TimerXL, path) -> Path:
    """Write an OpenLTM-loadable ``checkpoint.pth``."""
    return torch_save(to_openltm(model), Path(path))


# ---- the bridge protocol of bridges.convert ------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help="JSON file with the whole TimerXLConfig (default: none; the shapes come from the "
        "tensors, the rest from the options below)",
    )
    parser.add_argument(
        "--use-norm",
        dest="use_norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="OpenLTM's --use_norm, which a .pth file does not record (default: none; required "
        "without --config)",
    )
    parser.add_argument(
        "--activation",
        choices=["relu", "gelu"],
        default=None,
        help="OpenLTM's --activation (default: relu, OpenLTM's default)",
    )
    parser.add_argument(
        "--covariate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="OpenLTM's --covariate (default: off, OpenLTM's default)",
    )


def from_upstream(src, *, config=None, **shapeless) -> TimerXL:
    """An OpenLTM / STRIDE ``.pth`` as a ``TimerXL`` in eval mode; ``config``: a JSON file with
    the whole config, else inferred from the shapes plus ``shapeless`` (``use_norm``...)."""
    shapeless = {k: v for k, v in shapeless.items() if v is not None}
    if config is None:
        return from_openltm(Path(src), **shapeless)
    if shapeless:
        flags = ["--" + k.replace("_", "-") for k in shapeless]
        raise ValueError(f"--config {config} holds the whole model config; drop {flags}")
    path = Path(config)
    data = read_json(path)
    try:
        cfg = TimerXLConfig.from_dict(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return from_openltm(Path(src), cfg)


def to_upstream(model: TimerXL, dst) -> Path:
    return save_openltm(model, dst)
