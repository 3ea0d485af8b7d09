"""What every search and baseline returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SearchResult"]


@dataclass(frozen=True)
class SearchResult:
    """One answer of a search or baseline.

    ``tokens``: the generated ids without the prompt (EOS included when the answer ended with
    it); ``reward``: ``reward(tokens)``; ``nfe``: tokens passed through the model by this call
    (``lm.nfe`` after minus before); ``stats``: method-specific statistics, always with
    ``method`` and ``wall_s``.
    """

    tokens: list[int]
    reward: float
    nfe: int
    stats: dict[str, Any] = field(default_factory=dict)
