"""The published amazon/chronos-2 ``chronos_config`` block, and tiny random upstream models.

The block is written out literally (not taken from jaxts), as it appears in the ``config.json``
of amazon/chronos-2 (the 120M model: d_model 768, d_kv 64, d_ff 3072, 12 layers, 12 heads).
The hub cannot be reached here; the values were read from public copies of that file: the
fixtures of several re-implementations (MLX, Rust, vLLM and Tenstorrent ports) that reproduce
it, and the ``_default_chronos_config`` of transformers' Chronos-2 port (documented as
``checkpoint="amazon/chronos-2"``). All agree: context_length 8192, patches of 16,
max_output_patches 64, the 21 levels 0.01, 0.05 ... 0.95, 0.99, time_encoding_scale 8192,
arcsinh and the REG token on.

:func:`tiny_chronos2` builds upstream's ``chronos.chronos2.Chronos2Model`` at a test size with
every parameter redrawn (upstream's ``initializer_factor`` 0.05 leaves a nearly constant model,
and RMSNorm weights of exactly 1 would hide a swapped norm), in eval mode.
"""

from __future__ import annotations

from pathlib import Path

QUANTILES_21 = [
    0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
    0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99,
]  # fmt: skip

# As it appears in config.json (JSON keys).
CHRONOS2_CONFIG = {
    "context_length": 8192,
    "input_patch_size": 16,
    "input_patch_stride": 16,
    "output_patch_size": 16,
    "max_output_patches": 64,
    "quantiles": QUANTILES_21,
    "time_encoding_scale": 8192,
    "use_arcsinh": True,
    "use_reg_token": True,
}

# The top-level (core) fields of the published config.json that change the computation.
CHRONOS2_CORE = dict(
    d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, dropout_rate=0.1,
    layer_norm_epsilon=1e-6, initializer_factor=0.05, feed_forward_proj="relu",
    rope_theta=10000.0,
)  # fmt: skip

# Test size: d_model 32, 4 heads of 8, 2 layers; context 256 (16 patches), 4 output patches.
TINY_CORE = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
TINY_CHRONOS = dict(context_length=256, max_output_patches=4, time_encoding_scale=256)


def chronos2_config(**overrides) -> dict:
    """A fresh copy of :data:`CHRONOS2_CONFIG` with ``overrides``; changing
    ``context_length`` alone keeps ``time_encoding_scale`` equal to it, as a freshly made
    upstream config would."""
    out = {**CHRONOS2_CONFIG, "quantiles": list(QUANTILES_21)}
    if "context_length" in overrides and "time_encoding_scale" not in overrides:
        out["time_encoding_scale"] = overrides["context_length"]
    out.update(overrides)
    out["quantiles"] = list(out["quantiles"])
    return out


def randomize_chronos2_(model, *, seed: int = 0, std: float = 0.2):
    """Redraw every parameter of an upstream Chronos-2 in place: matrices, biases and the
    ``shared`` embedding from N(0, std); RMSNorm weights from 1 + N(0, std)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * std
            p.copy_(1.0 + noise if "layer_norm" in name else noise)
    return model


def tiny_chronos2(directory: str | Path | None = None, *, seed: int = 0, std=0.2, **overrides):
    """A random upstream ``chronos.chronos2.Chronos2Model`` (float32, eval mode).

    ``overrides``: ``chronos_config`` keys (``context_length``, ``use_reg_token``...) or core
    keys (``d_model``, ``dropout_rate``, ``attn_implementation``...). ``std``: the spread of
    the redrawn parameters (None keeps upstream's init). With ``directory``, the model is also
    written there with ``save_pretrained`` (``config.json`` + ``model.safetensors``)."""
    import torch
    from chronos.chronos2 import Chronos2Model
    from chronos.chronos2.config import Chronos2CoreConfig

    chronos = {k: v for k, v in overrides.items() if k in CHRONOS2_CONFIG}
    core = {k: v for k, v in overrides.items() if k not in CHRONOS2_CONFIG}
    chronos_cfg = chronos2_config(**{**TINY_CHRONOS, **chronos})
    config = Chronos2CoreConfig(
        **{**CHRONOS2_CORE, **TINY_CORE, **core},
        chronos_config=chronos_cfg,
        architectures=["Chronos2Model"],
        chronos_pipeline_class="Chronos2Pipeline",
    )
    torch.manual_seed(seed)
    model = Chronos2Model(config)
    if std is not None:
        randomize_chronos2_(model, seed=seed, std=std)
    model.eval()
    if directory is not None:
        model.save_pretrained(str(directory))
    return model
