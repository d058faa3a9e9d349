"""Typed results of evaluating a candidate: an outcome, the checks behind it, times with their
spread, the baselines timed beside it, and a diagnosis. Persisted as JSON beside the code."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping


class Outcome(str, Enum):
    CORRECT = "correct"  # passed every check; timed
    WRONG = "wrong"  # ran, but an output (or an input, or a repeat run) was off
    REJECTED = "rejected"  # failed a static check (never ran), or broke the sandbox or ran torch compute
    COMPILE_ERROR = "compile_error"  # did not import or compile
    CRASHED = "crashed"  # raised, or killed its worker (GPU fault, memory limit)
    TIMED_OUT = "timed_out"  # killed at the wall-clock limit


@dataclass(frozen=True)
class Check:
    name: str  # e.g. "static.imports", "trial[seed=3 M=8192,N=8192]", "inputs_unchanged"
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    trials: int
    method: str  # how it was timed, e.g. "cuda events, L2 flushed, 100 trials"
    interpreter: bool = False  # True: wall clock under TRITON_INTERPRET, never kernel speed

    @property
    def spread(self) -> float:
        """Inter-quantile spread relative to the median."""
        return (self.p80_ms - self.p20_ms) / self.median_ms if self.median_ms > 0 else 0.0


BASELINE_NAMES = ("eager", "compile_default", "compile_max_autotune")


@dataclass(frozen=True)
class Baselines:
    eager: Timing | None = None
    compile_default: Timing | None = None
    compile_max_autotune: Timing | None = None
    errors: Mapping[str, str] = field(default_factory=dict)  # why a baseline is missing

    def get(self, name: str) -> Timing | None:
        return getattr(self, name)

    def fastest(self, among: tuple[str, ...] = BASELINE_NAMES) -> tuple[str, Timing] | None:
        timed = [(n, self.get(n)) for n in among if self.get(n) is not None]
        return min(timed, key=lambda nt: nt[1].median_ms) if timed else None

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "Baselines":
        return _build(Baselines, d)


@dataclass(frozen=True)
class KernelStats:
    """What the compiler reports for one compiled kernel, and the occupancy it implies."""

    name: str
    num_regs: int
    num_spills: int
    shared_bytes: int
    num_warps: int
    num_stages: int
    occupancy_warps_per_sm: int | None = None
    occupancy_limiter: str = ""  # registers | shared memory | warps | blocks


@dataclass(frozen=True)
class Diagnosis:
    bound: str  # memory | compute | occupancy | launch | latency | unknown
    summary: str  # a few sentences naming the bottleneck
    suggestions: tuple[str, ...] = ()  # the next things to try, most promising first
    flops: float = 0.0
    min_bytes: float = 0.0
    arithmetic_intensity: float = 0.0  # FLOP per byte
    floor_ms: float = 0.0  # roofline floor from measured ceilings
    fraction_of_floor: float | None = None  # floor / achieved time (1.0 = at the roofline)
    achieved_gbps: float | None = None
    achieved_tflops: float | None = None
    kernels: tuple[KernelStats, ...] = ()
    ncu: Mapping[str, float] = field(default_factory=dict)  # where ncu ran
    ceilings_source: str = ""  # measured | datasheet


@dataclass(frozen=True)
class Evaluation:
    candidate_hash: str
    spec_name: str
    target: str
    device: str
    dims: Mapping[str, int]
    outcome: Outcome
    checks: tuple[Check, ...] = ()
    error: str = ""  # the compiler's or the crash's text, trimmed
    timing: Timing | None = None
    baselines: Baselines | None = None
    diagnosis: Diagnosis | None = None
    wall_s: float = 0.0  # what the evaluation cost
    started_at: str = ""
    phases: Mapping[str, float] = field(default_factory=dict)  # seconds by phase (evaluate/phases.py)

    @property
    def correct(self) -> bool:
        return self.outcome is Outcome.CORRECT

    def speedup(self, over: str = "fastest") -> float | None:
        """Baseline time over candidate time; `over` is a baseline name or "fastest"."""
        if not self.correct or self.timing is None or self.baselines is None or self.timing.interpreter:
            return None
        if over == "fastest":
            best = self.baselines.fastest()
            base = best[1] if best else None
        else:
            base = self.baselines.get(over)
        return base.median_ms / self.timing.median_ms if base else None

    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "Evaluation":
        return _build(Evaluation, d)

    @staticmethod
    def from_json(text: str) -> "Evaluation":
        return Evaluation.from_dict(json.loads(text))


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_NESTED = {
    (Evaluation, "outcome"): Outcome,
    (Evaluation, "checks"): (Check,),
    (Evaluation, "timing"): Timing,
    (Evaluation, "baselines"): Baselines,
    (Evaluation, "diagnosis"): Diagnosis,
    (Baselines, "eager"): Timing,
    (Baselines, "compile_default"): Timing,
    (Baselines, "compile_max_autotune"): Timing,
    (Diagnosis, "kernels"): (KernelStats,),
    (Diagnosis, "suggestions"): (str,),
}


def _build(cls, d: Mapping[str, Any]):
    if d is None:
        return None
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in d.items():
        if key not in names:
            continue  # written by a newer version; ignore
        kind = _NESTED.get((cls, key))
        if value is None or kind is None:
            kwargs[key] = value
        elif kind is Outcome:
            kwargs[key] = Outcome(value)
        elif isinstance(kind, tuple):
            item = kind[0]
            kwargs[key] = tuple(_build(item, v) if dataclasses.is_dataclass(item) else v for v in value)
        else:
            kwargs[key] = _build(kind, value)
    return cls(**kwargs)
