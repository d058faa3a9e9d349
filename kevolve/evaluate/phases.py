"""Where an evaluation's wall time went: seconds per phase, so that a slow evaluation says
whether it waited (for a worker, for the GPU), started a worker, compiled and checked, or timed."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, contextmanager
from typing import Iterator, TypeVar

T = TypeVar("T")

# queue: for a free worker slot; start: a worker's start (imports, CUDA); wait: for this
# process's lock on the GPU (shared to check, exclusive to time); guard: for the orchestrator's
# timing guard (a GPU slot other processes and hosts share); check: the compile and correctness
# request; time: the timing requests; ncu, release; worker: the part of the requests' round
# trips spent inside the worker (the rest is the parent's side and the pipe).
PHASES = ("queue", "start", "wait", "guard", "check", "time", "ncu", "release")


class PhaseClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - start)

    @contextmanager
    def entering(self, name: str, manager: AbstractContextManager[T]) -> Iterator[T]:
        """Enter `manager`, the time until it lets us in counted as `name`."""
        start = time.monotonic()
        with manager as value:
            self.add(name, time.monotonic() - start)
            yield value

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}
