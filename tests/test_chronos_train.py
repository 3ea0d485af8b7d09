"""Chronos-T5 training (train.chronos_t5), M4 Hourly data and its evaluation (eval.chronos)."""

from __future__ import annotations

import gzip
import hashlib
import json
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jaxts.data import DataError, load_m4_hourly, m4_hourly_paths
from jaxts.data._paths import VENDOR_DIR
from tests.helpers import REPO, run_on_devices
from train.config import load_config

SMOKE = REPO / "configs" / "chronos_t5_smoke.yaml"
M4_SHA256 = {
    "M4-Hourly-train.csv.gz": "64cb7b822e0faacc3d41c441254879dc88e7ee18414a0a78264cfd622664692f",
    "M4-Hourly-test.csv": "71a57fccb15e534d973626ada4fb87febf789e9317715b7cc6dd3b5f90db6f42",
}


def _params(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


# ---- M4 Hourly ------------------------------------------------------------------------------


def test_vendored_m4_files_are_byte_identical():
    for name, sha in M4_SHA256.items():
        assert hashlib.sha256((VENDOR_DIR / name).read_bytes()).hexdigest() == sha


def test_m4_hourly_shapes_and_padding():
    train, test, ids = load_m4_hourly(with_ids=True)
    assert len(train) == 414 and test.shape == (414, 48) and test.dtype == np.float32
    lengths = np.array([len(s) for s in train])
    assert lengths.min() == 700 and lengths.max() == 960  # padding removed, rows differ
    assert all(s.dtype == np.float32 and np.isfinite(s).all() for s in train)
    assert np.isfinite(test).all()
    assert ids[0] == "H1" and ids[-1] == "H414"
    np.testing.assert_array_equal(train[0][:3], [605, 586, 586])
    np.testing.assert_array_equal(test[0][:3], [619, 565, 532])


def _write_m4(folder: Path, train_rows, test_rows, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)

    def text(rows):
        width = max(len(r) for r in rows) - 1
        lines = [",".join(f'"V{i + 1}"' for i in range(width + 1))]
        for r in rows:
            cells = [f'"{r[0]}"'] + [f'"{v}"' if v != "" else "" for v in r[1:]]
            lines.append(",".join(cells + [""] * (width + 1 - len(cells))))
        return "\n".join(lines) + "\n"

    if gz:
        with gzip.open(folder / "Hourly-train.csv.gz", "wt") as f:
            f.write(text(train_rows))
    else:
        (folder / "Hourly-train.csv").write_text(text(train_rows))
    (folder / "Hourly-test.csv").write_text(text(test_rows))
    return folder


def test_m4_loader_data_dir_first_and_padding(tmp_path):
    test_rows = [["H1", *range(48)], ["H2", *range(1, 49)]]
    d = _write_m4(tmp_path / "M4", [["H1", 1, 2, 3, 4], ["H2", 5, 6]], test_rows)
    train, test = load_m4_hourly(tmp_path)  # found in DIR/M4
    assert m4_hourly_paths(tmp_path)[0] == d / "Hourly-train.csv.gz"
    assert [s.tolist() for s in train] == [[1, 2, 3, 4], [5, 6]]  # trailing cells = padding
    assert test.shape == (2, 48) and test[1, 0] == 1


@pytest.mark.parametrize(
    "train_rows, test_rows, match",
    [
        ([["H1", 1, "", 3]], [["H1", *range(48)]], "empty cell at position 2"),
        ([["H1", 1, "x", 3]], [["H1", *range(48)]], "non-numeric value 'x'"),
        ([["H1", 1, 2]], [["H1", *range(47)]], "47 test values"),
        ([["H1", 1, 2]], [["H9", *range(48)]], "different series"),
        ([["H1", "", ""]], [["H1", *range(48)]], "no values"),
    ],
)
def test_m4_loader_rejects_malformed_files(tmp_path, train_rows, test_rows, match):
    _write_m4(tmp_path, train_rows, test_rows, gz=False)
    with pytest.raises(DataError, match=match):
        load_m4_hourly(tmp_path)


# ---- windows, labels, loss -------------------------------------------------------------------


def _chronos_cfg(**kw):
    from jaxts.models.chronos_tokenizer import ChronosConfig

    return ChronosConfig(**{"context_length": 8, "prediction_length": 3, "n_tokens": 32, **kw})


def test_windows_are_a_function_of_seed_and_index():
    from train.chronos_t5 import ChronosWindows

    rng = np.random.default_rng(0)
    series = [rng.random(n).astype(np.float32) + 1 for n in (6, 40, 300)]
    a = ChronosWindows(series, _chronos_cfg(), 64, seed=7, min_past=2)
    b = ChronosWindows(series, _chronos_cfg(), 64, seed=7, min_past=2)
    c = ChronosWindows(series, _chronos_cfg(), 64, seed=8, min_past=2)
    idx = np.array([5, 0, 63, 17])
    for x, y in zip(a.batch(idx), b.batch(idx), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.values(np.arange(64))[1], c.values(np.arange(64))[1])
    # a window does not depend on the batch it is drawn in
    one = a.batch(np.array([17]))
    for x, y in zip(one, a.batch(idx), strict=True):
        np.testing.assert_array_equal(x[0], y[3])
    # starts leave min_past values before and the horizon after; short series -> NaN padding
    ctx, fut = a.values(np.arange(64))
    assert np.isfinite(fut).all() and (np.sum(~np.isnan(ctx), axis=1) >= 2).all()
    assert np.isnan(ctx[:, 0]).any()  # the 6-value series cannot fill a context of 8
    lengths = np.array([len(s) for s in series])[a.series_idx]
    assert (a.start >= 2).all() and (a.start + 3 <= lengths).all()
    assert set(a.series_idx) == {0, 1, 2}  # uniform over series, not over values


def test_labels_shift_right_and_ignore_index_by_hand():
    from train.chronos_t5 import ChronosWindows, make_labels, shift_right
    from train.losses import IGNORE_INDEX

    ids = np.array([[7, 8, 9, 1], [4, 5, 6, 1]], np.int32)
    mask = np.array([[True, False, True, True], [True, True, True, True]])
    labels = make_labels(ids, mask)
    np.testing.assert_array_equal(labels, [[7, -100, 9, 1], [4, 5, 6, 1]])
    np.testing.assert_array_equal(shift_right(labels), [[0, 7, 0, 9], [0, 4, 5, 6]])
    assert IGNORE_INDEX == -100

    # through the tokenizer: a NaN in the future is ignored, EOS (1) is a label
    cfg = _chronos_cfg()
    w = ChronosWindows([np.arange(1, 12, dtype=np.float32)], cfg, 1, seed=0, min_past=8)
    w.series[0][9] = np.nan
    w.start[:] = 8  # context 1..8 (mean |x| = 4.5), future [9, nan, 11]
    in_ids, in_mask, dec, lab = w.batch(np.array([0]))
    tok = w.tokenizer
    scale = np.float32(4.5)
    expect = np.searchsorted(tok.boundaries, np.float32([9, 11]) / scale, side="right") + 2
    np.testing.assert_array_equal(lab[0], [expect[0], -100, expect[1], 1])
    np.testing.assert_array_equal(dec[0], [0, expect[0], 0, expect[1]])
    assert in_ids.shape == (1, 9) and in_mask.all() and in_ids[0, -1] == 1


def test_loss_matches_numpy_cross_entropy():
    from jaxts.models.chronos_t5 import ChronosT5
    from train.chronos_t5 import ChronosWindows
    from train.config import model_config
    from train.losses import chronos_loss

    cfg = load_config(SMOKE)
    model = ChronosT5(model_config(cfg), rngs=nnx.Rngs(0))
    model.eval()
    rng = np.random.default_rng(1)
    series = [rng.random(200).astype(np.float32) * 10 for _ in range(3)]
    w = ChronosWindows(series, model.config.chronos, 4, seed=3, min_past=16)
    ids, att, dec, labels = w.batch(np.arange(4))
    labels[0, 2] = -100  # an ignored token
    dec = np.where(np.arange(dec.shape[1]) == 3, 0, dec)  # (any decoder input will do)
    row_mask = np.array([True, True, True, False])  # the last row is batch padding
    got = float(chronos_loss(model, (ids, att, dec, labels), row_mask))

    logits = np.asarray(model(ids, att, dec), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    valid = (labels != -100) & row_mask[:, None]
    nll = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    want = nll[valid].mean()
    assert valid.sum() == 3 * dec.shape[1] - 1
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_learning_rate_schedule():
    from train.optim import learning_rate_schedule

    lin = learning_rate_schedule(1.0, 10, 2, "linear")
    np.testing.assert_allclose([float(lin(s)) for s in (0, 1, 2, 6, 10)], [0, 0.5, 1, 0.5, 0])
    cos = learning_rate_schedule(1.0, 10, 0, "cosine")
    np.testing.assert_allclose([float(cos(s)) for s in (0, 5, 10)], [1, 0.5, 0], atol=1e-6)


# ---- training runs ---------------------------------------------------------------------------


def _smoke_cfg(out: Path, *overrides: str):
    return load_config(SMOKE, [f"run.out_dir={out}", *overrides])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One uninterrupted smoke run (6 steps) shared by the tests below."""
    from train.chronos_t5 import run

    out = tmp_path_factory.mktemp("chronos") / "full"
    summary = run(_smoke_cfg(out))
    return out, summary


def test_smoke_run_saves_a_loadable_model(smoke_run):
    from jaxts.pipelines.chronos_t5 import ChronosT5Pipeline

    out, summary = smoke_run
    assert summary["finished"] and summary["global_step"] == 6
    assert np.isfinite(summary["final_train_loss"])
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0] == "step,epoch,loss,lr,seconds" and len(rows) == 7
    pipe = ChronosT5Pipeline.from_pretrained(out / "best")
    assert pipe.model.config.t5.d_model == 32
    samples = pipe.predict(np.arange(50, dtype=np.float32) % 7 + 1, 5, num_samples=3)
    assert samples.shape == (1, 3, 5) and np.isfinite(samples).all()


def test_resume_is_bit_identical(smoke_run, tmp_path):
    from jaxts.checkpoint import load_model
    from train.chronos_t5 import run

    full, _ = smoke_run
    out = tmp_path / "resumed"
    first = run(_smoke_cfg(out), max_steps=2)  # "crash" after step 2 (mid-epoch)
    assert not first["finished"] and first["global_step"] == 2
    second = run(_smoke_cfg(out))
    assert second["finished"] and second["global_step"] == 6
    for a, b in zip(_params(load_model(full / "best")), _params(load_model(out / "best")),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    # a changed recipe is refused instead of mixing two experiments in one folder
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="chronos_t5.min_past"):
        run(_smoke_cfg(out, "chronos_t5.min_past=20"))


def test_logged_lr_is_the_scheduled_rate(smoke_run):
    """metrics.jsonl's lr is the rate the step applied (linear warmup 1 step, decay to 0 at
    step 6), not the peak."""
    from train.optim import learning_rate_schedule

    out, _ = smoke_run
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    sched = learning_rate_schedule(1e-3, 6, 1, "linear")
    for r in rows:
        assert r["lr"] == pytest.approx(float(sched(r["step"] - 1)), rel=1e-6)
    assert rows[-1]["lr"] == pytest.approx(2e-4)


def test_init_from_must_fit_the_model_section(smoke_run, tmp_path):
    """--init-from gives the model section's model its weights: other shapes are refused (the
    8M tiny section cannot start from the 32-wide smoke model), settings that change no shape
    are the section's; without a section the checkpoint's config is trained and recorded."""
    from jaxts.checkpoint import load_model
    from train.chronos_t5 import build_model, run
    from train.config import ConfigError, updated

    init = str(smoke_run[0] / "best")
    tiny = REPO / "configs" / "chronos_t5_tiny.yaml"
    out = tmp_path / "tiny"
    sets = [f"run.out_dir={out}", f"chronos_t5.init_from={init}", "chronos_t5.datasets=ETTh1"]
    with pytest.raises(ConfigError, match=r"does not fit.*t5.d_model 32 \(model section 256\)"):
        run(load_config(tiny, sets))
    assert not out.exists()  # nothing written for a refused start
    cfg = _smoke_cfg(tmp_path, "model.t5.dropout_rate=0.2")
    model, got = build_model(cfg, init)
    assert got == cfg and model.config.t5.dropout_rate == 0.2
    for a, b in zip(_params(model), _params(load_model(init)), strict=True):
        np.testing.assert_array_equal(a, b)
    model, got = build_model(updated(cfg, {"model": None}), init)
    assert got.model.t5.dropout_rate == 0.1 and model.config == load_model(init).config


def test_max_steps_zero_trains_nothing(smoke_run, tmp_path, capsys):
    """--max-steps 0: no step, no best/ claimed; the run folder records the checkpoint's model
    when the config has no model section; a negative count is a usage error."""
    import yaml

    from train.chronos_t5 import main

    raw = yaml.safe_load(SMOKE.read_text())
    del raw["model"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    init = str(smoke_run[0] / "best")
    argv = ["--config", str(path), "--out", str(out), "--init-from", init]
    assert main([*argv, "--max-steps", "0"]) == 0
    text = capsys.readouterr().out
    assert "nothing trained" in text and "best model in" not in text
    assert not (out / "best").exists()
    assert json.loads((out / "summary.json").read_text())["steps_run"] == 0
    assert load_config(out / "config.yaml").model.t5.d_model == 32  # the model of --init-from
    with pytest.raises(SystemExit):
        main([*argv, "--max-steps", "-1"])


_DP_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from flax import nnx
    from jaxts.checkpoint import load_model
    from train.chronos_t5 import run
    from train.config import load_config
    assert jax.device_count() == 4
    params = {{}}
    for n in (1, 4):
        cfg = load_config({smoke!r}, [f"run.out_dir={out}/d{{n}}", "optim.train_epochs=1"])
        run(cfg, devices=jax.devices()[:n])
        m = load_model(f"{out}/d{{n}}/best")
        params[n] = [np.asarray(x) for x in jax.tree.leaves(nnx.state(m, nnx.Param))]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(params[1], params[4]))
    print("MAXDIFF", diff)
    assert diff < 1e-5, diff
    """
)


def test_data_parallel_matches_single_device(tmp_path):
    run_on_devices(_DP_SCRIPT.format(smoke=str(SMOKE), out=str(tmp_path)), "MAXDIFF")


# ---- evaluation ------------------------------------------------------------------------------


def test_mase_and_wql_by_hand():
    from eval.chronos import mase, mase_scale, quantile_loss, seasonal_naive, wql

    train = np.array([1.0, 2.0, 4.0, 3.0, 5.0])  # m = 2: |4-1|, |3-2|, |5-4| -> mean 5/3
    assert mase_scale(train, 2) == pytest.approx(5 / 3)
    naive = seasonal_naive([train], 3, m=2)
    np.testing.assert_array_equal(naive, [[3.0, 5.0, 3.0]])
    y = np.array([[4.0, 4.0, 2.0]])
    # |4-3| + |4-5| + |2-3| = 3 -> MAE 1 -> MASE 1 / (5/3) = 0.6
    np.testing.assert_allclose(mase(y, naive, [5 / 3]), [0.6])
    # two levels; pinball_q(y, f) = q (y - f) if y >= f else (1 - q) (f - y)
    q_pred = np.array([[[3.0, 5.0], [3.0, 5.0], [3.0, 5.0]]])  # [1, 3, 2]: q0.2 = 3, q0.8 = 5
    levels = (0.2, 0.8)
    # q=0.2, f=3: y=4 -> .2, y=4 -> .2, y=2 -> .8  => 1.2 ; x2 = 2.4
    # q=0.8, f=5: y=4 -> .2, y=4 -> .2, y=2 -> .6  => 1.0 ; x2 = 2.0
    np.testing.assert_allclose(quantile_loss(y, q_pred, levels), [[2.4, 2.0]])
    assert wql(y, q_pred, levels) == pytest.approx((2.4 / 10 + 2.0 / 10) / 2)
    # a point forecast used for every level: WQL = sum |y - f| / sum |y| (mean of 2 q, 2 (1-q))
    point = np.repeat(naive[..., None], 2, -1)
    assert wql(y, point, levels) == pytest.approx(3 / 10)


def test_eval_chronos_end_to_end(smoke_run, tmp_path, capsys):
    from eval.chronos import main

    model_dir, _ = smoke_run
    out = tmp_path / "eval"
    rc = main(["--model", str(model_dir / "best"), "--max-series", "5", "--num-samples", "4",
               "--batch-size", "3", "--out", str(out), "--no-progress", "--no-train"])  # fmt: skip
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["series"] == 5 and metrics["horizon"] == 48
    for who in ("model", "seasonal_naive"):
        assert all(np.isfinite(metrics[who][k]) and metrics[who][k] > 0 for k in ("MASE", "WQL"))
    assert metrics["relative"]["MASE"] == pytest.approx(
        metrics["model"]["MASE"] / metrics["seasonal_naive"]["MASE"]
    )
    rows = (out / "per_series.csv").read_text().strip().splitlines()
    assert len(rows) == 6 and rows[1].startswith("H1,")
    assert (out / "forecasts.png").stat().st_size > 1000
    assert "seasonal naive" in capsys.readouterr().out
    assert main(["--model", str(tmp_path / "missing"), "--no-train", "--out", str(out)]) == 2
