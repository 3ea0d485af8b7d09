"""Run configuration: a YAML file with sections ``model``, ``data``, ``optim`` and ``run`` (and
``distill`` for ``train.distill``, ``chronos`` for ``train.chronos``).

Every key is checked: an unknown key in any section (or an unknown section) is an error that
lists all offenders, because a silently ignored typo (``learing_rate``) is the worst failure
mode of a training config. ``--set section.key=value`` overrides are parsed as YAML scalars
(``--set optim.learning_rate=3e-4``, ``--set model.use_norm=false``) and type-checked the same
way as the file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ChronosModelSection",
    "ChronosTrainConfig",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "OptimConfig",
    "RunConfig",
    "RunSection",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "load_config",
    "model_config",
]

MODEL_NAMES = ("timer_xl", "chronos_t5")


class ConfigError(ValueError):
    """A run configuration that is malformed, has unknown keys or ill-typed values."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "ETTh1"  # a name (resolved by jaxts.data.resolve_path) or a CSV path
    data_dir: str | None = None
    seq_len: int = 672


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-4
    batch_size: int = 32
    train_epochs: int = 10
    patience: int = 3
    lradj: str = "type1"  # 'type1' (halve every epoch from epoch 2) or 'cosine'
    tmax: int = 10  # cosine period in epochs (OpenLTM --tmax)
    weight_decay: float = 0.0  # coupled L2, as torch.optim.Adam(weight_decay=...)
    valid_last: bool = False  # validate on the last token's patch only (OpenLTM --valid_last)
    seed: int = 2021
    max_steps_per_epoch: int | None = None  # cap for smoke runs; None = full epoch

    def __post_init__(self):
        if self.lradj not in ("type1", "cosine"):
            raise ConfigError(f"optim.lradj must be 'type1' or 'cosine', got {self.lradj!r}")
        for name in ("batch_size", "train_epochs", "patience", "tmax"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"optim.{name} must be positive, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ConfigError(f"optim.learning_rate must be positive, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch <= 0:
            raise ConfigError("optim.max_steps_per_epoch must be positive or null")


@dataclasses.dataclass(frozen=True)
class RunSection:
    out_dir: str = "runs/timer_xl_etth1"
    ckpt_every_steps: int = 200  # plus one checkpoint at every epoch end
    log_every_steps: int = 50  # metrics.jsonl line every N steps (plus one per epoch)
    max_to_keep: int = 2  # resumable checkpoints kept (the best model is exported separately)
    horizons: tuple[int, ...] = (96, 192, 336, 720)  # rolling test evaluation at the end
    eval_batch_size: int = 64
    progress: bool = True  # tqdm bars

    def __post_init__(self):
        for name in ("ckpt_every_steps", "log_every_steps", "max_to_keep", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"run.{name} must be positive, got {getattr(self, name)}")
        if not self.horizons or any(h <= 0 for h in self.horizons):
            raise ConfigError(f"run.horizons must be positive integers, got {self.horizons}")


TEACHER_FORMATS = ("auto", "jaxts", "openltm")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation of a STRIDE draft from a frozen teacher (``train.distill``).

    The ``model`` section of a distillation run describes the *teacher* (the target the draft
    scales are applied to); the draft is ``draft_config(teacher, scale_*, stochastic=...)``.
    """

    # A jaxts model directory (train.target's RUN/best) or an OpenLTM/STRIDE checkpoint.pth.
    teacher: str | None = None
    # 'auto' (a directory is a jaxts checkpoint, a file an OpenLTM one), 'jaxts' or 'openltm'.
    teacher_format: str = "auto"
    # STRIDE's --draft_scale_*; null keeps the teacher's value.
    scale_d_model: float | None = 0.25
    scale_n_heads: float | None = 0.25
    scale_d_ff: float | None = 0.25
    scale_e_layers: float | None = 0.25
    stochastic: bool = False  # --draft_stochastic: mean + log-variance heads, Gaussian NLL loss
    var_reg: float = 0.0  # --draft_nll_var_reg: var_reg * mean(relu(-logvar - 5))
    teacher_noise: float = 0.0  # --draft_teacher_noise: teacher targets + noise * N(0, 1)
    teacher_dropout: float = 0.0  # --draft_teacher_dropout: > 0 runs the teacher with dropout
    init_from: str | None = None  # a pretrained draft (jaxts directory or .pth) to start from

    def __post_init__(self):
        if self.teacher_format not in TEACHER_FORMATS:
            raise ConfigError(
                f"distill.teacher_format must be one of {list(TEACHER_FORMATS)}, "
                f"got {self.teacher_format!r}"
            )
        for name in ("scale_d_model", "scale_n_heads", "scale_d_ff", "scale_e_layers"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ConfigError(f"distill.{name} must be positive or null, got {v}")
        for name in ("var_reg", "teacher_noise"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ConfigError(f"distill.{name} must be >= 0, got {v}")
        if not 0.0 <= self.teacher_dropout < 1.0:
            raise ConfigError(
                f"distill.teacher_dropout must be in [0, 1), got {self.teacher_dropout}"
            )


@dataclasses.dataclass(frozen=True)
class ChronosModelSection:
    """The ``model`` section of a Chronos-T5 run (``name: chronos_t5``), flat: the T5 shape and
    the tokenizer / sampling settings. Defaults are amazon/chronos-t5-tiny's.
    :meth:`build` gives the :class:`~jaxts.models.chronos_t5.ChronosT5Config` (T5 ``vocab_size``
    is ``n_tokens``; pad 0, EOS 1, decoder start 0, tied embeddings, as every Chronos-T5)."""

    d_model: int = 256
    d_kv: int = 64
    d_ff: int = 1024
    num_layers: int = 4
    num_decoder_layers: int = 4
    num_heads: int = 4
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    feed_forward_proj: str = "relu"
    initializer_factor: float = 0.05
    n_tokens: int = 4096
    low_limit: float = -15.0
    high_limit: float = 15.0
    context_length: int = 512
    prediction_length: int = 64
    num_samples: int = 20
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ConfigError(f"model.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        self.build()  # T5Config / ChronosConfig validate the rest (ValueError)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChronosModelSection:
        return cls(**d)

    def build(self):
        from jaxts.models.chronos_t5 import ChronosT5Config
        from jaxts.models.chronos_tokenizer import ChronosConfig
        from jaxts.models.t5 import T5Config

        t5 = {f.name: getattr(self, f.name) for f in dataclasses.fields(T5Config)
              if hasattr(self, f.name)}  # fmt: skip
        chronos = {f.name: getattr(self, f.name) for f in dataclasses.fields(ChronosConfig)
                   if hasattr(self, f.name)}  # fmt: skip
        return ChronosT5Config(
            t5=T5Config(vocab_size=self.n_tokens, **t5),
            chronos=ChronosConfig(
                tokenizer_kwargs={"low_limit": self.low_limit, "high_limit": self.high_limit},
                **chronos,
            ),
        )


CHRONOS_SCHEDULES = ("linear", "cosine", "constant")


@dataclasses.dataclass(frozen=True)
class ChronosTrainConfig:
    """Chronos pre-training / fine-tuning on random windows (``train.chronos``).

    An "epoch" is ``steps_per_epoch`` optimizer steps; the run is ``optim.train_epochs`` of
    them. The learning rate follows ``schedule`` per step (peak ``optim.learning_rate`` after
    ``warmup_steps`` of linear warmup), with AdamW (decoupled ``optim.weight_decay``) and global
    gradient-norm clipping at ``grad_clip``. ``optim.lradj``, ``tmax``, ``patience``,
    ``valid_last`` and ``max_steps_per_epoch`` do not apply.
    """

    # Series sources: ETT / weather names (train split, every column) and 'm4_hourly'.
    datasets: tuple[str, ...] = ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "weather", "m4_hourly")
    steps_per_epoch: int = 500
    min_past: int = 60  # observed values before a window's forecast start (Chronos' min_past)
    schedule: str = "linear"  # per-step decay to 0 after warmup (HF lr_scheduler_type)
    warmup_steps: int = 0
    grad_clip: float = 1.0  # HF Trainer max_grad_norm; 0 = off
    init_from: str | None = None  # fine-tune: an HF Chronos dir / hub id or a jaxts model dir

    def __post_init__(self):
        if not self.datasets:
            raise ConfigError("chronos.datasets must name at least one source")
        if self.schedule not in CHRONOS_SCHEDULES:
            raise ConfigError(
                f"chronos.schedule must be one of {list(CHRONOS_SCHEDULES)}, got {self.schedule!r}"
            )
        if self.steps_per_epoch <= 0 or self.min_past <= 0:
            raise ConfigError("chronos.steps_per_epoch and chronos.min_past must be positive")
        if self.warmup_steps < 0 or not self.grad_clip >= 0:
            raise ConfigError("chronos.warmup_steps and chronos.grad_clip must be >= 0")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run. ``model`` holds the model's own config fields plus ``name``. ``distill`` is
    present only in distillation configs (None otherwise, and then left out of ``to_dict``);
    ``chronos`` likewise only in ``train.chronos`` configs."""

    model: dict[str, Any]
    data: DataConfig
    optim: OptimConfig
    run: RunSection
    distill: DistillConfig | None = None
    chronos: ChronosTrainConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["run"]["horizons"] = list(self.run.horizons)
        if self.distill is None:
            del out["distill"]
        if self.chronos is None:
            del out["chronos"]
        else:
            out["chronos"]["datasets"] = list(self.chronos.datasets)
        return out


_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "run": RunSection}


def _model_class(name: str):
    """The config dataclass of a model name (imported lazily: the model pulls in JAX)."""
    if name == "timer_xl":
        from jaxts.models.timer_xl import TimerXLConfig

        return TimerXLConfig
    if name == "chronos_t5":
        return ChronosModelSection
    raise ConfigError(f"model.name must be one of {list(MODEL_NAMES)}, got {name!r}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert the few lossless cases YAML needs.

    PyYAML (YAML 1.1) reads ``1e-4`` as a *string*, so strings are accepted for floats when
    they parse; ints are accepted for floats; lists for tuples. Anything else is an error.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        (elem, *_rest) = typing.get_args(tp)
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            value = [value]  # `--set run.horizons=96` means one horizon
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{where}: expected {name}, got {value!r} ({type(value).__name__})")


def _build(cls, section: str, raw: Any, errors: list[str]):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"section '{section}' must be a mapping, got {type(raw).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        errors.append(
            f"unknown keys in '{section}': {', '.join(unknown)} (known: {', '.join(known)})"
        )
        return None
    kwargs = {}
    for key, value in raw.items():
        try:
            kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
        except ConfigError as e:
            errors.append(str(e))
    if len(kwargs) != len(raw):
        return None
    try:
        return cls(**kwargs)
    except (ConfigError, ValueError, TypeError) as e:
        errors.append(f"{section}: {e}")
        return None


def model_config(cfg: RunConfig):
    """The model's config object (a ``TimerXLConfig``, a ``ChronosT5Config``) from ``cfg.model``."""
    fields = dict(cfg.model)
    cls = _model_class(fields.pop("name", "timer_xl"))
    out = cls.from_dict(fields)
    return out.build() if isinstance(out, ChronosModelSection) else out


def config_from_dict(raw: Any) -> RunConfig:
    """Validate a nested mapping; all problems are collected and raised as one ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a run config must be a mapping, got {type(raw).__name__}")
    errors: list[str] = []
    unknown = sorted(set(raw) - {"model", *_SECTIONS, "distill", "chronos"})
    if unknown:
        errors.append(
            f"unknown sections: {', '.join(map(str, unknown))} "
            f"(known: model, {', '.join(_SECTIONS)}, distill, chronos)"
        )
    sections = {name: _build(cls, name, raw.get(name), errors) for name, cls in _SECTIONS.items()}
    if "distill" in raw:
        sections["distill"] = _build(DistillConfig, "distill", raw["distill"], errors)
    if "chronos" in raw:
        sections["chronos"] = _build(ChronosTrainConfig, "chronos", raw["chronos"], errors)

    model_raw = raw.get("model") or {}
    model: dict[str, Any] | None = None
    if not isinstance(model_raw, dict):
        errors.append(f"section 'model' must be a mapping, got {type(model_raw).__name__}")
    else:
        fields = dict(model_raw)
        name = fields.pop("name", "timer_xl")
        try:
            mcls = _model_class(name)
            built = _build(mcls, "model", fields, errors)
            if built is not None:
                model = {"name": name, **dataclasses.asdict(built)}
        except ConfigError as e:
            errors.append(str(e))
    if errors:
        raise ConfigError("invalid run config:\n  " + "\n  ".join(errors))
    return RunConfig(model=model, **sections)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a raw nested mapping (values parsed as YAML)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides or []:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        section, name = parts
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from e
        sec = out.setdefault(section, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"--set {item!r}: section {section!r} is not a mapping")
        sec[name] = value
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (``None``: all defaults), apply overrides, validate."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a run config must be a mapping")
    return config_from_dict(apply_overrides(raw, overrides))


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config (defaults filled in, overrides applied) as YAML."""
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
