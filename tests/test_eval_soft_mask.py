"""python -m eval.soft_mask in-process on a tiny random Chronos-2 and synthetic data: outputs,
the exact limits (hard re-run = hard, temperature 0 = full cross-learning) and one-line errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from eval.soft_mask import main
from tests.helpers import write_csv

pytest.importorskip("chronos")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from bridges.reference.chronos2_hf import tiny_chronos2

    root = tmp_path_factory.mktemp("soft_mask")
    tiny_chronos2(root / "model", context_length=64, time_encoding_scale=64)
    data = root / "data"
    data.mkdir()
    write_csv(data / "weather.csv", n=600)  # 70/10/20 split: 120 test rows, 3 variates
    return root


def _args(root, out, *extra):
    return ["--ckpt", str(root / "model"), "--data-dir", str(root / "data"), "--out", str(out),
            "--datasets", "weather,m4_hourly", "--context-length", "64", "--horizon", "32",
            "--m4-horizon", "16", "--stride", "16", "--max-windows", "3", "--m4-batch", "3",
            "--similarities", "correlation,gaussian", "--temperatures", "0,5",
            "--n-bootstrap", "50", "--no-progress", *extra]  # fmt: skip


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(setup):
    out = setup / "out"
    assert main(_args(setup, out)) == 0
    return out


def test_outputs(run):
    names = {"results.json", "per_window.csv", "summary.csv", "temperature_sweep.png"}
    assert {p.name for p in run.iterdir()} == names
    res = json.loads((run / "results.json").read_text())
    assert res["datasets"]["weather"] == {"units": 3, "series": 9, "horizon": 32,
                                          "mean_abs_y": pytest.approx(res["datasets"]["weather"]
                                                                      ["mean_abs_y"])}  # fmt: skip
    assert res["datasets"]["m4_hourly"]["units"] == 9  # 3 batches of 3 series
    assert set(res["by_variate"]["weather"]) == {"a", "b", "c"}  # the CSV's column names
    assert list(res["by_horizon"]["weather"]) == ["1-16", "17-32"]
    arms = {"hard", "hard_rerun", "full", "soft_correlation_t0", "soft_correlation_t5",
            "soft_gaussian_t0", "soft_gaussian_t5"}  # fmt: skip
    assert set(res["means"]["all"]) == arms
    # each unit's per-window WQL averages to the dataset's WQL (sum of losses / sum |y|)
    per = [r for r in _rows(run / "per_window.csv") if r["dataset"] == "weather"]
    hard = [float(r["WQL"]) for r in per if r["arm"] == "hard"]
    assert np.mean(hard) == pytest.approx(res["means"]["weather"]["hard"]["WQL"], rel=1e-9)


def test_hard_rerun_is_exactly_hard(run):
    rows = [r for r in _rows(run / "summary.csv") if r["arm"] == "hard_rerun"]
    assert len(rows) == 3 * 3  # groups weather, m4_hourly, all x 3 metrics
    for r in rows:
        assert float(r["mean_diff"]) == 0 and float(r["ci_width"]) == 0
        assert float(r["share_close_to_hard"]) == 1.0 and float(r["win_rate"]) == 0.5


def test_temperature_zero_is_full_cross_learning(run):
    per = _rows(run / "per_window.csv")
    by_arm = {}
    for r in per:
        by_arm.setdefault(r["arm"], []).append([float(r[m]) for m in ("MSE", "MAE", "WQL")])
    full = np.array(by_arm["full"])
    for sim in ("correlation", "gaussian"):
        np.testing.assert_allclose(by_arm[f"soft_{sim}_t0"], full, rtol=1e-5, atol=1e-7)
    # and full cross-learning does change the forecasts of this model (the test can fail)
    assert not np.allclose(by_arm["hard"], full, rtol=1e-3)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_errors(setup, tmp_path, capsys):
    out = tmp_path / "o"
    args = _args(setup, out)
    missing = [*args[:1], str(tmp_path / "nope"), *args[2:]]
    assert "no such folder" in _error(capsys, missing)
    bad_data = [*args[:3], str(tmp_path / "no_data"), *args[4:]]
    assert "--data-dir" in _error(capsys, bad_data) and not out.exists()
    assert "--temperatures" in _error(capsys, [*args, "--temperatures", "1,-2"])
    assert "--similarities" in _error(capsys, [*args, "--similarities", "dtw"])
    assert "one pass" in _error(capsys, [*args, "--horizon", "80"])
    assert "context_length 64" in _error(capsys, [*args, "--context-length", "128"])
    out.mkdir()
    (out / "results.json").write_text("{}")
    assert "--force" in _error(capsys, args)
