"""GPU slots: a Prefect global concurrency limit per GPU (`gpu-HOST-DEVICE`, one slot by
default), held around every timing, so two timings never share a GPU whichever run, process or
host they come from. The harness pins each worker to one GPU with CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator

from kevolve.errors import GPUBusy
from kevolve.hardware.calibrate import slug

SLOTS_PER_GPU = int(os.environ.get("KEVOLVE_GPU_SLOTS", "1"))
WAIT_S = float(os.environ.get("KEVOLVE_GPU_WAIT_S", "900"))  # then GPUBusy: the task is retried

_created: set[str] = set()
_lock = threading.Lock()


def limit_name(gpu: str) -> str:
    return "gpu-" + slug(gpu)


def gpu_slot(gpu: str | None) -> ContextManager[Any]:
    """The Evaluator's timing guard: the GPU's slot; nothing to hold on the CPU."""
    return nullcontext() if gpu is None else _occupied(limit_name(gpu))


@contextmanager
def _occupied(name: str) -> Iterator[None]:
    from prefect.concurrency.sync import concurrency

    ensure_limit(name)
    held = False
    try:
        with concurrency(name, occupy=1, timeout_seconds=WAIT_S, strict=True):
            held = True
            yield
    except TimeoutError:
        if held:  # raised by the timing itself, not by the wait
            raise
        raise GPUBusy(f"{name} stayed busy for {WAIT_S:g} s (KEVOLVE_GPU_WAIT_S); another run is timing on it") from None


def ensure_limit(name: str) -> None:
    """Create the GPU's limit once per process (an existing one keeps the slots it has)."""
    with _lock:
        if name in _created:
            return
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
        from prefect.exceptions import ObjectAlreadyExists

        with get_client(sync_client=True) as client:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=SLOTS_PER_GPU))
            except ObjectAlreadyExists:  # made by another process or host
                pass
        _created.add(name)
