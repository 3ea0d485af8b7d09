"""``bench.maxent`` and its PyTorch reference (``bridges.reference.maxent_torch``).

The reference's pieces are checked where they are deterministic, on a tiny random Llama shared
by transformers and jaxts (same weights): next-token log-probabilities equal ``LlamaLM``'s, the
``generate`` it calls samples exactly the tempered model (no top-k/top-p left on), its Q equals
jaxts' soft mean, a one-token search gives the same Q and move distribution as jaxts', and k = 1
follows the top tokens as jaxts does. ``--quick`` writes the report with both sides, NFE equal
to the algorithm's hand count on both, and the ratios (no timing is asserted)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch

from bench import maxent
from bench.llama import load_pair
from bridges.reference.maxent_torch import TorchLM, maxent_ts_torch, soft_q
from jaxts.search import maxent_ts
from jaxts.search._util import soft_mean
from jaxts.search.llama_lm import LlamaLM

V, EOS, T = 97, 2, 0.8  # bench.llama's tiny random Llama (--quick)
PROMPT = [1, 7, 9, 11, 13, 17, 19]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # the CI box is shared: torch's thread pool spins against other processes (x50 slower)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers model, jaxts Llama) on the same float32 weights: the ``--quick`` model's
    config (so jaxts' programs compile once for the file) with spread weights."""
    from transformers import LlamaForCausalLM

    from jaxts import LlamaPipeline

    path = tmp_path_factory.mktemp("tiny_llama")
    # bench.llama's tiny model: the --quick run below loads the same architecture
    load_pair(True, path)
    tm = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():  # N(0, 0.02) gives near-uniform logits: spread them (no near-ties)
        for p in tm.parameters():
            p.mul_(4.0)
    tm.save_pretrained(path)
    return tm.eval(), LlamaPipeline.from_pretrained(path).model


def jax_lm(model) -> LlamaLM:
    return LlamaLM(model, temperature=T)  # --quick's temperature: the same compiled programs


def reward(ids: list[int]) -> float:
    return float(np.mean([(t * 7) % 5 for t in ids])) / 4.0 if ids else 0.0


def test_next_logprobs_equal_llama_lm(pair):
    tm, model = pair
    prefixes = [PROMPT, PROMPT + [5], PROMPT + [5, 8, 30]]
    tlm = TorchLM(tm, temperature=T)
    got = tlm.next_logprobs(prefixes)  # [3, V]
    lm = jax_lm(model)
    want = np.concatenate([lm.next_logprobs([p]) for p in prefixes])  # batch 1: --quick's shape
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert tlm.forward_calls == 3 and tlm.tokens_passed == sum(len(p) for p in prefixes)
    tlm.close()


def test_generate_samples_the_tempered_model(pair):
    tm, _ = pair
    top_k = tm.generation_config.top_k
    tm.generation_config.top_k = 5  # a checkpoint default the reference must switch off
    try:
        tlm = TorchLM(tm, temperature=T, eos_ids=[V - 1])
        x = torch.tensor([PROMPT])
        torch.manual_seed(1)
        out = tm.generate(input_ids=x, attention_mask=torch.ones_like(x), output_scores=True,
                          return_dict_in_generate=True, **tlm.generate_kwargs(4))  # fmt: skip
        new = out.sequences[0, len(PROMPT) :].tolist()
        for i, scores in enumerate(out.scores):  # the processed scores each token was drawn from
            got = torch.log_softmax(scores[0].double(), -1).numpy()
            want = tlm.next_logprobs([PROMPT + new[:i]])[0]
            np.testing.assert_allclose(got, want, atol=1e-4)
        tlm.close()
    finally:
        tm.generation_config.top_k = top_k


@pytest.mark.parametrize("lam", [0.0, 1e-9, 0.5, 3.0, 80.0])
def test_soft_q_equals_jaxts_soft_mean(lam):
    rewards = [0.25, -1.0, 0.75, 0.75, 2.0]
    assert soft_q(rewards, lam) == pytest.approx(soft_mean(rewards, [1.0] * 5, lam), rel=1e-9)


def test_one_token_search_matches_jaxts(pair):
    # max_new_tokens = 1: every child is terminal, Q = r(a) exactly, no randomness in Q
    tm, model = pair
    kw = dict(lam=2.0, num_rollouts=3, expansion_k=4, max_depth=1, max_new_tokens=1)
    t = maxent_ts_torch(TorchLM(tm, temperature=T), PROMPT, reward, seed=0, **kw)
    j = maxent_ts(jax_lm(model), PROMPT, reward, key=jax.random.key(0), **kw)
    assert list(t.stats["root_q"]) == list(j.stats["root_q"])  # the same top-4 tokens
    assert t.stats["root_q"] == {a: reward([a]) for a in t.stats["root_q"]}
    np.testing.assert_allclose(
        list(t.stats["root_probs"].values()), list(j.stats["root_probs"].values()), atol=1e-4
    )
    assert t.stats["generate_calls"] == 0 and t.nfe == len(PROMPT) == j.nfe


def test_k1_follows_the_top_tokens_like_jaxts(pair):
    tm, model = pair
    kw = dict(lam=1e-6, num_rollouts=2, expansion_k=1, max_depth=3, max_new_tokens=5)
    tlm = TorchLM(tm, temperature=T)
    t = maxent_ts_torch(tlm, PROMPT, reward, seed=0, **kw)
    lm, top = jax_lm(model), []
    for _ in range(3):  # jaxts' top token at each step
        top.append(int(np.argmax(lm.next_logprobs([PROMPT + top])[0])))
    assert t.stats["moves"] == top and t.tokens[:3] == top and len(t.tokens) == 5
    # R generates per step, then one finishing rollout of the last 2 tokens
    assert t.stats["generate_calls"] == 2 * 3 + 1 and t.stats["forward_calls"] == 3
    assert t.stats["generated_tokens"] == 2 * (4 + 3 + 2) + 2  # no EOS in this walk
    assert t.nfe == len(PROMPT) + (0 + 1 + 2) + 2 * (1 + 2 + 3) + 3 + t.stats["generated_tokens"]
    # same seed, same search (k = 2 so the moves are random)
    kw2 = kw | dict(lam=1.0, expansion_k=2)
    a = maxent_ts_torch(tlm, PROMPT, reward, seed=3, **kw2)
    assert a.tokens == maxent_ts_torch(tlm, PROMPT, reward, seed=3, **kw2).tokens
    with pytest.raises(ValueError, match="expansion_k must be <= vocab_size"):
        maxent_ts_torch(tlm, PROMPT, reward, seed=0, **kw | dict(expansion_k=V + 1))
    tlm.close()


def structural_nfe(prompt_len: int, steps: int, k: int, r: int, max_new: int) -> int:
    """LlamaLM-style NFE without the generated tokens (no EOS among the moves): the prompt once;
    at depth d the d-token prefix, then k R rollout prefixes of d + 1 tokens unless the children
    are terminal (d + 1 = max_new); the final rollout's prefix if the walk is not finished."""
    rolls = sum(k * r * (d + 1) for d in range(steps) if d + 1 < max_new)
    return prompt_len + sum(range(steps)) + rolls + (steps if steps < max_new else 0)


def test_quick_run_writes_the_report(tmp_path, capsys):
    out = tmp_path / "maxent.json"
    assert maxent.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    q = maxent.QUICK
    k, r, depth, new = q["expansion_k"], q["num_rollouts"], q["max_depth"], q["max_new_tokens"]
    assert report["params"]["max_new_tokens"] == new
    assert report["meta"]["load"]["start"]["loadavg"] and report["meta"]["matmul_2048_gflops"] > 0
    assert len(report["rows"]) == q["items"]
    rolled = [d for d in range(depth) if d + 1 < new]  # depths whose children are rolled out
    final = depth < new
    for row in report["rows"]:
        j, t, n = row["jaxts"], row["torch"], row["prompt_len"]
        assert j["steps"] == t["steps"] == depth
        assert j["same_answer_twice"] and j["rollout_calls"] == len(rolled) + final
        for side in (j, t):  # NFE = the hand count + the tokens the rollouts really generated
            assert side["nfe"] == structural_nfe(n, depth, k, r, new) + side["generated_tokens"]
        assert t["generate_calls"] == len(rolled) * k * r + final and t["forward_calls"] == depth
        # what torch really passes: every call re-reads the prompt; generate feeds n - 1 tokens
        prefixes = sum(n + d for d in range(depth)) + sum(k * r * (n + d + 1) for d in rolled)
        prefixes += (n + depth) * final
        assert t["tokens_passed"] == prefixes + t["generated_tokens"] - t["generate_calls"]
        assert row["speedup_wall"] == pytest.approx(t["wall_s"] / j["wall_s"])
        assert row["speedup_per_nfe"] == pytest.approx(
            (t["wall_s"] / t["nfe"]) / (j["wall_s"] / j["nfe"])
        )
    s = report["summary"]
    assert s["jaxts"]["nfe"] == sum(row["jaxts"]["nfe"] for row in report["rows"])
    assert s["goal_10x_per_nfe"] == (s["speedup_per_nfe"] >= 10)
    printed = capsys.readouterr().out
    assert "| random-1 | torch |" in printed and "per NFE (goal x10" in printed
    assert maxent.main(["--quick", "--out", str(out)]) == 2  # not replaced without --force
    assert "pass --force" in capsys.readouterr().err


def test_bad_options_are_named(tmp_path, capsys):
    assert maxent.main(["--max-depth", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--max-depth" in capsys.readouterr().err
    assert maxent.main(["--temperature", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--temperature" in capsys.readouterr().err
    assert maxent.main(["--torch-threads", "-1", "--out", str(tmp_path / "x.json")]) == 2
    assert "--torch-threads" in capsys.readouterr().err
