"""HF Chronos-2 directories (chronos-forecasting 2.x) <-> jaxts :class:`Chronos2Model`.

Reads ``config.json`` (``Chronos2CoreConfig`` fields + a ``chronos_config`` block) and
``model.safetensors`` (or ``pytorch_model.bin``); a hub id is fetched with ``huggingface_hub``
when online. Writes a directory that ``chronos.Chronos2Pipeline.from_pretrained`` loads to the
same outputs. Config fields that would change the computation and that we do not implement
are rejected by name, never ignored.

PEFT LoRA adapters (what ``Chronos2Pipeline.fit(finetune_mode="lora")`` writes:
``adapter_config.json`` + ``adapter_model.safetensors``) are merged into the base weights as
PEFT's ``merge_and_unload`` does: ``W += scaling * B @ A`` with ``scaling = lora_alpha / r``
(``lora_alpha / sqrt(r)`` with ``use_rslora``). Give the adapter with ``lora=``, or give the
adapter directory itself (its base is ``base_model_name_or_path``, or ``lora=`` names it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from flax import nnx

from bridges import chronos_t5
from bridges._mapping import (
    CheckpointKeyError,
    Rule,
    expand_rules,
    load_torch_state,
    read_safetensors,
    torch_load,
    torch_state,
)
from bridges.chronos_t5 import read_state_dict
from jaxts.checkpoint import read_json
from jaxts.models.chronos2 import (
    Chronos2Config,
    Chronos2CoreConfig,
    Chronos2ForecastingConfig,
    Chronos2Model,
)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")

_CORE_FIELDS = tuple(f for f in Chronos2CoreConfig.__dataclass_fields__)
# Bookkeeping, and fields upstream recomputes from chronos_config whatever the file says
# (vocab_size, reg_token_id) or never reads (pad_token_id: the [PAD] row is never looked up;
# the attention implementation: eager and sdpa compute the same thing).
_IGNORED_FIELDS = {
    "transformers_version", "torch_dtype", "dtype", "_name_or_path", "use_cache",
    "vocab_size", "reg_token_id", "pad_token_id", "attn_implementation",
    "_attn_implementation_autoset", "chronos_pipeline_class",
}  # fmt: skip
# Accepted only with the value our implementation assumes.
_FIXED_FIELDS = {
    "model_type": "t5",
    "architectures": ["Chronos2Model"],
    "is_gated_act": False,
    "is_decoder": False,
    "is_encoder_decoder": False,
}
# chronos_config keys upstream's dataclass requires, and its defaults for the others.
_REQUIRED_CHRONOS = (
    "context_length", "output_patch_size", "input_patch_size", "input_patch_stride", "quantiles",
)  # fmt: skip
_UPSTREAM_DEFAULTS = {"use_reg_token": False, "use_arcsinh": False, "max_output_patches": 1}


def config_from_hf(hf: dict) -> Chronos2Config:
    """``config.json`` dict -> :class:`Chronos2Config`; unknown or unsupported fields raise."""
    if not isinstance(hf, dict) or "chronos_config" not in hf:
        raise ValueError("not a Chronos-2 config: config.json has no 'chronos_config'")
    for name, want in _FIXED_FIELDS.items():  # first: another model's config says so here
        if name in hf and hf[name] != want:
            raise ValueError(f"config.json {name}={hf[name]!r} is not supported (need {want!r})")
    handled = set(_CORE_FIELDS) | _IGNORED_FIELDS | set(_FIXED_FIELDS)
    handled |= {"chronos_config", "dense_act_fn"}
    unknown = sorted(set(hf) - handled)
    if unknown:
        raise ValueError(f"config.json fields not handled by jaxts' Chronos-2: {unknown}")
    proj = hf.get("feed_forward_proj", "relu")
    if proj.startswith("gated-"):
        raise ValueError(f"config.json feed_forward_proj={proj!r}: gated activations unsupported")
    if "dense_act_fn" in hf and hf["dense_act_fn"] != proj.split("-")[-1]:
        raise ValueError(f"config.json dense_act_fn={hf['dense_act_fn']!r} contradicts {proj!r}")
    chronos = hf["chronos_config"]
    if not isinstance(chronos, dict):
        raise ValueError("config.json chronos_config must be a mapping")
    missing = [k for k in _REQUIRED_CHRONOS if k not in chronos]
    if missing:
        raise ValueError(f"config.json chronos_config lacks {missing}")
    core = Chronos2CoreConfig.from_dict({k: hf[k] for k in _CORE_FIELDS if k in hf})
    chronos = Chronos2ForecastingConfig.from_dict({**_UPSTREAM_DEFAULTS, **chronos})
    return Chronos2Config(core=core, chronos=chronos)


def config_to_hf(cfg: Chronos2Config) -> dict:
    """The ``config.json`` upstream's ``save_pretrained`` writes for ``cfg``."""
    core = cfg.core.to_dict()
    chronos = cfg.chronos.to_dict()
    chronos["quantiles"] = list(chronos["quantiles"])
    return {
        "architectures": ["Chronos2Model"],
        "chronos_config": chronos,
        "chronos_pipeline_class": "Chronos2Pipeline",
        **core,
        "dense_act_fn": cfg.core.feed_forward_proj,
        "is_gated_act": False,
        "model_type": "t5",
        "pad_token_id": 0,
        "reg_token_id": 1,
        "vocab_size": 2 if cfg.chronos.use_reg_token else 1,
        "dtype": "float32",
    }


def rules_for(cfg: Chronos2Config) -> list[Rule]:
    """The name table (upstream state-dict keys on the left)."""

    def residual(name: str) -> list[Rule]:
        return [
            Rule(f"{name}.{layer}.{p}", f"{name}.{layer}.{'kernel' if p == 'weight' else p}",
                 "linear" if p == "weight" else "identity")
            for layer in ("hidden_layer", "output_layer", "residual_layer")
            for p in ("weight", "bias")
        ]  # fmt: skip

    block = "encoder.block.{i}.layer"
    per_layer = [
        Rule(f"{block}.{j}.self_attention.{p}.weight", f"{block}.{j}.self_attention.{p}.kernel",
             "linear")
        for j in (0, 1)
        for p in "qkvo"
    ]  # fmt: skip
    per_layer += [
        Rule(f"{block}.{j}.layer_norm.weight", f"{block}.{j}.layer_norm.weight") for j in (0, 1, 2)
    ]
    per_layer += [
        Rule(f"{block}.2.mlp.{p}.weight", f"{block}.2.mlp.{p}.kernel", "linear")
        for p in ("wi", "wo")
    ]
    rules = [Rule("shared.weight", "shared.embedding"), *residual("input_patch_embedding")]
    rules += expand_rules(per_layer, cfg.core.num_layers)
    rules.append(Rule("encoder.final_layer_norm.weight", "encoder.final_layer_norm.weight"))
    return rules + residual("output_patch_embedding")


# ---- directories, hub ids and adapters ---------------------------------------------------


def resolve_dir(path_or_repo_id: str | Path) -> Path:
    """A local directory as is; otherwise a hub id downloaded with ``huggingface_hub`` (the
    base model's files or an adapter's)."""
    return chronos_t5.resolve_dir(path_or_repo_id, (ADAPTER_CONFIG, *ADAPTER_FILES))


def is_adapter_dir(directory: Path) -> bool:
    return (directory / ADAPTER_CONFIG).is_file()


# LoraConfig fields that change nothing once the weights are trained (initialisation,
# training-time dropout, bookkeeping, which modules were targeted: the file says that).
_LORA_IGNORED = {
    "auto_mapping", "revision", "task_type", "inference_mode", "init_lora_weights",
    "lora_dropout", "peft_version", "layers_pattern", "layers_to_transform", "exclude_modules",
    "loftq_config", "eva_config", "corda_config", "lora_ga_config", "megatron_core",
    "megatron_config", "qalora_group_size", "ensure_weight_tying", "target_modules",
    "base_model_name_or_path",
}  # fmt: skip
_LORA_USED = {"peft_type", "r", "lora_alpha", "use_rslora", "bias"}


def lora_scaling(adapter: dict, source) -> float:
    """PEFT's merge scale, after rejecting adapter options we cannot merge exactly: any field
    besides the known harmless ones must be off (``use_dora``, ``rank_pattern``,
    ``modules_to_save``, ``fan_in_fan_out``, ``lora_bias``...)."""
    if adapter.get("peft_type") != "LORA":
        raise ValueError(
            f"{source}: peft_type {adapter.get('peft_type')!r} is not supported (LORA)"
        )
    if adapter.get("bias", "none") != "none":
        raise ValueError(f"{source}: bias={adapter['bias']!r} is not supported (need 'none')")
    options = sorted(
        k for k, v in adapter.items()
        if k not in _LORA_IGNORED | _LORA_USED and v not in (None, False, {}, [], "none")
    )  # fmt: skip
    if options:
        raise ValueError(
            f"{source}: LoRA options not supported by jaxts' merge: "
            + ", ".join(f"{k}={adapter[k]!r}" for k in options)
        )
    r, alpha = adapter.get("r"), adapter.get("lora_alpha")
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, int | float):
        raise ValueError(f"{source}: needs a positive int r and a number lora_alpha")
    return alpha / math.sqrt(r) if adapter.get("use_rslora") else alpha / r


def _read_adapter_weights(directory: Path) -> tuple[dict[str, np.ndarray], Path]:
    st, pt = (directory / f for f in ADAPTER_FILES)
    if st.is_file():
        return {k: np.asarray(v, np.float32) for k, v in read_safetensors(st).items()}, st
    if pt.is_file():
        sd = torch_load(pt)
        return {k: v.float().numpy() for k, v in sd.items()}, pt
    raise FileNotFoundError(f"{directory}: neither of {list(ADAPTER_FILES)} found")


def merge_lora(sd: dict[str, np.ndarray], adapter_dir: Path) -> dict[str, np.ndarray]:
    """``sd`` (upstream names) with the LoRA adapter of ``adapter_dir`` merged in; adapter
    keys that name no base weight, unpaired A/B tensors and wrong shapes are all listed."""
    config_path = adapter_dir / ADAPTER_CONFIG
    scaling = lora_scaling(read_json(config_path), config_path)
    weights, source = _read_adapter_weights(adapter_dir)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    unexpected, misshaped = [], []
    for key, value in weights.items():
        name = key.removeprefix("base_model.model.")
        for part in ("A", "B"):
            if name.endswith(f".lora_{part}.weight"):
                target = name.removesuffix(f".lora_{part}.weight") + ".weight"
                pairs.setdefault(target, {})[part] = value
                break
        else:
            unexpected.append(key)
    out = dict(sd)
    for target, ab in sorted(pairs.items()):
        if target not in sd or set(ab) != {"A", "B"}:
            unexpected.append(f"{target} (lora_{'/'.join(sorted(ab))})")
            continue
        a, b = ab["A"], ab["B"]  # [r, in], [out, r]
        if a.ndim != 2 or b.ndim != 2 or (b.shape[0], a.shape[1]) != sd[target].shape:
            misshaped.append((target, (b.shape, a.shape), sd[target].shape))
            continue
        out[target] = (sd[target] + (b @ a) * np.float32(scaling)).astype(np.float32)
    if unexpected or misshaped:
        raise CheckpointKeyError(unexpected=unexpected, misshaped=misshaped, source=source)
    return out


def _base_and_adapter(src, lora) -> tuple[Path, Path | None]:
    directory = resolve_dir(src)
    if not is_adapter_dir(directory):
        adapter = None if lora is None else resolve_dir(lora)
        if adapter is not None and not is_adapter_dir(adapter):
            raise ValueError(f"{lora}: not a LoRA adapter directory (no {ADAPTER_CONFIG})")
        return directory, adapter
    if lora is not None:  # src is the adapter: lora names its base
        base = resolve_dir(lora)
    else:
        base_id = read_json(directory / ADAPTER_CONFIG).get("base_model_name_or_path")
        if not base_id:
            raise ValueError(
                f"{directory} is a LoRA adapter without base_model_name_or_path; pass the base "
                "model directory with lora=BASE (--lora BASE)"
            )
        base = resolve_dir(base_id)
    if is_adapter_dir(base):
        raise ValueError(f"{base}: the base model is itself a LoRA adapter")
    return base, directory


# ---- the bridge protocol of bridges.convert ----------------------------------------------


def from_hf(path_or_repo_id: str | Path, *, lora: str | Path | None = None) -> Chronos2Model:
    """Load an HF Chronos-2 directory (or hub id, or LoRA adapter) in eval mode."""
    directory, adapter = _base_and_adapter(path_or_repo_id, lora)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found")
    try:
        cfg = config_from_hf(read_json(config_path))
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from None
    sd, source = read_state_dict(directory)
    if adapter is not None:
        sd = merge_lora(sd, adapter)
    model = Chronos2Model(cfg, rngs=nnx.Rngs(0))
    return load_torch_state(model, sd, rules_for(cfg), source)


def save_hf(model: Chronos2Model, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` loadable by ``Chronos2Pipeline``."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = torch_state(model, rules_for(model.config))
    sd = {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}
    save_file(sd, str(directory / SAFETENSORS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config_to_hf(model.config), indent=2))
    return directory


def from_upstream(src, *, lora=None) -> Chronos2Model:
    return from_hf(src, lora=lora)


def to_upstream(model: Chronos2Model, dst) -> Path:
    return save_hf(model, dst)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--lora",
        default=None,
        metavar="DIR",
        help="a PEFT LoRA adapter directory (or hub id) to merge into SRC; when SRC is the "
        "adapter, the base model (default: none; an adapter SRC uses its "
        "base_model_name_or_path)",
    )
