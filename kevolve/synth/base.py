"""The contract between the search and the synthesizers (offline templates, LLM)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kevolve.candidate import Candidate, Origin
from kevolve.errors import KevolveError
from kevolve.evaluate.result import Diagnosis
from kevolve.hardware.calibrate import Ceilings
from kevolve.hardware.target import HardwareTarget
from kevolve.knowledge.types import RetrievedDoc, Skill
from kevolve.specs.model import OperatorSpec

MEMORY_MODES = ("inherit", "siblings", "restart")


@dataclass(frozen=True)
class Attempt:
    """A past candidate and what became of it, as a synthesizer sees it."""

    code: str
    origin: Origin
    outcome: str  # an Outcome value
    speedup: float | None = None
    time_ms: float | None = None
    error: str = ""
    diagnosis: Diagnosis | None = None


@dataclass(frozen=True)
class SynthesisRequest:
    spec: OperatorSpec
    target: HardwareTarget
    ceilings: Ceilings
    memory_mode: str = "inherit"  # inherit the parent's history | compare with siblings | restart
    parent: Attempt | None = None  # None: seeds from the reference
    history: tuple[Attempt, ...] = ()  # the parent's ancestors, oldest first (inherit)
    siblings: tuple[Attempt, ...] = ()  # the parent's other children (siblings)
    knowledge: tuple[RetrievedDoc, ...] = ()
    skills: tuple[Skill, ...] = ()
    n: int = 1  # how many candidates to return at most


class Synthesizer(Protocol):
    name: str

    def propose(self, request: SynthesisRequest) -> list[Candidate]:
        """New candidates: seeds when request.parent is None, else children of the parent."""
        ...


class SynthesisError(KevolveError):
    """The synthesizer cannot produce candidates for this request (says why, and what to do)."""
