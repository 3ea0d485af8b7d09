"""Timing helpers shared by the benchmarks: compile time apart from the steady-state median."""

from __future__ import annotations

import os
import platform
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


def machine_meta(peak: float) -> dict:
    """What a benchmark JSON records about the machine; ``peak`` the measured matmul rate."""
    import torch

    return {
        "device": str(jax.devices()[0]),
        "jax_backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "matmul_2048_gflops": peak,
    }
