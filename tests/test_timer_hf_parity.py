"""jaxts TimerHF vs the faithful PyTorch reference of the HF Timer (``TimerForPrediction``):
layers, whole model, and upstream ``generate`` in its three normalisation modes."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from bridges.reference import timer_hf_torch as ref
from jaxts.models.timer_hf import (
    TimerHF,
    TimerHFConfig,
    check_series,
    forward,
    generate,
    generation_schedule,
    rope_half_tables,
)
from jaxts.models.timer_xl import rolling_forecast
from jaxts.pipelines.timer import load_hf_state

P = 16


def tiny(lens=(16,)) -> TimerHFConfig:
    return TimerHFConfig(
        input_token_len=P,
        hidden_size=32,
        intermediate_size=64,
        output_token_lens=tuple(lens),
        num_hidden_layers=2,
        num_attention_heads=4,
    )


def pair(lens=(16,), seed=0):
    """(torch reference with random weights, jaxts model holding the same weights)."""
    cfg = tiny(lens)
    tcfg = ref.TimerConfig(**{**cfg.to_dict(), "output_token_lens": list(lens)})
    torch.manual_seed(seed)
    tm = ref.init_weights(ref.TimerForPrediction(tcfg).eval(), seed=seed)
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    return tm, load_hf_state(TimerHF(cfg, rngs=nnx.Rngs(1)), sd)


@pytest.fixture(scope="module")
def models():
    """One pair for the whole file: every test then reuses the programs compiled before it."""
    return pair((16, 32))


def series(b=2, length=53, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return (3.0 + np.sin(t / 5.0)[None] * rng.uniform(1, 2, (b, 1))
            + 0.3 * rng.standard_normal((b, length))).astype(np.float32)  # fmt: skip


def close(a, b, tol):
    a, b = np.asarray(a), np.asarray(b.detach().numpy() if hasattr(b, "detach") else b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, atol=tol, rtol=tol)


def test_layers_match_the_reference(models):
    tm, jm = models
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 32)).astype(np.float32)
    xt = torch.from_numpy(x)
    patches = rng.standard_normal((2, 5, P)).astype(np.float32)
    with torch.no_grad():
        close(
            jm.model.embed_layer(patches), tm.model.embed_layer.emb(torch.from_numpy(patches)), 1e-5
        )
        close(jm.model.layers[1].ffn_layer(x), tm.model.layers[1].ffn_layer(xt), 1e-5)
        pos = np.arange(5)
        cos, sin = rope_half_tables(jnp.asarray(pos), 8)
        tcos, tsin = tm.model.layers[0].self_attn.rotary_emb(seq_len=5)
        close(cos, tcos, 1e-6)
        close(sin, tsin, 1e-6)
        mask = ref.causal_mask(5, 0)
        allowed = pos[None, :] <= pos[:, None]
        a, _ = jm.model.layers[0].self_attn(x, cos, sin, allowed)
        ta, _ = tm.model.layers[0].self_attn(xt, mask, torch.arange(5)[None])
        close(a, ta, 1e-5)
        blk, _ = jm.model.layers[1](x, cos, sin, allowed)
        tblk, _ = tm.model.layers[1](xt, mask, torch.arange(5)[None])
        close(blk, tblk, 1e-5)


def test_forward_every_position_and_the_logits(models):
    tm, jm = models
    lens = (16, 32)
    x = series(length=53)
    xt = torch.from_numpy(check_series(x, P))  # the 48 newest points
    with torch.no_grad():
        hidden, _ = tm.model(xt)
        for j in range(len(lens)):
            close(forward(jm, x, head=j), tm.lm_heads[j](hidden), 1e-4)
        close(forward(jm, x)[:, -1], tm(xt).logits, 1e-4)
        close(forward(jm, x, normalize=True)[:, -1], tm(xt, revin=True).logits, 1e-4)


# the 16-point head cut to 5 (inside one patch: every mode runs the same first step, so one
# mode is enough); 32 + a 16-point head cut to 8; a scanned run of two 32-point steps + 16
@pytest.mark.parametrize(
    "horizon, modes",
    [(5, ("hf",)), (40, ("context", "hf", "window")), (80, ("context", "hf", "window"))],
)
def test_generate_matches_upstream(models, horizon, modes):
    tm, jm = models
    x = series(length=53)  # not a multiple of P: the 5 oldest points are dropped
    xt = torch.from_numpy(x)
    want = {
        "hf": lambda: ref.reference_generate(tm, xt, horizon, use_cache=True),
        "window": lambda: ref.reference_generate(tm, xt, horizon, use_cache=False),
        "context": lambda: ref.recompute_generate(tm, xt, horizon),
    }
    for mode in modes:
        close(generate(jm, x, horizon, mode), want[mode](), 1e-4)


def test_the_modes_agree_on_the_first_step_only(models):
    _, jm = models
    x = series(length=53)  # the shapes of the parity test: no new compilation
    out = {m: np.asarray(generate(jm, x, 80, m)) for m in ("context", "hf", "window")}
    for m in ("hf", "window"):
        np.testing.assert_allclose(out[m][:, :32], out["context"][:, :32], atol=1e-5, rtol=1e-5)
    for a, b in (("context", "hf"), ("context", "window"), ("hf", "window")):
        assert np.abs(out[a][:, 32:] - out[b][:, 32:]).max() > 1e-3, (a, b)


def test_generation_schedule_follows_upstream_head_choice():
    cfg = tiny((16, 32))
    assert generation_schedule(cfg, 5) == ((0, 5),)
    assert generation_schedule(cfg, 40) == ((1, 32), (0, 8))
    assert generation_schedule(cfg, 100) == ((1, 32),) * 3 + ((0, 4),)
    assert generation_schedule(tiny((16,)), 40) == ((0, 16), (0, 16), (0, 8))
    with pytest.raises(ValueError, match="not a multiple of input_token_len 16"):
        generation_schedule(dataclasses.replace(cfg, output_token_lens=(24,)), 40)


def test_rolling_forecast_is_per_variable_univariate(models):
    _, jm = models  # P = P_out = 16 (the first head)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 48, 3)).astype(np.float32)  # [B, L, C]
    out = np.asarray(jm(x))
    assert out.shape == (2, 3 * 16, 3)
    per_var = np.stack([np.asarray(forward(jm, x[:, :, c])) for c in range(3)], -1)
    np.testing.assert_allclose(out, per_var.reshape(2, 48, 3), atol=1e-5, rtol=1e-5)
    rolled = np.asarray(rolling_forecast(jm, x, 40))  # [B, 40, C]
    for c in range(3):
        ctx, preds = x[:, :, c], []
        for _ in range(3):
            nxt = np.asarray(forward(jm, ctx))[:, -1]  # [B, 16]
            ctx = np.concatenate([ctx[:, 16:], nxt], axis=1)
            preds.append(nxt)
        np.testing.assert_allclose(rolled[:, :, c], np.concatenate(preds, 1)[:, :40], atol=1e-5)


def test_bad_inputs_are_named(models):
    _, jm = models
    x = series(length=32)
    with pytest.raises(ValueError, match="too short: length 10 < input_token_len 16"):
        generate(jm, x[:, :10], 4)
    bad = x.copy()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        generate(jm, bad, 4)
    with pytest.raises(ValueError, match="NaN or inf"):
        forward(jm, np.where(x > 0, np.inf, x))
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        generate(jm, x[0], 4)
    with pytest.raises(ValueError, match="normalization must be one of"):
        generate(jm, x, 4, "revin")
    with pytest.raises(ValueError, match="max_new_tokens must be positive"):
        generate(jm, x, 0)
    with pytest.raises(ValueError, match="hidden_act must be 'silu'"):
        dataclasses.replace(tiny(), hidden_act="gelu")
    with pytest.raises(ValueError, match="unknown key"):
        TimerHFConfig.from_dict({"hidden_size": 32, "num_heads": 4})
