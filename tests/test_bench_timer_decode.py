"""``python -m bench.timer_decode --quick`` in-process: the report's structure and the derived
rates consistent with the timings (no timing is asserted: the figures depend on the machine)."""

from __future__ import annotations

import csv
import json

import pytest

from bench import timer_decode


def test_quick_run_writes_json_csv_and_png(tmp_path, capsys):
    out = tmp_path / "res"
    assert timer_decode.main(["--quick", "--out", str(out)]) == 0
    report = json.loads((out / "timer_decode.json").read_text())
    meta, rows = report["meta"], report["rows"]
    assert meta["bandwidth_gbs"] > 0 and meta["batch"] == 1 and meta["quick"]
    assert "random" in meta["weights"]
    cases = [(r["model"], r["n_vars"], r["steps"], r["new_tokens"]) for r in rows]
    assert cases == [(m, c, t, c * t) for m in ("tiny", "tiny_draft")
                     for c, t in ((7, 1), (7, 2), (1, 1))]  # fmt: skip
    for r in rows:
        assert r["ms"] > 0 and len(r["runs_ms"]) == 2 and r["compile_s"] >= 0
        assert r["weights_gbs"] == pytest.approx(r["weight_bytes"] / (r["ms"] * 1e-3) / 1e9)
        assert r["share_of_bandwidth"] == pytest.approx(r["weights_gbs"] / meta["bandwidth_gbs"])
        one = next(x for x in rows if (x["model"], x["n_vars"]) == (r["model"], r["n_vars"]))
        assert r["ms_rel_one_step"] == pytest.approx(r["ms"] / one["ms"])
    # the draft is the stochastic 0.5x of the target: fewer weight bytes
    assert rows[3]["config"]["stochastic"] and rows[3]["weight_bytes"] < rows[0]["weight_bytes"]
    with open(out / "timer_decode.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    assert (out / "timer_decode.png").stat().st_size > 0
    assert "| tiny_draft | 1 | 1 | 1 |" in capsys.readouterr().out
    assert timer_decode.main(["--quick", "--out", str(out)]) == 2  # not replaced without --force
    assert "pass --force" in capsys.readouterr().err


def test_bad_options_are_named(tmp_path, capsys):
    assert timer_decode.main(["--shape", "huge", "--out", str(tmp_path / "a")]) == 2
    assert "--shape must name some of" in capsys.readouterr().err
    assert timer_decode.main(["--target", "x", "--shape", "etth1", "--out", str(tmp_path)]) == 2
    assert "--target or --shape, not both" in capsys.readouterr().err
    assert timer_decode.main(["--steps", "0", "--out", str(tmp_path / "b")]) == 2
    assert "--steps" in capsys.readouterr().err


def test_help_shows_every_default():
    text = " ".join(timer_decode.arg_parser().format_help().split())
    for default in ("(default: 1,2,3,4,5)", "(default: 7)", "(default: bench/results)"):
        assert default in text
