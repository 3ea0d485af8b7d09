"""Diffusion Tree Sampling over LLM tokens: DTS (sampling) and DTS* (search).

DTS (Jain et al., arXiv 2506.20701) targets ``pi(y | x) ∝ p_theta(y | x) exp(lam r(y))``, with
``p_theta`` the adapter at its own sampling temperature (see :mod:`jaxts.search.protocol`). A node is
a token prefix with a soft value ``v`` and a visit count; its children are tokens *drawn* from
``p_theta(. | node)``, duplicates merged, so a child's multiplicity ``m_c`` counts how often ``c``
was drawn there. ``sum_c m_c exp(lam v_c) / sum_c m_c`` is then a Monte Carlo estimate of
``E_{a ~ p}[exp(lam V(node a))]`` and the backup

    v(s) = (1/lam) log( sum_c m_c exp(lam v_c) / sum_c m_c )       (the m-weighted mean at lam = 0)

estimates the soft value ``V(s) = (1/lam) log E_p[exp(lam r) | s]``. A new leaf's ``v`` is the
reward of one rollout from it; a finished leaf's ``v`` is its reward. Walking from the root with
probability ``∝ m_c exp(lam v_c)`` telescopes to ``p_hat(y) exp(lam r(y)) / Z_hat`` over the
leaves, where ``p_hat`` is the empirical (multiplicity) path probability: the answer converges
to the target as the draws per node (``max_children``) and the iterations grow; for finite
``max_children`` it is a self-normalised importance sample with O(1/max_children) bias. A walk
that ends at an unfinished leaf is completed by that leaf's own stored rollout (its reward is
the leaf's ``v``).

Choices beyond the paper (a discrete vocabulary repeats draws):
* a draw that repeats a token increments its multiplicity and the iteration carries on from
  that child (selecting or drawing again), so every iteration ends at a new node or a finished
  one; the draws stay i.i.d. from ``p_theta``, which is all the estimator needs;
* selection skips *closed* subtrees (every node full and every leaf finished: their values are
  final), so no iteration is wasted; it moves compute, never the estimator. The search stops
  early once the root is closed (``stats["saturated"]``);
* ``max_children`` bounds the number of *draws* at a node (sum of multiplicities);
* DTS* selects the child with the largest ``v_c + uct_c sqrt(log N / n_c)`` and answers the
  best-reward sequence it evaluated (every rollout is a complete, rewarded sequence), so once the
  budget covers the tree it returns the argmax; ``stats["walk_tokens"]`` is the greedy walk by ``v``
  (soft values, not max: it can miss a rare high reward at finite lam);
* ``batch_size = B``: each iteration selects up to B leaves (a node's reserved draws count
  against ``max_children``), asks ``next_logprobs`` for all nodes that lack it in one call,
  and rolls all new leaves out in ONE ``rollout`` call (with the largest remaining budget,
  each continuation then cut to its own: the first n tokens of an autoregressive sample are a
  sample of length n). B = 1 is the sequential algorithm exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import jax

from jaxts.search._util import (
    KeyStream,
    Reward,
    boltzmann_index,
    check_common,
    check_positive,
    eos_ids,
    finish,
    host_rng,
    sample_index,
    soft_mean,
)
from jaxts.search.result import SearchResult

__all__ = ["dts"]


class _Node:
    __slots__ = ("gen", "parent", "children", "mult", "draws", "pending", "value", "visits",
                 "terminal", "closed", "logp", "rollout", "rollout_reward")  # fmt: skip

    def __init__(self, gen: tuple[int, ...], parent: _Node | None, terminal: bool):
        self.gen, self.parent, self.terminal = gen, parent, terminal
        self.children: dict[int, _Node] = {}
        self.mult = 1  # draws of this token at the parent
        self.draws = self.pending = self.visits = 0
        self.value: float | None = None
        self.closed = terminal
        self.logp = None  # [V] log p_theta(. | node), asked for once
        self.rollout: list[int] = []
        self.rollout_reward: float | None = None


class _Search:
    """State of one DTS run; see the module docstring for the algorithm."""

    def __init__(self, lm, prompt, reward, lam, max_children, max_new_tokens, greedy, uct_c, key):
        self.lm, self.prompt, self.reward, self.lam = lm, list(prompt), reward, lam
        self.eos = eos_ids(lm)
        self.k, self.max_new, self.greedy, self.uct_c = max_children, max_new_tokens, greedy, uct_c
        host_key, roll_key = jax.random.split(key)
        self.rng, self.keys = host_rng(host_key), KeyStream(roll_key)
        self.root = _Node((), None, terminal=False)
        self.nodes, self.max_depth, self.rollouts = 1, 0, 0
        self.best: tuple[float, list[int]] | None = None

    def _note(self, tokens: list[int], r: float) -> None:
        if self.best is None or r > self.best[0]:
            self.best = (r, tokens)

    def _pick(self, node: _Node, children: list[_Node]) -> _Node:
        if self.greedy:
            log_n = math.log(max(node.visits, 1))
            scores = [c.value + self.uct_c * math.sqrt(log_n / max(c.visits, 1)) for c in children]
            return children[scores.index(max(scores))]
        i = boltzmann_index(
            [c.value for c in children], [c.mult for c in children], self.lam, self.rng
        )
        return children[i]

    def select(self, node: _Node) -> _Node | None:
        """Descend to a node that may take another draw, or None when every open node below is
        reserved; skips closed children and ones created in this batch (no value yet)."""
        while node.draws + node.pending >= self.k:
            open_ = [c for c in node.children.values() if not c.closed and c.value is not None]
            if not open_:
                return None
            node = self._pick(node, open_)
        node.pending += 1
        return node

    def draw(self, node: _Node) -> tuple[_Node, bool]:
        """One draw from ``p_theta(. | node)``: (the child, whether it still needs a rollout)."""
        tok = sample_index(node.logp, self.rng)
        node.pending -= 1
        node.draws += 1
        child = node.children.get(tok)
        if child is not None:
            child.mult += 1
            return child, False
        gen = (*node.gen, tok)
        child = _Node(gen, node, terminal=tok in self.eos or len(gen) == self.max_new)
        node.children[tok] = child
        self.nodes += 1
        self.max_depth = max(self.max_depth, len(gen))
        if child.terminal:
            child.value = float(self.reward(list(gen)))
            self._note(list(gen), child.value)
        return child, not child.terminal

    def iterate(self, batch_size: int) -> bool:
        """One iteration; False when the root is closed (nothing left to search)."""
        pending = []
        for _ in range(batch_size):
            node = self.select(self.root)
            if node is None:
                break
            pending.append(node)
        if not pending:
            return False
        ends, leaves = [], []
        while pending:
            need = list({id(n): n for n in pending if n.logp is None}.values())
            if need:
                rows = self.lm.next_logprobs([self.prompt + list(n.gen) for n in need])  # [B, V]
                for n, row in zip(need, rows, strict=True):
                    n.logp = row
            again = []
            for node in pending:
                child, new_leaf = self.draw(node)
                if new_leaf:
                    leaves.append(child)
                elif not child.closed and child.value is not None:
                    nxt = self.select(child)  # a repeated draw: carry on below it
                    if nxt is not None:
                        again.append(nxt)
                        continue
                ends.append(child)
            pending = again
        if leaves:
            self._roll(leaves)
        for node in ends:
            self._backup(node)
        return True

    def _roll(self, leaves: list[_Node]) -> None:
        budgets = [self.max_new - len(n.gen) for n in leaves]
        conts = self.lm.rollout(
            [self.prompt + list(n.gen) for n in leaves], max(budgets), self.keys()
        )
        self.rollouts += len(leaves)
        for n, cont, budget in zip(leaves, conts, budgets, strict=True):
            n.rollout = [int(t) for t in cont[:budget]]
            tokens = list(n.gen) + n.rollout
            n.rollout_reward = n.value = float(self.reward(tokens))
            self._note(tokens, n.value)

    def _backup(self, node: _Node) -> None:
        node.visits += 1
        node = node.parent
        while node is not None:
            kids = list(node.children.values())
            node.value = soft_mean([c.value for c in kids], [c.mult for c in kids], self.lam)
            node.visits += 1
            node.closed = node.draws >= self.k and node.pending == 0 and all(c.closed for c in kids)
            node = node.parent

    def walk(self, greedy: bool) -> tuple[list[int], float]:
        node = self.root
        while node.children:
            kids = list(node.children.values())
            if greedy:
                values = [c.value for c in kids]
                node = kids[values.index(max(values))]
            else:
                i = boltzmann_index(
                    [c.value for c in kids], [c.mult for c in kids], self.lam, self.rng
                )
                node = kids[i]
        if node.terminal:
            return list(node.gen), float(node.value)
        return list(node.gen) + node.rollout, float(node.rollout_reward)


def dts(
    lm,
    prompt_ids: Sequence[int],
    reward: Reward,
    *,
    lam: float,
    iterations: int,
    max_children: int,
    max_new_tokens: int,
    greedy: bool = False,
    key: jax.Array,
    uct_c: float = 0.0,
    batch_size: int = 1,
) -> SearchResult:
    """DTS (``greedy=False``: a sample from ``∝ p_theta exp(lam r)``) or DTS* (``greedy=True``: the
    best sequence found) with ``iterations`` iterations of up to ``batch_size`` new leaves each,
    at most ``max_children`` draws per node. ``lam >= 0`` (0 samples ``p_theta``); ``uct_c`` is
    DTS*'s exploration bonus. Stops early once the whole tree is expanded."""
    check_common(prompt_ids, max_new_tokens, lam)
    check_positive("iterations", iterations)
    check_positive("max_children", max_children)
    check_positive("batch_size", batch_size)
    if not (math.isfinite(uct_c) and uct_c >= 0):
        raise ValueError(f"uct_c must be finite and >= 0, got {uct_c!r}")
    t0, nfe0 = time.perf_counter(), lm.nfe
    s = _Search(lm, prompt_ids, reward, lam, max_children, max_new_tokens, greedy, uct_c, key)
    done = 0
    while done < iterations and s.iterate(batch_size):
        done += 1
    walk_tokens, walk_reward = s.walk(greedy)
    tokens, r = (s.best[1], s.best[0]) if greedy else (walk_tokens, walk_reward)
    root = s.root
    return finish(
        "dts*" if greedy else "dts", tokens, r, lm.nfe - nfe0, t0,
        iterations=done, saturated=root.closed, nodes=s.nodes, max_depth=s.max_depth,
        rollouts=s.rollouts, root_value=root.value, root_visits=root.visits,
        root_children={t: (c.mult, c.value) for t, c in sorted(root.children.items())},
        walk_tokens=walk_tokens, walk_reward=walk_reward,
    )  # fmt: skip
