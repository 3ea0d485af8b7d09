"""``python -m bench.distance_head --quick`` at tiny sizes, in-process: the JSON report's
structure (no timing is asserted: the figures depend on the machine)."""

from __future__ import annotations

import json

from bench import distance_head


def test_quick_run_writes_every_case(tmp_path, capsys):
    out = tmp_path / "dh.json"
    argv = ["--quick", "--hidden", "32", "--bins", "64", "--repeats", "1", "--out", str(out)]
    assert distance_head.main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"meta", "head", "forecast"}
    head = report["head"]
    assert [r["case"] for r in head["rows"]] == ["forward", "forward_loss", "train_step"]
    assert (head["hidden"], head["bins"]) == (32, 64)
    # the two sides hold the same weights: eval-mode logits and loss agree
    assert head["parity"]["logits_max_rel_err"] < 1e-5
    assert head["parity"]["loss_rel_err"] < 1e-5
    cases = [r["case"] for r in report["forecast"]["rows"]]
    assert cases == ["predict_base", "predict_head", "predict_head_upstream_compat"]
    for row in head["rows"] + report["forecast"]["rows"]:
        assert row["jax_median_s"] > 0 and row["torch_median_s"] > 0 and row["speedup"] > 0
    assert "| train_step | 2 |" in capsys.readouterr().out
    # an existing report is not replaced without --force
    assert distance_head.main(argv) == 2
    assert "pass --force" in capsys.readouterr().err
