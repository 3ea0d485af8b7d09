"""The eval/bench command lines as a user meets them: wrong or missing checkpoints, outputs that
already exist, non-finite forecasts (one line, exit 2) and a --help that shows every default."""

import argparse
import importlib
import json
import subprocess
import sys
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import nnx

import eval.chronos_t5 as eval_chronos
import eval.forecast as eval_forecast
import eval.spec as eval_spec
from jaxts.checkpoint import save_model
from jaxts.models.chronos_t5 import ChronosT5, ChronosT5Config
from jaxts.models.chronos_tokenizer import ChronosConfig
from jaxts.models.t5 import T5Config
from jaxts.models.timer_xl import TimerXL, TimerXLConfig
from tests.helpers import REPO, TINY_MODEL, write_csv

TINY_CHRONOS = ChronosT5Config(
    t5=T5Config(vocab_size=64, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_decoder_layers=1,
                num_heads=2),
    chronos=ChronosConfig(n_tokens=64, context_length=32, prediction_length=8),
)  # fmt: skip


def _overflowing_timer_xl() -> TimerXL:
    """Finite weights (a loader's checks pass) whose forecasts overflow to inf."""
    model = TimerXL(TimerXLConfig(**TINY_MODEL), rngs=nnx.Rngs(0))
    model.head.kernel[...] = jax.numpy.full_like(model.head.kernel[...], 3e38)
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return SimpleNamespace(
        timer=save_model(TimerXL(TimerXLConfig(**TINY_MODEL), rngs=nnx.Rngs(0)), root / "timer"),
        chronos=save_model(ChronosT5(TINY_CHRONOS, rngs=nnx.Rngs(0)), root / "chronos"),
        overflow=save_model(_overflowing_timer_xl(), root / "overflow"),
        csv=write_csv(root / "toy.csv"),
    )


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def forecast_args(ckpt, csv, *extra):
    return ["--ckpt", str(ckpt), "--dataset", str(csv), "--seq-len", "48", "--horizons", "16",
            "--no-progress", "--no-plot", *extra]  # fmt: skip


def spec_args(target, draft, csv, out, *extra):
    return ["--target", str(target), "--draft", str(draft), "--dataset", str(csv),
            "--seq-len", "48", "--pred-len", "32", "--max-windows", "2", "--sweep", "k=1",
            "rule=exact", "--no-progress", "--out", str(out), *extra]  # fmt: skip


# ---- wrong or missing checkpoints ----------------------------------------------------------


def test_a_chronos_checkpoint_is_refused_by_the_timer_xl_evaluations(ckpts, tmp_path, capsys):
    argv = forecast_args(ckpts.chronos, ckpts.csv, "--out", str(tmp_path / "f"))
    assert eval_forecast.main(argv) == 2
    assert "holds a chronos_t5 checkpoint; expected timer_xl" in one_error_line(capsys)
    assert eval_spec.main(spec_args(ckpts.chronos, ckpts.timer, ckpts.csv, tmp_path / "s")) == 2
    line = one_error_line(capsys)
    assert str(ckpts.chronos) in line and "expected timer_xl" in line
    assert not (tmp_path / "f").exists() and not (tmp_path / "s").exists()


def test_missing_default_checkpoints_name_the_commands_that_make_them(
    ckpts, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(eval_spec, "ROOT", tmp_path)  # a checkout where nothing was trained
    assert eval_spec.main(["--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert "no target checkpoint at runs/timer_xl_etth1_cpu/best and no draft" in line
    assert "`make demo`" in line
    assert "`python -m train.target --config configs/timer_xl_etth1_cpu.yaml` then " in line
    assert (
        "`python -m train.distill --config configs/distill_etth1_cpu.yaml "
        "--teacher runs/timer_xl_etth1_cpu/best`" in line
    )
    # Only the default draft missing: it is distilled from the target that was given.
    assert eval_spec.main(["--target", str(ckpts.timer), "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert "no draft checkpoint at runs/distill_etth1_cpu/best; make it with" in line
    assert f"--teacher {ckpts.timer}`" in line and "train.target" not in line
    # A checkpoint the user named is not ours to make.
    mine = tmp_path.parent / "mine"  # outside the (patched) repository
    assert eval_spec.main(["--target", str(ckpts.timer), "--draft", str(mine)]) == 2
    assert one_error_line(capsys) == f"error: no draft checkpoint at {mine} (no config.json found)"


def test_missing_default_chronos_model_names_its_training_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(eval_chronos, "ROOT", tmp_path)
    assert eval_chronos.main(["--out", str(tmp_path / "out"), "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert "no model at runs/chronos_t5_tiny/best" in line
    assert "`python -m train.chronos_t5 --config configs/chronos_t5_tiny.yaml`" in line


# ---- outputs -------------------------------------------------------------------------------


def test_existing_outputs_are_kept_unless_forced(ckpts, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "spec_results.json").write_text("earlier")
    absent = tmp_path / "absent"
    assert eval_spec.main(spec_args(absent, absent, ckpts.csv, full)) == 2
    assert "already holds results (spec_results.json); pass --force" in one_error_line(capsys)
    assert (full / "spec_results.json").read_text() == "earlier"
    assert eval_chronos.main(["--model", str(ckpts.chronos), "--out", str(full)]) == 2
    assert "--force" in one_error_line(capsys)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert eval_spec.main(spec_args(absent, absent, ckpts.csv, a_file, "--force")) == 2
    assert f"--out {a_file} is a file" in one_error_line(capsys)
    argv = spec_args(absent, absent, ckpts.csv, tmp_path / "new", "--debug-csv", str(a_file))
    assert eval_spec.main(argv) == 2
    assert f"--debug-csv {a_file} exists" in one_error_line(capsys)


def test_forecast_keeps_its_results_next_to_the_checkpoint_unless_forced(ckpts, capsys):
    ckpt = ckpts.timer.parent / "again"  # its own copy: this test writes into it
    save_model(TimerXL(TimerXLConfig(**TINY_MODEL), rngs=nnx.Rngs(0)), ckpt)
    assert eval_forecast.main(forecast_args(ckpt, ckpts.csv)) == 0
    first = (ckpt / "metrics_test.json").read_text()
    capsys.readouterr()
    assert eval_forecast.main(forecast_args(ckpt, ckpts.csv, "--horizons", "8")) == 2
    assert "metrics_test.json" in one_error_line(capsys)
    assert (ckpt / "metrics_test.json").read_text() == first
    assert eval_forecast.main(forecast_args(ckpt, ckpts.csv, "--horizons", "8", "--force")) == 0
    assert set(json.loads((ckpt / "metrics_test.json").read_text())) == {"8", "avg"}


def test_forecast_records_its_decoding_and_cached_equals_rolling_within_one_patch(ckpts, tmp_path):
    got = {}
    for decoding in ("rolling", "cached"):
        out = tmp_path / decoding
        argv = forecast_args(ckpts.timer, ckpts.csv, "--out", str(out), "--decoding", decoding)
        assert eval_forecast.main(argv) == 0
        got[decoding] = json.loads((out / "metrics_test.json").read_text())
        assert {r["decoding"] for r in got[decoding].values()} == {decoding}
    # horizon 16 = one patch: the cached forecast is the rolling forecast's first patch
    assert got["cached"]["16"]["mse"] == pytest.approx(got["rolling"]["16"]["mse"], rel=1e-5)
    with pytest.raises(ValueError, match=r"decoding must be one of \['rolling', 'cached'\]"):
        eval_forecast.evaluate_rolling(None, ckpts.csv, 48, [16], decoding="beam")


# ---- non-finite forecasts ------------------------------------------------------------------


def test_non_finite_forecasts_are_refused_naming_the_checkpoint(ckpts, tmp_path, capsys):
    out = tmp_path / "f"
    assert eval_forecast.main(forecast_args(ckpts.overflow, ckpts.csv, "--out", str(out))) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {ckpts.overflow}: horizon 16 forecasts are not finite")
    assert not (out / "metrics_test.json").exists()
    out = tmp_path / "s"
    assert eval_spec.main(spec_args(ckpts.overflow, ckpts.timer, ckpts.csv, out)) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {ckpts.overflow}: target-only rolling forecasts are not")
    assert not out.exists()


def test_require_finite():
    eval_forecast.require_finite(np.zeros(3), "x")
    with pytest.raises(eval_forecast.NonFiniteForecast, match="x forecasts are not finite"):
        eval_forecast.require_finite(np.array([0.0, np.nan]), "x", "draft")


# ---- --help --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module", ["eval.spec", "eval.forecast", "eval.chronos_t5", "eval.distance_head",
               "bench.timer_xl", "bench.spec", "bench.chronos", "bench.distance_head"],
)  # fmt: skip
def test_help_shows_every_default(module):
    p = importlib.import_module(module).arg_parser()
    text = " ".join(p.format_help().split())
    for action in p._actions:
        if not action.option_strings or action.default in (None, argparse.SUPPRESS):
            continue
        if isinstance(action.const, bool) or action.dest == "help":
            continue  # flags
        assert f"(default: {action.default})" in text, action.dest
    # every option says what it does (and one without a default what leaving it out means)
    assert all(a.help for a in p._actions if a.option_strings), module


def test_old_module_name_runs_the_chronos_evaluation(tmp_path):
    """``python -m eval.chronos`` (the documented name) still runs, and the one-line error of a
    real process has no traceback around it."""
    (tmp_path / "earlier.json").write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-m", "eval.chronos", "--model", "x", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: --out {tmp_path} already holds results (earlier.json); pass --force to "
        "overwrite them or choose another --out"
    ]
