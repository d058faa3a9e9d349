"""What the knowledge base hands the rest of the system."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from kevolve.candidate import Transform


@dataclass(frozen=True)
class RetrievedDoc:
    source: str  # path under knowledge/ and the heading it sits under: "targets/h100.md#Memory"
    title: str
    text: str
    score: float  # similarity, higher is closer
    metadata: Mapping[str, Any] = field(default_factory=dict)  # target, family, kind


@dataclass(frozen=True)
class Skill:
    """A strategy that paid once, distilled so it can be tried first next time."""

    id: str
    operator: str
    family: str
    target: str
    shape_class: str  # e.g. "rows=8192 cols=8192"
    change: str  # what changed, in words
    transforms: tuple[Transform, ...]  # the same change as data, for the offline synthesizer
    motivation: str  # the diagnosis that led to it
    before_ms: float
    after_ms: float
    successes: int = 1
    failures: int = 0

    @property
    def gain(self) -> float:
        return self.before_ms / self.after_ms if self.after_ms > 0 else 1.0
