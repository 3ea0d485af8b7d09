"""OpenLTM checkpoint bridge: files, CLI, round trips, and rejection of bad checkpoints."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from bridges._mapping import CheckpointKeyError
from bridges.reference import timer_xl_torch as ref
from bridges.timer_xl import from_openltm, infer_config, load_state_dict, to_openltm
from jaxts.checkpoint import load_model
from jaxts.models.timer_xl import TimerXLConfig
from tests.helpers import series, torch_model

CFG = TimerXLConfig(
    input_token_len=8,
    output_token_len=16,
    d_model=32,
    n_heads=4,
    d_ff=48,
    e_layers=2,
    use_norm=True,
    activation="gelu",
)


def test_pth_file_with_ddp_prefix_loads_and_infers_config(tmp_path):
    tm = torch_model(CFG)
    path = tmp_path / "checkpoint.pth"
    torch.save({f"module.{k}": v for k, v in tm.state_dict().items()}, path)
    jm = from_openltm(path, use_norm=True, activation="gelu")
    assert jm.config == CFG  # n_heads from attn_bias.emb.weight, e_layers from the keys
    x = series(2, 32, 3)
    with torch.no_grad():
        want = tm(torch.from_numpy(x)).numpy()
    jm.eval()
    np.testing.assert_allclose(np.asarray(jm(x)), want, atol=1e-4, rtol=0)


def test_use_norm_must_be_explicit_without_config():
    with pytest.raises(ValueError, match="use_norm"):
        infer_config({k: v.numpy() for k, v in torch_model(CFG).state_dict().items()})


def test_bad_checkpoint_lists_missing_unexpected_and_misshaped_keys():
    sd = {k: v.numpy() for k, v in torch_model(CFG).state_dict().items()}
    del sd["blocks.attn_layers.1.norm2.bias"]
    sd["blocks.attn_layers.0.attention.extra.weight"] = np.zeros(3, np.float32)
    sd["head.bias"] = np.zeros(5, np.float32)
    with pytest.raises(CheckpointKeyError) as err:
        from_openltm(sd, CFG)
    msg = str(err.value)
    assert "blocks.attn_layers.1.norm2.bias" in msg
    assert "blocks.attn_layers.0.attention.extra.weight" in msg
    assert "head.bias: checkpoint (5,) vs expected (16,)" in msg
    assert err.value.missing == ["blocks.attn_layers.1.norm2.bias"]


def test_config_mismatch_is_reported_as_shape_errors():
    sd = torch_model(CFG).state_dict()
    with pytest.raises(CheckpointKeyError, match="mis-shaped"):
        from_openltm(sd, TimerXLConfig(**{**CFG.to_dict(), "d_ff": 64}))


def test_unknown_config_keys_rejected():
    with pytest.raises(ValueError, match="TimerXLConfig: flash_attention: unknown key"):
        TimerXLConfig.from_dict({**CFG.to_dict(), "flash_attention": True})


def test_cli_pth_to_orbax_to_pth_is_exact(tmp_path):
    tm = torch_model(CFG, seed=5)
    pth = tmp_path / "checkpoint.pth"
    torch.save(tm.state_dict(), pth)
    ckpt, back = tmp_path / "jax_ckpt", tmp_path / "back.pth"
    run = [sys.executable, "-m", "bridges.convert", "timer_xl"]
    subprocess.run([*run, str(pth), str(ckpt), "--use-norm", "--activation", "gelu"], check=True)
    subprocess.run([*run, str(ckpt), str(back)], check=True)
    assert load_model(ckpt).config == CFG
    a, b = tm.state_dict(), torch.load(back, weights_only=True)
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref.Model(CFG).load_state_dict(b, strict=True)


def test_cli_reports_bad_checkpoint(tmp_path):
    sd = torch_model(CFG).state_dict()
    sd.pop("head.weight")
    pth = tmp_path / "bad.pth"
    torch.save(sd, pth)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridges.convert",
            "timer_xl",
            str(pth),
            str(tmp_path / "o"),
            "--use-norm",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "head.weight" in out.stderr


def test_flax_to_torch_to_flax_is_exact():
    jm = from_openltm(torch_model(CFG).state_dict(), CFG)
    again = from_openltm(to_openltm(jm), CFG)
    for k, v in to_openltm(jm).items():
        np.testing.assert_array_equal(to_openltm(again)[k], v)


def test_load_state_dict_rejects_non_mapping():
    with pytest.raises(TypeError):
        load_state_dict([1, 2, 3])
