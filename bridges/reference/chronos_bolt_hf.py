"""The published Chronos-Bolt configs and tiny random upstream Chronos-Bolt models.

``CHRONOS_BOLT_CONFIG`` is the ``chronos_config`` block of the amazon/chronos-bolt-small and
-base ``config.json`` files (the sizes share it and differ in the T5 block, ``BOLT_T5_SIZES``).
It is written from the published files as recalled, not fetched: the hub is unreachable here
and no copy of those files was found in the indexed repositories. The values agree with the
chronos-forecasting README (context 2048, horizon 64, patches of 16, quantiles 0.1..0.9, a
REG token).
"""

from __future__ import annotations

from pathlib import Path

# As it appears in config.json (JSON keys), not as keyword arguments.
CHRONOS_BOLT_CONFIG = {
    "context_length": 2048,
    "prediction_length": 64,
    "input_patch_size": 16,
    "input_patch_stride": 16,
    "quantiles": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    "use_reg_token": True,
}

# The T5 fields of the published sizes (t5-efficient-*; d_kv 64, relu, initializer_factor 0.05,
# dropout 0.1, decoder_start_token_id 0 in every one).
_COMMON = dict(d_kv=64, dropout_rate=0.1, initializer_factor=0.05, feed_forward_proj="relu")
BOLT_T5_SIZES = {
    "small": dict(d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8),
    "base": dict(d_model=768, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12),
}
BOLT_T5_SIZES = {k: {**_COMMON, **v} for k, v in BOLT_T5_SIZES.items()}

# The smallest T5 that still has several heads and layers; patches of 16 as published.
TINY_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4)
TINY_CHRONOS = dict(context_length=256, prediction_length=16)


def chronos_bolt_config(**overrides) -> dict:
    """A fresh copy of :data:`CHRONOS_BOLT_CONFIG` with ``overrides``."""
    out = {**CHRONOS_BOLT_CONFIG, **overrides}
    out["quantiles"] = list(out["quantiles"])
    return out


def tiny_chronos_bolt(
    directory: str | Path | None = None,
    *,
    seed: int = 0,
    chronos: dict | None = None,
    std: float | None = 0.3,
    **t5_overrides,
):
    """A random upstream ``ChronosBoltModelForForecasting`` (float32, eval mode).

    ``chronos``: ``chronos_config`` overrides of the published block (default: context 256,
    horizon 16); ``t5_overrides``: T5 fields over :data:`TINY_T5` (e.g. ``**BOLT_T5_SIZES[
    "small"]``). ``std``: redraw every parameter (RMS norm weights as ``1 + N(0, std)``, the rest
    ``N(0, std)``) so that every path counts in parity tests; None keeps upstream's init.
    Saved with ``save_pretrained`` when ``directory`` is given."""
    import torch
    from chronos.chronos_bolt import ChronosBoltModelForForecasting
    from transformers import T5Config

    block = chronos_bolt_config(**{**TINY_CHRONOS, **(chronos or {})})
    cfg = T5Config(**{**TINY_T5, **t5_overrides}, decoder_start_token_id=0, chronos_config=block)
    cfg.architectures = ["ChronosBoltModelForForecasting"]
    torch.manual_seed(seed)
    model = ChronosBoltModelForForecasting(cfg).eval()
    if std is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "layer_norm" in name:
                    p.copy_(1.0 + std * torch.randn_like(p))
                else:
                    p.normal_(0, std)
    if directory is not None:
        model.save_pretrained(str(directory))
    return model
