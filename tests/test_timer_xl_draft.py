"""STRIDE draft models: size rule, deterministic and stochastic parity, bridge round trips."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bridges._mapping import CheckpointKeyError
from bridges.reference import timer_xl_draft_torch as dref
from bridges.timer_xl import from_openltm, to_openltm
from jaxts.checkpoint import load_model, save_model
from jaxts.models.timer_xl import TimerXLConfig, draft_config, rolling_forecast
from tests.helpers import MODEL_TOL, etth1_config, randomize_, series

SCALES = ("draft_scale_d_model", "draft_scale_n_heads", "draft_scale_d_ff", "draft_scale_e_layers")


def stride_args(target: TimerXLConfig, scales, stochastic: bool) -> SimpleNamespace:
    """STRIDE's run.py namespace: the target's sizes plus the draft scales."""
    return SimpleNamespace(
        **target.to_dict(), **dict(zip(SCALES, scales, strict=True)), draft_stochastic=stochastic
    )


def torch_draft(target, scales, stochastic, seed=0):
    torch.manual_seed(seed)
    model = randomize_(dref.Model(stride_args(target, scales, stochastic)).eval())
    if stochastic:
        with torch.no_grad():  # a spread of log-variances that also hits the clamp
            model.head_logvar.bias.copy_(-2.0 + 4.0 * torch.randn_like(model.head_logvar.bias))
    return model


@pytest.mark.parametrize(
    "target",
    [
        etth1_config(),
        TimerXLConfig(d_model=512, n_heads=8, d_ff=2048, e_layers=4),
        TimerXLConfig(d_model=96, n_heads=3, d_ff=100, e_layers=3),
        TimerXLConfig(d_model=64, n_heads=1, d_ff=64, e_layers=2),
    ],
)
@pytest.mark.parametrize(
    "scales",
    [
        (0.25, 0.25, 0.25, 0.25),
        (0.5, 0.5, 0.5, 0.5),
        (0.1, 0.3, 0.05, 1.0),
        (0.33, None, 0.7, None),
        (None, None, None, None),
        (0.75, 2.0, 1.0, 0.4),
    ],
)
def test_draft_config_matches_stride_rule(target, scales):
    cfg = draft_config(target, *scales)
    want = dref.draft_sizes(stride_args(target, scales, False))
    assert (cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.e_layers) == want
    assert cfg.d_model % cfg.n_heads == 0 and (cfg.d_model // cfg.n_heads) % 4 == 0


def test_draft_config_paper_size():
    cfg = draft_config(etth1_config(), 0.25, 0.25, 0.25, 0.25, stochastic=True)
    assert (cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.e_layers) == (256, 2, 512, 1)
    assert cfg.stochastic and cfg.input_token_len == etth1_config().input_token_len
    with pytest.raises(ValueError, match="scale_d_ff"):
        draft_config(etth1_config(), 0.25, 0.25, 0.0, 0.25)


SMALL = TimerXLConfig(
    input_token_len=8,
    output_token_len=8,
    d_model=64,
    n_heads=4,
    d_ff=128,
    e_layers=2,
    use_norm=True,
)


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize(
    "target,scales,c,length",
    [
        (SMALL, (0.5, 0.5, 0.5, 0.5), 1, 32),
        (SMALL, (0.25, 0.5, 0.25, 1.0), 3, 40),
        (
            TimerXLConfig(**{**SMALL.to_dict(), "use_norm": False, "activation": "gelu"}),
            (0.5,) * 4,
            2,
            24,
        ),
        (TimerXLConfig(**{**SMALL.to_dict(), "covariate": True}), (0.5, None, None, 0.5), 4, 16),
        (SMALL, (0.5,) * 4, 2, 8),  # a single-token context
    ],
)
def test_draft_parity(stochastic, target, scales, c, length):
    tm = torch_draft(target, scales, stochastic)
    cfg = draft_config(target, *scales, stochastic=stochastic)
    jm = from_openltm(tm.state_dict(), cfg)
    jm.eval()
    x = series(3, length, c, seed=c)
    with torch.no_grad():
        want = tm(torch.from_numpy(x))
    got = jm(x)
    if stochastic:
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(np.asarray(g), w.numpy(), atol=MODEL_TOL, rtol=0)
        clamped = np.asarray(jm.forecast_next(x)[1])
        np.testing.assert_allclose(clamped, want[1][:, -8:].numpy(), atol=MODEL_TOL, rtol=0)
        mean = want[0]
    else:
        np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=MODEL_TOL, rtol=0)
        mean = want
    # rolling a stochastic draft rolls its mean, as STRIDE's draft-only evaluation
    roll = np.asarray(rolling_forecast(jm, x, 8))
    np.testing.assert_allclose(roll, mean[:, -8:].numpy(), atol=MODEL_TOL, rtol=0)


def test_logvar_clamped_before_denormalisation():
    tm = torch_draft(SMALL, (0.5,) * 4, True)
    with torch.no_grad():
        tm.head_logvar.bias.fill_(40.0)
        tm.head_logvar.weight.zero_()
    jm = from_openltm(tm.state_dict(), draft_config(SMALL, *(0.5,) * 4, stochastic=True))
    jm.eval()
    x = series(2, 32, 2)
    _, logvar = jm(x)
    std = np.sqrt(x.var(axis=1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(logvar), 10.0 + 2 * np.log(std) + 0 * logvar, atol=1e-5)


def test_fresh_stochastic_draft_has_stride_logvar_init():
    from flax import nnx

    from jaxts.models.timer_xl import TimerXL

    jm = TimerXL(draft_config(SMALL, 0.5, 0.5, 0.5, 0.5, stochastic=True), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(jm.head_logvar.bias[...]), -2.0)
    assert not hasattr(jm, "head")


@pytest.mark.parametrize("stochastic", [False, True])
def test_stride_checkpoint_round_trip_is_exact(tmp_path, stochastic):
    tm = torch_draft(SMALL, (0.5,) * 4, stochastic, seed=3)
    pth = tmp_path / "draft.pth"
    torch.save(tm.state_dict(), pth)
    ckpt, back = tmp_path / "jax_ckpt", tmp_path / "back.pth"
    run = [sys.executable, "-m", "bridges.convert", "timer_xl"]
    subprocess.run([*run, str(pth), str(ckpt), "--use-norm"], check=True)
    subprocess.run([*run, str(ckpt), str(back)], check=True)
    cfg = load_model(ckpt).config
    assert cfg == draft_config(SMALL, *(0.5,) * 4, stochastic=stochastic)
    a, b = tm.state_dict(), torch.load(back, weights_only=True)
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    dref.Model(stride_args(SMALL, (0.5,) * 4, stochastic)).load_state_dict(b, strict=True)


def test_orbax_save_load_stochastic(tmp_path):
    jm = from_openltm(torch_draft(SMALL, (0.5,) * 4, True).state_dict(), use_norm=True)
    save_model(jm, tmp_path / "d")
    again = load_model(tmp_path / "d")
    assert again.config.stochastic
    for k, v in to_openltm(jm).items():
        np.testing.assert_array_equal(to_openltm(again)[k], v)


def test_draft_checkpoint_with_adapter_or_mixed_heads_is_rejected():
    sd = {k: v.numpy() for k, v in torch_draft(SMALL, (0.5,) * 4, True).state_dict().items()}
    sd["adapter_to_target.weight"] = np.zeros((64, 32), np.float32)
    sd["head.weight"] = np.zeros((8, 32), np.float32)
    with pytest.raises(CheckpointKeyError) as err:
        from_openltm(sd, use_norm=True)
    assert err.value.unexpected == ["adapter_to_target.weight", "head.weight"]
