"""``LlamaLM``, the search protocol on a jaxts Llama: its next-token log-probabilities and rollouts
equal the model run on each full prefix (the shared prompt cache and suffix padding change
nothing), sampling follows those log-probabilities, NFE is counted, and a search runs on it."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxts.models.llama import Llama, LlamaConfig, generate
from jaxts.models.llama_beam import beam_search
from jaxts.search import LanguageModel, dts
from jaxts.search.llama_lm import LlamaLM

V, EOS = 41, 3


@pytest.fixture(scope="module")
def model() -> Llama:
    cfg = LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=EOS,
    )  # fmt: skip
    m = Llama(cfg, rngs=nnx.Rngs(0))
    # N(0, 0.02) weights give near-uniform logits: spread them so argmax has no near-ties
    params = nnx.state(m, nnx.Param)
    nnx.update(m, jax.tree.map(lambda p: p * 6.0, params))
    return m.eval() or m


PROMPT = [1, 7, 9, 11, 13, 17, 19]
PREFIXES = [PROMPT, PROMPT + [5], PROMPT + [5, 8, 30], PROMPT + [2, 2]]


def full_logprobs(model, prefix, temperature=1.0):
    logits = np.asarray(model(np.array([prefix], np.int32)))[0, -1] / temperature
    return logits - np.logaddexp.reduce(logits)


def test_is_the_protocol(model):
    assert isinstance(LlamaLM(model), LanguageModel)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_next_logprobs_equal_the_full_forward(model, temperature):
    lm = LlamaLM(model, temperature=temperature, prompt_bucket=4)
    got = lm.next_logprobs(PREFIXES)
    assert got.shape == (len(PREFIXES), V)
    for row, prefix in zip(got, PREFIXES, strict=True):
        np.testing.assert_allclose(row, full_logprobs(model, prefix, temperature), atol=1e-4)


def test_greedy_rollouts_equal_generate(model):
    lm = LlamaLM(model)
    rows = lm.rollout(PREFIXES, 9, jax.random.key(0), greedy=True)
    for row, prefix in zip(rows, PREFIXES, strict=True):
        want = np.asarray(generate(model, np.array([prefix], np.int32), None, 9))[0].tolist()
        if EOS in want:
            want = want[: want.index(EOS) + 1]
        assert row == want and 1 <= len(row) <= 9


def test_sampled_first_tokens_follow_next_logprobs(model):
    lm = LlamaLM(model, temperature=1.3)
    n = 512
    rows = lm.rollout([PROMPT + [5]] * n, 1, jax.random.key(3))
    assert all(len(r) == 1 for r in rows)
    p = np.exp(lm.next_logprobs([PROMPT + [5]])[0])
    counts = np.bincount([r[0] for r in rows], minlength=V)
    big = p * n >= 5  # chi-square over the well-populated cells, the rest pooled
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(p[big] * n, p[~big].sum() * n)
    chi2 = float(((obs - exp) ** 2 / np.maximum(exp, 1e-9)).sum())
    assert chi2 < 3 * len(obs) + 10  # dof = len(obs) - 1; a wrong distribution gives hundreds
    same = lm.rollout([PROMPT + [5]] * 4, 5, jax.random.key(9))
    assert same == lm.rollout([PROMPT + [5]] * 4, 5, jax.random.key(9))


def test_top_p_rollouts_stay_in_the_nucleus(model):
    lm = LlamaLM(model)
    p = np.exp(lm.next_logprobs([PROMPT])[0])
    order = np.argsort(-p)
    nucleus = set(order[: int(np.searchsorted(np.cumsum(p[order]), 0.5)) + 1].tolist())
    rows = lm.rollout([PROMPT] * 64, 1, jax.random.key(1), top_p=0.5)
    assert {r[0] for r in rows} <= nucleus


def test_nfe_counts_prompt_once_suffixes_and_generated_tokens(model):
    lm = LlamaLM(model)
    lm.next_logprobs([PROMPT])  # a search's first call: the prompt alone is prefilled
    assert lm.nfe == len(PROMPT)
    lm.next_logprobs([PROMPT + [5, 8], PROMPT + [5]])  # same prompt: only the suffixes
    assert lm.nfe == len(PROMPT) + 3
    rows = lm.rollout([PROMPT + [4]], 6, jax.random.key(0))
    assert lm.nfe == len(PROMPT) + 3 + 1 + len(rows[0])
    lm.next_logprobs([[2, 3]])  # another prompt: prefilled
    assert lm.nfe == len(PROMPT) + 3 + 1 + len(rows[0]) + 2
    lm.reset()  # a new search on the same prompt pays it again
    lm.next_logprobs([[2, 3, 4]])
    assert lm.nfe == len(PROMPT) + 3 + 1 + len(rows[0]) + 2 + 2 + 1


def test_beam_equals_beam_search(model):
    lm = LlamaLM(model)
    got = lm.beam([PROMPT], 3, 6)[0]
    want = np.asarray(beam_search(model, np.array([PROMPT], np.int32), None, 6, num_beams=3))[0]
    assert got == want[: len(got)].tolist()


def test_bad_inputs_are_named(model):
    with pytest.raises(ValueError, match="temperature"):
        LlamaLM(model, temperature=0.0)
    lm = LlamaLM(model)
    with pytest.raises(ValueError, match="token ids"):
        lm.next_logprobs([[1, V]])
    with pytest.raises(ValueError, match="share no prompt"):
        lm.next_logprobs([[1, 2], [2, 1]])
    with pytest.raises(ValueError, match="max_new_tokens"):
        lm.rollout([PROMPT], 0, jax.random.key(0))


def test_dts_runs_on_the_llama(model):
    lm = LlamaLM(model)
    reward = lambda ids: float(sum(t % 2 == 0 for t in ids)) / max(len(ids), 1)
    res = dts(lm, PROMPT, reward, lam=2.0, iterations=6, max_children=2, max_new_tokens=5,
              key=jax.random.key(0), batch_size=2)  # fmt: skip
    assert 1 <= len(res.tokens) <= 5 and res.nfe > 0
    assert res.reward == pytest.approx(reward(res.tokens))


def test_token_logprobs_are_the_base_model_and_not_counted(model):
    lm = LlamaLM(model, temperature=0.5)  # the tempering must not leak into the base model
    gen = [5, 8, 30, EOS]
    got = lm.token_logprobs(PROMPT, gen)
    want = [full_logprobs(model, PROMPT + gen[:j])[gen[j]] for j in range(len(gen))]
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert lm.nfe == 0 and lm.token_logprobs(PROMPT, []).shape == (0,)
