"""When a search ends: its evaluation budget, its wall time, stalling, or reaching its goal."""

from __future__ import annotations

from dataclasses import dataclass

from kevolve.search.config import SearchConfig
from kevolve.search.tree import SearchTree


@dataclass(frozen=True)
class Progress:
    evaluations: int  # candidates evaluated or in flight
    elapsed_s: float  # over every session of the run
    since_best: int  # evaluations since the best so far appeared
    best_speedup: float | None  # of the promoted (re-measured) best; None where nothing is timed

    @staticmethod
    def of(tree: SearchTree, elapsed_s: float, best_speedup: float | None) -> "Progress":
        return Progress(len(tree), elapsed_s, tree.evaluations_since_best(), best_speedup)


def stop_reason(config: SearchConfig, progress: Progress) -> str | None:
    """Why the search should stop now, or None to go on."""
    if config.target_speedup is not None and progress.best_speedup is not None \
            and progress.best_speedup >= config.target_speedup:
        return f"reached the target speedup {config.target_speedup:g}x ({progress.best_speedup:.2f}x)"
    if progress.evaluations >= config.budget:
        return f"evaluation budget spent ({progress.evaluations} of {config.budget})"
    if config.wall_time_s is not None and progress.elapsed_s >= config.wall_time_s:
        return f"wall time spent ({progress.elapsed_s:.0f} s of {config.wall_time_s:g} s)"
    if config.stall_patience is not None and progress.since_best >= config.stall_patience:
        return f"stalled: {progress.since_best} evaluations without a better kernel"
    return None


def remaining(config: SearchConfig, progress: Progress) -> int:
    return max(0, config.budget - progress.evaluations)
