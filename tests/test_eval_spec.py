"""eval.spec: sweep parsing, the evaluation records, CLI outputs and errors (tiny models)."""

import csv
import json

import numpy as np
import pytest
from flax import nnx

from eval.spec import Setting, evaluate, main, parse_sweep
from jaxts.checkpoint import save_model
from jaxts.models.timer_xl import TimerXL, TimerXLConfig, draft_config

TARGET = TimerXLConfig(
    input_token_len=96, output_token_len=96, d_model=16, n_heads=2, d_ff=32, use_norm=True
)


def test_parse_sweep_is_a_cartesian_product():
    got = parse_sweep(["k=1,2", "rule=exact,stride", "sigma=0.5"], Setting(accept_bias=2.0))
    assert len(got) == 4
    assert {(s.k, s.rule) for s in got} == {
        (1, "exact"),
        (1, "stride"),
        (2, "exact"),
        (2, "stride"),
    }
    assert all(s.sigma == 0.5 and s.accept_bias == 2.0 for s in got)
    for bad in (["k"], ["depth=1"], ["k=a"], ["k="]):
        with pytest.raises(ValueError):
            parse_sweep(bad, Setting())


@pytest.fixture(scope="module")
def models():
    t = TimerXL(TARGET, rngs=nnx.Rngs(0))
    d = TimerXL(draft_config(TARGET, 0.5, 0.5, 0.5, 0.5, stochastic=True), rngs=nnx.Rngs(1))
    return t, d


def test_evaluate_records(models):
    t, d = models
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 192, 2)).astype(np.float32)
    y = rng.normal(size=(5, 150, 2))
    settings = [Setting(rule="tolerance", k=2, tol=0.0), Setting(rule="exact", k=1)]
    rows = []
    res = evaluate(t, d, x, y, settings, batch_size=2, progress=False, debug_rows=rows)
    tol, exact = res["settings"]
    assert tol["mse_change_vs_rolling"] == pytest.approx(0.0, abs=1e-6)  # tol 0 == rolling
    assert tol["target_calls_per_batch"] == 2 and tol["draft_calls_per_batch"] == 4
    assert "mse_change_vs_sampling" in exact and exact["residual_fallbacks"] == 0
    assert set(res["baseline"]) == {"rolling", "sampling_sigma=0.25"}
    # each rule against its own baseline: tolerance the mean, exact sampling at its sigma
    assert tol["own_baseline"] == "rolling" and exact["own_baseline"] == "sampling_sigma=0.25"
    assert tol["mse_change_vs_own_baseline"] == tol["mse_change_vs_rolling"]
    assert exact["mse_change_vs_own_baseline"] == exact["mse_change_vs_sampling"]
    assert len(rows) == 10 and {r["window"] for r in rows} == set(range(5))


def test_evaluate_cached_baseline_is_cached_decoding(models):
    """With decoding="cached" the mean baseline is the target's cached decoding, which the
    tolerance rule at tol 0 reproduces."""
    t, d = models
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 192, 2)).astype(np.float32)
    y = rng.normal(size=(3, 150, 2))
    setting = Setting(rule="tolerance", k=2, tol=0.0)
    res = evaluate(t, d, x, y, [setting], batch_size=2, progress=False, decoding="cached")
    (tol,) = res["settings"]
    assert set(res["baseline"]) == {"cached"} and tol["decoding"] == "cached"
    assert tol["mse_change_vs_cached"] == pytest.approx(0.0, abs=1e-6)
    assert tol["own_baseline"] == "cached" and "mse_change_vs_rolling" not in tol
    with pytest.raises(ValueError, match="decoding"):
        evaluate(t, d, x, y, [setting], progress=False, decoding="kv")


def test_cli_writes_json_csv_png(tmp_path, models):
    t, d = models
    save_model(t, tmp_path / "t")
    save_model(d, tmp_path / "d")
    out = tmp_path / "out"
    argv = [
        "--target", str(tmp_path / "t"), "--draft", str(tmp_path / "d"), "--seq-len", "192",
        "--pred-len", "100", "--max-windows", "3", "--batch-size", "2", "--no-progress",
        "--sweep", "k=1,2", "rule=stride", "--out", str(out), "--debug-csv", str(out / "dbg.csv"),
        "--decoding", "cached",
    ]  # fmt: skip
    assert main(argv) == 0
    res = json.loads((out / "spec_results.json").read_text())
    assert [s["k"] for s in res["settings"]] == [1, 2]
    assert res["meta"]["windows"] == 3 and res["meta"]["decoding"] == "cached"
    assert set(res["baseline"]) == {"cached", "sampling_sigma=0.25"}
    with open(out / "spec_sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r["own_baseline"] for r in rows} == {"sampling_sigma=0.25"}
    assert all("mse_change_vs_cached" in r and "mse_change_vs_own_baseline" in r for r in rows)
    assert (out / "spec_sweep.png").stat().st_size > 1000
    with open(out / "dbg.csv") as f:
        assert len(list(csv.DictReader(f))) == 6


def test_cli_missing_checkpoint_is_an_error(tmp_path, capsys):
    argv = ["--target", str(tmp_path / "none"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert f"no target checkpoint at {tmp_path / 'none'}" in capsys.readouterr().err
