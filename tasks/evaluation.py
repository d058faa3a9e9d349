"""Compile + check, profile, diagnose: one task per candidate, fanned out with .map(); the
harness isolates each in its own worker. Each result is handed back the moment it ends, to be
committed. A verdict is cached by what decides it (candidate code, spec, target, harness: the
Evaluator's cache_key); re-measures never are. Where the flow's task runner sends tasks to other
processes or hosts (Dask), the evaluator travels as its recipe."""

from typing import Any, Iterator, Sequence

from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.utilities.annotations import quote

from kevolve.evaluate.result import Evaluation
from kevolve.search import stages
from kevolve.search.tree import Node
from tasks.retry import infrastructure_failure


def _verdict_key(context: Any, inputs: dict[str, Any]) -> str | None:
    key = getattr(inputs["evaluator"], "cache_key", None)  # None: an evaluator that cannot say
    return key(inputs["candidate"]) if key is not None else None


evaluate_task = task(stages.evaluate, name="evaluate", task_run_name="evaluate-{candidate.code_hash}",
                     cache_policy=CachePolicy.from_cache_key_fn(_verdict_key), persist_result=True,
                     retry_condition_fn=infrastructure_failure)
remeasure_task = task(stages.remeasure, name="remeasure", cache_policy=NO_CACHE,
                      retry_condition_fn=infrastructure_failure)


def evaluate_all(evaluator: Any, nodes: Sequence[Node], evaluate: Any = evaluate_task
                 ) -> Iterator[tuple[Node, Evaluation]]:
    if not nodes:
        return
    candidates: Any = [n.candidate for n in nodes]
    recipe = getattr(evaluator, "recipe", None)
    if _runs_elsewhere():
        evaluator = evaluator if recipe is None else recipe
    else:  # quoted: no futures hide in them, and Prefect would otherwise walk both in every task
        evaluator, candidates = quote(evaluator), quote(candidates)
    futures = evaluate.map(unmapped(evaluator), candidates)
    node_of = {f.task_run_id: node for f, node in zip(futures, nodes)}
    for future in as_completed(list(futures)):
        yield node_of[future.task_run_id], future.result()


def _runs_elsewhere() -> bool:
    """Whether the flow's task runner sends tasks to other processes or hosts. There the
    evaluator travels as its recipe, and arguments unquoted (a quote reaches a Dask worker as a
    bare tuple)."""
    context = FlowRunContext.get()
    runner = type(context.task_runner).__name__ if context and context.task_runner else ""
    return runner in REMOTE_RUNNERS


REMOTE_RUNNERS = ("DaskTaskRunner", "RayTaskRunner", "ProcessPoolTaskRunner")
