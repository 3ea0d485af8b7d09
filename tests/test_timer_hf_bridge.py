"""HF Timer directories <-> jaxts TimerHF: exact round trips both ways, the convert CLI, and
errors that name what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from bridges import timer_hf as bridge
from bridges.convert import main as convert_main
from bridges.reference import timer_hf_torch as ref
from jaxts.checkpoint import CheckpointKeyError, flatten, load_model
from jaxts.models.timer_hf import TimerHF, TimerHFConfig
from jaxts.registry import FAMILIES, Family

CFG = TimerHFConfig(
    input_token_len=16,
    hidden_size=32,
    intermediate_size=64,
    output_token_lens=(16, 32),
    num_hidden_layers=2,
    num_attention_heads=4,
)


@pytest.fixture(autouse=True)
def timer_hf_family(monkeypatch):
    """The registry entry the lead wires (jaxts/registry.py), added here if it is missing."""
    if "timer_hf" not in FAMILIES:
        monkeypatch.setitem(
            FAMILIES,
            "timer_hf",
            Family(
                name="timer_hf",
                config="jaxts.models.timer_hf:TimerHFConfig",
                model="jaxts.models.timer_hf:TimerHF",
                bridge="bridges.timer_hf",
                upstream="HF Timer directory or hub id (config.json + model.safetensors)",
            ),
        )


def reference_model(seed=0):
    tcfg = ref.TimerConfig(**{**CFG.to_dict(), "output_token_lens": list(CFG.output_token_lens)})
    return ref.init_weights(ref.TimerForPrediction(tcfg).eval(), seed=seed)


def state_dict(tm) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in tm.state_dict().items()}


def params(model) -> dict:
    return {
        k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()
    }


def assert_same_params(a, b):
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k


def write_hf_dir(directory, sd, config: dict):
    directory.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_hf_state_dict_to_jaxts_to_hf_is_exact():
    sd = state_dict(reference_model())
    back = bridge.to_state_dict(bridge.from_state_dict(sd, CFG))
    assert list(back) == list(sd)  # torch's registration order
    for k in sd:
        assert back[k].dtype == np.float32 and np.array_equal(back[k], sd[k]), k


def test_jaxts_to_hf_dir_to_jaxts_is_exact_and_the_reference_loads_it_strictly(tmp_path):
    model = TimerHF(CFG, rngs=nnx.Rngs(3))
    bridge.save_hf(model, tmp_path / "hf")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["model_type"] == "timer" and hf["architectures"] == ["TimerForPrediction"]
    assert hf["auto_map"] == bridge.AUTO_MAP and hf["output_token_lens"] == [16, 32]
    again = bridge.from_hf(tmp_path / "hf")
    assert again.config == CFG
    assert_same_params(model, again)
    tm = ref.TimerForPrediction(ref.TimerConfig.from_json_file(tmp_path / "hf" / "config.json"))
    from safetensors.torch import load_file

    tm.load_state_dict(load_file(str(tmp_path / "hf" / "model.safetensors")), strict=True)
    kernel = np.asarray(model.model.layers[1].ffn_layer.down_proj.kernel[...])
    assert np.array_equal(tm.model.layers[1].ffn_layer.down_proj.weight.detach().numpy(), kernel.T)


def test_convert_cli_both_ways_is_exact(tmp_path):
    sd = state_dict(reference_model(seed=1))
    src = write_hf_dir(tmp_path / "src", sd, bridge.config_to_hf(CFG))
    assert convert_main(["timer_hf", str(src), str(tmp_path / "ckpt")]) == 0
    assert load_model(tmp_path / "ckpt", family="timer_hf").config == CFG
    assert convert_main(["timer_hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    from safetensors.numpy import load_file

    back = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert back.keys() == sd.keys()
    assert all(np.array_equal(back[k], sd[k]) for k in sd)


def test_bad_keys_are_listed_together():
    sd = state_dict(reference_model())
    sd.pop("model.layers.1.self_attn.q_proj.bias")
    sd["model.layers.0.self_attn.o_proj.bias"] = np.zeros(32, np.float32)
    sd["lm_heads.1.weight"] = np.zeros((16, 32), np.float32)
    with pytest.raises(CheckpointKeyError) as err:
        bridge.from_state_dict(sd, CFG, source="m.safetensors")
    msg = str(err.value)
    assert msg.startswith("m.safetensors: ")
    assert "missing keys (1): ['model.layers.1.self_attn.q_proj.bias']" in msg
    assert "unexpected keys (1): ['model.layers.0.self_attn.o_proj.bias']" in msg
    assert "lm_heads.1.weight: checkpoint (16, 32) vs expected (32, 32)" in msg


def test_the_jaxts_loader_lists_bad_keys_the_same_way():
    from jaxts.pipelines.timer import load_hf_state

    sd = state_dict(reference_model())
    sd.pop("model.norm.bias")
    sd["extra.weight"] = np.zeros(3, np.float32)
    sd["lm_heads.0.weight"] = np.zeros((8, 32), np.float32)
    with pytest.raises(CheckpointKeyError) as err:
        load_hf_state(TimerHF(CFG, rngs=nnx.Rngs(0)), sd)
    msg = str(err.value)
    assert "missing keys (1): ['model.norm.bias']" in msg
    assert "unexpected keys (1): ['extra.weight']" in msg
    assert "lm_heads.0.weight: checkpoint (8, 32) vs expected (16, 32)" in msg


@pytest.mark.parametrize(
    "change, match",
    [
        ({"rope_scaling": None}, r"fields not handled by jaxts' HF Timer: \['rope_scaling'\]"),
        ({"hidden_act": "gelu"}, "hidden_act must be 'silu'"),
        ({"model_type": "t5"}, "model_type 't5'.*Chronos"),
        ({"architectures": ["TimerModel"]}, r"architectures \['TimerModel'\] is not supported"),
        ({"model_type": None, "model": "timer_xl"}, "a jaxts checkpoint directory"),
    ],
)
def test_config_problems_name_the_file_and_the_field(tmp_path, change, match):
    hf = {**bridge.config_to_hf(CFG), **change}
    hf = {k: v for k, v in hf.items() if v is not None or k == "rope_scaling"}
    d = write_hf_dir(tmp_path / "hf", state_dict(reference_model()), hf)
    with pytest.raises(ValueError, match=match) as err:
        bridge.from_hf(d)
    assert str(d / "config.json") in str(err.value)


def test_missing_fields_take_upstream_defaults():
    hf = {"model_type": "timer", "input_token_len": 96, "output_token_lens": [96]}
    cfg = bridge.config_from_hf(hf)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.rope_theta) == (1024, 8, 10000.0)
    assert bridge.config_from_hf({"model_type": "timer"}).output_token_lens == (1, 8, 32, 64)


def test_cli_refuses_another_family_and_a_missing_file(tmp_path, capsys):
    chronos = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}
    d = write_hf_dir(tmp_path / "chronos", {"x": np.zeros(2, np.float32)}, chronos)
    assert convert_main(["timer_hf", str(d), str(tmp_path / "o1")]) == 2
    assert "model_type 't5'" in capsys.readouterr().err
    (d / "config.json").write_text(json.dumps(bridge.config_to_hf(CFG)))
    (d / "model.safetensors").unlink()
    assert convert_main(["timer_hf", str(d), str(tmp_path / "o2")]) == 2
    assert "model.safetensors not found" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
