"""The judge: every candidate compiled, checked and timed in isolation, with a diagnosis."""

from kevolve.evaluate.result import (
    Baselines, Check, Diagnosis, Evaluation, KernelStats, Outcome, Timing,
)

__all__ = ["Baselines", "Check", "Diagnosis", "Evaluation", "KernelStats", "Outcome", "Timing"]
