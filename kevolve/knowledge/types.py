"""What the knowledge base hands the rest of the system."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from kevolve.candidate import Transform
from kevolve.errors import KevolveError


class KnowledgeError(KevolveError):
    """The knowledge base cannot do what was asked: a bad corpus file, an unreachable Chroma
    server, a missing embedding model. Says which, and what to do."""

    exit_code = 2


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
    operators: tuple[str, ...] = ()  # every operator it paid for, `operator` (the first) included

    @property
    def gain(self) -> float:
        return self.before_ms / self.after_ms if self.after_ms > 0 else 1.0

    @property
    def success_rate(self) -> float:
        """Laplace-smoothed share of uses that paid: a skill seen once is not yet a sure thing."""
        return (self.successes + 1) / (self.successes + self.failures + 2)

    @property
    def usefulness(self) -> float:
        """Expected gain from trying it: gain weighted by how often it has paid."""
        return 1.0 + (self.gain - 1.0) * self.success_rate

    def describe(self) -> str:
        """One line for a prompt or a report."""
        line = (f"{self.operator} ({self.family or 'no family'}) on {self.target}, {self.shape_class}: "
                f"{self.change}; {self.before_ms:.4g} ms -> {self.after_ms:.4g} ms ({self.gain:.2f}x), "
                f"paid {self.successes} of {self.successes + self.failures} times")
        return f"{line}; motivated by: {self.motivation}" if self.motivation else line


@dataclass(frozen=True)
class PriorKernel:
    """The best kernel kept from an earlier run, offered as a starting point for a close request."""

    operator: str
    family: str
    target: str
    dims: Mapping[str, int]
    code: str
    config: Mapping[str, Any]
    speedup: float
    evaluation_json: str
    relation: str  # "same operator" or "same family"
    shape_distance: float  # 0 for the same shape; +1 per doubling or halving of a dimension


@dataclass(frozen=True)
class IngestReport:
    """What one ingestion changed in the index; paths are relative to the corpus folder."""

    corpus_dir: str
    embedding: str
    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    chunks_written: int = 0
    chunks_deleted: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} removed, "
                f"{len(self.unchanged)} unchanged; {self.chunks_written} chunks embedded, "
                f"{self.chunks_deleted} deleted ({self.embedding} embedding)")
