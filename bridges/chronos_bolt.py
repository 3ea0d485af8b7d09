"""HF Chronos-Bolt directories <-> jaxts :class:`~jaxts.models.chronos_bolt.ChronosBolt`.

Reads ``config.json`` (a T5 config with ``architectures: ["ChronosBoltModelForForecasting"]``
and a ``chronos_config`` block) and ``model.safetensors`` or ``pytorch_model.bin``; a hub id is
fetched with ``huggingface_hub`` when online. Writes a directory that
``chronos.ChronosBoltPipeline.from_pretrained`` loads to the same outputs. The T5 part (file
reading, hub resolution, tied embeddings, the T5 name table) is ``bridges.chronos_t5``'s.

Deviations from upstream's loader, deliberate: missing ``input_patch_embedding`` /
``output_patch_embedding`` weights are an error (upstream would initialise them randomly), and a
Chronos-T5 or Chronos-2 directory is refused with the family to use (upstream would warn and
build a Bolt model around it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from flax import nnx

from bridges._mapping import Rule, load_torch_state, read_hf_config, torch_state, write_hf_dir
from bridges.chronos_t5 import (
    _IGNORED_FIELDS,
    _T5_FIELDS,
    _resolve_tied,
    read_state_dict,
    resolve_dir,
    rules_for,
)
from jaxts.models.chronos_bolt import (
    DENSE_ACT,
    ChronosBolt,
    ChronosBoltConfig,
    ChronosBoltForecastingConfig,
)
from jaxts.models.t5 import T5Config

ARCHITECTURE = "ChronosBoltModelForForecasting"
# What other Chronos checkpoints declare, and the jaxts family that loads them.
_OTHER_FAMILIES = {
    "T5ForConditionalGeneration": ("Chronos-T5", "chronos_t5"),
    "Chronos2Model": ("Chronos-2", "chronos2"),
}
# Fields upstream reads but overwrites (vocab_size and reg_token_id follow use_reg_token),
# that follow from feed_forward_proj, or that only matter for an lm head Bolt does not have.
_DERIVED_FIELDS = {
    "vocab_size", "reg_token_id", "dense_act_fn", "is_gated_act", "tie_word_embeddings",
    "scale_decoder_outputs", "chronos_pipeline_class", "is_decoder",
}  # fmt: skip
_FIXED_FIELDS = {"model_type": "t5", "is_encoder_decoder": True}


def _family_check(hf: dict) -> None:
    """A one-line ValueError when ``hf`` is not a Chronos-Bolt config."""
    arch = hf.get("architectures") if isinstance(hf, dict) else None
    names = arch if isinstance(arch, list) else [arch]
    for name, (model, family) in _OTHER_FAMILIES.items():
        if name in names:
            raise ValueError(
                f"a {model} checkpoint (architectures {arch}), not Chronos-Bolt; "
                f"load it with the {family} family"
            )
    if not isinstance(hf, dict) or "chronos_config" not in hf:
        raise ValueError("not a Chronos config: config.json has no 'chronos_config'")
    if arch is not None and arch != [ARCHITECTURE]:
        raise ValueError(f"architectures {arch} is not supported (need [{ARCHITECTURE!r}])")


def config_from_hf(hf: dict) -> ChronosBoltConfig:
    """``config.json`` dict -> :class:`ChronosBoltConfig`; unknown or unsupported fields raise."""
    _family_check(hf)
    handled = set(_T5_FIELDS) | _IGNORED_FIELDS | _DERIVED_FIELDS | set(_FIXED_FIELDS)
    unknown = sorted(set(hf) - handled - {"chronos_config", "architectures"})
    if unknown:
        raise ValueError(f"config.json fields not handled by jaxts' Chronos-Bolt: {unknown}")
    for name, want in _FIXED_FIELDS.items():
        if name in hf and hf[name] != want:
            raise ValueError(f"config.json {name}={hf[name]!r} is not supported (need {want!r})")
    chronos = ChronosBoltForecastingConfig.from_dict(hf["chronos_config"])
    kwargs = {k: hf[k] for k in _T5_FIELDS if k in hf}
    kwargs.setdefault("num_decoder_layers", kwargs.get("num_layers", T5Config.num_layers))
    proj = kwargs.get("feed_forward_proj", "relu")
    act = DENSE_ACT.get(proj)
    if act is not None and hf.get("dense_act_fn", act) != act:
        raise ValueError(f"config.json dense_act_fn={hf['dense_act_fn']!r} contradicts {proj!r}")
    # upstream overwrites vocab_size: decoder start (+ REG)
    kwargs["vocab_size"] = 2 if chronos.use_reg_token else 1
    return ChronosBoltConfig(t5=T5Config.from_dict(kwargs), chronos=chronos)


def config_to_hf(cfg: ChronosBoltConfig) -> dict:
    t5 = cfg.t5
    out = {k: getattr(t5, k) for k in _T5_FIELDS}
    out.update(
        architectures=[ARCHITECTURE],
        model_type="t5",
        is_encoder_decoder=True,
        dense_act_fn=DENSE_ACT[t5.feed_forward_proj],
        is_gated_act=t5.feed_forward_proj.startswith("gated"),
        chronos_pipeline_class="ChronosBoltPipeline",
        use_cache=True,
        dtype="float32",
        chronos_config={**cfg.chronos.to_dict(), "quantiles": list(cfg.chronos.quantiles)},
    )
    if cfg.chronos.use_reg_token:
        out["reg_token_id"] = 1
    return out


def _residual_rules(name: str) -> list[Rule]:
    return [
        Rule(f"{name}.{layer}.{p}", f"{name}.{layer}.{'kernel' if p == 'weight' else 'bias'}", t)
        for layer in ("hidden_layer", "output_layer", "residual_layer")
        for p, t in (("weight", "linear"), ("bias", "identity"))
    ]


def rules_for_bolt(t5: T5Config) -> list[Rule]:
    """The name table: Chronos-T5's T5 rules without its ``model.`` prefix and lm head, plus
    the two residual blocks."""
    tied = dataclasses.replace(t5, tie_word_embeddings=True)
    rules = [
        Rule(r.torch_key, r.flax_key.removeprefix("model."), r.transform) for r in rules_for(tied)
    ]
    return (
        rules + _residual_rules("input_patch_embedding") + _residual_rules("output_patch_embedding")
    )


def from_state_dict(sd: dict[str, np.ndarray], cfg: ChronosBoltConfig, source=None) -> ChronosBolt:
    """A :class:`ChronosBolt` (eval mode) holding the HF-named tensors ``sd``."""
    sd = dict(sd)
    sd.pop(
        "lm_head.weight", None
    )  # upstream ignores it on load (_keys_to_ignore_on_load_unexpected)
    sd, _ = _resolve_tied(sd, source)  # embed_tokens aliases of shared.weight
    model = ChronosBolt(cfg, rngs=nnx.Rngs(0))
    return load_torch_state(model, sd, rules_for_bolt(cfg.t5), source)


def from_hf(path_or_repo_id: str | Path) -> ChronosBolt:
    """Load an HF Chronos-Bolt directory (or hub id) as a :class:`ChronosBolt` in eval mode."""
    directory = resolve_dir(path_or_repo_id)
    cfg = read_hf_config(directory, config_from_hf)
    sd, source = read_state_dict(directory)
    return from_state_dict(sd, cfg, source)


def to_state_dict(model: ChronosBolt) -> dict[str, np.ndarray]:
    return torch_state(model, rules_for_bolt(model.config.t5))


def save_hf(model: ChronosBolt, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` loadable by ``ChronosBoltPipeline``."""
    return write_hf_dir(directory, to_state_dict(model), config_to_hf(model.config))


# ---- the bridge protocol of bridges.convert (config.json records everything: no options) ---


def from_upstream(src) -> ChronosBolt:
    return from_hf(src)


def to_upstream(model: ChronosBolt, dst) -> Path:
    return save_hf(model, dst)
