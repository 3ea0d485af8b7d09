"""Validation of the frozen model configs (``TimerXLConfig``, ``T5Config``, ``ChronosT5Config``...).

The configs stay plain frozen dataclasses (hashable jit statics, shared with the PyTorch
references); their field list is written once, in the dataclass. :func:`config_model` derives
a pydantic v2 model from it (same names, types and defaults; ``extra="forbid"``, frozen; a
nested dataclass field becomes a nested model), which every reader of a config uses:
``DictConfig.from_dict`` (``config.json`` of a checkpoint) and the run-config loader of
``train.config`` (the ``model`` section of a YAML file). So an unknown key, a string where a
number belongs or a value the dataclass' ``__post_init__`` rejects is reported with its path,
all problems at once.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

import pydantic

__all__ = [
    "DictConfig",
    "build",
    "config_model",
    "format_errors",
    "from_dict",
    "require_positive",
]

_STRICT = pydantic.ConfigDict(extra="forbid", frozen=True)


def _model_type(tp: Any) -> Any:
    """``tp`` with every dataclass in it replaced by its derived model."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return config_model(tp)
    args = typing.get_args(tp)
    if not args:
        return tp
    origin = typing.get_origin(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        return typing.Union[tuple(_model_type(a) for a in args)]  # noqa: UP007
    return origin[tuple(_model_type(a) for a in args)] if origin is not None else tp


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        factory = f.default_factory
        return pydantic.Field(default_factory=lambda: _to_model_value(factory()))
    return ...


def _to_model_value(value: Any) -> Any:
    """A default value in the form the model stores it (a nested dataclass as its model)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_model(type(value))(**dataclasses.asdict(value))
    return value


@functools.cache
def config_model(cls: type) -> type[pydantic.BaseModel]:
    """The pydantic model of dataclass ``cls``; validating it also builds ``cls`` once, so the
    dataclass' own checks (``__post_init__``) report at the same path."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: (_model_type(hints[f.name]), _default(f)) for f in dataclasses.fields(cls)}

    def check(self):
        build(cls, self)  # raises ValueError: pydantic attaches this model's location
        return self

    model = pydantic.create_model(
        f"{cls.__name__}Fields",
        __config__=_STRICT,
        __validators__={"dataclass_checks": pydantic.model_validator(mode="after")(check)},
        **fields,
    )
    model.__dataclass__ = cls
    return model


def _to_dataclass(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel) and hasattr(type(value), "__dataclass__"):
        return build(type(value).__dataclass__, value)
    return value


def build(cls: type, validated: pydantic.BaseModel) -> Any:
    """The dataclass ``cls`` from a validated instance of (a subclass of) its model; fields
    the dataclass does not have (e.g. a run config's ``name``) are left out."""
    return cls(
        **{f.name: _to_dataclass(getattr(validated, f.name)) for f in dataclasses.fields(cls)}
    )


def format_errors(err: pydantic.ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: ``path: message (got value)``."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        got = "" if e["type"] in ("missing", "value_error") else f" (got {e.get('input')!r})"
        lines.append(f"{path or '(top level)'}: {msg}{got}")
    return lines


def from_dict(cls: type, data: Any, what: str | None = None):
    """Validate a mapping against dataclass ``cls``; a ValueError lists every problem."""
    if not isinstance(data, dict):
        raise ValueError(f"{what or cls.__name__}: expected a mapping, got {type(data).__name__}")
    try:
        return build(cls, config_model(cls).model_validate(data))
    except pydantic.ValidationError as e:
        raise ValueError(
            f"invalid {what or cls.__name__}: " + "; ".join(format_errors(e))
        ) from None


def require_positive(config, *names: str) -> None:
    """For a config's ``__post_init__``: a ValueError naming the first of ``names`` whose value
    is not > 0 (pydantic puts the config's path in front)."""
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")


class DictConfig:
    """Mixin for frozen dataclass configs: ``from_dict`` validates (unknown keys, types, the
    dataclass' own checks; a typo in a config file must fail, not be silently ignored);
    ``to_dict`` is the inverse."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
