"""Fine-tuning the pretrained HF Timer with ``python -m train.target`` (``model.name: timer_hf``,
``timer_hf.init_from``): the HF weights are what training starts from, and the run's best model
loads back as a ``timer_hf`` checkpoint."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import yaml
from flax import nnx

from tests.helpers import write_csv

TINY_HF = dict(
    input_token_len=16, hidden_size=16, intermediate_size=32, output_token_lens=[16],
    num_hidden_layers=1, num_attention_heads=2,
)  # fmt: skip


def _config(tmp_path, csv, **sections):
    cfg = {
        "data": {"dataset": str(csv), "seq_len": 48},
        "optim": {
            "learning_rate": 1e-12,
            "batch_size": 16,
            "train_epochs": 1,
            "max_steps_per_epoch": 2,
            "lradj": "type1",
        },  # fmt: skip
        "run": {"horizons": [16], "progress": False, "ckpt_every_steps": 2},
        **sections,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from bridges.timer_hf import save_hf
    from jaxts.models.timer_hf import TimerHF, TimerHFConfig

    model = TimerHF(TimerHFConfig(**{**TINY_HF, "output_token_lens": (16,)}), rngs=nnx.Rngs(3))
    return save_hf(model, tmp_path_factory.mktemp("hf") / "timer"), model


def _params(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_fine_tune_starts_from_the_hf_weights(tmp_path, hf_dir):
    from jaxts.checkpoint import load_model
    from train.target import main

    src, model = hf_dir
    csv = write_csv(tmp_path / "toy.csv", n=400)
    # No model section: the architecture comes from the HF directory. A learning rate of 1e-12
    # moves no weight by more than ~1e-11 (Adam), so the best model is the HF model.
    cfg = _config(tmp_path, csv, timer_hf={"init_from": str(src)})
    out = tmp_path / "run"
    assert main(["--config", str(cfg), "--out", str(out)]) == 0
    best = load_model(out / "best", family="timer_hf")
    assert best.config.hidden_size == 16
    for a, b in zip(_params(best), _params(model), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    metrics = json.loads((out / "metrics_test.json").read_text())
    assert np.isfinite(metrics["16"]["mse"])
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["model"]["name"] == "timer_hf"


def test_fresh_hf_timer_trains_and_a_wrong_pairing_is_refused(tmp_path, hf_dir, capsys):
    from train.target import main

    csv = write_csv(tmp_path / "toy.csv", n=400)
    fresh = _config(tmp_path, csv, model={"name": "timer_hf", **TINY_HF})
    fresh_cfg = yaml.safe_load(fresh.read_text())
    fresh_cfg["optim"]["learning_rate"] = 1e-3
    fresh.write_text(yaml.safe_dump(fresh_cfg))
    out = tmp_path / "fresh"
    assert main(["--config", str(fresh), "--out", str(out)]) == 0
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in lines if "loss" in r)
    # timer_hf.init_from with a Timer-XL model section: one line naming both.
    capsys.readouterr()
    bad = _config(
        tmp_path,
        csv,
        model={
            "name": "timer_xl",
            "input_token_len": 16,
            "output_token_len": 16,
            "d_model": 16,
            "n_heads": 2,
            "d_ff": 32,
        },  # fmt: skip
        timer_hf={"init_from": str(hf_dir[0])},
    )
    assert main(["--config", str(bad), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "timer_hf.init_from needs model.name: timer_hf" in err and err.count("\n") == 1


def test_shipped_configs_of_the_cached_decoding_issue_load():
    from tests.helpers import REPO
    from train.config import load_config, model_config

    hf = load_config(REPO / "configs" / "timer_hf_etth1.yaml")
    assert hf.model is None and hf.timer_hf.init_from == "thuml/timer-base-84m"
    assert hf.data.seq_len % 96 == 0
    spec = load_config(REPO / "configs" / "timer_xl_etth1_spec.yaml")
    assert (model_config(spec).d_model, model_config(spec).e_layers) == (1024, 4)
    draft = load_config(REPO / "configs" / "distill_etth1_spec.yaml")
    assert draft.distill.teacher == spec.run.out_dir + "/best" and draft.distill.stochastic
