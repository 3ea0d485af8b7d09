"""``python -m bench.chronos2 --quick`` and ``python -m bench.chronos_bolt --quick`` at tiny
sizes, in-process: the JSON report's structure and the parity check (no timing is asserted:
the figures depend on the machine)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import chronos2, chronos_bolt
from bridges.reference.chronos2_hf import CHRONOS2_CONFIG, CHRONOS2_CORE, chronos2_config
from bridges.reference.chronos_bolt_hf import BOLT_T5_SIZES, CHRONOS_BOLT_CONFIG

POINTS = [(64, 1), (64, 3)]  # (context, batch) of --quick


@pytest.mark.parametrize("bench", [chronos2, chronos_bolt], ids=["chronos2", "chronos_bolt"])
def test_quick_run_writes_every_point(bench, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"meta", "model", "rows"}
    assert report["meta"]["load"]["start"]["loadavg"] and "end" in report["meta"]["load"]
    assert report["meta"]["matmul_2048_gflops"] > 0
    assert [(r["context"], r["batch"]) for r in report["rows"]] == POINTS
    for row in report["rows"]:
        # both pipelines ran on the same weights and inputs and agreed before being timed
        assert row["parity"]["ok"] and row["parity"]["max_rel_err"] < 1e-5
        assert row["jax_median_s"] > 0 and row["torch_median_s"] > 0
        assert row["speedup"] == pytest.approx(row["torch_median_s"] / row["jax_median_s"])
        assert row["gflop"] > 0 and 0 < row["jax_fraction_of_matmul"]
        assert len(row["jax_runs_s"]) == len(row["torch_runs_s"]) == 1
    assert "| 64 | 3 |" in capsys.readouterr().out
    # an existing report is not replaced without --force
    assert bench.main(["--quick", "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err


def test_parity_failure_stops_the_run():
    a = np.ones((2, 3, 4), np.float32)
    assert chronos2.parity(a, a + 1e-4, "here")["max_rel_err"] == pytest.approx(1e-4, rel=1e-3)
    with pytest.raises(ValueError, match="here: jaxts and chronos-forecasting differ"):
        chronos2.parity(a, a + 0.01, "here")
    with pytest.raises(ValueError, match="differ"):  # NaN is no agreement
        chronos2.parity(a * np.nan, a, "here")
    with pytest.raises(ValueError, match=r"\(2, 3, 4\) vs upstream \(2, 3, 5\)"):
        chronos2.parity(a, np.ones((2, 3, 5), np.float32), "here")


def test_flops_grow_with_the_work():
    core, ch = CHRONOS2_CORE, chronos2_config()
    one = chronos2.chronos2_flops(core, ch, 1, 512, 64)
    # ~113M multiply-adds per token (time + group attention, FFN) x 37 tokens, 2 FLOPs each
    assert 8e9 < one < 9.5e9
    assert chronos2.chronos2_flops(core, ch, 32, 512, 64) > 32 * one  # group attention grows
    assert chronos2.chronos2_flops(core, ch, 1, 2048, 64) > 3.5 * one


def test_bad_options_are_one_error(tmp_path, capsys):
    out = str(tmp_path / "r.json")
    assert chronos2.main(["--size", "tiny", "--repeats", "0", "--out", out, "--force"]) == 2
    assert "--repeats must be a positive integer" in capsys.readouterr().err
    assert chronos_bolt.main(["--size", "tiny", "--contexts", "a", "--out", out, "--force"]) == 2
    assert "--contexts must be comma-separated positive integers" in capsys.readouterr().err


def test_published_sizes_build_the_published_models(tmp_path):
    """The default sizes are the published models in full, chronos_config included (the tiny
    builders default to a tiny chronos_config of context 256)."""
    core, chronos = chronos2.build(tmp_path / "c2", "published")
    assert {k: core[k] for k in CHRONOS2_CORE} == CHRONOS2_CORE
    assert chronos == CHRONOS2_CONFIG
    t5, chronos = chronos_bolt.build(tmp_path / "bolt", "small")
    assert t5 == BOLT_T5_SIZES["small"] and chronos == CHRONOS_BOLT_CONFIG
