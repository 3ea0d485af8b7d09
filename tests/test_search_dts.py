"""DTS / DTS* on the tabular toy LM (V = 3 with EOS, 3 new tokens: 15 enumerable sequences).

Many independent searches (fixed keys) give answer frequencies that pass a chi-square test
against the exact tilted target ``p exp(lam r) / Z`` and fail it against ``p_theta`` (the reward
moves the target far from p); lam -> 0 samples ``p_theta``; batched iterations still converge;
DTS* returns the best sequence once the tree is covered (a rare, low-probability needle); NFE of
a hand-traced search; bad arguments raise ValueErrors naming the argument.
"""

import jax
import numpy as np
import pytest
from scipy.stats import chisquare

from jaxts.search import SearchResult, TabularLM, dts

PROMPT = [1, 2]
T = 3  # max_new_tokens


def reward(gen: list[int]) -> float:
    # favours token 2, which the toy's table makes unlikely: target and p_theta differ (TV 0.3)
    return float(sum(t == 2 for t in gen)) - 0.5 * len(gen)


def answer_counts(lm, seqs, n_runs, **kw) -> np.ndarray:
    index = {s: i for i, s in enumerate(seqs)}
    counts = np.zeros(len(seqs))  # [S]
    for i in range(n_runs):
        res = dts(lm, PROMPT, reward, max_new_tokens=T, key=jax.random.key(1000 + i), **kw)
        assert res.reward == reward(res.tokens)
        counts[index[tuple(res.tokens)]] += 1
    return counts


def chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square goodness of fit, bins with expected count < 5 pooled into one."""
    expected = counts.sum() * probs
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    return float(chisquare(obs, exp).pvalue)


@pytest.fixture(scope="module")
def lm():
    return TabularLM(3, eos_id=0, seed=1)


def test_dts_answers_follow_the_tilted_target_not_p_theta(lm):
    seqs, target = lm.target(PROMPT, reward, lam=1.0, max_new_tokens=T)
    p = np.exp([lp for _, lp in lm.sequences(PROMPT, T)])
    assert 0.5 * np.abs(target - p).sum() > 0.25  # the test can tell them apart
    counts = answer_counts(lm, seqs, 200, lam=1.0, iterations=1000, max_children=30)
    assert chi2_pvalue(counts, target) > 1e-3
    assert chi2_pvalue(counts, p) < 1e-9


def test_dts_lam_to_zero_samples_p_theta(lm):
    seqs, p = lm.target(PROMPT, reward, lam=0.0, max_new_tokens=T)
    _, tilted = lm.target(PROMPT, reward, lam=1.0, max_new_tokens=T)
    # multiplicity weights alone make the walk unbiased for p at any max_children
    counts = answer_counts(lm, seqs, 300, lam=1e-6, iterations=1000, max_children=5)
    assert chi2_pvalue(counts, p) > 1e-3
    assert chi2_pvalue(counts, tilted) < 1e-9


def test_dts_batched_iterations_converge(lm):
    seqs, target = lm.target(PROMPT, reward, lam=1.0, max_new_tokens=T)
    p = np.exp([lp for _, lp in lm.sequences(PROMPT, T)])
    counts = answer_counts(lm, seqs, 200, lam=1.0, iterations=1000, max_children=30, batch_size=4)
    assert chi2_pvalue(counts, target) > 1e-3
    assert chi2_pvalue(counts, p) < 1e-9


def test_dts_root_value_estimates_the_exact_soft_value(lm):
    exact = lm.soft_value(PROMPT, [], reward, lam=1.0, max_new_tokens=T)
    res = dts(lm, PROMPT, reward, lam=1.0, iterations=100_000, max_children=3000, max_new_tokens=T,
              key=jax.random.key(0))  # fmt: skip
    assert res.stats["saturated"]
    assert abs(res.stats["root_value"] - exact) < 0.03
    mults = [m for m, _ in res.stats["root_children"].values()]
    assert sum(mults) == 3000  # max_children bounds the draws, duplicates merged


def test_dts_star_finds_the_rare_best_sequence():
    lm = TabularLM(3, eos_id=0, seed=4, scale=0.5)
    seqs = [s for s, _ in lm.sequences(PROMPT, T)]
    logp = {s: lp for s, lp in lm.sequences(PROMPT, T)}
    needle = min(seqs, key=lambda s: logp[s])  # the least likely sequence under p_theta

    def needle_reward(gen):
        return 1.0 if tuple(gen) == needle else -0.1 * len(gen)

    n_nodes = 1 + 3 + 2 * 3 + 4 * 3  # root, depth 1, 2 (after non-EOS) and 3
    for i, uct_c in enumerate([0.0, 0.0, 1.0]):
        res = dts(lm, PROMPT, needle_reward, lam=1.0, iterations=2000, max_children=40, max_new_tokens=T,
                  greedy=True, key=jax.random.key(i), uct_c=uct_c)  # fmt: skip
        assert res.stats["nodes"] == n_nodes and res.stats["saturated"]
        assert tuple(res.tokens) == needle and res.reward == 1.0
        assert res.stats["method"] == "dts*"


def test_dts_nfe_on_a_hand_traced_search():
    # p_theta always says token 1: the search is one path. it 1: expand root (1 NFE), roll out
    # [1, 1] (2); it 2: expand (1,) (1), roll out [1] (1); it 3: expand (1, 1) (1) into the
    # finished (1, 1, 1): no rollout. The root is then closed and the search stops: 6 NFE.
    lm = TabularLM(3, eos_id=0, logits_fn=lambda prefix: np.array([-np.inf, 0.0, -np.inf]))
    res = dts(
        lm,
        [2],
        reward,
        lam=1.0,
        iterations=50,
        max_children=1,
        max_new_tokens=3,
        key=jax.random.key(0),
    )
    assert isinstance(res, SearchResult)
    assert res.tokens == [1, 1, 1] and res.reward == reward([1, 1, 1])
    assert res.nfe == 6 == lm.nfe
    s = res.stats
    assert (s["iterations"], s["nodes"], s["rollouts"], s["max_depth"]) == (3, 4, 2, 3)
    assert s["saturated"] and s["wall_s"] > 0
    assert s["root_value"] == pytest.approx(reward([1, 1, 1]))


def test_every_eos_id_ends_a_sequence():
    class TwoEos(TabularLM):
        eos_ids = (0, 2)

    lm = TwoEos(3, eos_id=0, seed=1)
    for i in range(20):
        res = dts(lm, PROMPT, reward, lam=1.0, iterations=30, max_children=3, max_new_tokens=4,
                  key=jax.random.key(i))  # fmt: skip
        assert all(t not in (0, 2) for t in res.tokens[:-1])
        assert res.tokens[-1] in (0, 2) or len(res.tokens) == 4


def test_dts_same_key_same_answer(lm):
    kw = dict(lam=1.0, iterations=20, max_children=3, max_new_tokens=T, batch_size=2)
    a = dts(lm, PROMPT, reward, key=jax.random.key(7), **kw)
    b = dts(lm, PROMPT, reward, key=jax.random.key(7), **kw)
    assert a.tokens == b.tokens and a.nfe == b.nfe and a.stats["nodes"] == b.stats["nodes"]


@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(max_children=0), "max_children"),
        (dict(iterations=0), "iterations"),
        (dict(batch_size=0), "batch_size"),
        (dict(lam=-1.0), "lam"),
        (dict(lam=float("nan")), "lam"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(uct_c=-1.0), "uct_c"),
        (dict(prompt_ids=[]), "prompt_ids"),
    ],
)
def test_dts_bad_arguments_name_the_argument(lm, kw, name):
    args = dict(prompt_ids=PROMPT, lam=1.0, iterations=5, max_children=2, max_new_tokens=T) | kw
    with pytest.raises(ValueError, match=name):
        dts(lm, args.pop("prompt_ids"), reward, key=jax.random.key(0), **args)
