"""HF Llama directories (``LlamaForCausalLM``) <-> jaxts :class:`~jaxts.models.llama.Llama`.

Reads ``config.json`` (transformers 4's ``rope_theta`` + ``rope_scaling`` or transformers 5's
``rope_parameters``) and ``model.safetensors`` or the shards named by
``model.safetensors.index.json``; a hub id is fetched with ``huggingface_hub`` when online. Writes
``config.json`` + ``model.safetensors`` that transformers loads to the same logits. Config fields
that would change the computation and that we do not implement are rejected by name, not ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx

from bridges._mapping import (
    CheckpointKeyError,
    Rule,
    expand_rules,
    load_torch_state,
    read_hf_config,
    read_safetensors,
    torch_state,
    write_hf_dir,
)
from bridges.chronos_t5 import resolve_dir
from jaxts.checkpoint import CheckpointError, read_json
from jaxts.models.llama import Llama, LlamaConfig

__all__ = [
    "config_from_hf",
    "config_to_hf",
    "from_hf",
    "from_state_dict",
    "from_upstream",
    "read_state_dict",
    "rules_for",
    "save_hf",
    "to_state_dict",
    "to_upstream",
]

# HF config fields that map onto LlamaConfig one to one (rope fields are handled apart).
_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "attention_bias",
    "mlp_bias",
    "tie_word_embeddings",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
# Bookkeeping and training-only fields: they do not change inference here (dropout is off in
# eval, initializer_range only draws fresh weights, use_cache is an HF runtime switch).
_IGNORED_FIELDS = {
    "architectures",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "_name_or_path",
    "initializer_range",
    "attention_dropout",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "id2label",
    "label2id",
    "problem_type",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "tokenizer_class",
    "quantization_config_applied",
}
# Fields accepted only with the value our implementation assumes.
_FIXED_FIELDS = {"hidden_act": "silu", "pretraining_tp": 1, "model_type": "llama"}
_ROPE_FIELDS = {"rope_theta", "rope_scaling", "rope_parameters"}

SAFETENSORS_FILE = "model.safetensors"
INDEX_FILE = SAFETENSORS_FILE + ".index.json"


def _rope_from_hf(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling as a :class:`RopeScaling` dict or None) from either layout."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ValueError(f"rope_parameters/rope_scaling must be a mapping, got {params!r}")
    params = dict(params)
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    # "type" is the pre-4.45 spelling of "rope_type".
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    if rope_type == "default":
        if params:
            raise ValueError(
                f"rope parameters not handled for rope_type 'default': {sorted(params)}"
            )
        return theta, None
    if rope_type == "llama3" and "original_max_position_embeddings" not in params:
        # transformers falls back to max_position_embeddings
        params["original_max_position_embeddings"] = hf.get("max_position_embeddings", 2048)
    return theta, {"rope_type": rope_type, **params}


def config_from_hf(hf: dict) -> LlamaConfig:
    """``config.json`` dict -> :class:`LlamaConfig`; unknown or unsupported fields raise."""
    if not isinstance(hf, dict):
        raise ValueError("config.json is not a mapping")
    handled = set(_FIELDS) | _IGNORED_FIELDS | set(_FIXED_FIELDS) | _ROPE_FIELDS
    unknown = sorted(set(hf) - handled)
    if unknown:
        raise ValueError(f"config.json fields not handled by jaxts' Llama: {unknown}")
    for name, want in _FIXED_FIELDS.items():
        if name in hf and hf[name] != want:
            raise ValueError(f"config.json {name}={hf[name]!r} is not supported (need {want!r})")
    theta, scaling = _rope_from_hf(hf)
    kwargs = {k: hf[k] for k in _FIELDS if k in hf}
    return LlamaConfig.from_dict({**kwargs, "rope_theta": theta, "rope_scaling": scaling})


def config_to_hf(cfg: LlamaConfig) -> dict:
    """:class:`LlamaConfig` -> ``config.json`` dict, in the transformers 4 layout
    (``rope_theta`` + ``rope_scaling``), which transformers 5 also reads."""
    out = {k: getattr(cfg, k) for k in _FIELDS}
    if isinstance(out["eos_token_id"], tuple):
        out["eos_token_id"] = list(out["eos_token_id"])
    scaling = None
    if cfg.rope_scaling is not None:
        scaling = {k: v for k, v in cfg.rope_scaling.to_dict().items() if v is not None}
    out.update(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_act="silu",
        rope_theta=cfg.rope_theta,
        rope_scaling=scaling,
        pretraining_tp=1,
        use_cache=True,
        dtype="float32",
    )
    return out


def rules_for(cfg: LlamaConfig) -> list[Rule]:
    """The name table for one configuration (HF names on the left)."""
    per_layer = []
    for proj, bias in (
        *((f"self_attn.{p}_proj", cfg.attention_bias) for p in "qkvo"),
        *((f"mlp.{p}_proj", cfg.mlp_bias) for p in ("gate", "up", "down")),
    ):
        key = f"model.layers.{{i}}.{proj}"
        per_layer.append(Rule(f"{key}.weight", f"{key}.kernel", "linear"))
        if bias:
            per_layer.append(Rule(f"{key}.bias", f"{key}.bias"))
    for norm in ("input_layernorm", "post_attention_layernorm"):
        key = f"model.layers.{{i}}.{norm}.weight"
        per_layer.append(Rule(key, key))
    rules = [Rule("model.embed_tokens.weight", "model.embed_tokens.embedding")]
    rules += expand_rules(per_layer, cfg.num_hidden_layers)
    rules.append(Rule("model.norm.weight", "model.norm.weight"))
    if not cfg.tie_word_embeddings:
        rules.append(Rule("lm_head.weight", "lm_head.kernel", "linear"))
    return rules


def read_state_dict(directory: Path) -> tuple[dict[str, np.ndarray], Path]:
    """float32 numpy tensors from ``model.safetensors`` or its shards, and the file they came
    from (the index for a sharded checkpoint)."""
    single, index = directory / SAFETENSORS_FILE, directory / INDEX_FILE
    if single.is_file():
        raw, source = read_safetensors(single), single
    elif index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' mapping")
        raw, source = {}, index
        for shard in sorted(set(weight_map.values())):
            path = directory / shard
            if not path.is_file():
                raise FileNotFoundError(f"{path}: shard named by {index} not found")
            raw.update(read_safetensors(path))
    else:
        raise FileNotFoundError(f"{directory}: neither {SAFETENSORS_FILE} nor {INDEX_FILE} found")
    return {k: np.asarray(v, np.float32) for k, v in raw.items()}, source


def from_state_dict(sd: dict[str, np.ndarray], cfg: LlamaConfig, source=None) -> Llama:
    """A :class:`Llama` (eval mode) holding the HF-named tensors ``sd``; ``source`` heads every
    error message. A tied checkpoint may still carry ``lm_head.weight`` (equal to the
    embedding): it is dropped after checking; a different one is a listed mismatch."""
    sd = dict(sd)
    if cfg.tie_word_embeddings and "lm_head.weight" in sd:
        head, embed = sd.pop("lm_head.weight"), sd.get("model.embed_tokens.weight")
        if embed is None or head.shape != embed.shape or not np.array_equal(head, embed):
            raise CheckpointKeyError(
                misshaped=[("lm_head.weight", head.shape, "== model.embed_tokens.weight")],
                source=source,
            )
    # HF's rotary buffer, written by some old checkpoints; recomputed from the config here.
    for k in [k for k in sd if k.endswith("self_attn.rotary_emb.inv_freq")]:
        sd.pop(k)
    return load_torch_state(Llama(cfg, rngs=nnx.Rngs(0)), sd, rules_for(cfg), source)


def from_hf(path_or_repo_id: str | Path) -> Llama:
    """Load an HF Llama directory (or hub id) as a :class:`Llama` in eval mode."""
    directory = resolve_dir(path_or_repo_id, extra_files=(INDEX_FILE, "model-*.safetensors"))
    cfg = read_hf_config(directory, config_from_hf)
    sd, source = read_state_dict(directory)
    return from_state_dict(sd, cfg, source)


def to_state_dict(model: Llama) -> dict[str, np.ndarray]:
    return torch_state(model, rules_for(model.config))


def save_hf(model: Llama, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` loadable by ``LlamaForCausalLM``."""
    return write_hf_dir(directory, to_state_dict(model), config_to_hf(model.config))


def from_upstream(src: str | Path) -> Llama:
    """The bridge protocol's reader (``bridges.convert``): an HF directory or hub id, or a
    llama.cpp ``.gguf`` file (dequantised to float32)."""
    if str(src).endswith(".gguf"):
        from bridges.gguf import read_gguf

        hf, sd = read_gguf(src)
        return from_state_dict(sd, config_from_hf(hf), source=src)
    return from_hf(src)


def to_upstream(model: Llama, dst: Path) -> Path:
    """The bridge protocol's writer: an HF directory at ``dst`` (see :func:`save_hf`)."""
    return save_hf(model, dst)
