"""Chronos-2 training (train.chronos2): the task sampler, the loss over task slots, runs,
resume and data parallelism, on synthetic CSVs and a tiny M4-like folder."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jaxts.data import DataError
from tests.helpers import REPO, run_on_devices, write_csv
from train.chronos2_data import Source, TaskSampler, Ungrouped, load_sources
from train.config import ConfigError, load_config

TINY = REPO / "configs" / "chronos2_tiny.yaml"
WEIGHTS = dict(univariate=1.0, multivariate=1.0, covariates=1.0, cross_learning=1.0)


def _params(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def _write_m4(folder: Path, lengths=(120, 150, 130, 140, 125, 160), seed=0) -> Path:
    """A tiny M4 Hourly layout (quoted ids, right-padded train rows, 48 test values)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width = max(lengths)

    def line(sid, values, cells):
        out = [f'"{sid}"'] + [f'"{v:.3f}"' for v in values]
        return ",".join(out + [""] * (cells - len(values)))

    train = [",".join(f'"V{i + 1}"' for i in range(width + 1))]
    test = [",".join(f'"V{i + 1}"' for i in range(49))]
    for k, n in enumerate(lengths):
        t = np.arange(n + 48)
        x = 100 + 10 * k + 5 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.5, n + 48)
        train.append(line(f"H{k + 1}", x[:n], width))
        test.append(line(f"H{k + 1}", x[n:], 48))
    (folder / "Hourly-train.csv").write_text("\n".join(train) + "\n")
    (folder / "Hourly-test.csv").write_text("\n".join(test) + "\n")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A folder with ``syn.csv`` (800 hourly rows, 3 variates) and a tiny M4 Hourly."""
    d = tmp_path_factory.mktemp("chronos2_data")
    write_csv(d / "syn.csv", 800)
    _write_m4(d)
    return d


def _sources(n_cols=5, n_single=6, length=300, horizon=8):
    """A 5-variate panel (column j of row t holds 1000 j + t: a value says where it is from)
    and ``n_single`` one-column series (10000 (k + 1) + t)."""
    t = np.arange(length, dtype=np.float32)[:, None]
    panel = Source("panel", (1000 * np.arange(n_cols, dtype=np.float32) + t,), (4,))
    singles = Source("m4", tuple(10000.0 * (k + 1) + t for k in range(n_single)),
                     (4,) * n_single)  # fmt: skip
    return [panel, singles]


def _sampler(sources=None, **kw):
    args = dict(size=200, seed=3, context_length=32, horizon=8, weights=WEIGHTS,
                max_group_size=4, min_past=4, short_context_prob=0.5, fill="univariate")  # fmt: skip
    return TaskSampler(sources or _sources(), **{**args, **kw})


# ---- the sampler --------------------------------------------------------------------------------


def _check_row(ctx, fut):
    """A context row is a run of consecutive positions of one series, right-aligned, NaN on
    the left; its future continues it."""
    seen = ctx[~np.isnan(ctx)]
    assert np.isnan(ctx[: len(ctx) - len(seen)]).all()
    np.testing.assert_array_equal(np.diff(seen), 1)
    known = fut[~np.isnan(fut)]
    if len(known):
        np.testing.assert_array_equal(np.diff(np.concatenate([seen[-1:], fut])), 1)


def test_task_kinds_group_ids_covariates_and_windows():
    s = _sampler()
    kinds = {}
    for i in range(200):
        t = s.task(i)
        kinds[t.kind] = kinds.get(t.kind, 0) + 1
        g = t.group_rows
        if t.kind == "univariate":
            np.testing.assert_array_equal(t.group_ids, np.arange(4))  # each row alone
        else:
            assert 2 <= g <= 4
            assert (t.group_ids[:g] == 0).all()  # the group task's rows share one id
            assert len(set(t.group_ids[g:])) == 4 - g and 0 not in t.group_ids[g:]
        known = ~np.isnan(t.future_covariates).all(1)  # [G] rows with known future
        if t.kind == "covariates":
            assert 1 <= known.sum() <= g - 1 and not known[g:].any()
            # known covariates: their future is in future_covariates, never a target
            assert np.isnan(t.future_target[known]).all()
            assert np.isfinite(t.future_covariates[known]).all()
        else:
            assert not known.any()
        for row in range(4):
            fut = t.future_covariates[row] if known[row] else t.future_target[row]
            _check_row(t.context[row], fut)
            assert np.isfinite(fut).all() and np.sum(~np.isnan(t.context[row])) >= 4
        if t.kind in ("multivariate", "covariates"):
            last = t.context[:g, -1]
            assert (last < 10000).all()  # panel variates ...
            assert len(set(last % 1000)) == 1 and len(set(last // 1000)) == g  # ... one window
        if t.kind == "cross_learning":
            assert len(set(t.context[:g, -1] // 10000)) == g  # distinct M4-like series
    assert set(kinds) == {"univariate", "multivariate", "covariates", "cross_learning"}
    assert min(kinds.values()) > 25


def test_short_contexts_and_left_padding():
    s = _sampler(short_context_prob=0.5)
    observed = np.array([np.sum(~np.isnan(s.task(i).context[0])) for i in range(200)])
    assert observed.min() >= 4 and observed.max() == 32
    assert 0.3 < np.mean(observed < 32) < 0.8  # about half the contexts are short
    full = _sampler(short_context_prob=0.0)
    # only a window near the series start can be short now (history < context length)
    starts = [full.task(i) for i in range(100)]
    assert np.mean([np.isnan(t.context[0]).any() for t in starts]) < 0.2


def test_fill_nan_gives_padding_rows():
    s = _sampler(fill="nan", weights={"multivariate": 1.0})
    for i in range(30):
        t = s.task(i)
        pad = np.isnan(t.context).all(1)
        np.testing.assert_array_equal(pad, np.arange(4) >= t.group_rows)
        assert np.isnan(t.future_target[pad]).all() and np.isnan(t.future_covariates[pad]).all()
        assert len(set(t.group_ids.tolist())) == 1 + pad.sum()  # each padding row alone


def test_tasks_are_a_function_of_seed_salt_and_index():
    a, b = _sampler(), _sampler()
    idx = np.array([5, 0, 199, 17])
    for x, y in zip(a.batch(idx), b.batch(idx), strict=True):
        np.testing.assert_array_equal(x, y)
    one = a.batch(np.array([17]))  # a slot does not depend on the batch it is drawn in
    for x, y in zip(one, a.batch(idx), strict=True):
        np.testing.assert_array_equal(x[0], y[3])
    shapes = [x.shape for x in a.batch(idx)]
    assert shapes == [(4, 4, 32), (4, 4, 8), (4, 4, 8), (4, 4)]
    for other in (_sampler(seed=4), _sampler(salt=1)):
        assert not np.array_equal(a.batch(idx)[0], other.batch(idx)[0], equal_nan=True)


def test_ungrouped_puts_every_row_alone():
    s = _sampler(weights={"covariates": 1.0})
    idx = np.arange(5)
    *same, alone = Ungrouped(s).batch(idx)
    *want, grouped = s.batch(idx)
    for a, b in zip(same, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (grouped[:, 0] == grouped[:, 1]).all()  # a covariates task groups >= 2 rows ...
    np.testing.assert_array_equal(alone, np.tile(np.arange(4), (5, 1)))  # ... now none
    assert len(Ungrouped(s)) == len(s)


def test_kinds_without_data_are_dropped_and_bad_settings_refused():
    panel_only = _sources()[:1]
    s = _sampler(panel_only)
    assert s.weights["cross_learning"] == 0 and s.weights["univariate"] == pytest.approx(1 / 3)
    with pytest.raises(DataError, match="no task kind"):
        _sampler(panel_only, weights={"cross_learning": 1.0})
    with pytest.raises(ValueError, match="unknown task kinds"):
        _sampler(weights={"univariat": 1.0})
    with pytest.raises(ValueError, match="fill must be one of"):
        _sampler(fill="zeros")
    with pytest.raises(DataError, match="no series has room"):
        _sampler(horizon=400)


def test_load_sources_train_and_val_parts(data_dir):
    from jaxts.data import load_m4_hourly, load_split

    names = [str(data_dir / "syn.csv"), "m4_hourly"]
    train = load_sources(names, "train", 64, 32, 16, data_dir, log=lambda _: None)
    val = load_sources(names, "val", 64, 32, 16, data_dir, log=lambda _: None)
    series = load_m4_hourly(data_dir)[0]
    assert [s.name for s in train] == names and len(train[1].members) == 6
    # M4: train windows end before the last horizon, the val window forecasts it
    for s, tr, va, start in zip(series, train[1].members, val[1].members, val[1].first_start,
                                strict=True):  # fmt: skip
        np.testing.assert_array_equal(tr[:, 0], s[:-32])
        np.testing.assert_array_equal(va[:, 0], s)
        assert start == len(s) - 32
    # a CSV: the train rows, and the val rows behind 64 rows of history (forecasts start there)
    np.testing.assert_array_equal(
        train[0].members[0], load_split(names[0], "train", 1, scale=False)
    )
    assert val[0].members[0].shape == (80 + 64, 3) and val[0].first_start == (64,)
    sampler = TaskSampler(val, size=16, seed=0, context_length=64, horizon=32,
                          weights=WEIGHTS, max_group_size=3, min_past=16)  # fmt: skip
    target = sampler.batch(np.arange(16))[1]
    assert np.isfinite(target).any()
    messages = []
    got = load_sources([*names, "ETTnope"], "train", 64, 32, 16, data_dir, log=messages.append)
    assert len(got) == 2 and "skipping ETTnope" in messages[0]


# ---- the loss -----------------------------------------------------------------------------------


def _tiny_model(**chronos):
    from jaxts.models.chronos2 import Chronos2Model
    from train.config import model_config

    cfg = model_config(load_config(TINY))
    if chronos:
        import dataclasses

        cfg = dataclasses.replace(cfg, chronos=dataclasses.replace(cfg.chronos, **chronos))
    model = Chronos2Model(cfg, rngs=nnx.Rngs(0))
    model.eval()
    return model


def test_task_loss_is_the_model_loss_over_the_real_rows():
    """Padding rows and masked slots change nothing: the slot loss equals upstream's loss
    (model.loss) on the real rows alone, with one group id per slot task."""
    from train.chronos2 import task_loss

    model = _tiny_model()
    s = _sampler(context_length=64, horizon=32, fill="nan")
    idx = np.arange(6)
    batch = s.batch(idx)
    mask = np.array([True] * 5 + [False])  # the last slot is batch padding
    got = float(nnx.jit(task_loss(2))(model, batch, mask))  # compiled: eager is 10x slower

    ctx, tgt, cov, grp = (x[:5] for x in batch)
    real = ~np.isnan(ctx).all(-1)  # [5, G]
    gid = (grp + 4 * np.arange(5)[:, None])[real]

    @nnx.jit
    def upstream_loss(m, ctx, tgt, gid, cov):
        return m.loss(ctx, tgt, group_ids=gid, future_covariates=cov, num_output_patches=2)

    want = float(upstream_loss(model, ctx[real], tgt[real], gid, cov[real]))
    assert real.sum() < 20  # fill: nan left padding rows
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_context_quantile_loss_by_hand():
    """The forecast-free reference: each row's median of its normalised context."""
    from train.chronos2 import context_quantile_loss

    nan = np.nan
    ctx = np.array([[[1, 2, 3, 4], [nan] * 4, [5, 5, 5, 5]]], np.float32)  # [1, 3, 4]
    sd = np.sqrt(1.25)  # row 0: loc 2.5, population std; the context median normalises to 0
    target = np.array([[[2.5 + 2 * sd, nan], [nan, nan], [5, 5]]], np.float32)
    batch = (ctx, target, np.full_like(target, nan), np.arange(3)[None])

    class Fixed:
        def __len__(self):
            return 1

        def batch(self, idx):
            return tuple(a[idx] for a in batch)

    # row 0: 2 |(2 - 0) (0 - 0.5)| = 2 at the observed step, mean over 2 steps = 1; row 1 is
    # padding (left out); row 2: constant context and target -> 0. Mean over 2 rows: 0.5.
    assert context_quantile_loss(Fixed(), (0.5,), False) == pytest.approx(0.5, rel=1e-6)
    # arcsinh normalises the target too: asinh(2) instead of 2 for row 0
    assert context_quantile_loss(Fixed(), (0.5,), True) == pytest.approx(np.arcsinh(2) / 4)


def test_loss_falls_on_a_fixed_batch():
    import optax

    from train.chronos2 import task_loss

    model = _tiny_model()
    batch = _sampler(context_length=64, horizon=32).batch(np.arange(8))
    mask = np.ones(8, bool)
    loss_fn = task_loss(2)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        def f(p):
            return loss_fn(nnx.merge(graphdef, p, rest), batch, mask)

        value, grads = jax.value_and_grad(f)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, value

    losses = []
    for _ in range(12):
        params, opt, value = step(params, opt)
        losses.append(float(value))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0], losses


# ---- runs ---------------------------------------------------------------------------------------


def _cfg(out: Path, data_dir: Path, *overrides: str):
    return load_config(TINY, [f"run.out_dir={out}", f"data.data_dir={data_dir}",
                              f"chronos2.datasets=[{data_dir / 'syn.csv'}, m4_hourly]",
                              *overrides])  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    """One uninterrupted tiny run (2 epochs of 3 steps) shared by the tests below."""
    from train.chronos2 import run

    out = tmp_path_factory.mktemp("chronos2") / "full"
    return out, run(_cfg(out, data_dir))


def test_run_writes_metrics_and_a_loadable_best_model(tiny_run, data_dir):
    from jaxts.checkpoint import load_model

    out, summary = tiny_run
    assert summary["finished"] and summary["global_step"] == 6
    assert summary["series"] == {str(data_dir / "syn.csv"): 3, "m4_hourly": 6}
    assert summary["rows_per_step"] == 16 and summary["horizon"] == 32
    assert list(summary["val_loss"]) == ["3", "6"] == list(summary["val_loss_alone"])
    assert 0 < summary["val_loss_context_quantiles"] < 20
    assert all(np.isfinite(v) for v in summary["val_loss"].values())
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0] == "step,epoch,loss,lr,seconds" and len(rows) == 7
    epochs = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["event"] == "epoch"]
    assert [r["val_loss"] for r in epochs] == list(summary["val_loss"].values())
    assert [r["val_loss_alone"] for r in epochs] == list(summary["val_loss_alone"].values())
    model = load_model(out / "best")
    assert model.config.core.d_model == 16
    ctx = np.sin(np.arange(2 * 64, dtype=np.float32) / 4).reshape(2, 64)
    pred = np.asarray(model(ctx, num_output_patches=2))
    assert pred.shape == (2, 9, 32) and np.isfinite(pred).all()


def test_resume_gives_the_same_run(tiny_run, data_dir, tmp_path):
    from jaxts.checkpoint import load_model
    from train.chronos2 import run

    full, summary = tiny_run
    out = tmp_path / "resumed"
    first = run(_cfg(out, data_dir), max_steps=2)  # "crash" after step 2 (mid-epoch)
    assert not first["finished"] and first["global_step"] == 2
    second = run(_cfg(out, data_dir))
    assert second["finished"] and second["global_step"] == 6
    assert second["val_loss"] == summary["val_loss"]
    assert second["val_loss_alone"] == summary["val_loss_alone"]

    def rows(run_dir):  # step, epoch, loss and lr of every metrics.csv row (not the seconds)
        return [r.split(",")[:4] for r in (run_dir / "metrics.csv").read_text().splitlines()]

    assert rows(out) == rows(full)
    for a, b in zip(_params(load_model(full / "best")), _params(load_model(out / "best")),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="chronos2.max_group_size"):
        run(_cfg(out, data_dir, "chronos2.max_group_size=3"))


def test_init_from_must_fit_the_model_section(tiny_run, data_dir, tmp_path):
    """--init-from gives the model section's model its weights (settings that change no shape,
    such as dropout, are the section's); other shapes are refused with the fields that differ;
    without a section the checkpoint's own config is trained."""
    from jaxts.checkpoint import load_model
    from train.chronos2 import build_model, run
    from train.config import updated

    init = str(tiny_run[0] / "best")
    cfg = _cfg(tmp_path, data_dir, f"chronos2.init_from={init}", "model.core.dropout_rate=0.2")
    model, got = build_model(cfg)
    assert got == cfg and model.config.core.dropout_rate == 0.2
    for a, b in zip(_params(model), _params(load_model(init)), strict=True):
        np.testing.assert_array_equal(a, b)
    model, got = build_model(updated(cfg, {"model": None}))
    assert got.model.core.dropout_rate == 0.1 and model.config == load_model(init).config
    out = tmp_path / "wide"
    with pytest.raises(ConfigError, match=r"does not fit.*core.d_ff 32 \(model section 64\)"):
        run(_cfg(out, data_dir, f"chronos2.init_from={init}", "model.core.d_ff=64"))
    assert not out.exists()  # nothing written for a refused start


def test_init_from_an_upstream_directory(data_dir, tmp_path):
    """An HF Chronos-2 directory (upstream save_pretrained) fine-tunes with its own config."""
    pytest.importorskip("torch")
    from bridges.chronos2 import from_upstream
    from bridges.reference.chronos2_hf import tiny_chronos2
    from train.chronos2 import build_model
    from train.config import updated

    tiny_chronos2(tmp_path / "hf")
    cfg = updated(
        _cfg(tmp_path, data_dir), {"model": None, "chronos2.init_from": str(tmp_path / "hf")}
    )
    model, got = build_model(cfg)
    assert got.model.name == "chronos2" and got.model.chronos.context_length == 256
    for a, b in zip(_params(model), _params(from_upstream(tmp_path / "hf")), strict=True):
        np.testing.assert_array_equal(a, b)


def test_config_errors(data_dir, tmp_path, capsys):
    from train.chronos2 import main, run

    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match="num_output_patches 3 exceeds"):
        run(_cfg(out, data_dir, "chronos2.num_output_patches=3"))
    with pytest.raises(ConfigError, match="chronos2.task_weights.univariat"):
        _cfg(out, data_dir, "chronos2.task_weights.univariat=1")
    with pytest.raises(ConfigError, match="belongs to python -m train.chronos_t5"):
        run(_cfg(out, data_dir, "chronos_t5.steps_per_epoch=3"))
    assert not out.exists()  # nothing written for a refused start
    assert main(["--config", str(TINY), "--out", str(out), "--set", "model.name=timer_xl"]) == 2
    import yaml

    raw = yaml.safe_load(TINY.read_text())
    del raw["model"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    no_model = ["--config", str(tmp_path / "c.yaml"), "--out", str(out)]
    assert main(no_model) == 2  # neither a model section nor --init-from
    assert "needs a model section" in capsys.readouterr().err
    assert main([*no_model, "--init-from", str(tmp_path / "missing")]) == 2
    assert "missing: not a model directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", str(TINY), "--max-steps", "-1"])


def test_cpu_config_is_the_documented_model():
    from train.config import model_config

    cfg = load_config(REPO / "configs" / "chronos2_cpu.yaml")
    m = model_config(cfg)
    assert (m.core.d_model, m.core.num_layers, m.chronos.context_length) == (128, 4, 512)
    assert len(m.chronos.quantiles) == 21 and m.chronos.use_reg_token and m.chronos.use_arcsinh
    assert cfg.run.out_dir == "runs/chronos2_cpu" and cfg.chronos2.val_tasks > 0


_DP_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from flax import nnx
    from jaxts.checkpoint import load_model
    from train.chronos2 import run
    from train.config import load_config
    assert jax.device_count() == 4
    params = {{}}
    for n in (1, 4):
        sets = [f"run.out_dir={out}/d{{n}}", "optim.train_epochs=1", "chronos2.val_tasks=4",
                "data.data_dir={data}", "chronos2.datasets=[{data}/syn.csv, m4_hourly]"]
        summary = run(load_config({tiny!r}, sets), devices=jax.devices()[:n])
        m = load_model(f"{out}/d{{n}}/best")
        params[n] = [np.asarray(x) for x in jax.tree.leaves(nnx.state(m, nnx.Param))]
        print("VAL", n, summary["val_loss"])
    diff = max(float(np.abs(a - b).max()) for a, b in zip(params[1], params[4]))
    print("MAXDIFF", diff)
    assert diff < 1e-5, diff
    """
)


def test_data_parallel_matches_single_device(tmp_path, data_dir):
    run_on_devices(_DP_SCRIPT.format(tiny=str(TINY), out=str(tmp_path), data=str(data_dir)),
                   "MAXDIFF")  # fmt: skip


def test_synthetic_lead_lag_source():
    """The synthetic source is deterministic, its train and val members differ, and a variate
    with lag 0 leads its lagged siblings (their series are its own, delayed, up to sign and
    scale), which is what makes reading the group pay off."""
    from train.chronos2_synthetic import SYNTHETIC, lead_lag_members

    a = lead_lag_members(3, 400, 6, seed=0)
    assert [m.shape for m in a] == [(400, 6)] * 3 and a[0].dtype == np.float32
    np.testing.assert_array_equal(a[1], lead_lag_members(3, 400, 6, seed=0)[1])
    assert not np.allclose(a[0], lead_lag_members(3, 400, 6, seed=1)[0])
    best = []  # per member, the best |corr| between a column and a lagged other column
    for m in a:
        z = (m - m.mean(0)) / m.std(0)
        best.append(max(abs(np.corrcoef(z[lag:, i], z[: len(z) - lag, j])[0, 1])
                        for i in range(6) for j in range(6) if i != j
                        for lag in range(0, 49)))  # fmt: skip
    assert min(best) > 0.9
    train = load_sources([SYNTHETIC], "train", 64, 16, 8)
    val = load_sources([SYNTHETIC], "val", 64, 16, 8)
    assert train[0].name == SYNTHETIC and len(train[0].members) > len(val[0].members)
    assert val[0].first_start[0] == 64  # val forecasts start after a full context


def test_source_weights_shift_the_draws():
    """A weight of 9 on one of two multivariate sources makes it serve ~90% of the group
    tasks; no weights keep the unweighted run's draws."""
    srcs = [Source("a", (np.ones((300, 4), np.float32),), (8,)),
            Source("b", (2 * np.ones((300, 4), np.float32),), (8,))]  # fmt: skip
    kw = dict(size=400, seed=0, context_length=32, horizon=8, weights={"multivariate": 1.0},
              max_group_size=4, min_past=8)  # fmt: skip
    heavy = TaskSampler(srcs, source_weights={"b": 9.0}, **kw)
    share_b = np.mean([heavy.task(i).context[0, -1] == 2.0 for i in range(400)])
    assert 0.84 < share_b < 0.96
    plain, ones = TaskSampler(srcs, **kw), TaskSampler(srcs, source_weights={"a": 1.0}, **kw)
    for i in range(20):
        np.testing.assert_array_equal(plain.task(i).context, ones.task(i).context)


def test_source_weights_must_name_a_data_set(tmp_path):
    from train.chronos2 import samplers
    from train.config import model_config

    cfg = load_config(TINY, ["chronos2.source_weights.ETTh9=2"])
    with pytest.raises(ConfigError, match=r"source_weights names \['ETTh9'\]"):
        samplers(cfg, model_config(cfg).chronos, 16, 1)
