"""Head-only training of the distance-aware Chronos head (train.distance_head)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from tests.helpers import REPO
from train.config import ConfigError, load_config

SMOKE = REPO / "configs" / "distance_head_smoke.yaml"
CHRONOS_SMOKE = REPO / "configs" / "chronos_t5_smoke.yaml"


def _params(module) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(module, nnx.Param))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)  # -0.0 != 0.0, NaN payloads kept


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """The smoke Chronos-T5 (random weights, dropout 0.1 as configured), saved as a jaxts
    chronos_t5 checkpoint."""
    from jaxts.checkpoint import save_model
    from jaxts.models.chronos_t5 import ChronosT5
    from train.config import model_config

    model = ChronosT5(model_config(load_config(CHRONOS_SMOKE)), rngs=nnx.Rngs(3))
    return save_model(model, tmp_path_factory.mktemp("base") / "smoke")


def _cfg(out: Path, base: Path, *overrides: str):
    return load_config(SMOKE, [f"run.out_dir={out}", f"distance_head.base={base}", *overrides])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, base_dir):
    """One uninterrupted smoke run (2 epochs x 3 steps) shared by the tests below."""
    from train.distance_head import run

    out = tmp_path_factory.mktemp("head") / "full"
    return out, run(_cfg(out, base_dir))


# ---- data ---------------------------------------------------------------------------------------


def test_upstream_feeding_gives_each_position_its_own_label():
    """Same windows and labels; 'shifted' feeds labels shifted right behind PAD (position t sees
    labels < t), 'upstream' feeds the labels themselves (position t sees label t)."""
    from jaxts.models.chronos_tokenizer import ChronosConfig
    from train.chronos_t5 import shift_right
    from train.distance_head import HeadWindows

    cfg = ChronosConfig(context_length=8, prediction_length=4, n_tokens=32)
    rng = np.random.default_rng(0)
    series = [rng.random(60).astype(np.float32) + 1 for _ in range(3)]
    series[1][20:40] = np.nan  # some missing future values -> -100 labels
    a = HeadWindows(series, cfg, 32, seed=5, min_past=2)
    b = HeadWindows(series, cfg, 32, seed=5, min_past=2, feeding="upstream")
    idx = np.arange(32)
    (ids_a, m_a, dec_a, lab_a), (ids_b, m_b, dec_b, lab_b) = a.batch(idx), b.batch(idx)
    for x, y in ((ids_a, ids_b), (m_a, m_b), (lab_a, lab_b)):
        np.testing.assert_array_equal(x, y)
    assert (lab_a == -100).any() and (lab_a[:, -1] == cfg.eos_token_id).all()
    np.testing.assert_array_equal(dec_a, shift_right(lab_a, 0, cfg.pad_token_id))
    np.testing.assert_array_equal(dec_b, np.where(lab_a == -100, cfg.pad_token_id, lab_a))
    assert not np.array_equal(dec_a, dec_b)
    with pytest.raises(ValueError, match="feeding must be one of"):
        HeadWindows(series, cfg, 4, seed=5, feeding="unshifted")


# ---- loss ---------------------------------------------------------------------------------------


def test_loss_counts_value_labels_of_valid_rows_only(base_dir):
    """Each Trainer loss equals the library loss over the gathered positions whose label is a
    value (-100, EOS and batch-padding rows left out), and no gradient reaches the base."""
    import jax.numpy as jnp

    from jaxts.losses import combined_ordinal_loss, gaussian_soft_label_loss
    from train.distance_head import build_model, head_loss

    model, _ = build_model(_cfg(Path("unused"), base_dir))
    model.eval()
    ids = np.full((3, 9), 5, np.int32)
    ids[:, -1] = 1
    att = np.ones_like(ids, bool)
    labels = np.array([[7, -100, 300, 1], [2, 511, 40, 1], [9, 9, 9, 1]], np.int32)
    dec = np.array([[0, 7, 0, 300], [0, 2, 511, 40], [0, 9, 9, 9]], np.int32)
    rows = np.array([True, True, False])
    batch = (ids, att, dec, labels)
    # jitted: eager T5 ops would compile one by one (tens of seconds)
    logits = nnx.jit(lambda m: m(ids, att, dec))(model)  # [3, 4, N]
    keep = (labels != -100) & (labels != 1) & rows[:, None]
    assert keep.sum() == 5
    x, t = logits[keep], jnp.asarray(labels[keep])  # [5, N], [5]
    want = {
        "combined": combined_ordinal_loss(x, t),
        "gaussian_v2": gaussian_soft_label_loss(x, t),
        "ce": -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(x), t[:, None], -1)),
    }
    for kind, value in want.items():
        loss = head_loss(kind)
        got, grads = nnx.jit(lambda m, f=loss: nnx.value_and_grad(f)(m, batch, rows))(model)
        np.testing.assert_allclose(float(got), float(value), rtol=1e-6, err_msg=kind)
        assert all(not np.any(g) for g in jax.tree.leaves(grads["base"])), kind
        assert all(np.any(g) for g in jax.tree.leaves(grads["head"])), kind


# ---- training -----------------------------------------------------------------------------------


def test_only_the_head_trains(base_dir, tmp_path):
    """After training the base holds the checkpoint's weights bit for bit (no update, no weight
    decay), every head tensor and the temperature moved, the base's T5 ran without dropout and
    the optimizer keeps no moments for the base."""
    from jaxts.checkpoint import load_model
    from train.common import n_params
    from train.distance_head import prepare

    p = prepare(_cfg(tmp_path / "run", base_dir))
    model = p.trainer.model
    assert model.base.config.t5.dropout_rate == 0.0 and model.head.config.dropout == 0.1
    head0 = _params(model.head)
    state_size = sum(x.size for x in jax.tree.leaves(p.trainer.opt_state))
    assert state_size < 2 * n_params(model.head) + 100  # AdamW's mu and nu of the head only
    p.trainer.fit(max_steps=3)
    model = p.trainer.sync_model()
    saved = _params(load_model(base_dir))
    base = _params(model.base)
    assert base.keys() == saved.keys()
    for k, v in saved.items():
        np.testing.assert_array_equal(_bits(base[k]), _bits(v), err_msg=k)
    head = _params(model.head)
    assert any("temperature" in k for k in head)
    moved = [k for k in head if not np.array_equal(head[k], head0[k])]
    assert sorted(moved) == sorted(head)


def test_smoke_run_exports_a_distance_head(smoke_run, base_dir):
    from jaxts.checkpoint import load_model, read_config

    out, summary = smoke_run
    assert summary["finished"] and summary["global_step"] == 6
    assert np.isfinite(summary["final_train_loss"])
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0] == "step,epoch,loss,lr,seconds" and len(rows) == 7
    name, head_cfg, meta = read_config(out / "best")
    assert name == "distance_head" and meta["base"] == str(base_dir)
    assert (head_cfg.hidden_size, head_cfg.num_bins) == (32, 512)
    assert meta["recipe"]["feeding"] == "shifted" and meta["recipe"]["loss"] == "combined"
    head = _params(load_model(out / "best", family="distance_head"))
    assert len(head) == 12  # the 11 upstream tensors and the temperature, no base weights
    recorded = load_config(out / "config.yaml").model
    assert recorded.name == "distance_head" and recorded.hidden_size == 32


def test_model_section_sets_the_dropout_and_fits_the_base(base_dir):
    from train.distance_head import build_model

    model, cfg = build_model(
        _cfg(Path("unused"), base_dir, "model.name=distance_head", "model.dropout=0.25")
    )
    assert model.head.config.to_dict() == {"hidden_size": 32, "num_bins": 512, "dropout": 0.25}
    assert cfg.model.dropout == 0.25 and cfg.model.hidden_size == 32


def test_trained_head_forecasts_through_the_pipeline(smoke_run, base_dir):
    from jaxts.pipelines.distance_aware_chronos import DistanceAwareChronosPipeline

    pipe = DistanceAwareChronosPipeline.from_pretrained(base_dir, smoke_run[0] / "best")
    samples = pipe.predict(np.arange(50, dtype=np.float32) % 7 + 1, 5, num_samples=3)
    assert samples.shape == (1, 3, 5) and np.isfinite(samples).all()


def test_resume_is_bit_identical(smoke_run, base_dir, tmp_path):
    from jaxts.checkpoint import load_model
    from train.distance_head import run

    full, _ = smoke_run
    out = tmp_path / "resumed"
    first = run(_cfg(out, base_dir), max_steps=2)  # "crash" after step 2 (mid-epoch)
    assert not first["finished"] and first["global_step"] == 2
    second = run(_cfg(out, base_dir))
    assert second["finished"] and second["global_step"] == 6
    a, b = _params(load_model(full / "best")), _params(load_model(out / "best"))
    for k in a:
        np.testing.assert_array_equal(_bits(a[k]), _bits(b[k]), err_msg=k)
    # another recipe is refused instead of mixing two experiments in one folder
    with pytest.raises(ConfigError, match="distance_head.feeding"):
        run(_cfg(out, base_dir, "distance_head.feeding=upstream"))


# ---- configuration errors -----------------------------------------------------------------------


def test_config_errors(base_dir, tmp_path):
    from train.distance_head import main, run

    with pytest.raises(ConfigError, match="needs distance_head.base"):
        run(load_config(SMOKE, ["distance_head.base=null"]))
    with pytest.raises(ConfigError, match=r"model.num_bins 4096 \(the base's 512\) does not fit"):
        run(_cfg(tmp_path / "a", base_dir, "model.name=distance_head", "model.num_bins=4096"))
    with pytest.raises(ConfigError, match="needs model.name: distance_head, got 'chronos_t5'"):
        run(_cfg(tmp_path / "a", base_dir, "model.name=chronos_t5"))
    with pytest.raises(ConfigError, match="belongs to python -m train.chronos_t5"):
        run(_cfg(tmp_path / "b", base_dir, "chronos_t5.min_past=3"))
    with pytest.raises(ConfigError, match="distance_head.loss"):
        _cfg(tmp_path / "c", base_dir, "distance_head.loss=mse")
    assert not (tmp_path / "a").exists()  # nothing written for a refused start
    # the CLI: a missing base is one error line and exit status 2
    argv = ["--config", str(SMOKE), "--out", str(tmp_path / "d"), "--base", str(tmp_path / "x")]
    assert main(argv) == 2


def test_shipped_configs_validate():
    for name in ("distance_head.yaml", "distance_head_cpu.yaml", "distance_head_smoke.yaml"):
        cfg = load_config(REPO / "configs" / name)
        assert cfg.distance_head is not None and cfg.distance_head.base, name
    cfg = load_config(REPO / "configs" / "distance_head.yaml")
    d, o = cfg.distance_head, cfg.optim
    assert (d.context_length, d.prediction_length) == (409, 103)  # 80/20 of 512
    assert (o.learning_rate, o.weight_decay, o.batch_size) == (1e-4, 0.01, 8)
    assert (d.schedule, d.grad_clip, d.loss, d.feeding) == ("cosine", 1.0, "combined", "shifted")
    assert json.loads(json.dumps(cfg.to_dict()))["distance_head"]["weights"] == [0.5, 0.3, 0.2]
