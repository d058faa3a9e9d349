"""Synthesize: candidates from the LLM or the offline templates. An LLM endpoint that is down is
an infrastructure failure: the task is retried after a wait, and if it stays down the run stops,
resumable. A bad kernel is never a reason to retry: it is a result."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from kevolve.errors import LLMUnavailable
from kevolve.search import stages


def endpoint_down(task, task_run, state) -> bool:
    try:
        state.result()
    except LLMUnavailable:
        return True
    except Exception:
        return False
    return False


synthesize_task = task(stages.synthesize, name="synthesize", cache_policy=NO_CACHE,
                       retry_condition_fn=endpoint_down)
