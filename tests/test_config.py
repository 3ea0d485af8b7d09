"""Run configs (train.config): pydantic sections, one model section per registered family,
paths in every error, --set overrides, YAML floats, the shipped configs."""

from __future__ import annotations

import pytest

from jaxts.registry import FAMILIES
from tests.helpers import REPO, TINY_MODEL
from train.config import (
    ConfigError,
    config_from_dict,
    dump_config,
    load_config,
    model_config,
    model_section,
)


def test_every_problem_with_its_path_in_one_line():
    with pytest.raises(ConfigError) as e:
        config_from_dict(
            {
                "model": {**TINY_MODEL, "d_modle": 8, "n_heads": "two"},
                "optim": {"learing_rate": 1e-3, "batch_size": "big", "lradj": "step"},
                "run": {"ckpt_every": 3, "horizons": [96, -1]},
                "extra": {},
            }
        )
    msg = str(e.value)
    assert "\n" not in msg  # the CLI prints it as one line
    for where in ("model.d_modle: unknown key", "model.n_heads:", "optim.learing_rate: unknown",
                  "optim.batch_size:", "optim.lradj:", "run.ckpt_every: unknown",
                  "run.horizons.1:", "extra: unknown key"):  # fmt: skip
        assert where in msg, where


def test_model_section_per_family():
    # one section per registered family, picked by name; without a name: timer_xl
    for name in FAMILIES:
        section = model_section(FAMILIES[name].config_class()(**_valid_defaults(name)))
        assert section.name == name
    assert config_from_dict({"model": TINY_MODEL}).model.name == "timer_xl"
    with pytest.raises(ConfigError, match="model.name: .*'timer_xxl'"):
        config_from_dict({"model": {"name": "timer_xxl"}})
    # a chronos_t5 field in a timer_xl section, a __post_init__ check of a nested config: the
    # paths are the file's (model.t5...), not pydantic's (model.chronos_t5.t5...)
    with pytest.raises(ConfigError, match="model.d_kv: unknown key"):
        config_from_dict({"model": {**TINY_MODEL, "d_kv": 4}})
    with pytest.raises(ConfigError, match=r"model.t5: d_model must be positive") as e:
        config_from_dict({"model": {"name": "chronos_t5", "t5": {"d_model": 0}}})
    assert "chronos_t5.t5" not in str(e.value)
    with pytest.raises(ConfigError, match="n_heads"):  # TimerXLConfig's own check
        config_from_dict({"model": {**TINY_MODEL, "d_model": 15}})


def _valid_defaults(name):
    # ChronosT5Config's defaults pair a 32128-token T5 with 4096 Chronos tokens
    return {"t5": _t5(vocab_size=4096)} if name == "chronos_t5" else {}


def _t5(**kw):
    from jaxts.models.t5 import T5Config

    return T5Config(**kw)


def test_yaml_floats_and_typed_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    # PyYAML (YAML 1.1) reads `1e-4` as a string; the loader reads YAML 1.2 floats.
    path.write_text("model: {d_model: 32, n_heads: 2}\noptim: {learning_rate: 1e-4}\n")
    cfg = load_config(path)
    assert cfg.optim.learning_rate == 1e-4 and isinstance(cfg.optim.learning_rate, float)
    assert cfg.model.d_model == 32
    cfg = load_config(
        path,
        [
            "optim.learning_rate=3e-4",
            "optim.batch_size=64",
            "model.use_norm=false",
            "model.activation=gelu",
            "run.horizons=96",  # one value for a list: one horizon
            "data.data_dir=null",
            "optim.max_steps_per_epoch=5",
        ],
    )
    assert cfg.optim.learning_rate == 3e-4 and cfg.optim.batch_size == 64
    assert cfg.model.use_norm is False and cfg.model.activation == "gelu"
    assert cfg.run.horizons == (96,)
    assert cfg.data.data_dir is None and cfg.optim.max_steps_per_epoch == 5
    with pytest.raises(ConfigError, match="optim.batch_size"):
        load_config(path, ["optim.batch_size=abc"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["batch_size=3"])
    with pytest.raises(ConfigError, match="optim.nope: unknown key"):
        load_config(path, ["optim.nope=1"])
    with pytest.raises(ConfigError, match="model.d_model is not a mapping"):
        load_config(path, ["model.d_model.x=1"])


def test_nested_overrides_reach_a_chronos_section():
    smoke = REPO / "configs" / "chronos_t5_smoke.yaml"
    cfg = load_config(smoke, ["model.t5.d_model=64", "model.chronos.context_length=32"])
    mcfg = model_config(cfg)
    assert mcfg.t5.d_model == 64 and mcfg.chronos.context_length == 32
    with pytest.raises(ConfigError, match="vocab_size"):  # n_tokens must stay = vocab_size
        load_config(smoke, ["model.chronos.n_tokens=1024"])


def test_broken_yaml_is_one_line_naming_the_file(tmp_path, capsys):
    from train.timer_xl import main

    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  d_model: [32\noptim: {}\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML \\(line"):
        load_config(path)
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: not valid YAML") and err.count("\n") == 1
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_dumped_config_reads_back(tmp_path):
    for name in ("timer_xl_etth1", "chronos_t5_tiny", "distill_etth1_cpu"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        dump_config(cfg, tmp_path / "c.yaml")
        assert load_config(tmp_path / "c.yaml") == cfg


def test_shipped_timer_xl_configs():
    full = load_config(REPO / "configs" / "timer_xl_etth1.yaml")
    assert full.model.d_model == 1024 and full.data.seq_len == 672
    assert full.optim.lradj == "cosine" and full.optim.valid_last and full.optim.seed == 2021
    cpu = load_config(REPO / "configs" / "timer_xl_etth1_cpu.yaml")
    assert cpu.data.seq_len == 672 and model_config(cpu).input_token_len == 96


def _flat_chronos(**kw):
    """The ChronosT5Config the earlier flat ``model`` section built (T5 vocab_size = n_tokens,
    tokenizer_kwargs from low/high_limit; the rest the chronos-t5-tiny defaults)."""
    from jaxts.models.chronos_t5 import ChronosT5Config
    from jaxts.models.chronos_tokenizer import ChronosConfig

    f = dict(d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=4,
             relative_attention_num_buckets=32, relative_attention_max_distance=128,
             dropout_rate=0.1, feed_forward_proj="relu", initializer_factor=0.05, n_tokens=4096,
             low_limit=-15.0, high_limit=15.0, context_length=512, prediction_length=64,
             num_samples=20, temperature=1.0, top_k=50, top_p=1.0)  # fmt: skip
    f.update(kw)
    t5 = ("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
          "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
          "feed_forward_proj", "initializer_factor")  # fmt: skip
    ch = ("context_length", "prediction_length", "n_tokens", "num_samples", "temperature",
          "top_k", "top_p")  # fmt: skip
    return ChronosT5Config(
        t5=_t5(vocab_size=f["n_tokens"], **{k: f[k] for k in t5}),
        chronos=ChronosConfig(
            tokenizer_kwargs={"low_limit": f["low_limit"], "high_limit": f["high_limit"]},
            **{k: f[k] for k in ch},
        ),
    )


def test_shipped_chronos_configs_build_what_the_flat_sections_built():
    tiny = load_config(REPO / "configs" / "chronos_t5_tiny.yaml")
    assert model_config(tiny) == _flat_chronos(initializer_factor=1.0, context_length=256)
    smoke = load_config(REPO / "configs" / "chronos_t5_smoke.yaml")
    want = _flat_chronos(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1,
                         num_heads=2, n_tokens=512, context_length=64, prediction_length=16,
                         num_samples=4)  # fmt: skip
    assert model_config(smoke) == want
    c = tiny.chronos_t5  # the recipe section, spelled like the family
    assert c.steps_per_epoch == 40 and c.warmup_steps == 20 and "m4_hourly" in c.datasets
    assert smoke.chronos_t5.datasets == ("ETTh1", "m4_hourly")
