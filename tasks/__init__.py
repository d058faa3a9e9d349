"""Prefect tasks over the engine's stage functions (kevolve.search.stages). A task adds what
orchestration brings (retries for infrastructure failures, fan-out, a name in the UI) and
nothing else; the work stays in the engine, which also runs without Prefect."""

from kevolve.search.config import TuneSettings
from kevolve.search.stages import Stages


def task_stages(settings: TuneSettings) -> Stages:
    from tasks.evaluation import evaluate_all, remeasure_task
    from tasks.learning import distill_task
    from tasks.retrieval import retrieve_task
    from tasks.selection import select_task
    from tasks.synthesis import synthesize_task

    synthesize = synthesize_task.with_options(retries=settings.llm_outage_retries,
                                              retry_delay_seconds=settings.llm_outage_wait_s)
    return Stages(select=select_task, retrieve=retrieve_task, synthesize=synthesize, evaluate_all=evaluate_all,
                  remeasure=remeasure_task, distill=distill_task)
