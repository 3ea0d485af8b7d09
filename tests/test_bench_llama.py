"""``python -m bench.llama --quick`` in-process on a tiny random HF Llama: the report's
structure, the greedy ids of both sides compared, the derived rates consistent (no timing is
asserted: the figures depend on the machine)."""

from __future__ import annotations

import json

import pytest

from bench import llama


def test_quick_run_writes_the_report(tmp_path, capsys):
    out = tmp_path / "llama.json"
    assert llama.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["bandwidth_gbs"] > 0 and report["meta"]["matmul_2048_gflops"] > 0
    (row,) = report["rows"]
    assert (row["batch"], row["prompt_len"], row["new_tokens"]) == (2, 16, 8)
    # float32 both sides, 8 greedy steps of a tiny model: the same ids
    assert row["parity"] == {"identical_rows": 2, "rows": 2, "first_divergence": [None, None]}
    for side in ("jaxts", "transformers"):
        s = row[side]
        assert s["prefill_s"] > 0 and s["generate_s"] > 0
        decode = max(s["generate_s"] - s["prefill_s"], 1e-9)
        assert s["decode_tok_s"] == pytest.approx(2 * 8 / decode)
        assert s["weights_share_of_bandwidth"] == pytest.approx(
            s["weights_gbs"] / report["meta"]["bandwidth_gbs"]
        )
    assert row["decode_speedup"] == pytest.approx(
        row["jaxts"]["decode_tok_s"] / row["transformers"]["decode_tok_s"]
    )
    assert "| 2 | ratio |" in capsys.readouterr().out
    assert llama.main(["--quick", "--out", str(out)]) == 2  # not replaced without --force
    assert "pass --force" in capsys.readouterr().err


def test_bad_options_are_named(tmp_path, capsys):
    assert llama.main(["--prompt-len", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--prompt-len" in capsys.readouterr().err
