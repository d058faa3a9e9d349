"""Where a run's evaluations fan out, chosen by KEVOLVE_TASK_RUNNER:

    threads          (default) threads of the flow's process; its harness spreads them over this host's GPUs
    dask             a temporary Dask cluster on this host (worker processes: tries the path below)
    tcp://HOST:PORT  a running Dask scheduler whose workers run on the GPU hosts, one per host
                     (`dask worker tcp://HOST:8786 --nworkers 1 --nthreads 8`)

Only the evaluate tasks go through the runner (they are .map()ped); the other stages are called
in the flow's own process. On Dask each worker process builds its own evaluator from the recipe
it is sent (kevolve.evaluate.shared) and keeps it warm across tasks.
"""

from __future__ import annotations

import os
from typing import Any

from kevolve.errors import KevolveError

LOCAL_DASK = {"n_workers": 2, "threads_per_worker": 2}


def evaluation_runner(choice: str | None = None) -> Any:
    choice = (choice or os.environ.get("KEVOLVE_TASK_RUNNER") or "threads").strip()
    if choice == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    if choice == "dask" or choice.startswith("tcp://"):
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise KevolveError(f"KEVOLVE_TASK_RUNNER={choice} needs prefect-dask: "
                               "pip install 'kernel-evolve[dask]'") from None
        return DaskTaskRunner(cluster_kwargs=LOCAL_DASK) if choice == "dask" else DaskTaskRunner(address=choice)
    raise KevolveError(f"KEVOLVE_TASK_RUNNER={choice!r} is not a task runner: use threads, dask, "
                       "or the address of a Dask scheduler (tcp://HOST:8786)")
