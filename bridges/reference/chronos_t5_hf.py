"""The ``chronos_config`` block of the published amazon/chronos-t5-* ``config.json`` files.

Written out literally (not taken from jaxts) so that tests and benchmarks build HF directories
exactly as upstream ships them; ``tests/test_chronos_tokenizer.py`` checks that jaxts'
``ChronosConfig()`` defaults equal it.
"""

# As it appears in config.json (JSON keys), not as keyword arguments.
CHRONOS_T5_CONFIG = {
    "tokenizer_class": "MeanScaleUniformBins",
    "tokenizer_kwargs": {"low_limit": -15.0, "high_limit": 15.0},
    "context_length": 512,
    "prediction_length": 64,
    "n_tokens": 4096,
    "n_special_tokens": 2,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "use_eos_token": True,
    "model_type": "seq2seq",
    "num_samples": 20,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
}


def chronos_config(**overrides) -> dict:
    """A fresh copy, with ``overrides`` (e.g. a short context for fast tests)."""
    out = {**CHRONOS_T5_CONFIG, **overrides}
    out["tokenizer_kwargs"] = dict(out["tokenizer_kwargs"])
    return out


TINY_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


def tiny_hf_chronos(chronos: dict, *, seed: int = 0, std: float | None = 0.3, **t5_overrides):
    """A random HF ``T5ForConditionalGeneration`` carrying ``chronos_config`` (float32, eval).

    ``std``: redraw every parameter from N(0, std) (HF's init leaves a nearly constant model);
    None keeps HF's init."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(
        **{"vocab_size": chronos["n_tokens"], **TINY_T5, **t5_overrides},
        decoder_start_token_id=0,
        chronos_config=dict(chronos),
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(cfg).eval()
    if std is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, std)
    return model
