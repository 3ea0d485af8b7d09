"""Decoding baselines of the MaxEnt-TS evaluation on the tabular toy LM.

Beam search returns what transformers' ``generate(num_beams=n)`` returns on the same toy (wrapped
as a torch model), score included; one beam is greedy decoding; ``top_p_logprobs`` equals HF's
TopP warper and nucleus samples follow it (chi-square, rejecting the unwarped distribution);
best-of-N takes the best of ONE batched rollout call; soft best-of-N samples ``∝ exp(lam r)``
(lam = 0: ``p_theta``, large n: the tilted target); the NFE-matching rule; bad arguments.
"""

import jax
import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.generation.logits_process import TopPLogitsWarper
from transformers.modeling_outputs import CausalLMOutputWithPast

from jaxts.search import (
    TabularLM,
    beam,
    best_of_n,
    greedy,
    nfe_matched_n,
    nucleus,
    soft_best_of_n,
    top_p_logprobs,
)

PROMPT = [1, 2]


def reward(gen: list[int]) -> float:
    return float(sum(t == 2 for t in gen)) - 0.5 * len(gen)


class ToyConfig(PretrainedConfig):
    model_type = "jaxts_tabular_toy"


class ToyModel(PreTrainedModel, GenerationMixin):
    """``TabularLM`` as an HF causal LM without a cache: the last position's logits are the
    toy's log-probabilities of the whole row (log-softmax leaves them unchanged)."""

    config_class = ToyConfig

    def __init__(self, config, lm):
        super().__init__(config)
        self.lm = lm
        self.unused = torch.nn.Parameter(torch.zeros(1))  # generate() asks for a device/dtype

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.lm.vocab_size)  # [B, L, V]
        rows = [self.lm.logprobs(r.tolist()) for r in input_ids]
        logits[:, -1] = torch.from_numpy(np.stack(rows)).float()
        return CausalLMOutputWithPast(logits=logits)


class TwoEos(TabularLM):
    eos_ids = (0, 4)  # a chat model's end-of-turn and end-of-text


@pytest.mark.parametrize("seed,num_beams,max_new,length_penalty,eos",
                         [(3, 1, 5, 1.0, [0]), (3, 2, 5, 1.0, [0]), (3, 3, 7, 1.0, [0]), (3, 5, 7, 1.0, [0]),
                          (4, 5, 6, 1.0, [0]), (5, 4, 6, 1.0, [0]), (6, 5, 8, 1.0, [0]), (4, 3, 6, 0.0, [0]),
                          (5, 5, 7, 2.0, [0]), (3, 3, 6, 1.0, [0, 4]), (7, 5, 7, 1.0, [0, 4])])  # fmt: skip
def test_beam_equals_transformers_generate(seed, num_beams, max_new, length_penalty, eos):
    lm = (TwoEos if len(eos) == 2 else TabularLM)(5, eos_id=0, seed=seed)
    model = ToyModel(ToyConfig(vocab_size=5, eos_token_id=eos, pad_token_id=0, bos_token_id=1), lm)
    out = model.generate(torch.tensor([PROMPT]), num_beams=num_beams, max_new_tokens=max_new, do_sample=False,
                         use_cache=False, early_stopping=False, length_penalty=length_penalty,
                         return_dict_in_generate=True, output_scores=True)  # fmt: skip
    want = out.sequences[0, len(PROMPT) :].tolist()
    ends = [i for i, t in enumerate(want) if t in eos]
    if ends:  # HF pads after EOS with the pad id
        want = want[: ends[0] + 1]
    got = beam(
        lm,
        PROMPT,
        reward,
        max_new_tokens=max_new,
        num_beams=num_beams,
        length_penalty=length_penalty,
    )
    assert got.tokens == want and got.reward == reward(want)
    if num_beams > 1:
        assert got.stats["score"] == pytest.approx(float(out.sequences_scores[0]), abs=1e-5)


def test_beam_uses_the_adapters_own_beam_search():
    class WithBeam(TabularLM):
        def beam(self, prefixes, num_beams, max_new_tokens):
            self.nfe += 7
            return [[2, 1, 0] for _ in prefixes]

    lm = WithBeam(3, eos_id=0)
    res = beam(lm, PROMPT, reward, max_new_tokens=3, num_beams=2)
    assert res.tokens == [2, 1, 0] and res.nfe == 7 and res.stats["impl"] == "lm.beam"
    res = beam(lm, PROMPT, reward, max_new_tokens=3, num_beams=2, length_penalty=0.5)
    assert res.stats["impl"] == "host"  # the adapter's is HF's default length_penalty only


def test_one_beam_is_greedy():
    lm = TabularLM(5, eos_id=0, seed=3)
    g = greedy(lm, PROMPT, reward, max_new_tokens=6)
    assert beam(lm, PROMPT, reward, max_new_tokens=6, num_beams=1).tokens == g.tokens
    gen = []  # greedy by hand
    while len(gen) < 6 and not (gen and gen[-1] == 0):
        gen.append(int(np.argmax(lm.logprobs(PROMPT + gen))))
    assert g.tokens == gen and g.nfe == len(gen) and g.reward == reward(gen)


@pytest.mark.parametrize("top_p", [0.9, 0.5, 0.3, 1e-6, 0.0, 0.999])
def test_top_p_equals_transformers(top_p):
    rows = np.random.default_rng(0).normal(0, 2, (8, 12))
    logp = rows - np.logaddexp.reduce(rows, axis=1, keepdims=True)  # [8, 12]
    hf = TopPLogitsWarper(top_p)(
        torch.zeros(8, 1, dtype=torch.long), torch.from_numpy(logp).float()
    ).numpy()
    for got, want in zip(map(lambda r: top_p_logprobs(r, top_p), logp), hf, strict=True):
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
        kept = want - np.logaddexp.reduce(want[np.isfinite(want)])
        np.testing.assert_allclose(got, kept, atol=1e-6)


def test_nucleus_samples_follow_the_warped_distribution():
    lm = TabularLM(5, eos_id=0, seed=3)
    warped = np.exp(top_p_logprobs(lm.logprobs(PROMPT), 0.9))
    full = np.exp(lm.logprobs(PROMPT))
    assert (warped == 0).sum() >= 1
    counts = np.zeros(5)
    for i in range(300):
        counts[
            nucleus(lm, PROMPT, reward, max_new_tokens=1, key=jax.random.key(i), top_p=0.9).tokens[
                0
            ]
        ] += 1
    assert counts[warped == 0].sum() == 0
    assert chisquare(counts[warped > 0], 300 * warped[warped > 0]).pvalue > 1e-3
    # under the unwarped p, no draw at all of the removed tokens would have probability < 1e-9
    assert (1 - full[warped == 0].sum()) ** 300 < 1e-9


class Recording(TabularLM):
    """Remembers every rollout call: (number of prefixes, continuations)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def rollout(self, prefixes, max_new_tokens, key, **kw):
        out = super().rollout(prefixes, max_new_tokens, key, **kw)
        self.calls.append(out)
        return out


def test_best_of_n_is_the_best_of_one_batched_call():
    lm = Recording(3, eos_id=0, seed=1)
    res = best_of_n(lm, PROMPT, reward, max_new_tokens=3, key=jax.random.key(0), n=16)
    assert len(lm.calls) == 1 and len(lm.calls[0]) == 16
    rewards = [reward(s) for s in lm.calls[0]]
    assert res.tokens == lm.calls[0][int(np.argmax(rewards))] and res.reward == max(rewards)
    assert res.nfe == sum(map(len, lm.calls[0])) == lm.nfe
    soft = soft_best_of_n(
        lm, PROMPT, reward, max_new_tokens=3, key=jax.random.key(0), n=16, lam=1e4
    )
    assert len(lm.calls) == 2 and soft.reward == max(reward(s) for s in lm.calls[1])


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_soft_best_of_n_samples_the_tilted_target(lam):
    lm = TabularLM(3, eos_id=0, seed=1)
    seqs, target = lm.target(PROMPT, reward, lam=lam, max_new_tokens=3)
    _, other = lm.target(PROMPT, reward, lam=1.0 - lam, max_new_tokens=3)
    index = {s: i for i, s in enumerate(seqs)}
    counts = np.zeros(len(seqs))
    for i in range(300):
        res = soft_best_of_n(
            lm, PROMPT, reward, max_new_tokens=3, key=jax.random.key(i), n=64, lam=lam
        )
        counts[index[tuple(res.tokens)]] += 1
    expected = 300 * target
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    assert chisquare(obs, np.append(expected[~small], expected[small].sum())).pvalue > 1e-3
    assert 0.5 * np.abs(counts / 300 - other).sum() > 0.15  # the other lam's target is far


def test_nfe_matched_n():
    assert nfe_matched_n(100, 3.0) == 33
    assert nfe_matched_n(2, 3.0) == 1  # at least one sample
    with pytest.raises(ValueError, match="mean_tokens"):
        nfe_matched_n(10, 0.0)


@pytest.mark.parametrize(
    "fn,kw,name",
    [
        (best_of_n, dict(n=0), "n must"),
        (soft_best_of_n, dict(n=4, lam=-1.0), "lam"),
        (beam, dict(num_beams=0), "num_beams"),
        (nucleus, dict(top_p=1.5), "top_p"),
        (greedy, dict(max_new_tokens=0), "max_new_tokens"),
        (best_of_n, dict(n=2, prompt_ids=[]), "prompt_ids"),
    ],
)
def test_bad_arguments_name_the_argument(fn, kw, name):
    lm = TabularLM(3, eos_id=0)
    args = dict(prompt_ids=PROMPT, max_new_tokens=3, key=jax.random.key(0)) | kw
    with pytest.raises(ValueError, match=name):
        fn(lm, args.pop("prompt_ids"), reward, **args)
