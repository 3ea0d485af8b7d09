"""Phoenix21 distance head bridge: ``distance_output.pt`` files, directories and hub ids, the
temperature kept in ``config.json``, exact round trips through the CLI, and rejection of bad
files."""

import json

import numpy as np
import pytest
import torch
from flax import nnx

from bridges import distance_head as bridge
from bridges._mapping import CheckpointKeyError
from bridges.convert import main as convert_main
from bridges.reference.distance_head_torch import DistanceAwareOutputLayer as TorchHead
from jaxts.checkpoint import CheckpointError, load_model, save_model
from jaxts.models.timer_xl import TimerXL, TimerXLConfig

HIDDEN, BINS = 16, 40
REPO_ID = "Phoenix21/distance-aware-chronos-t"
# The published config.json (upstream's deploy script writes these fields).
PUBLISHED_CONFIG = {
    "model_type": "distance_aware_chronos",
    "base_model": "amazon/chronos-t5-small",
    "num_bins": BINS,
    "training_epoch": 8,
    "val_loss": 2.4703,
    "timestamp": "2025-01-01T00:00:00",
}


def upstream_state(seed=0, hidden=HIDDEN, bins=BINS) -> dict[str, torch.Tensor]:
    """A state dict with every tensor random (centers and widths too), so a transposed or
    swapped tensor cannot go unnoticed."""
    torch.manual_seed(seed)
    head = TorchHead(hidden, bins)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn_like(p))
    return head.state_dict()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def assert_same_state(got: dict, want: dict):
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


@pytest.fixture()
def pt(tmp_path):
    path = tmp_path / "distance_output.pt"
    torch.save(upstream_state(), path)
    return path


@pytest.fixture()
def hub_dir(tmp_path, pt):
    """The published layout: distance_output.pt + config.json."""
    (tmp_path / "config.json").write_text(json.dumps(PUBLISHED_CONFIG))
    return tmp_path


# ---- loading and writing ------------------------------------------------------------------


def test_loaded_layer_computes_upstreams_logits(pt):
    layer = bridge.load_distance_head(pt)
    head = TorchHead(HIDDEN, BINS).eval()
    head.load_state_dict(upstream_state(), strict=True)
    h = np.random.default_rng(0).standard_normal((2, 3, HIDDEN)).astype(np.float32)
    with torch.no_grad():
        want = head(torch.from_numpy(h), 1.5).numpy()  # [B, S, N]
    got = np.asarray(layer(h, 1.5))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got, np.asarray(layer(h, 1.5)))  # eval mode: dropout off


def test_saved_pt_loads_strictly_into_upstream_and_is_bit_exact(pt, tmp_path):
    out = bridge.save_distance_head(bridge.load_distance_head(pt), tmp_path / "out.pt")
    got = torch.load(out, weights_only=True)
    TorchHead(HIDDEN, BINS).load_state_dict(got, strict=True)
    assert_same_state(got, upstream_state())


def test_cli_pt_to_jaxts_to_pt_is_bit_exact(pt, tmp_path):
    ckpt, back = tmp_path / "ckpt", tmp_path / "back"
    assert convert_main(["distance_head", str(pt), str(ckpt)]) == 0
    model = load_model(ckpt, family="distance_head")
    assert (model.config.hidden_size, model.config.num_bins) == (HIDDEN, BINS)
    assert float(model.temperature[...]) == 1.0  # a bare .pt has none: upstream's initial value
    assert convert_main(["distance_head", str(ckpt), str(back)]) == 0
    assert sorted(p.name for p in back.iterdir()) == ["config.json", "distance_output.pt"]
    assert_same_state(torch.load(back / "distance_output.pt", weights_only=True), upstream_state())
    meta = json.loads((back / "config.json").read_text())
    assert meta["model_type"] == "distance_aware_chronos" and meta["num_bins"] == BINS
    assert meta["temperature"] == 1.0


def test_temperature_and_dropout_survive_the_round_trip_through_config_json(hub_dir, tmp_path):
    t = float(np.float32(0.7))
    meta = {**PUBLISHED_CONFIG, "temperature": t, "dropout": 0.25, "hidden_size": HIDDEN}
    (hub_dir / "config.json").write_text(json.dumps(meta))
    model = bridge.from_upstream(str(hub_dir))
    assert float(model.temperature[...]) == t and model.config.dropout == 0.25
    h = np.random.default_rng(1).standard_normal((2, HIDDEN)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(model(h)), np.asarray(model.layer(h, t)))
    save_model(model, tmp_path / "ckpt")
    back = bridge.to_upstream(load_model(tmp_path / "ckpt"), tmp_path / "back")
    again = json.loads((back / "config.json").read_text())
    assert again["temperature"] == t and again["dropout"] == 0.25
    assert_same_state(torch.load(back / "distance_output.pt", weights_only=True), upstream_state())


def test_hub_id_downloads_config_and_weights(hub_dir, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(hub_dir / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.chdir(tmp_path)  # the id must not name a local path
    (hub_dir / "config.json").write_text(json.dumps({**PUBLISHED_CONFIG, "temperature": 2.0}))
    model = bridge.from_upstream(REPO_ID)
    assert sorted(calls) == [(REPO_ID, "config.json"), (REPO_ID, "distance_output.pt")]
    assert float(model.temperature[...]) == 2.0


def test_hub_id_offline_says_to_pass_a_local_file(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def offline(repo_id, filename, **kwargs):
        raise OSError("network is unreachable\nsecond line")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        bridge.load_distance_head(REPO_ID)
    msg = str(err.value)
    assert REPO_ID in msg and "Hugging Face Hub" in msg and "network is unreachable" in msg
    assert "pass the local file" in msg
    assert convert_main(["distance_head", REPO_ID, str(tmp_path / "out")]) == 2
    assert REPO_ID in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


# ---- rejected inputs ------------------------------------------------------------------------


def test_bad_keys_are_listed_together(tmp_path, capsys):
    sd = upstream_state()
    del sd["mix_layer.3.bias"]
    sd["mix_layer.1.weight"] = torch.zeros(3)
    sd["confidence_projection.weight"] = torch.zeros(1, HIDDEN + 1)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointKeyError) as err:
        bridge.load_distance_head(tmp_path / "bad.pt")
    e = err.value
    assert e.missing == ["mix_layer.3.bias"] and e.unexpected == ["mix_layer.1.weight"]
    assert e.misshaped == [("confidence_projection.weight", (1, HIDDEN + 1), (1, HIDDEN))]
    assert convert_main(["distance_head", str(tmp_path / "bad.pt"), str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path / "bad.pt") in line and "mix_layer.3.bias" in line
    assert not (tmp_path / "o").exists()


def test_hidden_size_is_read_from_the_shapes_and_a_given_one_must_agree(pt, tmp_path, capsys):
    assert bridge.from_upstream(str(pt), hidden_size=HIDDEN).config.hidden_size == HIDDEN
    with pytest.raises(ValueError, match=rf"hidden size is {HIDDEN} .*not hidden_size=512"):
        bridge.load_distance_head(pt, hidden_size=512)
    args = ["distance_head", str(pt), str(tmp_path / "o"), "--hidden-size", "512"]
    assert convert_main(args) == 2
    assert "value_projection.weight (1, 16)" in one_error_line(capsys)


@pytest.mark.parametrize("damage", ["empty", "half", "garbage"])
def test_damaged_pt_is_one_line_naming_the_file(pt, tmp_path, damage, capsys):
    data = pt.read_bytes()
    pt.write_bytes({"empty": b"", "half": data[: len(data) // 2], "garbage": data[::-1]}[damage])
    with pytest.raises(CheckpointError, match="not a readable PyTorch weights file"):
        bridge.load_distance_head(pt)
    assert convert_main(["distance_head", str(pt.parent), str(tmp_path / "out")]) == 2
    assert str(pt) in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_non_finite_weights_name_the_key_and_the_file(tmp_path):
    sd = upstream_state()
    sd["gaussian_widths"][3] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"nan\.pt: non-finite .*gaussian_widths"):
        bridge.load_distance_head(tmp_path / "nan.pt")


@pytest.mark.parametrize(
    "content, match",
    [
        ([1, 2], "holds a list, not a state dict"),
        ({"epoch": 3, "model_state_dict": {}}, "not a state dict of tensors"),
        ({"head.weight": torch.zeros(2, 2)}, "cannot read the hidden size"),
    ],
    ids=["list", "training-checkpoint", "other-model"],
)
def test_not_a_head_state_dict_is_one_line(tmp_path, content, match, capsys):
    torch.save(content, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=match):
        bridge.load_distance_head(tmp_path / "x.pt")
    assert convert_main(["distance_head", str(tmp_path / "x.pt"), str(tmp_path / "o")]) == 2
    assert str(tmp_path / "x.pt") in one_error_line(capsys)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"model_type": "distance_aware_chronos_v2"}, "model_type 'distance_aware_chronos_v2'"),
        ({"num_bins": 4096}, f"num_bins=4096 but the weights have {BINS}"),
        ({"hidden_size": 512}, f"hidden_size=512 but the weights have {HIDDEN}"),
        ({"temperature": 0}, "temperature must be a finite number > 0"),
        ({"temperature": "hot"}, "temperature must be a finite number > 0"),
        ({"dropout": "lots"}, "dropout"),
        ({"zz_extra": 1}, r"not handled by jaxts' distance head: \['zz_extra'\]"),
    ],
    ids=["v2", "num_bins", "hidden_size", "zero-t", "string-t", "dropout", "unknown"],
)
def test_config_json_is_checked_against_the_weights(hub_dir, change, match, capsys):
    (hub_dir / "config.json").write_text(json.dumps({**PUBLISHED_CONFIG, **change}))
    with pytest.raises(ValueError, match=match):
        bridge.from_upstream(str(hub_dir))
    assert convert_main(["distance_head", str(hub_dir), str(hub_dir / "o")]) == 2
    assert str(hub_dir / "config.json") in one_error_line(capsys)


def test_directory_without_the_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no distance_output.pt"):
        bridge.load_distance_head(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        bridge.load_distance_head(tmp_path / "missing.pt")


def test_cli_another_familys_checkpoint_says_what_it_found(tmp_path, capsys):
    cfg = TimerXLConfig(input_token_len=8, output_token_len=8, d_model=8, n_heads=2, d_ff=16)
    save_model(TimerXL(cfg, rngs=nnx.Rngs(0)), tmp_path / "timer")
    assert convert_main(["distance_head", str(tmp_path / "timer"), str(tmp_path / "o")]) == 2
    assert "holds a timer_xl checkpoint; expected distance_head" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()
