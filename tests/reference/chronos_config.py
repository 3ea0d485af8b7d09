"""The ``chronos_config`` block of the published amazon/chronos-t5-* ``config.json`` files.

Written out literally (not taken from jaxts) so that tests and benchmarks build HF directories
exactly as upstream ships them; ``tests/test_chronos_tokenizer.py`` checks that jaxts'
``ChronosConfig()`` defaults equal it.
"""

CHRONOS_T5_CONFIG = dict(
    tokenizer_class="MeanScaleUniformBins",
    tokenizer_kwargs={"low_limit": -15.0, "high_limit": 15.0},
    context_length=512,
    prediction_length=64,
    n_tokens=4096,
    n_special_tokens=2,
    pad_token_id=0,
    eos_token_id=1,
    use_eos_token=True,
    model_type="seq2seq",
    num_samples=20,
    temperature=1.0,
    top_k=50,
    top_p=1.0,
)


def chronos_config(**overrides) -> dict:
    """A fresh copy, with ``overrides`` (e.g. a short context for fast tests)."""
    out = {**CHRONOS_T5_CONFIG, **overrides}
    out["tokenizer_kwargs"] = dict(out["tokenizer_kwargs"])
    return out
