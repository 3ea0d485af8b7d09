"""Helpers shared by several test files (fixtures live in ``conftest.py``).

Test files import from here, never from each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LAYER_TOL = 1e-5
MODEL_TOL = 1e-4

# The smallest Timer-XL that still exercises every path (instance norm, dropout, 2 heads).
TINY_MODEL = dict(
    input_token_len=16, output_token_len=16, d_model=16, n_heads=2, e_layers=1, d_ff=32,
    dropout=0.1, use_norm=True,
)  # fmt: skip


def series(b, length, c, seed=0):
    """[b, length, c] float32: noisy sines with random phase, amplitude and offset."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)[None, :, None]
    x = np.sin(t / 5.0 + rng.uniform(0, 6, (b, 1, c))) * rng.uniform(0.5, 3, (b, 1, c))
    return (x + rng.normal(0, 0.3, (b, length, c)) + rng.uniform(-5, 5, (b, 1, c))).astype(
        np.float32
    )


def randomize_(model):
    """LayerNorm scales/biases and the attention-bias table random too (torch inits them to
    constants), so every path of the parity tests counts. Uses torch's global generator."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "norm" in name or "emb" in name:
                p.copy_(0.5 * torch.randn_like(p))
    return model


def torch_model(cfg, seed: int = 0):
    """OpenLTM reference Timer-XL with every parameter random (LayerNorm and bias too)."""
    import torch

    from bridges.reference import timer_xl_torch as ref

    torch.manual_seed(seed)
    return randomize_(ref.Model(cfg).eval())


def etth1_config():
    """The model config of ``configs/timer_xl_etth1.yaml`` (OpenLTM's ETTh1 Timer-XL)."""
    from train.config import load_config, model_config

    return model_config(load_config(REPO / "configs/timer_xl_etth1.yaml"))


def synthetic_rows(n: int, c: int = 3, seed: int = 0) -> np.ndarray:
    """[n, c] float32: a few noisy sines (learnable, so losses move)."""
    t = np.arange(n)[:, None]
    rng = np.random.default_rng(seed)
    x = np.sin(2 * np.pi * t / (24 + 5 * np.arange(c))) + 0.1 * rng.standard_normal((n, c))
    return x.astype(np.float32)


def write_csv(path: Path, n: int = 800) -> Path:
    """A ``date,a,b,c`` hourly CSV of :func:`synthetic_rows` (the ETT layout)."""
    rows = synthetic_rows(n)
    dates = np.datetime64("2020-01-01T00") + np.arange(n).astype("timedelta64[h]")
    lines = ["date,a,b,c"] + [f"{d},{r[0]},{r[1]},{r[2]}" for d, r in zip(dates, rows, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_on_devices(code: str, marker: str, n_devices: int = 4, timeout: int = 300):
    """Run ``code`` in a fresh interpreter that sees ``n_devices`` CPU devices (the only way to
    get several: XLA reads the flag at start-up); assert it succeeds and prints ``marker``.
    Returns its stdout."""
    env = dict(os.environ)
    flag = f"--xla_force_host_platform_device_count={n_devices}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout,
        cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert marker in proc.stdout, proc.stdout[-3000:]
    return proc.stdout


def hf_greedy(tm, ids, mask, n, eos) -> np.ndarray:
    """transformers' greedy ``generate`` of ``n`` tokens after left-padded ``ids`` / ``mask``,
    padded with ``eos`` to ``n`` columns (HF stops once every row is done; jaxts always returns
    ``n``)."""
    import torch

    with torch.no_grad():
        out = tm.generate(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            do_sample=False,
            max_new_tokens=n,
            eos_token_id=eos,
            pad_token_id=eos,
        )[:, ids.shape[1] :].numpy()
    return np.pad(out, ((0, 0), (0, n - out.shape[1])), constant_values=eos)
