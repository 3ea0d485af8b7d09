"""Training / evaluation entry points: config, schedules, resumability, data parallelism."""

from __future__ import annotations

import json
import math
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from tests.helpers import REPO, TINY_MODEL, run_on_devices, synthetic_rows, write_csv
from train.config import ConfigError, config_from_dict, load_config
from train.trainer import Trainer, TrainerConfig, learning_rate_at, masked_mse


def _model(seed: int = 0):
    from jaxts.models.timer_xl import TimerXL, TimerXLConfig

    return TimerXL(TimerXLConfig(**TINY_MODEL), rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def _loss(model, batch, mask):
    from train.target import next_patch_loss

    return next_patch_loss(model, batch, mask)


def _windows(n_rows: int):
    from jaxts.data import NextPatchWindows

    return NextPatchWindows(synthetic_rows(n_rows), 48, 16, 16)


# ---- config ----------------------------------------------------------------------------------


def test_unknown_keys_rejected_everywhere():
    with pytest.raises(ConfigError) as e:
        config_from_dict(
            {
                "model": {**TINY_MODEL, "d_modle": 8},
                "optim": {"learing_rate": 1e-3, "batch_size": 8},
                "run": {"ckpt_every": 3},
                "extra": {},
            }
        )
    msg = str(e.value)
    for key in ("d_modle", "learing_rate", "ckpt_every", "extra"):
        assert key in msg  # every offender is listed, not only the first
    with pytest.raises(ConfigError, match="model.name"):
        config_from_dict({"model": {"name": "timer_xxl"}})
    with pytest.raises(ConfigError, match="batch_size"):
        config_from_dict({"optim": {"batch_size": "big"}})


def test_set_overrides_are_yaml_typed(tmp_path):
    path = tmp_path / "c.yaml"
    # PyYAML reads `1e-4` as a string; the loader must still give a float.
    path.write_text("model: {d_model: 32, n_heads: 2}\noptim: {learning_rate: 1e-4}\n")
    cfg = load_config(path)
    assert cfg.optim.learning_rate == 1e-4 and cfg.model["d_model"] == 32
    cfg = load_config(
        path,
        [
            "optim.learning_rate=3e-4",
            "optim.batch_size=64",
            "model.use_norm=false",
            "model.activation=gelu",
            "run.horizons=[96, 192]",
            "data.data_dir=null",
            "optim.max_steps_per_epoch=5",
        ],
    )
    assert cfg.optim.learning_rate == pytest.approx(3e-4)
    assert isinstance(cfg.optim.batch_size, int) and cfg.optim.batch_size == 64
    assert cfg.model["use_norm"] is False and cfg.model["activation"] == "gelu"
    assert cfg.run.horizons == (96, 192)
    assert cfg.data.data_dir is None and cfg.optim.max_steps_per_epoch == 5
    with pytest.raises(ConfigError, match="optim.batch_size"):
        load_config(path, ["optim.batch_size=abc"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["batch_size=3"])
    with pytest.raises(ConfigError, match="nope"):
        load_config(path, ["optim.nope=1"])


def test_shipped_configs_load():
    full = load_config(REPO / "configs" / "timer_xl_etth1.yaml")
    assert full.model["d_model"] == 1024 and full.data.seq_len == 672
    assert full.optim.lradj == "cosine" and full.optim.valid_last and full.optim.seed == 2021
    cpu = load_config(REPO / "configs" / "timer_xl_etth1_cpu.yaml")
    assert cpu.data.seq_len == 672 and cpu.model["input_token_len"] == 96


# ---- schedules and loss ----------------------------------------------------------------------


def test_lr_schedules_match_openltm():
    lr = 1e-4
    assert [learning_rate_at(e, lr, "type1") for e in range(5)] == pytest.approx(
        [lr, lr, lr / 2, lr / 4, lr / 8]
    )
    for e in range(12):
        want = 1e-8 + (lr - 1e-8) * (1 + math.cos(math.pi * e / 10)) / 2
        assert learning_rate_at(e, lr, "cosine", 10) == pytest.approx(want, rel=1e-12)
    torch = pytest.importorskip("torch")
    # Against torch's own scheduler, stepped once per epoch as OpenLTM does.
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=1e-8)
    for e in range(10):
        assert learning_rate_at(e, lr, "cosine", 10) == pytest.approx(
            opt.param_groups[0]["lr"], rel=1e-9
        )
        opt.step()
        sched.step()


def test_masked_mse_ignores_padding():
    rng = np.random.default_rng(0)
    p, t = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    t[3:] = np.nan  # padding rows may hold anything
    mask = np.arange(5) < 3
    got = float(masked_mse(p, t, mask))
    assert got == pytest.approx(float(np.mean((p[:3] - t[:3]) ** 2)), rel=1e-6)


# ---- training runs -----------------------------------------------------------------------------


def test_short_run_end_to_end(tmp_path):
    """train.target: metrics JSONL, a loadable best model, test metrics and a plot."""
    from eval.forecast import evaluate_rolling
    from eval.forecast import main as eval_main
    from jaxts.checkpoint import load_model
    from train.target import main

    csv = write_csv(tmp_path / "toy.csv")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        json.dumps(
            {
                "model": TINY_MODEL,
                "data": {"dataset": str(csv), "seq_len": 48},
                "optim": {
                    "learning_rate": 1e-3,
                    "batch_size": 16,
                    "train_epochs": 2,
                    "lradj": "type1",
                    "valid_last": True,
                    "max_steps_per_epoch": 4,
                },
                "run": {
                    "ckpt_every_steps": 3,
                    "log_every_steps": 2,
                    "horizons": [16, 40],
                    "progress": False,
                },
            }
        )  # fmt: skip
    )
    out = tmp_path / "run"
    assert main(["--config", str(cfg), "--out", str(out), "--set", "optim.seed=7"]) == 0
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1] and epochs[-1]["step"] == 8
    assert all(np.isfinite(r["val_loss"]) for r in epochs)
    assert {"step", "epoch", "loss", "lr", "val_loss", "seconds"} <= set(lines[0])
    best = load_model(out / "best")
    assert best.config.d_model == 16
    metrics = json.loads((out / "metrics_test.json").read_text())
    assert set(metrics) == {"16", "40", "avg"} and metrics["16"]["windows"] == 160 - 16 + 1
    assert (out / "forecast_test.png").stat().st_size > 0
    # The same numbers from the standalone evaluator, and batching/padding does not matter.
    again = evaluate_rolling(best, str(csv), 48, [16], batch_size=7, progress=False)
    assert again["16"]["mse"] == pytest.approx(metrics["16"]["mse"], rel=1e-5)
    ev = tmp_path / "ev"
    argv = ["--ckpt", str(out / "best"), "--horizons", "16", "--out", str(ev), "--no-progress"]
    assert eval_main([*argv, "--no-plot"]) == 0  # dataset and seq_len from the run's config
    got = json.loads((ev / "metrics_test.json").read_text())
    assert got["16"]["mse"] == pytest.approx(metrics["16"]["mse"], rel=1e-5)
    # A rerun with other settings must not resume into this run's checkpoints.
    assert main(["--config", str(cfg), "--out", str(out), "--set", "optim.seed=8"]) == 2


def _trainer(out, callback=None, devices=None, **kw):
    cfg = TrainerConfig(
        out_dir=str(out), learning_rate=1e-3, batch_size=8, train_epochs=2, patience=3,
        lradj="type1", seed=3, ckpt_every_steps=2, log_every_steps=2, progress=False, **kw,
    )  # fmt: skip
    saved = []
    t = Trainer(
        _model(),
        cfg,
        _loss,
        _windows(100),  # 37 windows: 5 steps per epoch, the last one a partial batch of 5
        _windows(80),
        devices=devices,
        export_best=lambda m, d: (d.mkdir(parents=True), saved.append(d)),
        callback=callback,
    )
    return t, saved


def _state_leaves(t: Trainer):
    from train.trainer import _keys_to_data

    tree = (t.params, _keys_to_data(t.rest), t.opt_state)
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_resume_reaches_the_same_result(tmp_path):
    ref, _ = _trainer(tmp_path / "a")
    res_a = ref.fit()
    assert res_a.global_step == 10 and res_a.finished

    class Crash(Exception):
        pass

    def crash_at_7(info):
        if info["step"] == 7:
            raise Crash  # after the step-6 checkpoint, mid-way through epoch 2

    b, _ = _trainer(tmp_path / "b", callback=crash_at_7)
    with pytest.raises(Crash):
        b.fit()
    b, _ = _trainer(tmp_path / "b")  # a fresh process would rebuild everything like this
    res_b = b.fit()

    c, _ = _trainer(tmp_path / "c")
    assert not c.fit(max_steps=3).finished  # stop off the checkpoint grid
    c, _ = _trainer(tmp_path / "c")
    res_c = c.fit()

    want = _state_leaves(ref)
    for t, res in ((b, res_b), (c, res_c)):
        assert res.global_step == res_a.global_step and res.best_val == res_a.best_val
        for x, y in zip(want, _state_leaves(t), strict=True):
            np.testing.assert_array_equal(x, y)
    # The resumed run logged the same epochs as the uninterrupted one.
    va = [json.loads(s) for s in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    vb = [json.loads(s) for s in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    ep = lambda rows: [(r["epoch"], r["val_loss"], r["lr"]) for r in rows if r["event"] == "epoch"]
    assert ep(va) == ep(vb)


def test_validation_is_openltm_weighted_mean(tmp_path):
    from train.target import LastPatch

    t, _ = _trainer(tmp_path)
    val = _windows(80)  # 17 windows: batches of 8, 8, 1
    t.val_data = LastPatch(val)
    model = t.sync_model()
    model.eval()
    x, y = val.last_patch(np.arange(len(val)))
    want = float(np.mean((np.asarray(model(x))[:, -16:] - y) ** 2))
    assert t.validate() == pytest.approx(want, rel=1e-5)


def test_batch_size_must_divide_devices(tmp_path):
    with pytest.raises(ValueError, match="divisible"):
        _trainer(tmp_path, devices=jax.devices() * 3)  # 3 "devices", batch 8


_DP_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np, sys
    sys.path.insert(0, {tests!r})
    import test_train as tt
    assert jax.device_count() == 4, jax.devices()
    losses = {{}}
    for n in (4, 1):
        t, _ = tt._trainer({out!r} + str(n), devices=jax.devices()[:n])
        order = np.arange(32)
        out = []
        for s in range(3):
            batch, mask = t._shard(t.train_data.batch(order[s * 8:(s + 1) * 8]), np.ones(8, bool))
            if n == 4:
                assert len(batch[0].sharding.device_set) == 4
                assert batch[0].addressable_shards[0].data.shape[0] == 2  # 8 rows / 4 devices
            t.params, t.rest, t.opt_state, loss = t._train_step(
                t.params, t.rest, t.opt_state, batch, mask, None)
            out.append(float(loss))
        losses[n] = out
        if n == 4:
            assert len(t.params["head"]["kernel"].value.sharding.device_set) == 4  # replicated
    print("LOSSES", losses)
    np.testing.assert_allclose(losses[4], losses[1], rtol=1e-5, atol=1e-6)
    """
)


def test_data_parallel_matches_single_device(tmp_path):
    run_on_devices(_DP_SCRIPT.format(tests=str(REPO / "tests"), out=str(tmp_path / "dp")), "LOSSES")
