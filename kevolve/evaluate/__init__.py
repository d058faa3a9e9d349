"""The judge: every candidate compiled, checked and timed in isolation, with a diagnosis.

`Evaluator` (evaluator.py) is the entry point; `save_evaluation` persists a result beside its code.
"""

from kevolve.evaluate.result import (
    Baselines, Check, Diagnosis, Evaluation, KernelStats, Outcome, Timing,
)

__all__ = ["Baselines", "Check", "Diagnosis", "Evaluation", "Evaluator", "KernelStats", "Outcome", "Timing",
           "save_evaluation"]


def __getattr__(name: str):
    # The evaluator pulls in the worker pool; load it only when asked for.
    if name in ("Evaluator", "save_evaluation"):
        from kevolve.evaluate import evaluator

        return getattr(evaluator, name)
    raise AttributeError(name)
