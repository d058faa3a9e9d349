"""An evaluator that travels to other processes and hosts.

An Evaluator holds threads, pipes and worker processes: nothing that pickles. A task runner whose
tasks run elsewhere (a Dask cluster spread over GPU hosts) is sent an EvaluatorRecipe instead;
each process builds the Evaluator it describes once, keeps its workers warm for the next task,
and closes it when the process exits. Every host needs the same checkout (the spec's path).
"""

from __future__ import annotations

import atexit
import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from kevolve.candidate import Candidate
from kevolve.evaluate.result import Evaluation

if TYPE_CHECKING:
    from kevolve.evaluate.evaluator import Evaluator, TimingGuard


@dataclass(frozen=True)
class EvaluatorRecipe:
    spec: str  # the spec file
    target: str  # a hardware target's name
    workers: int | None = None
    timeout_s: float = 120.0
    baselines: bool = True
    timing_guard: "TimingGuard | None" = None  # must pickle: a module-level function

    def build(self) -> "Evaluator":
        from kevolve.evaluate.evaluator import Evaluator
        from kevolve.hardware import load_target
        from kevolve.specs import load_spec

        return Evaluator(load_spec(self.spec), load_target(self.target), workers=self.workers,
                         timeout_s=self.timeout_s, baselines=self.baselines, timing_guard=self.timing_guard)

    # The Evaluator's interface, answered by this process's evaluator.
    def evaluate(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        evaluations = evaluator_here(self).evaluate(candidates)
        _counts[self] += len(evaluations)
        return evaluations

    def remeasure(self, candidate: Candidate) -> Evaluation:
        return self.evaluate([candidate])[0]

    def cache_key(self, candidate: Candidate) -> str:
        return evaluator_here(self).cache_key(candidate)


_evaluators: dict[EvaluatorRecipe, "Evaluator"] = {}
_counts: Counter[EvaluatorRecipe] = Counter()
_lock = threading.Lock()


def evaluator_here(recipe: EvaluatorRecipe) -> "Evaluator":
    """This process's evaluator for the recipe, built on first use."""
    with _lock:
        if recipe not in _evaluators:
            _evaluators[recipe] = recipe.build()
        return _evaluators[recipe]


def evaluations_here() -> int:
    """How many candidates this process evaluated for recipes sent to it."""
    return sum(_counts.values())


@atexit.register
def close_all() -> None:
    with _lock:
        while _evaluators:
            _evaluators.popitem()[1].close()
