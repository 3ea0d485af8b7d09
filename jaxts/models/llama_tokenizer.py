"""Llama tokenizers (byte-level BPE) and chat templates, on the ``tokenizers`` library.

Built either from an HF directory (``tokenizer.json`` + ``tokenizer_config.json``, optionally
``chat_template.jinja``) or from a llama.cpp GGUF's ``tokenizer.ggml.*`` metadata, as
transformers' ``convert_gguf_tokenizer`` builds it for ``tokenizer.ggml.model == "gpt2"``:
the vocabulary respelled in GPT-2's byte alphabet, the file's merges, a ByteLevel pre-tokenizer
and decoder (with the split regex of the ``tokenizer.ggml.pre`` family, where transformers has
one), CONTROL tokens added as special tokens and USER_DEFINED ones as plain added tokens, so ids
equal transformers'. Chat templates are rendered with jinja2 the way transformers renders them.
No transformers import: this module runs without torch.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

from jaxts.checkpoint import CheckpointError

__all__ = ["TOKENIZER_FILES", "LlamaTokenizer", "bytes_to_unicode", "render_chat_template"]

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_FILES = (
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    CHAT_TEMPLATE_FILE,
    SPECIAL_TOKENS_MAP_FILE,
)

# llama.cpp's token types (gguf.TokenType)
_CONTROL, _USER_DEFINED = 3, 4

# transformers' GGUF_PRE_TOKENIZER_SPLITS for the Llama-3 style splitters (the digits in groups
# of up to three); a pre type not listed keeps GPT-2's ByteLevel regex, as in transformers.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_SPLITS = {
    name: _LLAMA3_SPLIT
    for name in ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx", "pixtral")
}


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet of byte-level BPE vocabularies)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:  # control and space bytes move past 255 so every byte prints
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _token_text(value) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def render_chat_template(template: str, messages, add_generation_prompt=True, **variables) -> str:
    """Render ``template`` as transformers' ``apply_chat_template(tokenize=False)`` does: a sandboxed
    immutable jinja2 environment with ``trim_blocks``/``lstrip_blocks``, loop controls,
    ``raise_exception``, ``strftime_now`` and a ``tojson`` filter that keeps non-ASCII text."""
    return _compile(template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt, **variables
    )


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters and sorts keys; transformers' does neither
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)


class LlamaTokenizer:
    """``encode``/``decode`` with a ``tokenizers.Tokenizer``, special token ids and the chat
    template. ``bos_id``/``eos_id``/``pad_id`` are None when the files name no such token."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        chat_template: str | None = None,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
    ):
        self.tokenizer = tokenizer
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token, self.unk_token = pad_token, unk_token
        self.chat_template = chat_template
        # transformers adds the named special tokens to the backend as special added tokens
        # (they stay whole in text and are skipped when decoding with skip_special_tokens)
        named = [t for t in (bos_token, eos_token, unk_token, pad_token) if t is not None]
        if named:
            tokenizer.add_special_tokens(
                [AddedToken(t, normalized=False, special=True) for t in named]
            )
        if add_bos_token is not None or add_eos_token is not None:
            self._set_post_processor(bool(add_bos_token), bool(add_eos_token))

    def _set_post_processor(self, add_bos: bool, add_eos: bool) -> None:
        """transformers' ``update_post_processor``: BOS/EOS around each sequence as flagged."""
        for flag, token in ((add_bos, self.bos_token), (add_eos, self.eos_token)):
            if flag and token is None:
                raise CheckpointError("add_bos_token/add_eos_token is set but the token is unnamed")
        bos = f"{self.bos_token}:0 " if add_bos else ""
        eos = f" {self.eos_token}:0" if add_eos else ""
        single = f"{bos}$A:0{eos}"
        pair = f"{single} {bos.replace(':0', ':1')}$B:1{eos.replace(':0', ':1')}"
        specials = [
            (t, self.tokenizer.token_to_id(t))
            for t, on in ((self.bos_token, add_bos), (self.eos_token, add_eos))
            if on
        ]
        self.tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=specials
        )

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        """The rendered prompt string (transformers' ``tokenize=False``); encode it with
        ``add_special_tokens=False``, as transformers does, since the template writes them."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            pad_token=self.pad_token,
            unk_token=self.unk_token,
        )

    @classmethod
    def from_dir(cls, directory: str | Path) -> LlamaTokenizer | None:
        """From an HF directory's ``tokenizer.json`` (+ ``tokenizer_config.json``,
        ``special_tokens_map.json``, ``chat_template.jinja``); None when it has no
        ``tokenizer.json``."""
        directory = Path(directory)
        if not (directory / TOKENIZER_FILE).is_file():
            return None
        tok = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        config = {}
        for name in (SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE):  # the config wins
            path = directory / name
            if path.is_file():
                try:
                    config.update(json.loads(path.read_text()))
                except json.JSONDecodeError as e:
                    raise CheckpointError(f"{path}: not valid JSON ({e})") from e
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: transformers uses "default"
            template = {t["name"]: t["template"] for t in template}.get("default")
        if (directory / CHAT_TEMPLATE_FILE).is_file():  # transformers 5 writes it apart
            template = (directory / CHAT_TEMPLATE_FILE).read_text()
        # tokenizer.json's own post-processor decides BOS unless the config says otherwise
        return cls(
            tok,
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
            pad_token=_token_text(config.get("pad_token")),
            unk_token=_token_text(config.get("unk_token")),
            chat_template=template,
            add_bos_token=config.get("add_bos_token"),
            add_eos_token=config.get("add_eos_token"),
        )

    @classmethod
    def from_gguf_metadata(cls, meta: dict) -> LlamaTokenizer:
        """From ``bridges.gguf.read_gguf_tokenizer``'s dict (``model``, ``pre``, ``tokens``,
        ``token_type``, ``merges``, ``bos_id``/``eos_id``/``unk_id``/``pad_id``,
        ``add_bos_token``, ``add_eos_token``, ``chat_template``); byte-level BPE only."""
        if meta.get("model") != "gpt2":
            raise CheckpointError(
                f"GGUF tokenizer.ggml.model {meta.get('model')!r}: only byte-level BPE ('gpt2') "
                "is supported"
            )
        tokens = list(meta["tokens"])
        spelling = bytes_to_unicode()
        alphabet = set(spelling.values())
        # tokens already in the byte alphabet stay; others (e.g. raw UTF-8) are respelled
        vocab = {
            t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
            for i, t in enumerate(tokens)
        }
        merges = [tuple(m.split(" ")) for m in meta.get("merges") or ()]
        tok = Tokenizer(
            BPE(
                vocab=vocab,
                merges=merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
        )
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        types = list(meta.get("token_type") or ())
        # a CONTROL token outside the byte alphabet is a llama.cpp mislabel: adding it would
        # grow the vocabulary past the model's
        control = [
            AddedToken(t, normalized=False, special=True)
            for t, kind in zip(tokens, types, strict=False)  # files may omit token_type
            if kind == _CONTROL and set(t) <= alphabet
        ]
        if control:
            tok.add_special_tokens(control)
        known = tok.get_vocab()
        user = [
            AddedToken(t, normalized=False, special=False)
            for t, kind in zip(tokens, types, strict=False)  # files may omit token_type
            if kind == _USER_DEFINED and t in known
        ]
        if user:
            tok.add_tokens(user)
        split = _PRE_SPLITS.get(meta.get("pre"))
        if split is not None:
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(split), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )

        def name(key):
            i = meta.get(key)
            return None if i is None else tokens[int(i)]

        return cls(
            tok,
            bos_token=name("bos_id"),
            eos_token=name("eos_id"),
            pad_token=name("pad_id"),
            unk_token=name("unk_id"),
            chat_template=meta.get("chat_template"),
            add_bos_token=bool(meta.get("add_bos_token", False)),
            add_eos_token=bool(meta.get("add_eos_token", False)),
        )
