"""Dict round trip shared by the frozen model configs (``TimerXLConfig``, ``T5Config``, ...)."""

from __future__ import annotations

import dataclasses
from typing import Any


class DictConfig:
    """Mixin for frozen dataclass configs: ``from_dict`` rejects unknown keys (a typo in a
    config file must fail, not be silently ignored); ``to_dict`` is the inverse."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
