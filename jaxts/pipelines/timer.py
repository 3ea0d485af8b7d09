"""``TimerPipeline``: the HF Timer (``thuml/timer-base-84m``, ``TimerForPrediction``) from an HF
directory or hub id, with upstream's univariate API (``forward`` / ``generate`` on ``[B, L]``).

Loading lives here, not in ``bridges/``: ``config.json`` is parsed by :func:`config_from_hf`
and ``model.safetensors`` mapped by the name table :data:`HF_TABLE`, which
``bridges/timer_hf.py`` reuses for conversion both ways (jaxts never imports bridges).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx

from jaxts import _hub
from jaxts.checkpoint import (
    CheckpointError,
    CheckpointKeyError,
    check_finite,
    dotted,
    first_line,
    flatten,
    is_checkpoint_dir,
    load_model,
    load_params,
    read_json,
)
from jaxts.models.timer_hf import NORMALIZATIONS, TimerHF, TimerHFConfig, forward, generate

__all__ = [
    "HF_TABLE",
    "TimerPipeline",
    "config_from_hf",
    "hf_table",
    "load_hf_state",
    "load_timer_hf",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

UPSTREAM_DEFAULTS = {
    "input_token_len": 1, "hidden_size": 1024, "intermediate_size": 2048,
    "output_token_lens": [1, 8, 32, 64], "num_hidden_layers": 8, "num_attention_heads": 8,
    "hidden_act": "silu", "use_cache": True, "rope_theta": 10000, "attention_dropout": 0.0,
    "initializer_range": 0.02, "max_position_embeddings": 10000,
}  # fmt: skip
ARCHITECTURE = "TimerForPrediction"
MODEL_TYPE = "timer"
# PretrainedConfig bookkeeping a config.json may carry; nothing in the computation.
HF_IGNORED_FIELDS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "auto_map"}
_OTHER_MODEL_TYPES = {
    "t5": "a Chronos checkpoint: use the chronos_t5, chronos_bolt or chronos2 family",
    "llama": "a Llama checkpoint: use the llama family",
    "sundial": "thuml's Sundial (a flow-matching head), not supported by jaxts",
}


def config_from_hf(hf: dict) -> TimerHFConfig:
    """A ``TimerForPrediction`` ``config.json`` dict -> :class:`TimerHFConfig`; another
    family's config, unknown fields and unsupported values raise ValueError naming them."""
    if not isinstance(hf, dict):
        raise ValueError(f"config.json must hold an object, got {type(hf).__name__}")
    if "model" in hf and "model_type" not in hf:
        raise ValueError(
            f"a jaxts checkpoint directory (model {hf.get('model')!r}), not an HF Timer one"
        )
    model_type = hf.get("model_type")
    if model_type != MODEL_TYPE:
        hint = _OTHER_MODEL_TYPES.get(model_type, "not an HF Timer checkpoint")
        raise ValueError(f"model_type {model_type!r} (need {MODEL_TYPE!r}): {hint}")
    arch = hf.get("architectures", [ARCHITECTURE])
    if arch != [ARCHITECTURE]:
        raise ValueError(f"architectures {arch} is not supported (need [{ARCHITECTURE!r}])")
    known = set(UPSTREAM_DEFAULTS) | HF_IGNORED_FIELDS | {"model_type", "architectures"}
    unknown = sorted(set(hf) - known)
    if unknown:
        raise ValueError(f"config.json fields not handled by jaxts' HF Timer: {unknown}")
    return TimerHFConfig.from_dict({k: hf.get(k, v) for k, v in UPSTREAM_DEFAULTS.items()})


# ---- the checkpoint name table (shared with bridges/timer_hf.py) ---------------------------

_L = "model.layers.{i}"
# (HF key, jaxts parameter path, transform), in the order torch registers the parameters;
# "linear" transposes torch's [out, in] weight into the Flax kernel [in, out] (its own inverse).
HF_TABLE: tuple[tuple[str, str, str], ...] = (
    ("model.embed_layer.emb.weight", "model.embed_layer.emb.kernel", "linear"),
    *(
        (f"{_L}.self_attn.{p}_proj.{t}", f"{_L}.self_attn.{p}_proj.{f}", tr)
        for p in ("q", "k", "v")
        for t, f, tr in (("weight", "kernel", "linear"), ("bias", "bias", "identity"))
    ),
    (f"{_L}.self_attn.o_proj.weight", f"{_L}.self_attn.o_proj.kernel", "linear"),
    *(
        (f"{_L}.ffn_layer.{p}_proj.weight", f"{_L}.ffn_layer.{p}_proj.kernel", "linear")
        for p in ("gate", "up", "down")
    ),
    *(
        (f"{_L}.{n}.{t}", f"{_L}.{n}.{f}", "identity")
        for n in ("norm1", "norm2")
        for t, f in (("weight", "scale"), ("bias", "bias"))
    ),
    ("model.norm.weight", "model.norm.scale", "identity"),
    ("model.norm.bias", "model.norm.bias", "identity"),
    ("lm_heads.{j}.weight", "lm_heads.{j}.kernel", "linear"),
)


def hf_table(cfg: TimerHFConfig) -> list[tuple[str, str, str]]:
    """:data:`HF_TABLE` expanded for ``cfg``: a run of per-layer rows layer-major (torch's
    registration order), ``{j}`` once per head."""
    out, run = [], []
    for row in (*HF_TABLE, None):
        if row is not None and "{i}" in row[0]:
            run.append(row)
            continue
        for i in range(cfg.num_hidden_layers):
            out += [(h.format(i=i), f.format(i=i), t) for h, f, t in run]
        run = []
        if row is not None and "{j}" in row[0]:
            n_heads = len(cfg.output_token_lens)
            out += [(row[0].format(j=j), row[1].format(j=j), row[2]) for j in range(n_heads)]
        elif row is not None:
            out.append(row)
    return out


def load_hf_state(model: TimerHF, state_dict, source=None) -> TimerHF:
    """``model`` holding the HF-named tensors ``state_dict`` (eval mode). Every missing,
    unexpected and mis-shaped key is reported in one :class:`CheckpointKeyError`."""
    template = {
        dotted(p): (p, v) for p, v in flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()
    }
    rows = hf_table(model.config)
    missing = sorted({r[0] for r in rows} - set(state_dict))
    unexpected = sorted(set(state_dict) - {r[0] for r in rows})
    misshaped, params = [], {}
    for hf, fx, tr in rows:
        if hf not in state_dict:
            continue
        value = np.asarray(state_dict[hf], np.float32)
        value = value.T if tr == "linear" else value
        path, want = template[fx]
        if value.shape != tuple(np.shape(want)):
            torch_want = tuple(np.shape(want))[::-1] if tr == "linear" else tuple(np.shape(want))
            misshaped.append((hf, tuple(np.shape(state_dict[hf])), torch_want))
            continue
        params[path] = np.ascontiguousarray(value)
    if missing or unexpected or misshaped:
        raise CheckpointKeyError(missing, unexpected, misshaped, source=source)
    check_finite({r[0]: state_dict[r[0]] for r in rows}, source or "checkpoint")
    nested: dict = {}
    for path, v in params.items():
        node = nested
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return load_params(model, nested)


# ---- files -------------------------------------------------------------------------------


def resolve_dir(dir_or_hub_id, revision: str | None = None) -> Path:
    """A local directory as is; otherwise a hub id (``org/name``) fetched with
    ``huggingface_hub.snapshot_download`` (config and weights only)."""
    return _hub.resolve_dir(dir_or_hub_id, (CONFIG_FILE, WEIGHTS_FILE), revision=revision)


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file as float32 numpy; a damaged file is one
    :class:`CheckpointError` naming it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (an HF Timer directory holds {WEIGHTS_FILE})")
    try:
        return {k: np.asarray(v, np.float32) for k, v in load_file(str(path)).items()}
    except (SafetensorError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable float safetensors file ({first_line(e, 120)})"
        ) from None


def read_config(directory: Path) -> TimerHFConfig:
    """:func:`config_from_hf` of ``directory/config.json``, its errors headed by the file."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found (an HF Timer directory holds {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    hf = read_json(path)
    try:
        return config_from_hf(hf)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def load_timer_hf(dir_or_hub_id, *, revision: str | None = None) -> TimerHF:
    """A :class:`TimerHF` (eval mode) from an HF ``TimerForPrediction`` directory or hub id."""
    directory = resolve_dir(dir_or_hub_id, revision)
    cfg = read_config(directory)
    weights = directory / WEIGHTS_FILE
    return load_hf_state(TimerHF(cfg, rngs=nnx.Rngs(0)), read_weights(weights), source=weights)


class TimerPipeline:
    """Zero-shot forecasting with a pretrained HF Timer (univariate series ``[B, L]``)."""

    def __init__(self, model: TimerHF):
        if not isinstance(model, TimerHF):
            raise TypeError(f"TimerPipeline needs a TimerHF model, got {type(model).__name__}")
        model.eval()
        self.model = model

    @property
    def config(self) -> TimerHFConfig:
        return self.model.config

    @classmethod
    def from_pretrained(cls, dir_or_hub_id, *, revision: str | None = None) -> TimerPipeline:
        """An HF Timer directory (``config.json`` + ``model.safetensors``), a hub id such as
        ``thuml/timer-base-84m`` (at ``revision``), or a jaxts ``timer_hf`` checkpoint."""
        path = Path(dir_or_hub_id).expanduser()
        if is_checkpoint_dir(path):
            return cls(load_model(path, family="timer_hf"))
        return cls(load_timer_hf(dir_or_hub_id, revision=revision))

    def forward(self, x, normalize: bool = False) -> np.ndarray:
        """The first head at every patch position ``[B, N, P_out]`` (float32); the last row is
        upstream ``forward(x).logits``. ``normalize``: by each series' mean / unbiased std and
        back, as inside upstream ``generate``."""
        return np.asarray(forward(self.model, x, normalize=normalize))

    def generate(self, x, max_new_tokens: int, normalization: str = "context") -> np.ndarray:
        """``[B, max_new_tokens]`` float32 forecasts; ``normalization`` one of
        ``"context"`` (default), ``"hf"``, ``"window"`` (see
        :func:`jaxts.models.timer_hf.generate`)."""
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
            )
        return np.asarray(generate(self.model, x, max_new_tokens, normalization))
