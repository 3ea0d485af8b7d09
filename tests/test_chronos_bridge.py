"""HF Chronos-T5 bridge: exact round trips through jaxts, architecture variants, the CLI, and
rejection of configs and checkpoints we cannot run faithfully."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from chronos import ChronosPipeline
from flax import nnx
from safetensors.torch import load_file, save_file
from transformers import T5ForConditionalGeneration

from bridges import chronos_t5 as bridge
from bridges._mapping import CheckpointKeyError
from bridges.convert import main as convert_main
from bridges.reference.chronos_t5_hf import chronos_config, tiny_hf_chronos
from jaxts.checkpoint import CheckpointError, load_model, save_model
from jaxts.models.timer_xl import TimerXL, TimerXLConfig
from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline

CHRONOS = chronos_config(context_length=64, prediction_length=16)
# transformers bookkeeping that legitimately differs between two saves of one model
_CONFIG_NOISE = {"_name_or_path", "transformers_version"}


def hf_model(seed=0, **overrides) -> T5ForConditionalGeneration:
    return tiny_hf_chronos(CHRONOS, seed=seed, **overrides)


def canonical_sd(tm) -> dict[str, torch.Tensor]:
    """The state dict without the tied aliases of ``shared.weight``."""
    sd = tm.state_dict()
    drop = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    if tm.lm_head.weight.data_ptr() == tm.shared.weight.data_ptr():
        drop.add("lm_head.weight")
    return {k: v for k, v in sd.items() if k not in drop}


def torch_logits(tm, ids, mask, dec) -> np.ndarray:
    with torch.no_grad():
        out = tm(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            decoder_input_ids=torch.from_numpy(dec).long(),
        )
    return out.logits.numpy()


def jax_logits(jm, ids, mask, dec) -> np.ndarray:
    return np.asarray(jm(ids, mask.astype(bool), dec))


def teacher_forced_batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, 4096, (3, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[2, 5] = 0  # a missing value inside
    ids[mask == 0] = 0
    ids[:, -1] = 1  # EOS
    dec = np.concatenate([np.zeros((3, 1), np.int32), rng.integers(2, 4096, (3, 6))], 1)
    return ids, mask, dec.astype(np.int32)


def series(batch, length, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    x = 10 + 5 * np.sin(t / 3.0)[None] + rng.normal(size=(batch, length))
    return x.astype(np.float32)


def params_of(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def assert_same_params(a, b):
    flat_a = dict(nnx.traversals.flatten_mapping(params_of(a)))
    flat_b = dict(nnx.traversals.flatten_mapping(params_of(b)))
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]), err_msg=str(k))


def hf_config(tp: ChronosPipeline) -> dict:
    cfg = tp.model.model.config.to_dict()
    return {k: v for k, v in cfg.items() if k not in _CONFIG_NOISE}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Chronos-T5 saved by ``save_pretrained`` (model.safetensors)."""
    tm = hf_model()
    directory = tmp_path_factory.mktemp("hf_tiny")
    tm.save_pretrained(directory)
    return tm, directory


@pytest.fixture(scope="module")
def tiny_jax(tiny):
    return bridge.from_hf(tiny[1])


# ---- exact round trips --------------------------------------------------------------------


def test_hf_to_jaxts_to_hf_round_trip_is_exact(tiny, tiny_jax, tmp_path):
    tm, src = tiny
    out = bridge.save_hf(tiny_jax, tmp_path / "exported")
    tp, tp2 = ChronosPipeline.from_pretrained(src), ChronosPipeline.from_pretrained(out)
    want, got = tm.state_dict(), tp2.model.model.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert hf_config(tp2) == hf_config(tp)
    assert tp2.model.config == tp.model.config  # the chronos_config block
    # the exported safetensors hold each tensor once (no tied aliases)
    assert set(load_file(out / "model.safetensors")) == set(canonical_sd(tm))

    x = series(2, 40)
    kw = dict(prediction_length=16, num_samples=2, top_k=1)
    a = tp.predict(torch.from_numpy(x), **kw).numpy()
    b = tp2.predict(torch.from_numpy(x), **kw).numpy()
    c = ChronosT5Pipeline(tiny_jax).predict(x, **kw)
    d = ChronosT5Pipeline.from_pretrained(out).predict(x, **kw)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(a, d)


def test_v4_style_pytorch_bin_equals_safetensors(tiny, tiny_jax, tmp_path):
    """An old-style directory: ``pytorch_model.bin`` with every tied alias and the unused
    cross-attention bias table, and a transformers-4 ``config.json``."""
    tm, src = tiny
    sd = dict(tm.state_dict())  # shared, encoder/decoder.embed_tokens and lm_head (tied)
    assert {"encoder.embed_tokens.weight", "lm_head.weight"} <= set(sd)
    bias = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"
    sd[bias] = torch.zeros(32, 4)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    cfg = json.loads((src / "config.json").read_text())
    for k in ("dtype", "scale_decoder_outputs", "tie_word_embeddings"):
        cfg.pop(k, None)
    cfg.update(
        _name_or_path="google/t5-efficient-tiny",
        torch_dtype="float32",
        transformers_version="4.31.0",
        n_positions=512,
    )
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    from_bin = bridge.from_hf(tmp_path)
    assert from_bin.config == tiny_jax.config
    assert_same_params(from_bin, tiny_jax)


# ---- untied lm head -----------------------------------------------------------------------


def untied_dir(tiny, directory, tie_in_config: bool):
    tm, src = tiny
    sd = load_file(src / "model.safetensors")
    torch.manual_seed(7)
    sd["lm_head.weight"] = 0.3 * torch.randn_like(sd["shared.weight"])
    directory.mkdir()
    save_file(sd, directory / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("scale_decoder_outputs", None)
    cfg["tie_word_embeddings"] = tie_in_config
    (directory / "config.json").write_text(json.dumps(cfg))
    return sd


@pytest.mark.parametrize("tie_in_config", [False, True], ids=["config-untied", "config-tied"])
def test_untied_lm_head_matches_hf_and_round_trips(tiny, tmp_path, tie_in_config):
    """A checkpoint whose ``lm_head.weight`` differs from ``shared.weight`` is untied (as
    transformers 5 loads it); ``tie_word_embeddings`` in config.json only decides the output
    scaling."""
    sd = untied_dir(tiny, tmp_path / "src", tie_in_config)
    hm = ChronosPipeline.from_pretrained(tmp_path / "src").model.model
    assert torch.equal(hm.lm_head.weight, sd["lm_head.weight"])  # HF loaded it untied
    assert hm.config.scale_decoder_outputs is tie_in_config
    jm = bridge.from_hf(tmp_path / "src")
    assert not jm.config.t5.tie_word_embeddings
    assert jm.config.t5.scale_decoder_outputs is tie_in_config
    ids, mask, dec = teacher_forced_batch()
    want = torch_logits(hm, ids, mask, dec)
    np.testing.assert_allclose(jax_logits(jm, ids, mask, dec), want, atol=1e-4, rtol=0)

    out = bridge.save_hf(jm, tmp_path / "out")
    exported = load_file(out / "model.safetensors")
    assert exported.keys() == sd.keys()
    for k in sd:
        assert torch.equal(exported[k], sd[k]), k
    hm2 = ChronosPipeline.from_pretrained(out).model.model
    np.testing.assert_array_equal(torch_logits(hm2, ids, mask, dec), want)
    assert bridge.from_hf(out).config == jm.config


# ---- architecture variants ----------------------------------------------------------------

VARIANTS = {
    "gated-gelu": dict(feed_forward_proj="gated-gelu"),
    "inner-dim-48": dict(d_kv=16, num_heads=3),  # num_heads * d_kv != d_model
    "decoder-3-layers": dict(num_decoder_layers=3),
    "all": dict(feed_forward_proj="gated-gelu", d_kv=6, num_heads=5, num_decoder_layers=1),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_architecture_variants_match_hf_logits(name, tmp_path):
    tm = hf_model(seed=3, **VARIANTS[name])
    tm.save_pretrained(tmp_path / "src")
    jm = bridge.from_hf(tmp_path / "src")
    ids, mask, dec = teacher_forced_batch(1)
    want = torch_logits(tm, ids, mask, dec)
    np.testing.assert_allclose(jax_logits(jm, ids, mask, dec), want, atol=1e-4, rtol=0)
    exported = bridge.to_state_dict(jm)
    want_sd = canonical_sd(tm)
    assert exported.keys() == want_sd.keys()
    for k, v in want_sd.items():
        np.testing.assert_array_equal(exported[k], v.numpy(), err_msg=k)


# ---- rejected configs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_config_json(tiny):
    return json.loads((tiny[1] / "config.json").read_text())


def test_unknown_config_field_is_rejected_and_listed(hf_config_json, tiny, tmp_path):
    cfg = {**hf_config_json, "rope_theta": 10000.0, "zz_extra": 1}
    with pytest.raises(ValueError, match=r"\['rope_theta', 'zz_extra'\]"):
        bridge.config_from_hf(cfg)
    # the same through a directory
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").symlink_to(tiny[1] / "model.safetensors")
    with pytest.raises(ValueError, match="rope_theta"):
        bridge.from_hf(tmp_path)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"feed_forward_proj": "gated-silu"}, "gated-silu"),
        ({"feed_forward_proj": "gelu"}, "'gelu' is not supported"),
        ({"dense_act_fn": "gelu_new"}, "contradicts 'relu'"),
        ({"architectures": ["T5EncoderModel"]}, "architectures"),
        ({"is_encoder_decoder": False}, "is_encoder_decoder"),
        ({"chronos_config": {**CHRONOS, "model_type": "causal"}}, "model_type 'causal'"),
        (
            {"chronos_config": {**CHRONOS, "tokenizer_class": "MeanScaleNonUniformBins"}},
            "MeanScaleNonUniformBins",
        ),
        ({"chronos_config": {**CHRONOS, "n_tokens": 4000}}, "n_tokens 4000 != T5 vocab_size"),
        ({"chronos_config": {**CHRONOS, "extra_key": 1}}, "extra_key"),
    ],
    ids=[
        "gated-silu",
        "gelu",
        "dense_act_fn",
        "architectures",
        "is_encoder_decoder",
        "causal",
        "tokenizer_class",
        "n_tokens",
        "chronos-extra-key",
    ],
)
def test_unsupported_config_values_are_rejected(hf_config_json, change, match):
    with pytest.raises(ValueError, match=match):
        bridge.config_from_hf({**hf_config_json, **change})


def test_not_a_chronos_config_is_rejected(hf_config_json):
    cfg = {k: v for k, v in hf_config_json.items() if k != "chronos_config"}
    with pytest.raises(ValueError, match="chronos_config"):
        bridge.config_from_hf(cfg)


def test_config_round_trips_through_config_to_hf(tiny_jax):
    assert bridge.config_from_hf(bridge.config_to_hf(tiny_jax.config)) == tiny_jax.config


# ---- rejected checkpoints -----------------------------------------------------------------


@pytest.fixture()
def numpy_sd(tiny):
    return {k: v.numpy().copy() for k, v in canonical_sd(tiny[0]).items()}


def test_missing_unexpected_and_misshaped_keys_reported_together(numpy_sd, tiny_jax):
    sd = dict(numpy_sd)
    del sd["decoder.block.1.layer.2.DenseReluDense.wo.weight"]
    sd["encoder.block.0.layer.0.SelfAttention.q.bias"] = np.zeros(32, np.float32)
    sd["encoder.final_layer_norm.weight"] = np.ones(31, np.float32)
    with pytest.raises(CheckpointKeyError) as err:
        bridge.from_state_dict(sd, tiny_jax.config)
    e = err.value
    assert e.missing == ["decoder.block.1.layer.2.DenseReluDense.wo.weight"]
    assert e.unexpected == ["encoder.block.0.layer.0.SelfAttention.q.bias"]
    assert e.misshaped == [("encoder.final_layer_norm.weight", (31,), (32,))]
    msg = str(e)
    for part in ("missing keys (1)", "unexpected keys (1)", "mis-shaped keys (1)"):
        assert part in msg


def test_misshaped_linear_reports_torch_layout(numpy_sd, tiny_jax):
    sd = dict(numpy_sd)
    sd["decoder.block.0.layer.1.EncDecAttention.q.weight"] = np.zeros((32, 16), np.float32)
    with pytest.raises(CheckpointKeyError, match=r"checkpoint \(32, 16\) vs expected \(32, 32\)"):
        bridge.from_state_dict(sd, tiny_jax.config)


def test_embed_tokens_alias_equal_to_shared_is_accepted(numpy_sd, tiny_jax):
    sd = dict(numpy_sd)
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"].copy()
    sd["decoder.embed_tokens.weight"] = sd["shared.weight"].copy()
    assert_same_params(bridge.from_state_dict(sd, tiny_jax.config), tiny_jax)
    # an alias alone stands in for a missing shared.weight
    sd["encoder.embed_tokens.weight"] = sd.pop("shared.weight")
    assert_same_params(bridge.from_state_dict(sd, tiny_jax.config), tiny_jax)


def test_embed_tokens_alias_different_from_shared_is_rejected(numpy_sd, tiny_jax):
    sd = dict(numpy_sd)
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"] + 1e-3
    with pytest.raises(CheckpointKeyError, match="encoder.embed_tokens.weight"):
        bridge.from_state_dict(sd, tiny_jax.config)


def test_directory_without_weights_raises_file_not_found(tiny, tmp_path):
    (tmp_path / "config.json").write_text((tiny[1] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        bridge.from_hf(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        bridge.from_hf(tmp_path / "empty")
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match="sharded"):
        bridge.from_hf(tmp_path)


def test_hub_id_offline_gives_helpful_file_not_found(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def offline(repo_id, **kwargs):
        calls.append(repo_id)
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)  # "amazon/chronos-t5-tiny" must not be a local directory
    with pytest.raises(FileNotFoundError) as err:
        ChronosT5Pipeline.from_pretrained("amazon/chronos-t5-tiny")
    msg = str(err.value)
    assert "amazon/chronos-t5-tiny" in msg and "Hugging Face Hub" in msg
    assert "network is unreachable" in msg and "local directory" in msg
    assert calls == ["amazon/chronos-t5-tiny"]
    # something that is neither a directory nor a hub id is not looked up at all
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        bridge.from_hf("no/such/model/dir")
    assert calls == ["amazon/chronos-t5-tiny"]


# ---- CLI ----------------------------------------------------------------------------------


def test_cli_converts_hf_to_jaxts_and_back(tiny, tiny_jax, tmp_path):
    tm, src = tiny
    ckpt, back = tmp_path / "jaxts_ckpt", tmp_path / "hf_back"
    # one real process for the entry point, then main() in-process (same code path, no imports)
    subprocess.run(
        [sys.executable, "-m", "bridges.convert", "chronos_t5", str(src), str(ckpt)],
        check=True,
        capture_output=True,
    )
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["model"] == "chronos_t5" and meta["source"] == str(src)
    jm = load_model(ckpt)
    assert jm.config == tiny_jax.config
    assert_same_params(jm, tiny_jax)

    assert convert_main(["chronos_t5", str(ckpt), str(back)]) == 0
    got = ChronosPipeline.from_pretrained(back).model.model.state_dict()
    want = tm.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_cli_errors_exit_2_with_a_message(tiny, tmp_path, capsys):
    assert convert_main(["chronos_t5", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "not a model directory" in capsys.readouterr().err
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    assert convert_main(["chronos_t5", str(tmp_path / "cfg"), str(tmp_path / "o")]) == 2
    assert "chronos_config" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse: chronos_t5 has no options
        convert_main(["chronos_t5", str(tiny[1]), str(tmp_path / "o"), "--use-norm"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --use-norm" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- eval mode, damaged files -------------------------------------------------------------


def test_loaded_model_is_in_eval_mode(tmp_path):
    hf_model(dropout_rate=0.5).save_pretrained(tmp_path)
    jm = bridge.from_hf(tmp_path)
    ids, mask, dec = teacher_forced_batch()
    np.testing.assert_array_equal(jax_logits(jm, ids, mask, dec), jax_logits(jm, ids, mask, dec))


def copy_dir(tiny, directory):
    shutil.copytree(tiny[1], directory)
    return directory


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("fmt", ["model.safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("damage", ["empty", "half", "garbage"])
def test_damaged_weight_file_is_one_line_naming_it(tiny, tmp_path, fmt, damage, capsys):
    src = copy_dir(tiny, tmp_path / "src")
    if fmt == "pytorch_model.bin":
        torch.save(load_file(src / "model.safetensors"), src / fmt)
        (src / "model.safetensors").unlink()
    data = (src / fmt).read_bytes()
    (src / fmt).write_bytes(
        {"empty": b"", "half": data[: len(data) // 2], "garbage": data[::-1]}[damage]
    )
    with pytest.raises(CheckpointError, match=f"{src / fmt}: not a readable"):
        bridge.from_hf(src)
    assert convert_main(["chronos_t5", str(src), str(tmp_path / "out")]) == 2
    assert str(src / fmt) in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_non_finite_weights_name_the_key_and_the_file(tiny, tmp_path):
    src = copy_dir(tiny, tmp_path / "src")
    sd = load_file(src / "model.safetensors")
    sd["decoder.final_layer_norm.weight"][3] = float("nan")
    save_file(sd, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"non-finite .*: decoder\.final_layer_norm\.weight"):
        bridge.from_hf(src)


@pytest.mark.parametrize(
    "change, match",
    [(None, "not valid JSON"), ({"d_model": "wide"}, "d_model: Input should be")],
    ids=["json", "string-for-number"],
)
def test_bad_config_json_names_the_file(tiny, tmp_path, change, match, capsys):
    src = copy_dir(tiny, tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text("{oops" if change is None else json.dumps({**cfg, **change}))
    assert convert_main(["chronos_t5", str(src), str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert str(src / "config.json") in line and match in line


def test_cli_wrong_checkpoint_kind_says_what_it_found(tmp_path, capsys):
    timer = TimerXL(TimerXLConfig(input_token_len=8, output_token_len=8, d_model=8, n_heads=2,
                                  d_ff=16), rngs=nnx.Rngs(0))  # fmt: skip
    save_model(timer, tmp_path / "timer")
    assert convert_main(["chronos_t5", str(tmp_path / "timer"), str(tmp_path / "out")]) == 2
    assert "holds a timer_xl checkpoint; expected chronos_t5" in one_error_line(capsys)
    (tmp_path / "checkpoint.pth").write_bytes(b"")
    assert (
        convert_main(["chronos_t5", str(tmp_path / "checkpoint.pth"), str(tmp_path / "out")]) == 2
    )
    assert "not a model directory or a hub id" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()
