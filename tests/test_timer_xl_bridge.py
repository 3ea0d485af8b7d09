"""OpenLTM checkpoint bridge: files, CLI, round trips, and rejection of bad checkpoints."""

import argparse
import subprocess
import sys

import numpy as np
import pytest
import torch
from flax import nnx

from bridges._mapping import CheckpointKeyError
from bridges.convert import main as convert_main
from bridges.convert import parser as convert_parser
from bridges.reference import timer_xl_torch as ref
from bridges.timer_xl import from_openltm, infer_config, load_state_dict, to_openltm
from jaxts._cli import HelpFormatter
from jaxts.checkpoint import CheckpointError, load_model, save_model
from jaxts.models.chronos_t5 import ChronosT5, ChronosT5Config
from jaxts.models.chronos_tokenizer import ChronosConfig
from jaxts.models.t5 import T5Config
from jaxts.models.timer_xl import TimerXLConfig
from jaxts.registry import FAMILIES
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


def test_loaded_model_is_in_eval_mode():
    cfg = TimerXLConfig(**{**CFG.to_dict(), "dropout": 0.5})
    jm = from_openltm(torch_model(cfg).state_dict(), cfg)
    x = series(2, 32, 3)
    np.testing.assert_array_equal(np.asarray(jm(x)), np.asarray(jm(x)))


def test_a_missing_tensor_for_inference_is_a_checkpoint_error():
    sd = {k: v.numpy() for k, v in torch_model(CFG).state_dict().items()}
    del sd["head.weight"]
    with pytest.raises(CheckpointError, match="cannot infer the Timer-XL config.*head.weight"):
        from_openltm(sd, use_norm=True)


@pytest.fixture()
def pth(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save(torch_model(CFG).state_dict(), path)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("damage", ["empty", "half", "garbage"])
def test_damaged_pth_is_one_line_naming_the_file(tmp_path, pth, damage, capsys):
    data = pth.read_bytes()
    pth.write_bytes({"empty": b"", "half": data[: len(data) // 2], "garbage": data[::-1]}[damage])
    with pytest.raises(CheckpointError, match="not a readable PyTorch weights file"):
        from_openltm(pth, use_norm=True)
    assert convert_main(["timer_xl", str(pth), str(tmp_path / "out"), "--use-norm"]) == 2
    assert str(pth) in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_non_finite_weights_name_the_key_and_the_file(tmp_path):
    sd = torch_model(CFG).state_dict()
    sd["blocks.attn_layers.1.conv1.weight"][0, 0, 0] = float("inf")
    torch.save(sd, tmp_path / "inf.pth")
    with pytest.raises(
        CheckpointError, match=r"inf\.pth: non-finite .*: blocks\.attn_layers\.1\.conv1\.weight"
    ):
        from_openltm(tmp_path / "inf.pth", CFG)


def test_cli_never_replaces_an_output_without_force(tmp_path, pth, capsys):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.pth"
    to_jaxts = ["timer_xl", str(pth), str(ckpt), "--use-norm", "--activation", "gelu"]
    assert convert_main(to_jaxts) == 0
    config = (ckpt / "config.json").read_text()
    assert convert_main(to_jaxts) == 2
    assert "pass --force" in one_error_line(capsys)
    out.write_bytes(b"mine")
    assert convert_main(["timer_xl", str(ckpt), str(out)]) == 2
    assert "pass --force" in one_error_line(capsys)
    assert out.read_bytes() == b"mine" and (ckpt / "config.json").read_text() == config
    assert convert_main(["timer_xl", str(ckpt), str(out), "--force"]) == 0
    assert list(torch.load(out, weights_only=True)) == list(torch_model(CFG).state_dict())
    assert convert_main([*to_jaxts, "--force"]) == 0
    assert load_model(ckpt).config == CFG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth", "ckpt", "out.pth"]


def test_cli_rejects_options_for_a_jaxts_source(tmp_path, pth, capsys):
    save_model(from_openltm(pth, CFG), tmp_path / "ckpt")
    assert (
        convert_main(["timer_xl", str(tmp_path / "ckpt"), str(tmp_path / "o.pth"), "--use-norm"])
        == 2
    )
    assert "drop --use-norm" in one_error_line(capsys)


def test_cli_wrong_checkpoint_kind_says_what_it_found(tmp_path, capsys):
    t5 = T5Config(vocab_size=64, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_decoder_layers=1,
                  num_heads=2)  # fmt: skip
    chronos = ChronosT5Config(t5=t5, chronos=ChronosConfig(n_tokens=64))
    save_model(ChronosT5(chronos, rngs=nnx.Rngs(0)), tmp_path / "chronos")
    assert convert_main(["timer_xl", str(tmp_path / "chronos"), str(tmp_path / "o.pth")]) == 2
    assert "holds a chronos_t5 checkpoint; expected timer_xl" in one_error_line(capsys)
    (tmp_path / "hf").mkdir()
    assert convert_main(["timer_xl", str(tmp_path / "hf"), str(tmp_path / "o"), "--use-norm"]) == 2
    assert "is a directory; expected an OpenLTM" in one_error_line(capsys)
    assert not (tmp_path / "o.pth").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "text, match",
    [("{oops", "not valid JSON"), ('{"d_model": "wide"}', "d_model: Input should be")],
    ids=["json", "string-for-number"],
)
def test_cli_config_file_errors_name_the_file(tmp_path, pth, text, match, capsys):
    (tmp_path / "cfg.json").write_text(text)
    args = ["timer_xl", str(pth), str(tmp_path / "o"), "--config", str(tmp_path / "cfg.json")]
    assert convert_main(args) == 2
    line = one_error_line(capsys)
    assert str(tmp_path / "cfg.json") in line and match in line


def test_help_shows_every_default():
    top, _ = convert_parser()
    subparsers = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(subparsers.choices) == sorted(FAMILIES)  # one sub-command per family
    assert {"chronos_t5", "timer_xl"} <= set(subparsers.choices)
    for name, sub in subparsers.choices.items():
        formatter = HelpFormatter(prog=name)
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert "(default" in formatter._get_help_string(action), (name, action.dest)


def test_from_openltm_returns_an_eval_mode_model():
    """Like HF's from_pretrained: dropout (0.1 here) off, so two calls agree."""
    jm = from_openltm(torch_model(CFG).state_dict(), CFG)
    assert CFG.dropout > 0
    x = series(2, 32, 3)
    np.testing.assert_array_equal(np.asarray(jm(x)), np.asarray(jm(x)))
