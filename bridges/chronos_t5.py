"""HF Chronos-T5 directories <-> jaxts :class:`~jaxts.models.chronos_t5.ChronosT5`.

Reads ``config.json`` (a T5 config with a ``chronos_config`` block) and ``model.safetensors``
or ``pytorch_model.bin`` (``torch.load(weights_only=True)``); a hub id is fetched with
``huggingface_hub`` when online. Writes a directory that ``ChronosPipeline.from_pretrained``
loads to the same outputs. Config fields that would change the computation and that we do not
implement are rejected, not ignored.
"""

from __future__ import annotations

import dataclasses
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
    torch_load,
    torch_state,
    write_hf_dir,
)
from jaxts import _hub
from jaxts.checkpoint import CheckpointError
from jaxts.models.chronos_t5 import ChronosT5, ChronosT5Config
from jaxts.models.chronos_tokenizer import ChronosConfig
from jaxts.models.t5 import T5Config

# HF config fields that map onto T5Config one to one.
_T5_FIELDS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "dropout_rate",
    "layer_norm_epsilon",
    "feed_forward_proj",
    "initializer_factor",
    "pad_token_id",
    "eos_token_id",
    "decoder_start_token_id",
)
# Fields that do not change inference or training here (bookkeeping, generation defaults that
# Chronos overrides, a T5 field T5 itself never reads).
_IGNORED_FIELDS = {
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "n_positions",
    "classifier_dropout",
    "output_past",
    "_name_or_path",
    "task_specific_params",
}
# Fields we accept only with the value that our implementation assumes.
_FIXED_FIELDS = {
    "model_type": "t5",
    "is_encoder_decoder": True,
    "is_decoder": False,
    "architectures": ["T5ForConditionalGeneration"],
}
_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Old checkpoints carry a never-used bias table on cross-attention; HF drops it on load.
_DROPPED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"


def config_from_hf(hf: dict) -> ChronosT5Config:
    """``config.json`` dict -> :class:`ChronosT5Config`; unknown or unsupported fields raise."""
    if not isinstance(hf, dict) or "chronos_config" not in hf:
        raise ValueError("not a Chronos config: config.json has no 'chronos_config'")
    handled = set(_T5_FIELDS) | _IGNORED_FIELDS | set(_FIXED_FIELDS)
    handled |= {"chronos_config", "dense_act_fn", "is_gated_act"}
    handled |= {"tie_word_embeddings", "scale_decoder_outputs"}
    unknown = sorted(set(hf) - handled)
    if unknown:
        raise ValueError(f"config.json fields not handled by jaxts' Chronos-T5: {unknown}")
    for name, want in _FIXED_FIELDS.items():
        if name in hf and hf[name] != want:
            raise ValueError(f"config.json {name}={hf[name]!r} is not supported (need {want!r})")
    kwargs = {k: hf[k] for k in _T5_FIELDS if k in hf}
    if "num_decoder_layers" not in kwargs and "num_layers" in kwargs:
        kwargs["num_decoder_layers"] = kwargs["num_layers"]
    proj = kwargs.get("feed_forward_proj", "relu")
    implied = {"relu": ("relu", False), "gated-gelu": ("gelu_new", True)}.get(proj)
    if implied is not None:
        for name, value in zip(("dense_act_fn", "is_gated_act"), implied, strict=True):
            if name in hf and hf[name] != value:
                raise ValueError(f"config.json {name}={hf[name]!r} contradicts {proj!r}")
    # transformers 5: outputs are scaled unless tie_word_embeddings is False; an explicit
    # scale_decoder_outputs wins.
    scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
    t5 = T5Config.from_dict({**kwargs, "scale_decoder_outputs": bool(scale)})
    return ChronosT5Config(t5=t5, chronos=ChronosConfig.from_dict(hf["chronos_config"]))


def config_to_hf(cfg: ChronosT5Config) -> dict:
    t5 = cfg.t5
    out = {k: getattr(t5, k) for k in _T5_FIELDS}
    gated = t5.feed_forward_proj.startswith("gated")
    out.update(
        architectures=["T5ForConditionalGeneration"],
        model_type="t5",
        is_encoder_decoder=True,
        dense_act_fn="gelu_new" if gated else t5.feed_forward_proj,
        is_gated_act=gated,
        tie_word_embeddings=t5.tie_word_embeddings,
        scale_decoder_outputs=t5.scale_decoder_outputs,
        use_cache=True,
        dtype="float32",
        chronos_config=cfg.chronos.to_dict(),
    )
    return out


def rules_for(t5: T5Config) -> list[Rule]:
    """The name table for one T5 configuration (HF names on the left)."""
    ffn = ["wi_0", "wi_1", "wo"] if t5.feed_forward_proj.startswith("gated") else ["wi", "wo"]

    def stack(name: str, n_layers: int, is_decoder: bool) -> list[Rule]:
        bias = f"{name}.block.0.layer.0.SelfAttention.relative_attention_bias"
        per_layer = [
            Rule(
                f"{name}.block.{{i}}.layer.0.SelfAttention.{p}.weight",
                f"model.{name}.block.{{i}}.layer.0.SelfAttention.{p}.kernel",
                "linear",
            )
            for p in "qkvo"
        ]
        per_layer.append(
            Rule(
                f"{name}.block.{{i}}.layer.0.layer_norm.weight",
                f"model.{name}.block.{{i}}.layer.0.layer_norm.weight",
            )
        )
        ff = 1
        if is_decoder:
            ff = 2
            per_layer += [
                Rule(
                    f"{name}.block.{{i}}.layer.1.EncDecAttention.{p}.weight",
                    f"model.{name}.block.{{i}}.layer.1.EncDecAttention.{p}.kernel",
                    "linear",
                )
                for p in "qkvo"
            ]
            per_layer.append(
                Rule(
                    f"{name}.block.{{i}}.layer.1.layer_norm.weight",
                    f"model.{name}.block.{{i}}.layer.1.layer_norm.weight",
                )
            )
        per_layer += [
            Rule(
                f"{name}.block.{{i}}.layer.{ff}.DenseReluDense.{p}.weight",
                f"model.{name}.block.{{i}}.layer.{ff}.DenseReluDense.{p}.kernel",
                "linear",
            )
            for p in ffn
        ]
        per_layer.append(
            Rule(
                f"{name}.block.{{i}}.layer.{ff}.layer_norm.weight",
                f"model.{name}.block.{{i}}.layer.{ff}.layer_norm.weight",
            )
        )
        rules = [Rule(f"{bias}.weight", f"model.{bias}.embedding")]
        rules += expand_rules(per_layer, n_layers)
        rules.append(
            Rule(f"{name}.final_layer_norm.weight", f"model.{name}.final_layer_norm.weight")
        )
        return rules

    rules = [Rule("shared.weight", "model.shared.embedding")]
    rules += stack("encoder", t5.num_layers, False)
    rules += stack("decoder", t5.num_decoder_layers, True)
    if not t5.tie_word_embeddings:
        rules.append(Rule("lm_head.weight", "model.lm_head.kernel", "linear"))
    return rules


def read_state_dict(directory: Path) -> tuple[dict[str, np.ndarray], Path]:
    """float32 numpy tensors from ``model.safetensors`` (preferred) or ``pytorch_model.bin``,
    and the file they came from."""
    st, pt = directory / SAFETENSORS_FILE, directory / BIN_FILE
    if st.is_file():
        raw, path = read_safetensors(st), st
    elif pt.is_file():
        sd = torch_load(pt)
        if not isinstance(sd, dict):
            raise CheckpointError(f"{pt}: holds a {type(sd).__name__}, not a state dict")
        raw, path = {k: v.float().numpy() for k, v in sd.items()}, pt
    elif (directory / (SAFETENSORS_FILE + ".index.json")).is_file():
        raise ValueError(f"{directory}: sharded checkpoints are not supported; merge the shards")
    else:
        raise FileNotFoundError(f"{directory}: neither {SAFETENSORS_FILE} nor {BIN_FILE} found")
    return {k: np.asarray(v, np.float32) for k, v in raw.items()}, path


def _resolve_tied(sd: dict[str, np.ndarray], source=None) -> tuple[dict[str, np.ndarray], bool]:
    """Drop tied aliases of ``shared.weight`` (checking they are equal); says whether the
    lm head is tied (absent, or equal to ``shared.weight``)."""
    sd = dict(sd)
    shared = sd.get("shared.weight")
    for name in _DROPPED:
        sd.pop(name, None)
    for name in _ALIASES:
        if name in sd:
            alias = sd.pop(name)
            if shared is None:
                sd["shared.weight"] = shared = alias
            elif alias.shape != shared.shape or not np.array_equal(alias, shared):
                raise CheckpointKeyError(
                    misshaped=[(name, alias.shape, "== shared.weight")], source=source
                )
    head = sd.get("lm_head.weight")
    tied = head is None or (
        shared is not None and head.shape == shared.shape and np.array_equal(head, shared)
    )
    if tied:
        sd.pop("lm_head.weight", None)
    return sd, tied


def from_state_dict(sd: dict[str, np.ndarray], cfg: ChronosT5Config, source=None) -> ChronosT5:
    """A :class:`ChronosT5` (eval mode) holding the HF-named tensors ``sd``; ``source``, the
    file they came from, heads every error message."""
    sd, tied = _resolve_tied(sd, source)
    cfg = dataclasses.replace(cfg, t5=dataclasses.replace(cfg.t5, tie_word_embeddings=tied))
    return load_torch_state(ChronosT5(cfg, rngs=nnx.Rngs(0)), sd, rules_for(cfg.t5), source)


def resolve_dir(path_or_repo_id: str | Path, extra_files: tuple[str, ...] = ()) -> Path:
    """A local directory as is; otherwise a hub id downloaded with ``huggingface_hub`` (the
    config and weights files, plus ``extra_files``)."""
    files = (CONFIG_FILE, SAFETENSORS_FILE, BIN_FILE, *extra_files)
    return _hub.resolve_dir(path_or_repo_id, files)


def from_hf(path_or_repo_id: str | Path) -> ChronosT5:
    """Load an HF Chronos-T5 directory (or hub id) as a :class:`ChronosT5` in eval mode."""
    directory = resolve_dir(path_or_repo_id)
    cfg = read_hf_config(directory, config_from_hf)
    sd, source = read_state_dict(directory)
    return from_state_dict(sd, cfg, source)


def to_state_dict(model: ChronosT5) -> dict[str, np.ndarray]:
    return torch_state(model, rules_for(model.config.t5))


def save_hf(model: ChronosT5, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` loadable by ``ChronosPipeline``."""
    return write_hf_dir(directory, to_state_dict(model), config_to_hf(model.config))


# ---- the bridge protocol of bridges.convert (config.json records everything: no options) ---


def from_upstream(src) -> ChronosT5:
    return from_hf(src)


def to_upstream(model: ChronosT5, dst) -> Path:
    return save_hf(model, dst)
