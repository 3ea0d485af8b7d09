"""Run configuration: a YAML file with sections ``model``, ``data``, ``optim`` and ``run``, plus
``distill`` (``train.distill``), ``chronos_t5`` (``train.chronos_t5``), ``distance_head``
(``train.distance_head``) or ``chronos2`` (``train.chronos2``).

Every section is a frozen pydantic v2 model with ``extra="forbid"``: an unknown key (a typo such
as ``learing_rate`` is the worst failure mode of a training config), a value of the wrong type
or out of range is reported with its path (``optim.batch_size: ...``), every problem at once, as
one :class:`ConfigError`. The ``model`` section is one section per registered model family
(:data:`jaxts.registry.FAMILIES`), picked by ``name`` and derived from the family's config
dataclass (:func:`jaxts.config.config_model`), so no model field is listed here; its layout is
the family's ``config.json`` layout (a ``chronos_t5`` section is nested ``t5:`` / ``chronos:``).

``--set section.key=value`` overrides (also deeper: ``--set model.t5.d_model=64``) are parsed as
YAML scalars and validated with the file. YAML ``1e-4`` is a float (YAML 1.2; PyYAML's YAML 1.1
resolver would read a string).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pydantic
import yaml
from pydantic import Field

from jaxts.config import build, config_model, format_errors
from jaxts.registry import FAMILIES

__all__ = [
    "Chronos2TaskWeights",
    "Chronos2TrainConfig",
    "ChronosT5TrainConfig",
    "ConfigError",
    "DataConfig",
    "DistanceHeadTrainConfig",
    "DistillConfig",
    "OptimConfig",
    "RunConfig",
    "RunSection",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "flat",
    "load_config",
    "load_yaml",
    "model_config",
    "model_section",
    "updated",
]

DEFAULT_FAMILY = "timer_xl"  # a model section without `name` (configs predating the registry)
# Trainer-specific sections (None when absent) and the entry point each belongs to; a recipe
# with settings of its own adds its line here and its field to RunConfig.
RECIPE_OWNERS = {
    "distill": "python -m train.distill",
    "chronos_t5": "python -m train.chronos_t5",
    "distance_head": "python -m train.distance_head",
    "chronos2": "python -m train.chronos2",
    "timer_hf": "python -m train.target",
}
RECIPE_SECTIONS = tuple(RECIPE_OWNERS)


class ConfigError(ValueError):
    """A run configuration that is malformed, has unknown keys or ill-typed values."""


class _Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


def _one_or_many(value: Any) -> Any:
    # `--set run.horizons=96` means one horizon
    return (
        [value] if isinstance(value, int | float | str) and not isinstance(value, bool) else value
    )


def _not_empty(value: tuple) -> tuple:
    if not value:
        raise ValueError("must not be empty")
    return value


Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class DataConfig(_Section):
    dataset: str = "ETTh1"  # a name (resolved by jaxts.data.resolve_path) or a CSV path
    data_dir: str | None = None
    seq_len: Positive = 672


class OptimConfig(_Section):
    learning_rate: PositiveFloat = 1e-4
    batch_size: Positive = 32
    train_epochs: Positive = 10
    patience: Positive = 3
    lradj: Literal["type1", "cosine"] = "type1"  # halve every epoch from epoch 2, or cosine
    tmax: Positive = 10  # cosine period in epochs (OpenLTM --tmax)
    weight_decay: NonNegative = 0.0  # coupled L2, as torch.optim.Adam(weight_decay=...)
    valid_last: bool = False  # validate on the last token's patch only (OpenLTM --valid_last)
    seed: int = 2021
    max_steps_per_epoch: Positive | None = None  # cap for smoke runs; None = full epoch


class RunSection(_Section):
    out_dir: str = "runs/timer_xl_etth1"
    ckpt_every_steps: Positive = 200  # plus one checkpoint at every epoch end
    log_every_steps: Positive = 50  # metrics.jsonl line every N steps (plus one per epoch)
    max_to_keep: Positive = 2  # resumable checkpoints kept (the best model is exported apart)
    horizons: tuple[Positive, ...] = (96, 192, 336, 720)
    eval_batch_size: Positive = 64
    progress: bool = True  # tqdm bars

    _horizons_in = pydantic.field_validator("horizons", mode="before")(_one_or_many)
    _horizons_out = pydantic.field_validator("horizons")(_not_empty)


class DistillConfig(_Section):
    """Knowledge distillation of a STRIDE draft from a frozen teacher (``train.distill``).

    The ``model`` section of a distillation run describes the *teacher*; it is read from a jaxts
    teacher's checkpoint when left out. The draft is ``draft_config(teacher, scale_*, ...)``.
    """

    # A jaxts model directory (train.timer_xl's RUN/best) or an OpenLTM/STRIDE checkpoint.pth.
    teacher: str | None = None
    # 'auto' (a directory is a jaxts checkpoint, a file an OpenLTM one), 'jaxts' or 'openltm'.
    teacher_format: Literal["auto", "jaxts", "openltm"] = "auto"
    # STRIDE's --draft_scale_*; null keeps the teacher's value.
    scale_d_model: PositiveFloat | None = 0.25
    scale_n_heads: PositiveFloat | None = 0.25
    scale_d_ff: PositiveFloat | None = 0.25
    scale_e_layers: PositiveFloat | None = 0.25
    stochastic: bool = False  # --draft_stochastic: mean + log-variance heads, Gaussian NLL loss
    var_reg: NonNegative = 0.0  # --draft_nll_var_reg: var_reg * mean(relu(-logvar - 5))
    teacher_noise: NonNegative = 0.0  # --draft_teacher_noise: teacher targets + noise * N(0, 1)
    # --draft_teacher_dropout: > 0 runs the teacher with dropout at this rate
    teacher_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    init_from: str | None = None  # a pretrained draft (jaxts directory or .pth) to start from


class ChronosT5TrainConfig(_Section):
    """Chronos-T5 pre-training / fine-tuning on random windows (``train.chronos_t5``).

    An "epoch" is ``steps_per_epoch`` optimizer steps; the run is ``optim.train_epochs`` of
    them. The learning rate follows ``schedule`` per step (peak ``optim.learning_rate`` after
    ``warmup_steps`` of linear warmup), with AdamW (decoupled ``optim.weight_decay``) and global
    gradient-norm clipping at ``grad_clip``. ``optim.lradj``, ``tmax``, ``patience``,
    ``valid_last`` and ``max_steps_per_epoch`` do not apply.
    """

    # Series sources: ETT / weather names (train split, every column) and 'm4_hourly'.
    datasets: tuple[str, ...] = (
        "ETTh1", "ETTh2", "ETTm1", "ETTm2", "weather", "m4_hourly",
    )  # fmt: skip
    steps_per_epoch: Positive = 500
    min_past: Positive = 60  # observed values before a window's forecast start (Chronos' min_past)
    schedule: Literal["linear", "cosine", "constant"] = "linear"  # per-step, after warmup
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    grad_clip: NonNegative = 1.0  # HF Trainer max_grad_norm; 0 = off
    # Fine-tune from an HF Chronos dir / hub id or a jaxts model dir: its weights initialise the
    # model section's model (same parameter shapes), or give the model when the section is absent.
    init_from: str | None = None

    _datasets_in = pydantic.field_validator("datasets", mode="before")(_one_or_many)
    _datasets_out = pydantic.field_validator("datasets")(_not_empty)


class DistanceHeadTrainConfig(_Section):
    """Head-only training of a distance-aware Chronos head on a frozen Chronos-T5
    (``train.distance_head``); the ``model`` section, when given, is the head's
    (``name: distance_head``; ``hidden_size`` / ``num_bins`` must be the base's ``d_model`` /
    ``n_tokens``).

    Windows as ``chronos_t5`` (``datasets``, ``min_past``) with their own lengths; AdamW
    (``optim.learning_rate``, ``optim.weight_decay``) on the per-step ``schedule``, clipping at
    ``grad_clip``; an "epoch" is ``steps_per_epoch`` steps. ``optim.lradj``, ``tmax``,
    ``patience``, ``valid_last`` and ``max_steps_per_epoch`` do not apply.
    """

    # The frozen Chronos-T5: an HF Chronos dir / hub id or a jaxts chronos_t5 model dir.
    base: str | None = None
    datasets: tuple[str, ...] = (
        "ETTh1", "ETTh2", "ETTm1", "ETTm2", "weather", "m4_hourly",
    )  # fmt: skip
    # Values per window: upstream's 80/20 split of 512 (409 context, 103 label values); null
    # takes the base's chronos context_length / prediction_length.
    context_length: Positive | None = 409
    prediction_length: Positive | None = 103
    min_past: Positive = 60
    # 'shifted': the decoder input is the labels shifted right behind PAD (Chronos' teacher
    # forcing); 'upstream': the unshifted labels (the published run's feeding, which lets
    # position t see its own label), for reproduction only.
    feeding: Literal["shifted", "upstream"] = "shifted"
    # 'combined': combined_ordinal_loss (upstream); 'gaussian_v2': gaussian_soft_label_loss;
    # 'ce': plain token cross-entropy (the control).
    loss: Literal["combined", "gaussian_v2", "ce"] = "combined"
    # combined: ordinal CE, smooth labels, EMD weights
    weights: tuple[NonNegative, NonNegative, NonNegative] = (0.5, 0.3, 0.2)
    alpha: NonNegative = 1.0  # ordinal CE's distance penalty weight
    beta: PositiveFloat = 0.1  # smooth labels' Laplace kernel rate
    sigma: PositiveFloat = 2.0  # v2 Gaussian soft labels' width in bins
    steps_per_epoch: Positive = 500
    schedule: Literal["linear", "cosine", "constant"] = "cosine"  # per-step, after warmup
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    grad_clip: NonNegative = 1.0  # 0 = off

    _datasets_in = pydantic.field_validator("datasets", mode="before")(_one_or_many)
    _datasets_out = pydantic.field_validator("datasets")(_not_empty)


class Chronos2TaskWeights(_Section):
    """Mixture weights of the task kinds of a Chronos-2 training slot (``train.chronos2_data``),
    normalised to sum 1; a kind the data cannot serve is dropped."""

    univariate: NonNegative = 0.3  # series alone, each its own group
    multivariate: NonNegative = 0.3  # variates of one window together, all targets
    covariates: NonNegative = 0.2  # the same, some variates known future covariates
    cross_learning: NonNegative = 0.2  # unrelated M4 series in one group


class Chronos2TrainConfig(_Section):
    """Chronos-2 training on random multi-series tasks (``train.chronos2``).

    ``optim.batch_size`` counts task slots of ``max_group_size`` rows each (the model sees
    ``batch_size * max_group_size`` series per step). An "epoch" is ``steps_per_epoch`` steps,
    after which the loss on ``val_tasks`` fixed slots of the val splits is computed and the best
    model by it exported (early stopping after ``optim.patience`` epochs without improvement).
    AdamW (``optim.learning_rate``, decoupled ``optim.weight_decay``) on the per-step
    ``schedule`` after ``warmup_steps``, global-norm clipping at ``grad_clip``.
    ``optim.lradj``, ``tmax``, ``valid_last`` and ``max_steps_per_epoch`` do not apply.
    ``init_from`` fine-tunes a trained Chronos-2 (upstream's ``fit`` uses a rate of 1e-6).
    """

    # Sources: ETT / weather names or CSV paths (every column a variate) and 'm4_hourly'.
    datasets: tuple[str, ...] = (
        "ETTh1", "ETTh2", "ETTm1", "ETTm2", "weather", "m4_hourly",
    )  # fmt: skip
    task_weights: Chronos2TaskWeights = Chronos2TaskWeights()
    max_group_size: Annotated[int, Field(ge=2)] = 8  # rows per slot = the largest group
    # Forecast patches per window (horizon = this x output_patch_size); null: the model's
    # max_output_patches.
    num_output_patches: Positive | None = None
    min_past: Positive = 32  # the shortest context drawn (and the least history a window needs)
    short_context_prob: Annotated[float, Field(ge=0, le=1)] = 0.3  # else the full context
    fill: Literal["univariate", "nan"] = "univariate"  # rows a group task leaves free
    # relative weight of a data set when a task kind draws its source (default 1 each)
    source_weights: dict[str, PositiveFloat] = {}
    steps_per_epoch: Positive = 100  # validation and best/ every this many steps
    val_tasks: Annotated[int, Field(ge=0)] = 64  # slots of the val splits; 0: no validation
    schedule: Literal["linear", "cosine", "constant"] = "cosine"  # per-step, after warmup
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    grad_clip: NonNegative = 1.0  # 0 = off
    # Fine-tune from an HF Chronos-2 dir / hub id / LoRA adapter dir or a jaxts chronos2 dir:
    # its weights initialise the model section's model (same parameter shapes), or give the
    # model when the section is absent.
    init_from: str | None = None

    _datasets_in = pydantic.field_validator("datasets", mode="before")(_one_or_many)
    _datasets_out = pydantic.field_validator("datasets")(_not_empty)


class TimerHFTrainConfig(_Section):
    """Fine-tuning the pretrained HF Timer (``model.name: timer_hf``) with ``train.target``."""

    # An HF Timer dir / hub id (thuml/timer-base-84m) or a jaxts timer_hf dir: its weights
    # initialise the model section's model (same parameter shapes), or give the model when the
    # section is absent.
    init_from: str | None = None


def _family_section(name: str) -> type[pydantic.BaseModel]:
    """The ``model`` section of family ``name``: its config's fields plus ``name``."""
    base = config_model(FAMILIES[name].config_class())
    return pydantic.create_model(
        f"{base.__dataclass__.__name__}Section", __base__=base, name=(Literal[name], name)
    )


_MODEL_SECTIONS = {name: _family_section(name) for name in FAMILIES}
ModelSection = Annotated[Union[tuple(_MODEL_SECTIONS.values())], Field(discriminator="name")]  # noqa: UP007


class RunConfig(_Section):
    """A whole run. ``model`` is None only where the trainer can read it from a checkpoint (a
    distillation's jaxts teacher, a Chronos fine-tune's ``init_from``, a distance head's base);
    the recipe sections (:data:`RECIPE_OWNERS`) are None unless given (and then left out of
    :meth:`to_dict`)."""

    model: ModelSection | None = None
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    run: RunSection = RunSection()
    distill: DistillConfig | None = None
    chronos_t5: ChronosT5TrainConfig | None = None
    distance_head: DistanceHeadTrainConfig | None = None
    chronos2: Chronos2TrainConfig | None = None
    timer_hf: TimerHFTrainConfig | None = None

    @pydantic.field_validator("model", mode="before")
    @classmethod
    def _default_family(cls, value: Any) -> Any:
        if isinstance(value, dict) and "name" not in value:
            return {"name": DEFAULT_FAMILY, **value}
        return value

    def to_dict(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        for key in ("model", *RECIPE_SECTIONS):
            if out[key] is None:
                del out[key]
        if "model" in out:  # the family first, as a reader looks for it
            out["model"] = {"name": out["model"].pop("name"), **out["model"]}
        return out


def model_section(config) -> pydantic.BaseModel:
    """The ``model`` section holding model config ``config`` (e.g. a teacher's, read from its
    checkpoint), to put into a RunConfig with :func:`updated`."""
    name = next(n for n, f in FAMILIES.items() if type(config) is f.config_class())
    return _MODEL_SECTIONS[name].model_validate({"name": name, **config.to_dict()})


def model_config(cfg: RunConfig):
    """The model's config dataclass (a ``TimerXLConfig``, a ``ChronosT5Config``) of ``cfg``."""
    if cfg.model is None:
        raise ConfigError("the run config has no model section")
    return build(FAMILIES[cfg.model.name].config_class(), cfg.model)


def _relocated(err: pydantic.ValidationError) -> pydantic.ValidationError:
    """``err`` with the discriminator tag taken out of the model section's paths: pydantic says
    ``model.chronos_t5.t5.d_model`` where the file has ``model.t5.d_model``."""
    details = []
    for e in err.errors():
        loc, value = e["loc"], e["input"]
        if loc[:1] == ("model",) and len(loc) > 1 and loc[1] in FAMILIES:
            loc = ("model", *loc[2:])
        elif loc == ("model",) and e["type"] == "union_tag_invalid":
            loc, value = ("model", "name"), e["ctx"]["tag"]
        details.append({"type": e["type"], "loc": loc, "input": value, "ctx": e.get("ctx", {})})
    return pydantic.ValidationError.from_exception_data(err.title, details)


def config_from_dict(raw: Any, source: str = "run config") -> RunConfig:
    """Validate a nested mapping; every problem is listed in one ConfigError (one line)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a run config must be a mapping, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except pydantic.ValidationError as e:
        raise ConfigError(f"{source}: " + "; ".join(format_errors(_relocated(e)))) from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-4`` (no dot) is a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error is one ConfigError line naming ``source`` and where."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None


def _set(raw: dict[str, Any], key: str, value: Any, what: str) -> None:
    """``raw[a][b]... = value`` for dotted ``key``, creating missing mappings."""
    *parents, last = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if child is None:  # an empty section in YAML (`distill:`)
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {'.'.join(parents[: i + 1])} is not a mapping")
        node = child
    node[last] = value


def _copy(raw: Any) -> Any:
    return {k: _copy(v) for k, v in raw.items()} if isinstance(raw, dict) else raw


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``section.key[.key...]=value`` strings to a raw nested mapping (values parsed as
    YAML); returns a new mapping."""
    out = _copy(raw)
    for item in overrides or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or "." not in key or not all(key.split(".")):
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        value = load_yaml(text, f"--set {item!r}") if text.strip() else None
        _set(out, key, value, f"--set {item!r}")
    return out


def updated(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    """``cfg`` with dotted keys set (``{"run.out_dir": path}``; a value may be a section such
    as :func:`model_section`'s), validated again. Values are taken as given, never YAML-parsed:
    a path may look like a number or null."""
    raw = cfg.to_dict()
    for key, value in values.items():
        if isinstance(value, pydantic.BaseModel):
            value = value.model_dump(mode="json")
        _set(raw, key, value, key)
    return config_from_dict(raw)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (``None``: all defaults), apply overrides, validate."""
    raw: Any = {}
    source = "run config"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        source = str(path)
        raw = load_yaml(path.read_text(), source)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a run config must be a mapping")
    return config_from_dict(apply_overrides(raw, overrides), source)


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config (defaults filled in, overrides applied) as YAML."""
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept whole)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
