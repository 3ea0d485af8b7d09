"""The seed's depth-limited MaxEnt-TS on the tabular toy LM (V = 3 with EOS, 3 new tokens).

With k = V and many rollouts the root Q estimates equal the exact soft values within their
Monte Carlo error; the first move is distributed as the soft-optimal policy pi* (chi-square,
which rejects p_theta); with max_depth >= max_new_tokens the answers follow the tilted target;
greedy moves to the best Q; k = 1 is greedy decoding; NFE of a hand-traced search; bad arguments.
"""

import jax
import numpy as np
import pytest
from scipy.stats import chisquare

from jaxts.search import TabularLM, maxent_ts

PROMPT = [1, 2]
T = 3
LAM = 1.0


def reward(gen: list[int]) -> float:
    return float(sum(t == 2 for t in gen)) - 0.5 * len(gen)


@pytest.fixture(scope="module")
def lm():
    return TabularLM(3, eos_id=0, seed=1)


def q_standard_error(lm, a: int, num_rollouts: int) -> float:
    """Delta-method standard error of ``(1/lam) log mean exp(lam r)`` over R rollouts after ``a``."""
    if a == lm.eos_id:
        return 0.0
    conts = lm.sequences([*PROMPT, a], T - 1)
    p = np.exp([lp for _, lp in conts])  # [S]
    e = np.exp(LAM * np.array([reward([a, *c]) for c, _ in conts]))  # [S]
    mean = p @ e
    return float(np.sqrt((p @ e**2 - mean**2) / num_rollouts) / (LAM * mean))


def test_root_q_matches_exact_soft_values(lm):
    r = 1500
    res = maxent_ts(lm, PROMPT, reward, lam=LAM, num_rollouts=r, expansion_k=3, max_depth=1, max_new_tokens=T,
                    key=jax.random.key(0))  # fmt: skip
    q = res.stats["root_q"]
    assert sorted(q) == [0, 1, 2]
    for a in range(3):
        exact = lm.soft_value(PROMPT, [a], reward, lam=LAM, max_new_tokens=T)
        assert abs(q[a] - exact) <= 4 * q_standard_error(lm, a, r) + 1e-12, a
    assert q[lm.eos_id] == reward([lm.eos_id])  # a finished child is rewarded exactly
    pi = lm.soft_policy(PROMPT, [], reward, lam=LAM, max_new_tokens=T)
    np.testing.assert_allclose(
        [res.stats["root_probs"][a] for a in range(3)], pi, atol=0.03
    )  # ~4 SE of Q through the softmax


def test_first_move_follows_the_soft_optimal_policy(lm):
    pi = lm.soft_policy(PROMPT, [], reward, lam=LAM, max_new_tokens=T)
    p = np.exp(lm.logprobs(PROMPT))
    assert 0.5 * np.abs(pi - p).sum() > 0.2
    counts = np.zeros(3)
    for i in range(300):
        res = maxent_ts(lm, PROMPT, reward, lam=LAM, num_rollouts=30, expansion_k=3, max_depth=1,
                        max_new_tokens=T, key=jax.random.key(100 + i))  # fmt: skip
        counts[res.stats["moves"][0]] += 1
    assert chisquare(counts, counts.sum() * pi).pvalue > 1e-3
    assert chisquare(counts, counts.sum() * p).pvalue < 1e-9


def test_full_depth_answers_follow_the_tilted_target(lm):
    seqs, target = lm.target(PROMPT, reward, lam=LAM, max_new_tokens=T)
    index = {s: i for i, s in enumerate(seqs)}
    counts = np.zeros(len(seqs))
    for i in range(200):
        res = maxent_ts(lm, PROMPT, reward, lam=LAM, num_rollouts=30, expansion_k=3, max_depth=T,
                        max_new_tokens=T, key=jax.random.key(500 + i))  # fmt: skip
        assert res.reward == reward(res.tokens)
        counts[index[tuple(res.tokens)]] += 1
    expected = counts.sum() * target
    small = expected < 5
    obs, exp = (
        np.append(counts[~small], counts[small].sum()),
        np.append(expected[~small], expected[small].sum()),
    )
    assert chisquare(obs, exp).pvalue > 1e-3
    p = np.exp([lp for _, lp in lm.sequences(PROMPT, T)])
    assert 0.5 * np.abs(counts / counts.sum() - p).sum() > 0.2


def test_greedy_moves_to_the_best_q(lm):
    res = maxent_ts(lm, PROMPT, reward, lam=LAM, num_rollouts=20, expansion_k=3, max_depth=2, max_new_tokens=T,
                    key=jax.random.key(3), greedy=True)  # fmt: skip
    q = res.stats["root_q"]
    assert res.stats["moves"][0] == max(q, key=q.get)
    assert res.stats["method"] == "maxent_ts*"


def test_expansion_k_one_is_greedy_decoding(lm):
    res = maxent_ts(lm, PROMPT, reward, lam=LAM, num_rollouts=4, expansion_k=1, max_depth=T, max_new_tokens=T,
                    key=jax.random.key(0))  # fmt: skip
    assert res.tokens == lm.rollout([PROMPT], T, jax.random.key(0), greedy=True)[0]


def test_nfe_on_a_hand_traced_search():
    # p_theta says token 1 with probability 1; k = 2 takes tokens 1 and EOS (0, first of the tied
    # zeros). Step 1: next_logprobs of the prompt (1 NFE); EOS is finished (rewarded, no rollout);
    # 3 rollouts of [1, 1] after token 1 (6). Move to 1 (EOS has probability 0), max_depth = 1
    # reached: the finishing rollout [1, 1] (2). Total 9.
    lm = TabularLM(3, eos_id=0, logits_fn=lambda prefix: np.array([-np.inf, 0.0, -np.inf]))
    res = maxent_ts(lm, [2], reward, lam=LAM, num_rollouts=3, expansion_k=2, max_depth=1, max_new_tokens=3,
                    key=jax.random.key(0))  # fmt: skip
    assert res.tokens == [1, 1, 1] and res.nfe == 9 == lm.nfe
    assert res.stats["root_q"] == {1: reward([1, 1, 1]), 0: reward([0])}
    assert res.stats["root_probs"] == {1: 1.0, 0: 0.0}


def test_an_eos_move_ends_the_walk():
    lm = TabularLM(3, eos_id=0, logits_fn=lambda prefix: np.array([0.0, -np.inf, -np.inf]))
    res = maxent_ts(lm, [2], reward, lam=LAM, num_rollouts=3, expansion_k=1, max_depth=3, max_new_tokens=3,
                    key=jax.random.key(0))  # fmt: skip
    assert res.tokens == [0] and res.stats["steps"] == 1 and res.nfe == 1


@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(num_rollouts=0), "num_rollouts"),
        (dict(expansion_k=0), "expansion_k"),
        (dict(expansion_k=4), "expansion_k"),
        (dict(max_depth=0), "max_depth"),
        (dict(lam=-0.5), "lam"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(prompt_ids=[]), "prompt_ids"),
    ],
)
def test_bad_arguments_name_the_argument(lm, kw, name):
    args = (
        dict(
            prompt_ids=PROMPT, lam=LAM, num_rollouts=2, expansion_k=2, max_depth=1, max_new_tokens=T
        )
        | kw
    )
    with pytest.raises(ValueError, match=name):
        maxent_ts(lm, args.pop("prompt_ids"), reward, key=jax.random.key(0), **args)
