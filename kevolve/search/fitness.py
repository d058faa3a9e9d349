"""Fitness: the speedup over a baseline, with correctness as a gate.

A wrong, crashed or rejected candidate scores 0 and stays in the tree with its errors, which its
children's prompts carry. Under Triton's interpreter there is no kernel speed to speak of, so a
correct candidate scores 1: the search ranks by correctness only and breaks ties by order (the
first correct kernel stays best). The run summary says so.
"""

from __future__ import annotations

from kevolve.evaluate.result import BASELINE_NAMES, Baselines, Evaluation, Timing

BASELINE_SETS: dict[str, tuple[str, ...]] = {
    "fastest": BASELINE_NAMES,
    "eager": ("eager",),
    "compile": ("compile_default", "compile_max_autotune"),
}

CORRECT_UNTIMED = 1.0  # a correct candidate with no speed to compare (interpreter, no baseline)

INTERPRETER_NOTE = ("kernels ran under Triton's interpreter: fitness is correctness only (a correct kernel "
                    "scores 1, ties go to the earlier one); no timing here is a kernel speed")


def baseline_timing(evaluation: Evaluation, baseline: str,
                    baselines: Baselines | None = None) -> tuple[str, Timing] | None:
    """The baseline the speedup is over: the evaluation's own, else the run's."""
    timed_with = evaluation.baselines or baselines
    if timed_with is None:
        return None
    return timed_with.fastest(BASELINE_SETS[baseline])


def speedup(evaluation: Evaluation, baseline: str, baselines: Baselines | None = None) -> float | None:
    """Baseline time over candidate time, or None where there is no speed to compare."""
    if not evaluation.correct or evaluation.timing is None or evaluation.timing.interpreter:
        return None
    base = baseline_timing(evaluation, baseline, baselines)
    if base is None or base[1].interpreter or evaluation.timing.median_ms <= 0:
        return None
    return base[1].median_ms / evaluation.timing.median_ms


def fitness(evaluation: Evaluation, baseline: str, baselines: Baselines | None = None) -> float:
    if not evaluation.correct:
        return 0.0
    s = speedup(evaluation, baseline, baselines)
    return CORRECT_UNTIMED if s is None else s


def timed(evaluation: Evaluation) -> bool:
    """True when the evaluation carries a kernel speed (not the interpreter's wall clock)."""
    return evaluation.correct and evaluation.timing is not None and not evaluation.timing.interpreter


def within_spread(a_ms: float, b_ms: float, spread: float) -> bool:
    """Two medians closer than `spread` (a fraction of the smaller): timing cannot tell them apart."""
    return abs(a_ms - b_ms) <= spread * min(a_ms, b_ms)


def confirmed_fitness(first: Evaluation, again: Evaluation, baseline: str, noise: float,
                      baselines: Baselines | None = None) -> float:
    """Fitness after re-measuring: the first figure when the two agree within noise (or the
    timings' own spread), else the slower one, since noise makes false elites."""
    a, b = fitness(first, baseline, baselines), fitness(again, baseline, baselines)
    if not again.correct:
        return 0.0
    if not (timed(first) and timed(again)):
        return min(a, b)
    tolerance = max(noise, first.timing.spread, again.timing.spread)
    if within_spread(first.timing.median_ms, again.timing.median_ms, tolerance):
        return a
    return min(a, b)
