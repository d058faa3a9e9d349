"""Synthesize: candidates from the LLM or the offline templates. An LLM endpoint that is down is
an infrastructure failure: the task is retried after a wait, and if it stays down the run stops,
resumable. A bad kernel is never a reason to retry: it is a result."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from kevolve.search import stages
from tasks.retry import infrastructure_failure

synthesize_task = task(stages.synthesize, name="synthesize", cache_policy=NO_CACHE,
                       retry_condition_fn=infrastructure_failure)
