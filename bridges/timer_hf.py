"""HF Timer directories (``thuml/timer-base-84m``: ``TimerForPrediction`` remote code) <->
jaxts :class:`~jaxts.models.timer_hf.TimerHF`.

``python -m bridges.convert timer_hf HF_DIR_OR_HUB_ID OUT`` reads ``config.json`` +
``model.safetensors``; ``python -m bridges.convert timer_hf CKPT_DIR OUT_HF_DIR`` writes a
directory that the remote code (and ``bridges/reference/timer_hf_torch.py``) loads with strict
key matching. The name table and the ``config.json`` parser are jaxts' own
(``jaxts.pipelines.timer``: the pipeline loads HF directories without this package); here they
become ``bridges._mapping`` rules, which run in both directions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx

from bridges._mapping import (
    Rule,
    load_torch_state,
    read_hf_config,
    read_safetensors,
    torch_state,
    write_hf_dir,
)
from jaxts.models.timer_hf import TimerHF, TimerHFConfig
from jaxts.pipelines.timer import (
    ARCHITECTURE,
    MODEL_TYPE,
    WEIGHTS_FILE,
    config_from_hf,
    hf_table,
    resolve_dir,
)

# What upstream's config.json declares, so transformers finds the remote code next to it.
AUTO_MAP = {
    "AutoConfig": "configuration_timer.TimerConfig",
    "AutoModelForCausalLM": "modeling_timer.TimerForPrediction",
}


def rules_for(config: TimerHFConfig) -> list[Rule]:
    """The expanded name table of one model, in torch's registration order."""
    return [Rule(hf, fx, tr) for hf, fx, tr in hf_table(config)]


def config_to_hf(cfg: TimerHFConfig) -> dict:
    """:class:`TimerHFConfig` -> upstream ``config.json`` (``config_from_hf`` inverts it)."""
    fields = cfg.to_dict()
    fields["output_token_lens"] = list(cfg.output_token_lens)
    if float(cfg.rope_theta).is_integer():
        fields["rope_theta"] = int(cfg.rope_theta)  # upstream's type
    return {
        "architectures": [ARCHITECTURE],
        "auto_map": dict(AUTO_MAP),
        "model_type": MODEL_TYPE,
        **fields,
        "torch_dtype": "float32",
    }


def from_state_dict(sd: dict[str, np.ndarray], cfg: TimerHFConfig, source=None) -> TimerHF:
    """A :class:`TimerHF` (eval mode) holding the HF-named tensors ``sd``; every missing,
    unexpected and mis-shaped key is listed in one ``CheckpointKeyError``."""
    return load_torch_state(TimerHF(cfg, rngs=nnx.Rngs(0)), sd, rules_for(cfg), source)


def to_state_dict(model: TimerHF) -> dict[str, np.ndarray]:
    return torch_state(model, rules_for(model.config))


def from_hf(path_or_repo_id: str | Path, revision: str | None = None) -> TimerHF:
    """Load an HF Timer directory (or hub id) as a :class:`TimerHF` in eval mode."""
    directory = resolve_dir(path_or_repo_id, revision)
    cfg = read_hf_config(directory, config_from_hf)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found (an HF Timer directory holds it)")
    return from_state_dict(read_safetensors(weights), cfg, weights)


def save_hf(model: TimerHF, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` loadable by ``TimerForPrediction``."""
    return write_hf_dir(directory, to_state_dict(model), config_to_hf(model.config))


# ---- the bridge protocol of bridges.convert (config.json records everything: no options) ---


def from_upstream(src) -> TimerHF:
    return from_hf(src)


def to_upstream(model: TimerHF, dst) -> Path:
    return save_hf(model, dst)
