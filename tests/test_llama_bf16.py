"""bfloat16 Llama: weights and activations in bfloat16 (``cast_params`` / the pipelines' ``dtype``)
against transformers' model after ``.to(torch.bfloat16)``, and against float32."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from bridges import llama as bridge
from jaxts.models.llama import cast_params, generate
from jaxts.pipelines.llama import LlamaPipeline


def hf_llama(seed=0) -> LlamaForCausalLM:
    """A tiny random GQA ``LlamaForCausalLM`` (hidden 64, 2 layers, vocab 97), eager attention."""
    cfg = HFLlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rope_theta=500.0, tie_word_embeddings=False, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float().eval()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tm = hf_llama()
    d = tmp_path_factory.mktemp("bf16") / "hf"
    tm.save_pretrained(d)
    return tm, d


def ids_for(b=2, t=13, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 97, (b, t)).astype(np.int32)


def test_bf16_logits_track_transformers_bf16(pair):
    tm, d = pair
    ids = ids_for()
    with torch.no_grad():
        ref32 = tm(input_ids=torch.from_numpy(ids).long()).logits.numpy()
        ref16 = tm.to(torch.bfloat16)(input_ids=torch.from_numpy(ids).long()).logits.float().numpy()
        tm.float()
    jm = cast_params(bridge.from_hf(d), jnp.bfloat16)
    assert (
        jm.dtype == jnp.bfloat16
        and jm.model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.bfloat16
    )
    got = np.asarray(jm(ids))
    assert got.dtype == np.float32  # logits in float32, as HF's LlamaForCausalLM returns them
    scale = np.abs(ref32).max()
    hf_err = np.abs(ref16 - ref32).max()
    assert hf_err > 1e-4 * scale  # bfloat16 really rounds (else the test below says nothing)
    # same rounding model as HF: as close to HF's bf16 as HF's bf16 is to float32
    assert np.abs(got - ref16).max() <= max(2 * hf_err, 1e-2 * scale)
    assert np.abs(got - ref32).max() <= 4 * hf_err


def test_bf16_generation_uses_a_bf16_cache_and_back_to_float32(pair):
    _, d = pair
    jm = cast_params(bridge.from_hf(d), jnp.bfloat16)
    assert all(k.dtype == jnp.bfloat16 for k in jm.init_cache(2, 8).k)
    ids = ids_for(2, 7, seed=1)
    out = np.asarray(generate(jm, ids, max_new_tokens=5))
    assert out.shape == (2, 5) and ((out >= 0) & (out < 97)).all()
    back = cast_params(jm, jnp.float32)
    np.testing.assert_allclose(
        np.asarray(back(ids)), np.asarray(bridge.from_hf(d)(ids)), atol=0.05, rtol=0
    )  # float32 again: the weights were rounded to bf16 once, nothing else differs


def test_pipeline_dtype_option(pair):
    _, d = pair
    pipe = LlamaPipeline.from_pretrained(d, dtype=jnp.bfloat16)
    assert pipe.model.dtype == jnp.bfloat16
    assert pipe.generate_ids(ids_for(1, 5), 3).shape == (1, 3)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        cast_params(pipe.model, jnp.float16)
