"""jaxts checkpoint directories: eval-mode loading, damaged and mismatching files as one-line
errors naming the file, and whole-directory atomic saves."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from jaxts.checkpoint import (
    CHECKSUMS,
    CheckpointError,
    CheckpointKeyError,
    load_model,
    save_model,
)
from jaxts.models.timer_xl import TimerXL, TimerXLConfig
from tests.helpers import REPO, TINY_MODEL, series

CFG = TimerXLConfig(**{**TINY_MODEL, "dropout": 0.5})


def params(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.fixture()
def ckpt(tmp_path) -> Path:
    return save_model(TimerXL(CFG, rngs=nnx.Rngs(0)), tmp_path / "ckpt")


def data_files(ckpt: Path) -> list[Path]:
    """The files of orbax's key-value store (tensor bytes and index nodes; some may be
    unused copies)."""
    return [p for p in (ckpt / "params").rglob("*") if p.is_file() and p.parent.name == "d"]


def edit_config(ckpt: Path, change) -> None:
    path = ckpt / "config.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_loaded_model_is_in_eval_mode(ckpt):
    model = load_model(ckpt)
    x = series(2, 32, 2)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(model(x)))


def test_round_trip_is_exact(ckpt):
    want = params(TimerXL(CFG, rngs=nnx.Rngs(0)))
    got = params(load_model(ckpt))
    for a, b in zip(nnx.traversals.flatten_mapping(want).items(),
                    nnx.traversals.flatten_mapping(got).items(), strict=True):  # fmt: skip
        assert a[0] == b[0]
        np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))


@pytest.mark.parametrize("where", [0.3, 0.6, 0.9])
def test_flipped_bytes_are_detected(ckpt, where):
    """64 flipped bytes load as finite garbage as often as not: the CRC-32 recorded at save
    time catches them (or the decompressor does)."""
    for path in data_files(ckpt):
        data = bytearray(path.read_bytes())
        start = int(len(data) * where)
        data[start : start + 64] = bytes(b ^ 0x5A for b in data[start : start + 64])
        path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(ckpt / "params")):
        load_model(ckpt)


def test_checksums_name_the_damaged_tensor(ckpt):
    edit_config(ckpt, lambda m: m[CHECKSUMS].update({"head.bias": "00000000"}))
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) differ .*: head\.bias"):
        load_model(ckpt)


def test_checkpoint_without_checksums_loads(ckpt):
    edit_config(ckpt, lambda m: m.pop(CHECKSUMS))
    load_model(ckpt)


def test_non_finite_weights_are_named(tmp_path):
    model = TimerXL(CFG, rngs=nnx.Rngs(0))
    model.head.bias[...] = model.head.bias[...].at[3].set(np.nan)
    save_model(model, tmp_path / "nan")
    with pytest.raises(CheckpointError, match=r"non-finite weights .* head\.bias"):
        load_model(tmp_path / "nan")


def test_config_that_does_not_fit_the_weights_names_the_keys(ckpt):
    edit_config(ckpt, lambda m: m["config"].update(d_model=32))
    with pytest.raises(CheckpointKeyError) as err:
        load_model(ckpt)
    assert str(ckpt / "params") in str(err.value)
    assert ("embedding.kernel", (16, 16), (16, 32)) in err.value.misshaped


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "not valid JSON"),
        ('{"model": "timer_xl"}', 'a "config" object'),
        ('{"model": "timesfm", "config": {}}', "unknown model family 'timesfm'"),
        ('{"model": "timer_xl", "config": {"d_model": "wide"}}', "d_model: Input should be"),
        ('{"model": "timer_xl", "config": {"flash": true}}', "flash: unknown key"),
    ],
    ids=["json", "no-config", "family", "string-for-number", "unknown-key"],
)
def test_bad_config_json_names_the_file(ckpt, text, match):
    (ckpt / "config.json").write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        load_model(ckpt)
    assert str(ckpt / "config.json") in str(err.value)


def _truncate(path: Path, keep: float) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


DAMAGE = {
    "half-data": lambda c: [_truncate(p, 0.5) for p in data_files(c)],
    "empty-data": lambda c: [_truncate(p, 0.0) for p in data_files(c)],
    "no-metadata": lambda c: (c / "params" / "_METADATA").unlink(),
    "garbage-metadata": lambda c: (c / "params" / "_METADATA").write_text("xx"),
    "half-manifest": lambda c: _truncate(c / "params" / "manifest.ocdbt", 0.5),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_params_are_a_checkpoint_error(ckpt, damage):
    DAMAGE[damage](ckpt)
    with pytest.raises(CheckpointError, match=str(ckpt / "params")):
        load_model(ckpt)


def test_damaged_checkpoint_is_one_line_on_the_command_line(ckpt):
    """The exit-2 path of every CLI: one line, no orbax/tensorstore tracebacks after it."""
    DAMAGE["half-data"](ckpt)
    code = (
        "import sys; from jaxts._cli import exit_code; from jaxts.checkpoint import load_model; "
        f"sys.exit(exit_code(lambda: load_model({str(ckpt)!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {ckpt / 'params'}"), proc.stderr


def test_wrong_family_says_what_was_found(ckpt):
    with pytest.raises(ValueError, match="holds a timer_xl checkpoint; expected chronos_t5"):
        load_model(ckpt, family="chronos_t5")


# ---- saving -------------------------------------------------------------------------------


def test_save_replaces_a_checkpoint_as_a_whole(ckpt):
    other = TimerXL(TimerXLConfig(**{**TINY_MODEL, "d_model": 32}), rngs=nnx.Rngs(1))
    save_model(other, ckpt)
    assert load_model(ckpt).config == other.config
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ckpt"]  # nothing left aside


def test_failed_save_leaves_the_old_checkpoint(ckpt, monkeypatch):
    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(TimerXL(CFG, rngs=nnx.Rngs(5)), ckpt)
    monkeypatch.undo()
    np.testing.assert_array_equal(
        np.asarray(load_model(ckpt).head.bias[...]),
        np.asarray(TimerXL(CFG, rngs=nnx.Rngs(0)).head.bias[...]),
    )
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ckpt"]


def test_save_refuses_a_directory_holding_other_files(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds more than a jaxts model"):
        save_model(TimerXL(CFG, rngs=nnx.Rngs(0)), tmp_path / "run")
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
