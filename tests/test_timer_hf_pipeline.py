"""TimerPipeline: loading an HF Timer directory (or hub id, or a jaxts checkpoint) and
upstream's univariate forward / generate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file

from bridges.reference import timer_hf_torch as ref
from jaxts.checkpoint import flatten, save_model
from jaxts.models.timer_hf import TimerHF
from jaxts.pipelines.timer import TimerPipeline
from jaxts.registry import FAMILIES, Family

TCFG = ref.TimerConfig(
    input_token_len=16,
    hidden_size=32,
    intermediate_size=64,
    output_token_lens=[16],
    num_hidden_layers=2,
    num_attention_heads=4,
)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """(reference model, an HF directory as the Hub serves it: config.json + safetensors)."""
    tm = ref.init_weights(ref.TimerForPrediction(TCFG).eval(), seed=2)
    d = tmp_path_factory.mktemp("timer-tiny")
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "_name_or_path": "timer_tiny",
        "architectures": ["TimerForPrediction"],
        "auto_map": {
            "AutoConfig": "configuration_timer.TimerConfig",
            "AutoModelForCausalLM": "modeling_timer.TimerForPrediction",
        },
        "model_type": "timer",
        "torch_dtype": "float32",
        "transformers_version": "4.40.1",
        **TCFG.__dict__,
    }
    (d / "config.json").write_text(json.dumps(config))
    return tm, d


def series(b=3, length=70, seed=0):
    rng = np.random.default_rng(seed)
    return (1.0 + np.cumsum(rng.standard_normal((b, length)), axis=1)).astype(np.float32)


def test_forward_and_generate_match_upstream(upstream):
    tm, d = upstream
    pipe = TimerPipeline.from_pretrained(d)
    assert pipe.config.output_token_lens == (16,) and pipe.model.config is pipe.config
    x = series()
    xt = torch.from_numpy(x[:, 6:])  # 70 -> 64 points, as upstream truncates
    out = pipe.forward(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (3, 4, 16)
    with torch.no_grad():
        np.testing.assert_allclose(out[:, -1], tm(xt).logits.numpy(), atol=1e-4, rtol=1e-4)
    fc = pipe.generate(x, 20)
    assert isinstance(fc, np.ndarray) and fc.dtype == np.float32 and fc.shape == (3, 20)
    want = ref.recompute_generate(tm, torch.from_numpy(x), 20).numpy()
    np.testing.assert_allclose(fc, want, atol=1e-4, rtol=1e-4)
    hf = pipe.generate(x, 20, normalization="hf")
    want = ref.reference_generate(tm, torch.from_numpy(x), 20, use_cache=True).numpy()
    np.testing.assert_allclose(hf, want, atol=1e-4, rtol=1e-4)


def test_a_hub_id_goes_through_snapshot_download(upstream, monkeypatch):
    import huggingface_hub

    calls = []

    def fake(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, sorted(allow_patterns)))
        return str(upstream[1])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    pipe = TimerPipeline.from_pretrained("thuml/timer-base-84m", revision="main")
    assert calls == [("thuml/timer-base-84m", "main", ["config.json", "model.safetensors"])]
    assert pipe.config.hidden_size == 32

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="could not fetch 'thuml/timer-base-84m'"):
        TimerPipeline.from_pretrained("thuml/timer-base-84m")


def test_missing_files_are_named(upstream, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        TimerPipeline.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((upstream[1] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors not found"):
        TimerPipeline.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a model directory or a hub id"):
        TimerPipeline.from_pretrained(tmp_path / "nope" / "deeper")
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable float safetensors file"):
        TimerPipeline.from_pretrained(tmp_path)


def test_a_jaxts_checkpoint_loads_too(tmp_path, monkeypatch):
    if "timer_hf" not in FAMILIES:  # the registry entry the lead wires
        monkeypatch.setitem(
            FAMILIES,
            "timer_hf",
            Family("timer_hf", "jaxts.models.timer_hf:TimerHFConfig",
                   "jaxts.models.timer_hf:TimerHF", "bridges.timer_hf", "HF Timer"),
        )  # fmt: skip
    from jaxts.pipelines.timer import config_from_hf

    model = TimerHF(config_from_hf({"model_type": "timer", **TCFG.__dict__}), rngs=nnx.Rngs(4))
    save_model(model, tmp_path / "ckpt")
    pipe = TimerPipeline.from_pretrained(tmp_path / "ckpt")
    a = flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    b = flatten(nnx.to_pure_dict(nnx.state(pipe.model, nnx.Param)))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_bad_calls_are_named(upstream):
    pipe = TimerPipeline.from_pretrained(upstream[1])
    with pytest.raises(ValueError, match="normalization must be one of"):
        pipe.generate(series(), 4, normalization="revin")
    with pytest.raises(ValueError, match="too short"):
        pipe.generate(series(length=8), 4)
    with pytest.raises(TypeError, match="needs a TimerHF model"):
        TimerPipeline(object())
