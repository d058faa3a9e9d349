"""What a task retries: failures of the infrastructure (an LLM endpoint down, a GPU taken by
other runs, an evaluation worker that could not start), never a kernel that failed its checks,
which the harness returns as a result and never raises."""

from kevolve.errors import GPUBusy, LLMUnavailable
from kevolve.evaluate.pool import WorkerError

INFRASTRUCTURE = (LLMUnavailable, GPUBusy, WorkerError)


def infrastructure_failure(task, task_run, state) -> bool:
    """A Prefect retry_condition_fn."""
    try:
        state.result()
    except INFRASTRUCTURE:
        return True
    except Exception:
        return False
    return False
