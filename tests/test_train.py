"""The Timer-XL trainer and the generic Trainer: schedules and the optimizer's exact bits,
losses, resumability (also past a damaged latest checkpoint), the CLI, data parallelism
(config validation: tests/test_config.py)."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from tests.helpers import REPO, TINY_MODEL, run_on_devices, synthetic_rows, write_csv
from train.checkpoints import CheckpointError
from train.config import config_from_dict
from train.losses import masked_mse, next_patch_loss
from train.optim import learning_rate_at, openltm_adam
from train.trainer import Trainer


def _model(seed: int = 0):
    from jaxts.models.timer_xl import TimerXL, TimerXLConfig

    return TimerXL(TimerXLConfig(**TINY_MODEL), rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def _windows(n_rows: int):
    from jaxts.data import NextPatchWindows

    return NextPatchWindows(synthetic_rows(n_rows), 48, 16, 16)


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


def test_openltm_adam_has_the_bits_of_a_rate_set_per_epoch():
    """The per-epoch rate table inside the optimizer gives exactly the updates of Adam whose
    rate is set from the host at each epoch (optax.inject_hyperparams, the earlier trainer):
    training stays bit-identical. Equal settings give the same (cached) objects."""
    import jax.numpy as jnp
    import optax

    def host_set(weight_decay):
        def make(learning_rate):
            parts = [optax.add_decayed_weights(weight_decay)] if weight_decay > 0 else []
            return optax.chain(*parts, optax.adam(learning_rate))

        return optax.inject_hyperparams(make)(learning_rate=0.0)

    rng = np.random.default_rng(0)
    lr, spe, epochs, tmax = 1e-3, 3, 4, 4
    for lradj, wd in (("cosine", 0.0), ("type1", 0.01)):
        tx, schedule = openltm_adam(lr, lradj, tmax, epochs, spe, wd)
        assert openltm_adam(lr, lradj, tmax, epochs, spe, wd)[0] is tx
        ref = host_set(wd)
        params = {"w": jnp.asarray(rng.standard_normal((7, 5)), jnp.float32)}
        p_new, p_ref = params, params
        s_new, s_ref = tx.init(params), ref.init(params)
        for step in range(epochs * spe + 2):  # past the last epoch its rate is kept
            epoch = min(step // spe, epochs - 1)
            rate = learning_rate_at(epoch, lr, lradj, tmax)
            assert float(schedule(step)) == float(np.float32(rate))
            s_ref.hyperparams["learning_rate"] = jnp.asarray(rate, jnp.float32)
            g = {"w": jnp.asarray(rng.standard_normal((7, 5)), jnp.float32)}
            u_new, s_new = jax.jit(tx.update)(g, s_new, p_new)
            u_ref, s_ref = jax.jit(ref.update)(g, s_ref, p_ref)
            p_new, p_ref = optax.apply_updates(p_new, u_new), optax.apply_updates(p_ref, u_ref)
            np.testing.assert_array_equal(np.asarray(p_new["w"]), np.asarray(p_ref["w"]))


def test_masked_mse_ignores_padding():
    rng = np.random.default_rng(0)
    p, t = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    t[3:] = np.nan  # padding rows may hold anything
    mask = np.arange(5) < 3
    got = float(masked_mse(p, t, mask))
    assert got == pytest.approx(float(np.mean((p[:3] - t[:3]) ** 2)), rel=1e-6)


# ---- training runs -----------------------------------------------------------------------------


def test_short_run_end_to_end(tmp_path, capsys):
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
    capsys.readouterr()
    assert main(["--config", str(cfg), "--out", str(out), "--set", "optim.seed=8"]) == 2
    assert "optim.seed: 7 -> 8" in capsys.readouterr().err
    # An existing file as --out: one line, exit 2.
    assert main(["--config", str(cfg), "--out", str(csv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "is a file" in err


def _trainer(out, callback=None, devices=None, model=None, export_best=None, **optim):
    from train.timer_xl import optimizer

    cfg = config_from_dict({
        "optim": {"learning_rate": 1e-3, "batch_size": 8, "train_epochs": 2, "patience": 3,
                  "lradj": "type1", "seed": 3, **optim},
        "run": {"out_dir": str(out), "ckpt_every_steps": 2, "log_every_steps": 2,
                "progress": False},
    })  # fmt: skip
    train = _windows(100)  # 37 windows: 5 steps per epoch, the last one a partial batch of 5
    tx, schedule = optimizer(cfg, len(train))
    saved = []
    t = Trainer(
        model if model is not None else _model(),
        next_patch_loss,
        train,
        _windows(80),
        optim=cfg.optim,
        run=cfg.run,
        tx=tx,
        schedule=schedule,
        devices=devices,
        export_best=export_best or (lambda m, d: (d.mkdir(parents=True), saved.append(d))),
        callback=callback,
    )
    return t, saved


def _state_leaves(t: Trainer):
    from train.trainer import _keys_to_data

    tree = (t.params, _keys_to_data(t.rest), t.opt_state)
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _damage(ckpt_dir, step: int) -> int:
    """Truncate every file of a training checkpoint step to half; returns how many."""
    files = [f for f in (ckpt_dir / str(step)).rglob("*") if f.is_file()]
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return len(files)


def test_resume_reaches_the_same_result(tmp_path, capsys):
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

    # A damaged latest checkpoint (a truncated copy): set aside, resumed from the one before.
    d, _ = _trainer(tmp_path / "d", callback=crash_at_7)
    with pytest.raises(Crash):
        d.fit()
    assert _damage(tmp_path / "d" / "checkpoints", 6)
    d, _ = _trainer(tmp_path / "d")
    res_d = d.fit()
    assert res_d.start_step == 5
    assert "unreadable" in capsys.readouterr().out
    assert (tmp_path / "d" / "corrupt_checkpoints" / "6").is_dir()

    want = _state_leaves(ref)
    for t, res in ((b, res_b), (c, res_c), (d, res_d)):
        assert res.global_step == res_a.global_step and res.best_val == res_a.best_val
        for x, y in zip(want, _state_leaves(t), strict=True):
            np.testing.assert_array_equal(x, y)
    # The resumed run logged the same epochs as the uninterrupted one.
    va = [json.loads(s) for s in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    vb = [json.loads(s) for s in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    ep = lambda rows: [(r["epoch"], r["val_loss"], r["lr"]) for r in rows if r["event"] == "epoch"]
    assert ep(va) == ep(vb)


def test_unreadable_checkpoints_are_one_error_line(tmp_path, caplog):
    """No readable checkpoint: one error line (no orbax log lines), and nothing is moved."""
    t, _ = _trainer(tmp_path, max_steps_per_epoch=2)
    t.fit(max_steps=3)  # checkpoints at steps 2 (epoch end) and 3
    for step in (2, 3):
        _damage(tmp_path / "checkpoints", step)
    t, _ = _trainer(tmp_path, max_steps_per_epoch=2)
    with pytest.raises(CheckpointError, match="no readable training checkpoint") as e:
        t.fit()
    assert "\n" not in str(e.value) and "step 3:" in str(e.value) and "step 2:" in str(e.value)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "3"]


def test_max_steps_zero_takes_no_step(tmp_path):
    t, saved = _trainer(tmp_path)
    res = t.fit(max_steps=0)
    assert res.global_step == 0 and res.steps_run == 0 and not res.finished and not saved
    assert not (tmp_path / "best").exists()


def test_best_swap_never_leaves_no_model(tmp_path, monkeypatch):
    """Replacing best/ is one atomic step: a kill (here: a failing rename) at any point leaves
    a complete best/ (the old or the new one), never none."""
    calls = []

    def export(model, directory):
        directory.mkdir(parents=True)
        (directory / "which").write_text(str(len(calls)))
        calls.append(directory)

    t, _ = _trainer(tmp_path, export_best=export)
    t._export()
    assert (tmp_path / "best" / "which").read_text() == "0"

    def killed(self, target):
        raise OSError("killed")

    monkeypatch.setattr(Path, "rename", killed)
    try:
        t._export()
    except OSError:
        pass
    assert (tmp_path / "best" / "which").read_text() in ("0", "1")


def test_trains_in_train_mode_whatever_mode_the_model_came_in(tmp_path):
    model = _model()
    model.eval()  # as loaders return models
    t, _ = _trainer(tmp_path, model=model)
    x = _windows(100).batch(np.arange(4))[0]
    again = [np.asarray(nnx.merge(t.graphdef, t.params, t.rest)(x)) for _ in range(2)]
    assert not np.allclose(again[0], again[1])  # dropout active in the trained graph


def test_validation_is_openltm_weighted_mean(tmp_path):
    from train.timer_xl import LastPatch

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
