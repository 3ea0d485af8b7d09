"""HF Chronos-2 bridge: exact round trips through jaxts (upstream's Chronos2Pipeline loads what
we write), PEFT LoRA adapters merged as upstream merges them, the CLI both ways, and rejection
of configs, adapters and checkpoints we cannot run faithfully."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from chronos import Chronos2Pipeline  # noqa: E402
from chronos.chronos2 import Chronos2Model as TorchChronos2  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from bridges import chronos2 as bridge  # noqa: E402
from bridges._mapping import CheckpointKeyError  # noqa: E402
from bridges.convert import main as convert_main  # noqa: E402
from bridges.reference.chronos2_hf import tiny_chronos2  # noqa: E402
from jaxts.checkpoint import CheckpointError, load_model, save_model  # noqa: E402
from jaxts.models.chronos2 import forward  # noqa: E402
from tests.helpers import MODEL_TOL  # noqa: E402

# Chronos2Pipeline.fit(finetune_mode="lora")'s default target modules
FIT_TARGETS = [
    "self_attention.q", "self_attention.v", "self_attention.k", "self_attention.o",
    "output_patch_embedding.output_layer",
]  # fmt: skip
GROUPS = np.array([0, 0, 1, 2])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    src = tmp_path_factory.mktemp("hf_chronos2")
    return tiny_chronos2(src), src


@pytest.fixture(scope="module")
def tiny_jax(tiny):
    return bridge.from_hf(tiny[1])


def context(b=4, t=70, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (10 + 3 * np.sin(np.arange(t) / 3.0)[None] + rng.normal(size=(b, t))).astype(np.float32)
    x[0, :20] = np.nan
    return x


def torch_preds(tm, x, **kw) -> np.ndarray:
    kw = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    with torch.no_grad():
        return tm(torch.from_numpy(x), **kw).quantile_preds.numpy()


def assert_same_outputs(tm, jm):
    x, kw = context(), dict(group_ids=GROUPS, num_output_patches=2)
    want = torch_preds(tm, x, **kw)
    np.testing.assert_allclose(forward(jm, x, **kw), want, rtol=MODEL_TOL, atol=MODEL_TOL)


# ---- round trips -------------------------------------------------------------------------


def test_hf_to_jaxts_to_hf_round_trip_is_exact(tiny, tiny_jax, tmp_path):
    tm, src = tiny
    assert_same_outputs(tm, tiny_jax)
    out = bridge.save_hf(tiny_jax, tmp_path / "back")
    want, got = load_file(str(src / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    noise = {"transformers_version"}
    src_cfg = json.loads((src / "config.json").read_text())
    out_cfg = json.loads((out / "config.json").read_text())
    assert {k: v for k, v in out_cfg.items() if k not in noise} == {
        k: v for k, v in src_cfg.items() if k not in noise
    }
    reloaded = Chronos2Pipeline.from_pretrained(out).model
    x = context()
    np.testing.assert_array_equal(torch_preds(reloaded, x), torch_preds(tm, x))


def test_load_model_of_a_saved_model_is_deterministic(tiny_jax, tmp_path):
    save_model(tiny_jax, tmp_path / "ckpt")
    jm = load_model(tmp_path / "ckpt")
    assert jm.config == tiny_jax.config
    x = context()
    first = np.asarray(jm(x, group_ids=GROUPS))
    np.testing.assert_array_equal(np.asarray(jm(x, group_ids=GROUPS)), first)
    np.testing.assert_array_equal(np.asarray(tiny_jax(x, group_ids=GROUPS)), first)


# ---- LoRA --------------------------------------------------------------------------------


def make_adapter(base_dir, out, *, base_name=None, seed=0, **lora_options):
    """A PEFT LoRA adapter of the upstream model in ``base_dir`` (fit's target modules), every
    LoRA tensor random (lora_B starts at 0), saved in ``out`` (a Path) with
    ``base_model_name_or_path=base_name``; returns the PEFT model."""
    base = TorchChronos2.from_pretrained(base_dir).eval()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=FIT_TARGETS, **lora_options)
    model = peft.get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    # PEFT records the base's name_or_path; write what the test asks for (None: no base)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base_name
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return model


def test_lora_adapter_merges_as_upstream(tiny, tmp_path):
    tm, src = tiny
    adapter = tmp_path / "adapter"
    make_adapter(src, adapter, base_name=str(src))
    merged = Chronos2Pipeline.from_pretrained(adapter).model  # AutoPeftModel + merge_and_unload
    assert_same_outputs(merged, bridge.from_hf(src, lora=adapter))
    assert_same_outputs(merged, bridge.from_hf(adapter))  # base from base_model_name_or_path
    # the merge moved the weights: the base model's outputs differ
    x = context()
    assert np.abs(torch_preds(merged, x) - torch_preds(tm, x)).max() > 1e-2


def test_rslora_adapter_without_base_name_merges_as_peft(tiny, tmp_path):
    _, src = tiny
    adapter = tmp_path / "adapter"
    model = make_adapter(src, adapter, use_rslora=True, seed=1)
    merged = model.merge_and_unload().eval()
    assert_same_outputs(merged, bridge.from_hf(adapter, lora=src))  # lora= names the base
    with pytest.raises(ValueError, match="without base_model_name_or_path.*lora=BASE"):
        bridge.from_hf(adapter)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"use_dora": True}, "use_dora=True"),
        ({"rank_pattern": {"q": 8}}, "rank_pattern"),
        ({"modules_to_save": ["shared"]}, "modules_to_save"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out"),
        ({"peft_type": "IA3"}, "peft_type 'IA3'"),
        ({"bias": "all"}, "bias='all'"),
    ],
)
def test_unsupported_adapter_options_are_rejected_by_name(
    tiny, saved_adapter, tmp_path, change, match
):
    _, src = tiny
    adapter = adapter_copy(saved_adapter, tmp_path)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ValueError, match=match):
        bridge.from_hf(src, lora=adapter)


@pytest.fixture(scope="module")
def saved_adapter(tiny, tmp_path_factory):
    directory = tmp_path_factory.mktemp("adapter")
    make_adapter(tiny[1], directory)
    return directory


def adapter_copy(saved_adapter, tmp_path):
    return shutil.copytree(saved_adapter, tmp_path / "adapter")


def test_adapter_keys_that_match_nothing_are_listed(tiny, saved_adapter, tmp_path):
    _, src = tiny
    adapter = adapter_copy(saved_adapter, tmp_path)
    path = adapter / "adapter_model.safetensors"
    sd = load_file(str(path))
    sd["base_model.model.encoder.block.7.layer.0.self_attention.q.lora_A.weight"] = np.zeros(
        (4, 32), np.float32
    )
    sd["base_model.model.shared.weight"] = np.zeros((2, 32), np.float32)
    del sd["base_model.model.output_patch_embedding.output_layer.lora_B.weight"]
    save_file(sd, str(path))
    with pytest.raises(CheckpointKeyError) as err:
        bridge.from_hf(src, lora=adapter)
    msg = str(err.value)
    assert "encoder.block.7.layer.0.self_attention.q.weight (lora_A)" in msg
    assert "base_model.model.shared.weight" in msg
    assert "output_patch_embedding.output_layer.weight (lora_A)" in msg  # its B is missing


# ---- config ------------------------------------------------------------------------------


def hf_config(tiny) -> dict:
    return json.loads((tiny[1] / "config.json").read_text())


@pytest.mark.parametrize(
    "change, match",
    [
        ({"architectures": ["T5ForConditionalGeneration"]}, "architectures"),
        ({"num_decoder_layers": 2}, r"not handled by jaxts' Chronos-2: \['num_decoder_layers'\]"),
        ({"feed_forward_proj": "gated-gelu"}, "gated"),
        ({"dense_act_fn": "gelu"}, "contradicts"),
        ({"is_gated_act": True}, "is_gated_act"),
    ],
)
def test_unsupported_config_fields_are_rejected_by_name(tiny, change, match):
    with pytest.raises(ValueError, match=match):
        bridge.config_from_hf({**hf_config(tiny), **change})


def test_chronos_config_keys_are_checked_and_upstream_defaults_apply(tiny):
    hf = hf_config(tiny)
    with pytest.raises(ValueError, match="prediction_length: unknown key"):
        bridge.config_from_hf(
            {**hf, "chronos_config": {**hf["chronos_config"], "prediction_length": 3}}
        )
    lean = {k: v for k, v in hf["chronos_config"].items() if k != "quantiles"}
    with pytest.raises(ValueError, match=r"lacks \['quantiles'\]"):
        bridge.config_from_hf({**hf, "chronos_config": lean})
    required = ("context_length", "output_patch_size", "input_patch_size", "input_patch_stride")
    minimal = {k: hf["chronos_config"][k] for k in (*required, "quantiles")}
    ch = bridge.config_from_hf({**hf, "chronos_config": minimal}).chronos
    # upstream's dataclass defaults, not the published model's
    assert (ch.use_reg_token, ch.use_arcsinh, ch.max_output_patches) == (False, False, 1)
    assert ch.time_encoding_scale == ch.context_length
    with pytest.raises(ValueError, match="no 'chronos_config'"):
        bridge.config_from_hf({"model_type": "t5"})


# ---- keys, files, hub --------------------------------------------------------------------


def test_missing_unexpected_and_misshaped_keys_reported_together(tiny, tmp_path):
    src = tmp_path / "bad"
    shutil.copytree(tiny[1], src)
    sd = load_file(str(src / "model.safetensors"))
    del sd["encoder.block.1.layer.2.mlp.wo.weight"]
    sd["encoder.block.2.layer.0.layer_norm.weight"] = np.ones(32, np.float32)
    sd["output_patch_embedding.output_layer.bias"] = np.zeros(5, np.float32)
    save_file(sd, str(src / "model.safetensors"))
    with pytest.raises(CheckpointKeyError) as err:
        bridge.from_hf(src)
    e = err.value
    assert e.missing == ["encoder.block.1.layer.2.mlp.wo.weight"]
    assert e.unexpected == ["encoder.block.2.layer.0.layer_norm.weight"]
    assert [m[0] for m in e.misshaped] == ["output_patch_embedding.output_layer.bias"]


def test_damaged_weight_file_is_one_error_naming_it(tiny, tmp_path):
    src = tmp_path / "damaged"
    shutil.copytree(tiny[1], src)
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors"):
        bridge.from_hf(src)


def test_hub_ids_offline_give_a_helpful_error(saved_adapter, tmp_path, monkeypatch):
    import huggingface_hub

    def offline(repo_id, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="amazon/chronos-2.*Hugging Face Hub"):
        bridge.from_hf("amazon/chronos-2")
    adapter = adapter_copy(saved_adapter, tmp_path)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "amazon/chronos-2"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="amazon/chronos-2"):
        bridge.from_hf(adapter)


# ---- CLI ---------------------------------------------------------------------------------


def test_cli_converts_with_lora_and_back(tiny, tmp_path):
    _, src = tiny
    adapter, ckpt, back = tmp_path / "adapter", tmp_path / "ckpt", tmp_path / "hf_back"
    merged = make_adapter(src, adapter, seed=2).merge_and_unload().eval()
    # one real process for the entry point and the family's --lora option, then main()
    subprocess.run(
        [sys.executable, "-m", "bridges.convert", "chronos2", str(src), str(ckpt),
         "--lora", str(adapter)],
        check=True, capture_output=True,
    )  # fmt: skip
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["model"] == "chronos2" and meta["source"] == str(src)
    assert convert_main(["chronos2", str(ckpt), str(back)]) == 0
    assert_same_outputs(merged, bridge.from_hf(back))
    reloaded = Chronos2Pipeline.from_pretrained(back).model
    x = context()
    np.testing.assert_allclose(
        torch_preds(reloaded, x), torch_preds(merged, x), rtol=MODEL_TOL, atol=MODEL_TOL
    )


def test_cli_refuses_lora_for_a_jaxts_checkpoint(tiny_jax, tmp_path, capsys):
    save_model(tiny_jax, tmp_path / "ckpt")
    argv = ["chronos2", str(tmp_path / "ckpt"), str(tmp_path / "o"), "--lora", "x"]
    assert convert_main(argv) == 2
    assert "drop --lora" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
