"""Timing helpers shared by the benchmarks: compile time apart from the steady-state median."""

from __future__ import annotations

import statistics
import time

import jax


def time_jax(fn, *args, repeats: int = 5, keep_result: bool = False) -> dict:
    """First call (trace + compile + run) is reported as ``compile_s``; then ``repeats`` runs.

    ``keep_result``: also return the last call's output under ``"result"``."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - t0)
    med = statistics.median(runs)
    res = {"compile_s": max(first - med, 0.0), "median_s": med, "runs_s": runs}
    if keep_result:
        res["result"] = out
    return res


def time_torch(fn, *args, repeats: int = 5, warmup: int = 1, keep_result: bool = False) -> dict:
    import torch

    out = None
    with torch.no_grad():
        for _ in range(warmup):
            out = fn(*args)
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn(*args)
            runs.append(time.perf_counter() - t0)
    res = {"median_s": statistics.median(runs), "runs_s": runs}
    if keep_result:
        res["result"] = out
    return res
