"""Prefect tasks over the engine's stage functions (kevolve.search.stages). A task adds what
orchestration brings (retries for infrastructure failures, timeouts, caching, fan-out, a name in
the UI) and nothing else; the work stays in the engine, which also runs without Prefect."""

from functools import partial
from typing import Any, Callable

from kevolve.evaluate.evaluator import BASELINE_TIMEOUT_S
from kevolve.evaluate.pool import SETUP_TIMEOUT_S
from kevolve.search.config import TuneSettings
from kevolve.search.stages import Stages

STAGE_TIMEOUT_S = 600.0  # select, retrieve (a first embedding model load), distill


def task_stages(settings: TuneSettings) -> Stages:
    from tasks.evaluation import evaluate_all, evaluate_task, remeasure_task
    from tasks.learning import distill_task
    from tasks.retrieval import retrieve_task
    from tasks.selection import select_task
    from tasks.synthesis import synthesize_task

    # An evaluation may start a worker, time the baselines (on a host that has not yet), check
    # and time the candidate twice: the harness's own deadlines, with room.
    evaluation_s = SETUP_TIMEOUT_S + BASELINE_TIMEOUT_S + 4 * settings.eval_timeout_s
    synthesis_s = 4 * settings.llm_timeout_s * (settings.llm_retries + 1)
    synthesize = synthesize_task.with_options(retries=settings.llm_outage_retries,
                                              retry_delay_seconds=settings.llm_outage_wait_s,
                                              timeout_seconds=synthesis_s)
    # The evaluate tasks run in the runner's threads, where a Prefect timeout cannot interrupt
    # anything and costs each task a watcher thread and a logged warning: the harness's
    # deadlines (each request to a worker, which is killed past it) bound them instead. The
    # stages below run in the flow's own thread, where a timeout is an alarm, cheap and real.
    evaluate = evaluate_task.with_options(retries=settings.infra_retries)
    remeasure = remeasure_task.with_options(retries=settings.infra_retries, timeout_seconds=evaluation_s)
    return Stages(select=unvisited(select_task.with_options(timeout_seconds=STAGE_TIMEOUT_S)),
                  retrieve=unvisited(retrieve_task.with_options(timeout_seconds=STAGE_TIMEOUT_S)),
                  synthesize=unvisited(synthesize), evaluate_all=partial(evaluate_all, evaluate=evaluate),
                  remeasure=remeasure, distill=unvisited(distill_task.with_options(timeout_seconds=STAGE_TIMEOUT_S)))


def unvisited(stage: Any) -> Callable[..., Any]:
    """The task, its arguments quoted: Prefect otherwise walks through every argument looking for
    futures to wait on, and the run's context and the synthesis requests (kernels, their
    evaluations, the parents' lines) take milliseconds of every call to walk."""
    from prefect.utilities.annotations import quote

    def call(*args: Any) -> Any:
        return stage(*map(quote, args))

    return call
