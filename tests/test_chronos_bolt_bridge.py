"""HF Chronos-Bolt bridge: exact round trips through jaxts (API and CLI), jaxts checkpoints, and
rejection of configs, checkpoints and other Chronos families we cannot run as Bolt."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
chronos = pytest.importorskip("chronos")

from flax import nnx  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

import jaxts  # noqa: E402
from bridges import chronos_bolt as bridge  # noqa: E402
from bridges._mapping import CheckpointKeyError  # noqa: E402
from bridges.convert import main as convert_main  # noqa: E402
from bridges.reference.chronos_bolt_hf import (  # noqa: E402
    BOLT_T5_SIZES,
    CHRONOS_BOLT_CONFIG,
    tiny_chronos_bolt,
)
from bridges.reference.chronos_t5_hf import chronos_config, tiny_hf_chronos  # noqa: E402
from jaxts.models.chronos_bolt import ChronosBoltConfig  # noqa: E402

CHRONOS = dict(context_length=64, prediction_length=16)


def canonical_sd(tm) -> dict[str, np.ndarray]:
    """Upstream's state dict without the tied ``embed_tokens`` aliases of ``shared.weight``."""
    drop = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    return {k: v.numpy() for k, v in tm.state_dict().items() if k not in drop}


def upstream_pipeline(directory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return chronos.ChronosBoltPipeline.from_pretrained(directory)


def series(batch=3, length=50, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = 10 + 5 * np.sin(np.arange(length) / 3.0)[None] + rng.normal(size=(batch, length))
    x[0, :20] = np.nan
    return x.astype(np.float32)


def params_of(model) -> dict:
    return dict(nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(model, nnx.Param))))


def assert_same_params(a, b):
    pa, pb = params_of(a), params_of(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(np.asarray(pa[k]), np.asarray(pb[k]), err_msg=str(k))


def assert_same_upstream_weights(tm_a, tm_b):
    a, b = tm_a.state_dict(), tm_b.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random upstream Chronos-Bolt saved by ``save_pretrained``, and its directory."""
    directory = tmp_path_factory.mktemp("bolt")
    return tiny_chronos_bolt(directory, chronos=CHRONOS), directory


@pytest.fixture(scope="module")
def tiny_jax(tiny):
    return bridge.from_hf(tiny[1])


@pytest.fixture(scope="module")
def hf_config_json(tiny):
    return json.loads((tiny[1] / "config.json").read_text())


# ---- exact round trips ----------------------------------------------------------------------


def test_hf_to_jaxts_to_hf_round_trip_is_exact(tiny, tiny_jax, tmp_path):
    tm, src = tiny
    out = bridge.save_hf(tiny_jax, tmp_path / "exported")
    up, up2 = upstream_pipeline(src), upstream_pipeline(out)
    assert_same_upstream_weights(up.model, up2.model)
    assert up2.model.chronos_config == up.model.chronos_config
    # each tensor once (no tied aliases), equal to upstream's own
    written = load_file(out / "model.safetensors")
    want = canonical_sd(tm)
    assert written.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(written[k], want[k], err_msg=k)
    x = torch.from_numpy(series())
    np.testing.assert_array_equal(up.predict(x).numpy(), up2.predict(x).numpy())


@pytest.mark.parametrize("use_reg_token", [True, False])
def test_config_round_trips_through_config_to_hf(tiny_jax, use_reg_token):
    cfg = tiny_jax.config
    if not use_reg_token:
        cfg = ChronosBoltConfig.from_dict(
            {
                "t5": {**cfg.t5.to_dict(), "vocab_size": 1},
                "chronos": {**cfg.chronos.to_dict(), "use_reg_token": False},
            }
        )
    assert bridge.config_from_hf(bridge.config_to_hf(cfg)) == cfg


def test_defaults_are_the_published_chronos_bolt_small():
    cfg = ChronosBoltConfig()
    assert {**cfg.chronos.to_dict(), "quantiles": list(cfg.chronos.quantiles)} == (
        CHRONOS_BOLT_CONFIG
    )
    t5 = cfg.t5.to_dict()
    assert {k: t5[k] for k in BOLT_T5_SIZES["small"]} == BOLT_T5_SIZES["small"]
    assert t5["vocab_size"] == 2 and t5["decoder_start_token_id"] == 0


def test_jaxts_checkpoint_loads_with_identical_outputs(tiny_jax, tmp_path):
    jaxts.save_model(tiny_jax, tmp_path / "ckpt")
    loaded = jaxts.load_model(tmp_path / "ckpt")
    assert type(loaded) is type(tiny_jax) and loaded.config == tiny_jax.config
    assert_same_params(loaded, tiny_jax)
    x = series()
    pipe = jaxts.ChronosBoltPipeline.from_pretrained(tmp_path / "ckpt")
    want = jaxts.ChronosBoltPipeline(tiny_jax).predict(x)
    np.testing.assert_array_equal(pipe.predict(x), want)
    np.testing.assert_array_equal(pipe.predict(x), want)  # eval mode: deterministic


def test_cli_converts_hf_to_jaxts_and_back(tiny, tiny_jax, tmp_path):
    tm, src = tiny
    ckpt, back = tmp_path / "jaxts_ckpt", tmp_path / "hf_back"
    # one real process for the entry point, then main() in-process
    subprocess.run(
        [sys.executable, "-m", "bridges.convert", "chronos_bolt", str(src), str(ckpt)],
        check=True,
        capture_output=True,
    )
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["model"] == "chronos_bolt"
    assert_same_params(jaxts.load_model(ckpt), tiny_jax)
    assert convert_main(["chronos_bolt", str(ckpt), str(back)]) == 0
    assert_same_upstream_weights(upstream_pipeline(back).model, tm)


# ---- rejected configs -------------------------------------------------------------------------


def test_unknown_config_field_is_rejected_and_listed(hf_config_json, tiny, tmp_path):
    cfg = {**hf_config_json, "rope_theta": 10000.0, "zz_extra": 1}
    with pytest.raises(ValueError, match=r"\['rope_theta', 'zz_extra'\]"):
        bridge.config_from_hf(cfg)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").symlink_to(tiny[1] / "model.safetensors")
    with pytest.raises(ValueError, match=str(tmp_path / "config.json")):
        bridge.from_hf(tmp_path)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"chronos_config": {**CHRONOS_BOLT_CONFIG, "extra_key": 1}}, "extra_key"),
        ({"chronos_config": {**CHRONOS_BOLT_CONFIG, "input_patch_stride": 8}}, "stride 8"),
        ({"chronos_config": {**CHRONOS_BOLT_CONFIG, "quantiles": []}}, "quantiles"),
        ({"feed_forward_proj": "gated-silu"}, "gated-silu"),
        ({"dense_act_fn": "gelu_new"}, "contradicts 'relu'"),
        ({"architectures": ["T5EncoderModel"]}, "architectures"),
        ({"is_encoder_decoder": False}, "is_encoder_decoder"),
        ({"decoder_start_token_id": 5}, "decoder_start_token_id"),
    ],
    ids=["extra-key", "stride", "quantiles", "ffn", "act", "arch", "enc-dec", "start-token"],
)
def test_unsupported_config_values_are_rejected(hf_config_json, change, match):
    with pytest.raises(ValueError, match=match):
        bridge.config_from_hf({**hf_config_json, **change})


def test_chronos_t5_directory_is_refused_naming_its_family(tmp_path, capsys):
    tiny_hf_chronos(chronos_config(context_length=64, prediction_length=16)).save_pretrained(
        tmp_path / "t5"
    )
    with pytest.raises(ValueError, match="Chronos-T5 checkpoint .* chronos_t5 family"):
        bridge.from_hf(tmp_path / "t5")
    capsys.readouterr()  # save_pretrained's progress bar
    assert convert_main(["chronos_bolt", str(tmp_path / "t5"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "chronos_t5 family" in err
    assert not (tmp_path / "out").exists()


def test_chronos2_directory_is_refused_naming_its_family(tmp_path):
    """An upstream Chronos-2 ``config.json`` (the fields that tell it apart)."""
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["Chronos2Model"],
                "model_type": "t5",
                "chronos_config": {"context_length": 8192, "output_patch_size": 16},
            }
        )
    )
    with pytest.raises(ValueError, match="Chronos-2 checkpoint .* chronos2 family"):
        bridge.from_hf(tmp_path)


def test_another_jaxts_family_checkpoint_is_refused(tmp_path, capsys):
    t5 = tiny_hf_chronos(chronos_config(context_length=64, prediction_length=16))
    t5.save_pretrained(tmp_path / "t5")
    assert convert_main(["chronos_t5", str(tmp_path / "t5"), str(tmp_path / "ckpt")]) == 0
    assert convert_main(["chronos_bolt", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 2
    assert "expected chronos_bolt" in capsys.readouterr().err


# ---- rejected checkpoints ---------------------------------------------------------------------


@pytest.fixture()
def numpy_sd(tiny):
    return {k: v.copy() for k, v in canonical_sd(tiny[0]).items()}


def test_missing_unexpected_and_misshaped_keys_reported_together(numpy_sd, tiny_jax):
    sd = dict(numpy_sd)
    del sd["output_patch_embedding.residual_layer.bias"]
    sd["input_patch_embedding.extra.weight"] = np.zeros(3, np.float32)
    sd["input_patch_embedding.hidden_layer.weight"] = np.zeros((64, 30), np.float32)
    with pytest.raises(CheckpointKeyError) as err:
        bridge.from_state_dict(sd, tiny_jax.config)
    e = err.value
    assert e.missing == ["output_patch_embedding.residual_layer.bias"]
    assert e.unexpected == ["input_patch_embedding.extra.weight"]
    assert e.misshaped == [("input_patch_embedding.hidden_layer.weight", (64, 30), (64, 32))]
    for part in ("missing keys (1)", "unexpected keys (1)", "mis-shaped keys (1)"):
        assert part in str(e)


def test_aliases_and_an_lm_head_load_as_upstream(numpy_sd, tiny_jax):
    """Tied ``embed_tokens`` copies are accepted when equal to ``shared`` (v4 files carry
    them); an ``lm_head.weight`` is ignored, as upstream's loader ignores it."""
    sd = dict(numpy_sd)
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"].copy()
    sd["decoder.embed_tokens.weight"] = sd["shared.weight"].copy()
    sd["lm_head.weight"] = np.ones_like(sd["shared.weight"])
    assert_same_params(bridge.from_state_dict(sd, tiny_jax.config), tiny_jax)
    sd["decoder.embed_tokens.weight"] = sd["shared.weight"] + 1.0
    with pytest.raises(CheckpointKeyError, match="decoder.embed_tokens.weight"):
        bridge.from_state_dict(sd, tiny_jax.config)


def test_loaded_model_is_in_eval_mode(tmp_path):
    tiny_chronos_bolt(tmp_path, chronos=CHRONOS, dropout_rate=0.5)
    jm = bridge.from_hf(tmp_path)
    x = series()
    np.testing.assert_array_equal(np.asarray(jm(x)), np.asarray(jm(x)))


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"t5": {"vocab_size": 3}}, "t5.vocab_size must be 2"),
        ({"t5": {"vocab_size": 2}, "chronos": {"use_reg_token": False}}, "must be 1"),
        ({"chronos": {"quantiles": [0.5, 1.0]}}, r"in \(0, 1\)"),
    ],
    ids=["vocab", "vocab-no-reg", "quantile-range"],
)
def test_inconsistent_configs_are_rejected(raw, match):
    base = {"t5": {**ChronosBoltConfig().t5.to_dict(), **raw.get("t5", {})}}
    with pytest.raises(ValueError, match=match):
        ChronosBoltConfig.from_dict({**base, "chronos": raw.get("chronos", {})})
