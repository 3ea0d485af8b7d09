"""Beam search (``jaxts.models.llama_beam``) against transformers'
``generate(num_beams=K, do_sample=False)`` on tiny random ``LlamaForCausalLM`` (float32): MHA and
GQA, K in {2, 3, 4}, a left-padded batch, EOS ids the beams pick (so finished hypotheses decide the
answer), several EOS ids, length penalties and the three early-stopping modes; ``num_beams=1`` is
greedy. Every case asserts the score margin its decisions hinged on, so a pass is not a near-tie
coin flip."""

import dataclasses

import numpy as np
import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from bridges import llama as bridge
from jaxts.models.llama import greedy_generate
from jaxts.models.llama_beam import beam_search, beam_search_with_margin

N = 10  # new tokens
# Far above the float32 gap between jaxts' and torch's accumulated log-probabilities (~1e-6).
MIN_MARGIN = 1e-4


def hf_llama(seed: int, **overrides) -> LlamaForCausalLM:
    """A tiny random ``LlamaForCausalLM`` (hidden 32, 2 layers, vocab 97), eager attention.
    ``initializer_range=0.3`` spreads the logits (HF's 0.02 gives a nearly uniform next-token
    distribution, where beams differ by ~1e-5 and any float error reorders them)."""
    kwargs = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        rope_theta=500.0,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="eager",
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(HFLlamaConfig(**kwargs)).float().eval()


def to_jaxts(tm: LlamaForCausalLM, eos):
    cfg = bridge.config_from_hf(tm.config.to_dict())
    cfg = dataclasses.replace(cfg, eos_token_id=eos)
    return bridge.from_state_dict({k: v.numpy() for k, v in tm.state_dict().items()}, cfg)


def prompts(seed: int):
    """Two prompts of 7 and 4 tokens, the second left-padded (ids >= 3 avoid BOS/EOS)."""
    ids = np.random.default_rng(seed).integers(3, 97, (2, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3], ids[1, :3] = 0, 0
    return ids, mask


def hf_generate(tm, ids, mask, eos, **options) -> np.ndarray:
    """HF's new tokens, padded with the first EOS to ``N`` columns (HF crops the batch to its
    longest best hypothesis; jaxts always returns ``N``)."""
    first = eos if isinstance(eos, int) else eos[0]
    with torch.no_grad():
        out = tm.generate(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            do_sample=False,
            max_new_tokens=N,
            eos_token_id=list(eos) if isinstance(eos, tuple) else eos,
            pad_token_id=first,
            **options,
        )[:, ids.shape[1] :].numpy()
    return np.pad(out, ((0, 0), (0, N - out.shape[1])), constant_values=first)


@pytest.fixture(scope="module")
def models():
    return {"mha": hf_llama(0), "gqa": hf_llama(0, num_key_value_heads=2)}


# (model, beams, EOS ids, prompt rows, [(length_penalty, early_stopping), ...]). The settings of
# a case share one compile (only early_stopping=True is static). Every case's answers include a
# hypothesis that ended at an EOS before N; the last case's single row closes through the
# early-stop heuristic and ends the loop after 4 of the 10 steps.
CASES = {
    "mha_k2_eos_early": ("mha", 2, 32, [0, 1], [(0.5, True), (1.5, True)]),
    "gqa_k4_eos": ("gqa", 4, 32, [0, 1], [(1.0, False), (2.0, "never"), (-0.5, False)]),
    "mha_k2_three_eos": ("mha", 2, (32, 74, 78), [1], [(0.0, False), (1.0, "never")]),
}


def ends_at_eos(row: np.ndarray, eos) -> bool:
    """``row`` has an EOS before its last token and only the first EOS id (padding) after it."""
    hit = np.isin(row, eos)
    first = int(np.argmax(hit))
    return bool(hit[first]) and first < N - 1 and bool((row[first + 1 :] == np.ravel(eos)[0]).all())


@pytest.mark.parametrize("name", sorted(CASES))
def test_beam_search_equals_transformers(models, name):
    kind, k, eos, rows, settings = CASES[name]
    tm = models[kind]
    ids, mask = prompts(0)
    ids, mask = ids[rows], mask[rows]
    if rows == [1]:  # that row alone, unpadded
        ids, mask = ids[:, 3:], mask[:, 3:]
    jm = to_jaxts(tm, eos)
    answers = []
    for lp, early in settings:
        got, margin = beam_search_with_margin(
            jm, ids, mask, N, num_beams=k, length_penalty=lp, early_stopping=early
        )
        want = hf_generate(tm, ids, mask, eos, num_beams=k, length_penalty=lp, early_stopping=early)
        assert float(margin) > MIN_MARGIN, (lp, early)
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"{lp=} {early=}")
        answers.append(want)
    assert any(ends_at_eos(row, eos) for want in answers for row in want)
    if name == "mha_k2_eos_early":  # the length penalty changes which hypothesis wins
        assert not np.array_equal(answers[0], answers[1])


def test_one_beam_is_greedy(models):
    tm = models["gqa"]
    ids, mask = prompts(1)
    jm = to_jaxts(tm, 2)
    got = np.asarray(beam_search(jm, ids, mask, N, num_beams=1))
    np.testing.assert_array_equal(got, np.asarray(greedy_generate(jm, ids, mask, N)))
    np.testing.assert_array_equal(got, hf_generate(tm, ids, mask, 2, num_beams=1))


def test_bad_arguments_are_named(models):
    jm = to_jaxts(models["mha"], 2)
    ids = np.ones((1, 3), np.int32)
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(jm, ids, num_beams=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        beam_search(jm, ids, max_new_tokens=0)
    with pytest.raises(ValueError, match="early_stopping"):
        beam_search(jm, ids, early_stopping="sometimes")
    with pytest.raises(ValueError, match=r"ids must be \[B, T\]"):
        beam_search(jm, ids[0])
    with pytest.raises(ValueError, match="attention_mask"):
        beam_search(jm, ids, np.ones((1, 4), np.int32))
