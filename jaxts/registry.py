"""The model families of jaxts, each named once.

A family is what a checkpoint's ``config.json`` calls its ``"model"``, what a run config's
``model.name`` selects and what ``python -m bridges.convert FAMILY`` converts. Everything that
needs a list of families (``jaxts.checkpoint``, the run-config loader in ``train.config``, the
conversion CLI) reads this table; adding a family is one entry here plus the family's own files
(see ``docs/adding_a_model.md``).

Classes are named by import path and imported on first use, so ``import jaxts.registry`` stays
cheap and the table can name a bridge (a layer above ``jaxts``) without importing it.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

__all__ = ["FAMILIES", "Family", "family", "family_of"]


def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, name) if name else obj


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family.

    ``config`` / ``model``: ``"module:Class"`` of its frozen config dataclass (``from_dict`` /
    ``to_dict``) and of its ``nnx.Module`` (``Model(config, *, rngs)``). ``bridge``: the module in
    ``bridges/`` that converts the upstream checkpoint format both ways (``from_upstream`` /
    ``to_upstream``, see ``docs/adding_a_model.md``). ``upstream``: that format in words, for
    messages and ``--help``.
    """

    name: str
    config: str
    model: str
    bridge: str
    upstream: str

    def config_class(self) -> type:
        return _resolve(self.config)

    def model_class(self) -> type:
        return _resolve(self.model)

    def bridge_module(self):
        """The bridge module (imports ``bridges``: only for callers above ``jaxts``)."""
        return _resolve(self.bridge)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="timer_xl",
            config="jaxts.models.timer_xl:TimerXLConfig",
            model="jaxts.models.timer_xl:TimerXL",
            bridge="bridges.timer_xl",
            upstream="OpenLTM / STRIDE checkpoint.pth (Timer-XL or a STRIDE draft)",
        ),
        Family(
            name="timer_hf",
            config="jaxts.models.timer_hf:TimerHFConfig",
            model="jaxts.models.timer_hf:TimerHF",
            bridge="bridges.timer_hf",
            upstream="HF Timer directory or hub id (TimerForPrediction: config.json + model.safetensors)",
        ),
        Family(
            name="chronos_t5",
            config="jaxts.models.chronos_t5:ChronosT5Config",
            model="jaxts.models.chronos_t5:ChronosT5",
            bridge="bridges.chronos_t5",
            upstream="HF Chronos-T5 directory or hub id (config.json + model.safetensors)",
        ),
        Family(
            name="distance_head",
            config="jaxts.models.distance_head:DistanceHeadConfig",
            model="jaxts.models.distance_head:DistanceHead",
            bridge="bridges.distance_head",
            upstream="Phoenix21 distance_output.pt (distance-aware Chronos head)",
        ),
        Family(
            name="chronos2",
            config="jaxts.models.chronos2:Chronos2Config",
            model="jaxts.models.chronos2:Chronos2Model",
            bridge="bridges.chronos2",
            upstream="HF Chronos-2 directory or hub id (config.json + model.safetensors)",
        ),
        Family(
            name="chronos_bolt",
            config="jaxts.models.chronos_bolt:ChronosBoltConfig",
            model="jaxts.models.chronos_bolt:ChronosBolt",
            bridge="bridges.chronos_bolt",
            upstream="HF Chronos-Bolt directory or hub id (config.json + model.safetensors)",
        ),
        Family(
            name="llama",
            config="jaxts.models.llama:LlamaConfig",
            model="jaxts.models.llama:Llama",
            bridge="bridges.llama",
            upstream="HF LlamaForCausalLM directory or hub id (safetensors), or a llama.cpp .gguf file",
        ),
    )
}


def family(name: str) -> Family:
    """The family called ``name``; a ValueError listing the known ones otherwise."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None


def family_of(model_or_config) -> Family:
    """The family of a model instance or of a config instance."""
    for fam in FAMILIES.values():
        if type(model_or_config) in (fam.model_class(), fam.config_class()):
            return fam
    raise TypeError(f"{type(model_or_config).__name__} belongs to no registered model family")
