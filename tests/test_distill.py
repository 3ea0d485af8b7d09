"""train.distill: STRIDE losses, teacher randomness, calibration, config checks, resume, mesh."""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxts.checkpoint import load_model, save_model
from jaxts.models.timer_xl import TimerXL, TimerXLConfig
from tests.helpers import REPO, TINY_MODEL, run_on_devices, write_csv
from train import calibration as C
from train import distill as D
from train import losses as L
from train.config import ConfigError, config_from_dict, load_config
from train.trainer import _keys_to_data

SCALES = dict(scale_d_model=0.5, scale_n_heads=0.5, scale_d_ff=0.5, scale_e_layers=0.5)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A toy CSV and a (randomly initialised) tiny teacher checkpoint."""
    root = tmp_path_factory.mktemp("distill")
    csv = write_csv(root / "toy.csv", n=600)  # 70/10/20: 420 train rows, 357 train windows
    teacher = TimerXL(TimerXLConfig(**TINY_MODEL), rngs=nnx.Rngs(params=5, dropout=6))
    save_model(teacher, root / "teacher")
    return root, csv, root / "teacher"


def _raw(assets, out, **distill):
    root, csv, teacher = assets
    return {
        "model": dict(TINY_MODEL),
        "data": {"dataset": str(csv), "seq_len": 48},
        "optim": {"learning_rate": 3e-3, "batch_size": 8, "train_epochs": 2, "lradj": "type1",
                  "valid_last": True, "max_steps_per_epoch": 5, "seed": 3},
        "run": {"out_dir": str(out), "ckpt_every_steps": 2, "log_every_steps": 2,
                "horizons": [16], "progress": False, "eval_batch_size": 32},
        "distill": {"teacher": str(teacher), **SCALES, "stochastic": True, "var_reg": 0.01,
                    "teacher_noise": 0.05, "teacher_dropout": 0.0, **distill},
    }  # fmt: skip


def _cfg(assets, out, **distill):
    return config_from_dict(_raw(assets, out, **distill))


def _state(setup):
    t = setup.trainer
    tree = (t.params, _keys_to_data(t.rest), t.opt_state)
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


# ---- losses ------------------------------------------------------------------------------------


def test_losses_match_numpy():
    rng = np.random.default_rng(0)
    mean, t = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    logvar = rng.uniform(-8, 2, (5, 6, 3)).astype(np.float32)
    mask = np.arange(5) < 3
    for a in (mean, t, logvar):
        a[3:] = np.nan  # padding rows may hold anything
    m, lv, tt = mean[:3].astype(np.float64), logvar[:3].astype(np.float64), t[:3]
    nll = np.mean(0.5 * (lv + (m - tt) ** 2 / np.exp(lv)))
    pen = np.mean(np.maximum(-lv - 5.0, 0.0))
    assert pen > 0  # the draw reaches below logvar -5
    got = float(L.masked_gaussian_nll(mean, logvar, t, mask))
    assert got == pytest.approx(nll, rel=1e-5)
    assert float(L.variance_penalty(logvar, mask)) == pytest.approx(pen, rel=1e-5)
    got = float(L.distill_objective((mean, logvar), t, mask, var_reg=0.3))
    assert got == pytest.approx(nll + 0.3 * pen, rel=1e-5)
    assert float(L.distill_objective((mean, logvar), t, mask)) == pytest.approx(nll, rel=1e-5)
    got = float(L.distill_objective(mean, t, mask))  # deterministic draft: MSE
    assert got == pytest.approx(np.mean((m - tt) ** 2), rel=1e-5)

    # train.timer_xl's stochastic loss is the same NLL against the data.
    class Fake:
        def __call__(self, x):
            return jnp.asarray(mean), jnp.asarray(logvar)

    y = t[:, -2:]
    got = float(L.next_patch_nll(Fake(), (None, y), mask))
    want = np.mean(0.5 * (lv[:, -2:] + (m[:, -2:] - tt[:, -2:]) ** 2 / np.exp(lv[:, -2:])))
    assert got == pytest.approx(want, rel=1e-5)


def test_teacher_noise_and_dropout_are_explicit_and_seeded():
    cfg = TimerXLConfig(**TINY_MODEL)
    teacher = TimerXL(cfg, rngs=nnx.Rngs(params=1, dropout=2))
    teacher.train()
    g_train, _, _ = nnx.split(teacher, nnx.Param, ...)
    teacher.eval()
    g_eval, params, rest = nnx.split(teacher, nnx.Param, ...)
    state = (params, rest)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 48, 3)), jnp.float32)
    jitted = jax.jit(C.teacher_forecast, static_argnums=(0, 4))

    def f(g, key, noise):
        return np.asarray(jitted(g, state, x, key, noise))

    clean = f(g_eval, None, 0.0)  # no key: the teacher as given (eval mode), no noise
    k1, k2 = jax.random.key(1), jax.random.key(2)
    noisy = f(g_eval, k1, 0.05)
    np.testing.assert_array_equal(noisy, f(g_eval, k1, 0.05))  # same key: same targets
    assert not np.array_equal(noisy, f(g_eval, k2, 0.05))
    assert np.std(noisy - clean) == pytest.approx(0.05, rel=0.05)
    np.testing.assert_allclose(f(g_eval, k1, 0.0), clean, atol=1e-6)  # eval, no noise
    dropped = f(g_train, k1, 0.0)  # teacher dropout: train mode, streams re-keyed from k1
    assert not np.allclose(dropped, clean, atol=1e-3)
    np.testing.assert_array_equal(dropped, f(g_train, k1, 0.0))
    assert not np.array_equal(dropped, f(g_train, k2, 0.0))


def test_calibration_of_gaussian_samples():
    rng = np.random.default_rng(0)
    shape = (64, 50, 7)
    mean = rng.standard_normal(shape)
    logvar = rng.uniform(-3, 1, shape)
    teacher = mean + np.exp(0.5 * logvar) * rng.standard_normal(shape)
    y = teacher + 0.1
    mask = np.arange(64) < 60
    teacher[60:] = np.nan
    args = [jnp.asarray(a, jnp.float32) for a in (mean, logvar, teacher)]
    sums = jax.device_get(C.calibration_sums(*args, jnp.asarray(mask), jnp.asarray(y, jnp.float32)))
    got = C.calibration_metrics({k: float(v) for k, v in sums.items()})
    dvt = got["draft_vs_teacher"]
    assert dvt["cover_1sigma"] == pytest.approx(0.6827, abs=0.01)
    assert dvt["cover_2sigma"] == pytest.approx(0.9545, abs=0.005)
    m, lv, t = mean[:60], logvar[:60], teacher[:60]
    want_nll = np.mean(0.5 * (math.log(2 * math.pi) + lv + (t - m) ** 2 / np.exp(lv)))
    assert dvt["nll"] == pytest.approx(want_nll, rel=1e-4)
    assert dvt["mse"] == pytest.approx(np.mean((m - t) ** 2), rel=1e-4)
    assert dvt["mean_sigma"] == pytest.approx(np.mean(np.exp(0.5 * lv)), rel=1e-4)
    assert got["teacher_vs_data"]["mse"] == pytest.approx(0.01, rel=1e-3)
    # A deterministic draft: errors only.
    sums = C.calibration_sums(args[0], None, args[2], jnp.asarray(mask))
    assert set(sums) == {"n", "sq", "abs"}


# ---- config ------------------------------------------------------------------------------------


def test_config_errors(assets, tmp_path):
    from train.target import run as target_run

    raw = _raw(assets, tmp_path / "o")
    raw["distill"]["teacher_nois"] = 0.1
    with pytest.raises(ConfigError, match="teacher_nois"):
        config_from_dict(raw)
    with pytest.raises(ConfigError, match="teacher_dropout"):
        _cfg(assets, tmp_path, teacher_dropout=1.5)
    with pytest.raises(ConfigError, match="not found"):
        D.build(_cfg(assets, tmp_path, teacher=str(tmp_path / "missing")), verbose=False)
    with pytest.raises(ConfigError, match="teacher is not set"):
        D.build(_cfg(assets, tmp_path, teacher=None), verbose=False)
    bad = _raw(assets, tmp_path)
    bad["model"]["d_model"] = 32
    with pytest.raises(ConfigError, match="d_model: 16"):
        D.build(config_from_dict(bad), verbose=False)
    # init_from: a checkpoint of another architecture is refused with the differences.
    other = tmp_path / "other"
    save_model(TimerXL(TimerXLConfig(**TINY_MODEL), rngs=nnx.Rngs(0)), other)
    with pytest.raises(ConfigError, match="init_from.*stochastic: False"):
        D.build(_cfg(assets, tmp_path, init_from=str(other)), verbose=False)
    # The distill section belongs to train.distill only; the CLI reports errors with code 2.
    with pytest.raises(ConfigError, match="train.distill"):
        target_run(_cfg(assets, tmp_path))
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(_raw(assets, tmp_path / "cli")))
    argv = ["--config", str(cfg_path), "--teacher", str(tmp_path / "nope")]
    assert D.main(argv) == 2
    assert not (tmp_path / "cli").exists()  # nothing written for a failed start


def test_shipped_distill_configs_load():
    """The shipped distillation configs have no model section: the teacher's checkpoint gives
    it. Their drafts are STRIDE's 0.25x of the teachers the target configs train."""
    from train.config import model_config

    full = load_config(REPO / "configs" / "distill_etth1.yaml")
    assert full.model is None and full.distill.teacher == "runs/etth1_full/best"
    teacher = model_config(load_config(REPO / "configs" / "timer_xl_etth1.yaml"))
    dcfg = D.student_config(teacher, full.distill)
    assert (dcfg.d_model, dcfg.n_heads, dcfg.d_ff, dcfg.e_layers) == (256, 2, 512, 1)
    assert dcfg.stochastic and full.optim.learning_rate == 5e-5 and full.optim.batch_size == 64
    assert full.distill.var_reg == 0.01 and full.distill.teacher_noise == 0.05
    cpu = load_config(REPO / "configs" / "distill_etth1_cpu.yaml")
    assert cpu.model is None and cpu.distill.teacher == "runs/timer_xl_etth1_cpu/best"


def test_model_section_comes_from_a_jaxts_teacher(assets, tmp_path):
    """Without a model section the teacher's checkpoint gives it (recorded in config.yaml, and
    a rerun resumes); an OpenLTM .pth teacher, which does not record use_norm etc., needs it."""
    raw = _raw(assets, tmp_path / "run")
    del raw["model"]
    setup = D.build(config_from_dict(raw), verbose=False)
    assert setup.teacher_config == TimerXLConfig(**TINY_MODEL)
    assert setup.cfg.model.name == "timer_xl" and setup.cfg.model.d_model == 16
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(raw))
    argv = ["--config", str(path), "--set", "optim.train_epochs=1", "optim.max_steps_per_epoch=2"]
    assert D.main(argv) == 0
    recorded = load_config(tmp_path / "run" / "config.yaml")
    assert recorded.model == setup.cfg.model  # the resolved teacher config
    assert D.main(argv) == 0  # the same command again resumes (a finished run: no step)
    pth = tmp_path / "teacher.pth"
    pth.write_bytes(b"not read")
    with pytest.raises(ConfigError, match="does not record"):
        D.build(config_from_dict(_raw(assets, tmp_path, teacher=str(pth)) | {"model": None}))


# ---- training ----------------------------------------------------------------------------------


def test_end_to_end_student_improves_teacher_frozen(assets, tmp_path):
    """The CLI: outputs, calibration per epoch, a loadable draft; the draft gets closer to the
    teacher while the teacher's weights stay as they were."""
    _, _, teacher_dir = assets
    out = tmp_path / "run"
    cfg = _cfg(assets, out, stochastic=True)
    setup = D.build(cfg, verbose=False)
    before = setup.calibrate()["draft_vs_teacher"]
    t_before = [np.array(x) for x in jax.tree.leaves(_keys_to_data(setup.trainer.aux))]
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(_raw(assets, out)))
    assert D.main(["--config", str(cfg_path), "--set", "run.ckpt_every_steps=100"]) == 0
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["event"] == "epoch"]
    assert len(epochs) == 2
    for r in epochs:
        assert 0 <= r["cover_1sigma"] <= r["cover_2sigma"] <= 1
        assert np.isfinite([r["val_loss"], r["vs_teacher_nll"], r["vs_teacher_mse"]]).all()
    best = load_model(out / "best")
    assert best.config == setup.draft_config and best.config.stochastic
    val = json.loads((out / "metrics_val.json").read_text())
    after = val["draft_vs_teacher"]
    assert after["nll"] < before["nll"] and after["mse"] < before["mse"]
    assert len(val["per_epoch"]) == 2 and val["tokens"] == "last"
    test = json.loads((out / "metrics_test.json").read_text())
    assert set(test) == {"16", "avg"} and np.isfinite(test["avg"]["mse"])
    # The teacher on disk and the teacher state the trainer holds are unchanged.
    setup2 = D.build(cfg, verbose=False)  # rebuilt after the run (re-reads teacher_dir)
    t_after = jax.tree.leaves(_keys_to_data(setup2.trainer.aux))
    for a, b in zip(t_before, t_after, strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    # A rerun into the same folder with other distill settings is refused.
    assert D.main(["--config", str(cfg_path), "--set", "distill.teacher_noise=0.2"]) == 2


def test_deterministic_draft_and_teacher_dropout_setup(assets, tmp_path):
    """A deterministic draft's loss is the MSE to the teacher and its calibration reports errors
    only; teacher_dropout switches the teacher to train mode with that dropout rate."""
    setup = D.build(_cfg(assets, tmp_path, stochastic=False, teacher_noise=0.0), verbose=False)
    assert not setup.draft_config.stochastic
    tr = setup.trainer
    student = tr.model  # the initial student (no step taken)
    student.eval()  # no draft dropout, to compare with a direct computation
    x = np.asarray(tr.train_data.batch(np.arange(4))[0])
    mask = np.array([True, True, True, False])
    setup.teacher.eval()

    @nnx.jit
    def both(student, teacher, x, mask, aux):  # one compilation instead of eager op dispatch
        return tr.loss_fn(student, (x,), mask, aux), student.draft(x), teacher(x)

    got, pred, target = both(student, setup.teacher, x, mask, tr.aux)
    want = np.mean((np.asarray(pred) - np.asarray(target))[:3] ** 2)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert set(setup.calibrate()["draft_vs_teacher"]) == {"mse", "mae"}
    assert tr.loss_fn.teacher_graphdef == setup.teacher_eval[0]
    drop = D.build(_cfg(assets, tmp_path, teacher_dropout=0.3), verbose=False)
    assert drop.trainer.loss_fn.teacher_graphdef != drop.teacher_eval[0]  # train mode
    assert drop.teacher.config.dropout == 0.3


def test_resume_reaches_the_same_result(assets, tmp_path):
    ref = D.build(_cfg(assets, tmp_path / "a"), verbose=False)
    teacher0 = [np.array(x) for x in jax.tree.leaves(jax.device_get(ref.trainer.aux[0]))]
    res_a = ref.trainer.fit()
    assert res_a.global_step == 10
    # The frozen teacher's state in the trainer is untouched by training.
    for a, b in zip(teacher0, jax.tree.leaves(jax.device_get(ref.trainer.aux[0])), strict=True):
        np.testing.assert_array_equal(a, b)

    class Crash(Exception):
        pass

    def crash_at_7(info):
        if info["step"] == 7:
            raise Crash

    b = D.build(_cfg(assets, tmp_path / "b"), callback=crash_at_7, verbose=False)
    with pytest.raises(Crash):
        b.trainer.fit()
    b = D.build(_cfg(assets, tmp_path / "b"), verbose=False)
    res_b = b.trainer.fit()
    assert res_b.global_step == 10 and res_b.best_val == res_a.best_val
    for x, y in zip(_state(ref), _state(b), strict=True):
        np.testing.assert_array_equal(x, y)
    rows = lambda p: [json.loads(s) for s in (p / "metrics.jsonl").read_text().splitlines()]
    ep = lambda rs: [(r["epoch"], r["val_loss"], r["vs_teacher_nll"]) for r in rs
                     if r["event"] == "epoch"]  # fmt: skip
    assert ep(rows(tmp_path / "a")) == ep(rows(tmp_path / "b"))


def test_target_trains_a_stochastic_draft_used_as_init(assets, tmp_path):
    """train.target with model.stochastic (NLL against the data) makes a pretrained draft that
    train.distill accepts with --init-from."""
    from train.target import main as target_main

    root, csv, teacher_dir = assets
    raw = _raw(assets, tmp_path / "d")
    dcfg = D.student_config(TimerXLConfig(**TINY_MODEL), config_from_dict(raw).distill)
    pre = {k: v for k, v in raw.items() if k != "distill"}
    pre["model"] = dcfg.to_dict()
    pre["optim"] = {**pre["optim"], "train_epochs": 1}
    path = tmp_path / "pre.yaml"
    path.write_text(json.dumps(pre))
    assert target_main(["--config", str(path), "--out", str(tmp_path / "pre")]) == 0
    lines = [json.loads(s) for s in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in lines)
    ep = [r for r in lines if r["event"] == "epoch"]
    assert ep and ep[-1]["val_loss"] > 0  # validation is the mean's MSE (non-negative)
    pretrained = load_model(tmp_path / "pre" / "best")
    assert pretrained.config == dcfg
    metrics = json.loads((tmp_path / "pre" / "metrics_test.json").read_text())
    assert np.isfinite(metrics["avg"]["mse"])
    setup = D.build(_cfg(assets, tmp_path / "d", init_from=str(tmp_path / "pre" / "best")),
                    verbose=False)  # fmt: skip
    got = nnx.state(setup.trainer.sync_model().draft, nnx.Param)
    want = nnx.state(pretrained, nnx.Param)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_openltm_teacher_through_the_bridge(assets, tmp_path):
    pytest.importorskip("torch")
    from bridges.timer_xl import save_openltm

    _, _, teacher_dir = assets
    pth = save_openltm(load_model(teacher_dir), tmp_path / "checkpoint.pth")
    cfg = TimerXLConfig(**TINY_MODEL)
    got = D.load_teacher(pth, cfg)
    x = np.random.default_rng(0).standard_normal((2, 48, 3)).astype(np.float32)
    ref = load_model(teacher_dir)
    ref.eval(), got.eval()
    np.testing.assert_allclose(np.asarray(got(x)), np.asarray(ref(x)), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="not loadable"):
        D.load_teacher(pth, dataclasses.replace(cfg, d_ff=64))


_DP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {repo!r})
    from train import distill as D
    from train.config import config_from_dict
    assert jax.device_count() == 4, jax.devices()
    raw = json.loads({raw!r})
    losses = {{}}
    for n in (4, 1):
        setup = D.build(config_from_dict(raw), devices=jax.devices()[:n], verbose=False)
        t = setup.trainer
        out = []
        for s in range(2):
            idx = np.arange(s * 8, (s + 1) * 8)
            batch, mask = t._shard(t.train_data.batch(idx), np.ones(8, bool))
            if n == 4:
                assert batch[0].addressable_shards[0].data.shape[0] == 2
            t.params, t.rest, t.opt_state, loss = t._train_step(
                t.params, t.rest, t.opt_state, batch, mask, t.aux)
            out.append(float(loss))
        losses[n] = out
    print("LOSSES", losses)
    np.testing.assert_allclose(losses[4], losses[1], rtol=1e-5, atol=1e-6)
    """
)


def test_data_parallel_matches_single_device(assets, tmp_path):
    raw = json.dumps(_raw(assets, tmp_path / "dp"))  # teacher noise + draft dropout
    run_on_devices(_DP_SCRIPT.format(repo=str(REPO), raw=raw), "LOSSES")
