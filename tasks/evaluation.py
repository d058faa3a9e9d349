"""Compile + check, profile, diagnose: one task per candidate, fanned out; the harness isolates
each in its own worker. Each result is handed back the moment it ends, to be committed."""

from typing import Any, Iterator, Sequence

from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from kevolve.evaluate.result import Evaluation
from kevolve.search import stages
from kevolve.search.tree import Node


def _run_name() -> str:
    from prefect.runtime import task_run

    return f"evaluate-{task_run.parameters['candidate'].code_hash}"


evaluate_task = task(stages.evaluate, name="evaluate", task_run_name=_run_name, cache_policy=NO_CACHE)
remeasure_task = task(stages.remeasure, name="remeasure", cache_policy=NO_CACHE)


def evaluate_all(evaluator: Any, nodes: Sequence[Node]) -> Iterator[tuple[Node, Evaluation]]:
    if not nodes:
        return
    futures = evaluate_task.map(unmapped(evaluator), [n.candidate for n in nodes])
    node_of = {f.task_run_id: node for f, node in zip(futures, nodes)}
    for future in as_completed(list(futures)):
        yield node_of[future.task_run_id], future.result()
