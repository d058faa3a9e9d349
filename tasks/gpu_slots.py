"""GPU slots: a Prefect global concurrency limit per GPU (`gpu-HOST-DEVICE`, one slot by
default), held around every timing, so two timings never share a GPU whichever run, process or
host they come from. The harness pins each worker to one GPU with CUDA_VISIBLE_DEVICES.

A slot is a lease on the limit, taken with the Prefect client's lease calls rather than through
prefect.concurrency, which cost a timing seconds now and then: a local (SQLite) server answers
an acquisition 503 when another write holds its database (the acquisition reads, then writes),
and Prefect's client waits about 2 s before asking again (here: RETRY_AFTER_S); concurrency()
also spends tens of ms of every timing on events and its queue service. Threads of one process
queue for a GPU here first, so the server is asked only when this process is next and no thread
waits out a Retry-After for a slot its own process is about to release."""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator
from uuid import UUID

from kevolve.errors import GPUBusy
from kevolve.hardware.calibrate import slug

SLOTS_PER_GPU = int(os.environ.get("KEVOLVE_GPU_SLOTS", "1"))
WAIT_S = float(os.environ.get("KEVOLVE_GPU_WAIT_S", "900"))  # then GPUBusy: the task is retried
LEASE_S = 300.0  # renewed halfway while held; the slot of a process that dies frees itself then
RETRY_AFTER_S = "0.05"  # after a 503: the server's database was busy with another write

_lock = threading.Lock()
_clients: dict[str | None, Any] = {}  # by API URL
_created: set[tuple[str | None, str]] = set()  # (API URL, limit)
_queues: dict[str, threading.Semaphore] = {}  # by limit: this process's threads take turns


def limit_name(gpu: str) -> str:
    return "gpu-" + slug(gpu)


def gpu_slot(gpu: str | None) -> ContextManager[Any]:
    """The Evaluator's timing guard: the GPU's slot; nothing to hold on the CPU."""
    return nullcontext() if gpu is None else _occupied(limit_name(gpu))


@contextmanager
def _occupied(name: str) -> Iterator[None]:
    deadline = time.monotonic() + WAIT_S
    queue = _queue(name)
    if not queue.acquire(timeout=WAIT_S):
        raise _busy(name)
    try:
        client = _client()
        lease = _lease(client, name, deadline)
        released = threading.Event()
        threading.Thread(target=_renew, args=(client, lease, released), name=f"renew-{name}", daemon=True).start()
        try:
            yield
        finally:
            released.set()
            client.release_concurrency_slots_with_lease(lease)
    finally:
        queue.release()


def _lease(client: Any, name: str, deadline: float) -> UUID:
    """One slot of the limit, waiting while another process or host holds it."""
    from httpx import HTTPStatusError

    ensure_limit(name)
    while True:
        try:
            granted = client.increment_concurrency_slots_with_lease([name], 1, "concurrency", LEASE_S).json()
        except HTTPStatusError as exc:
            if exc.response.status_code not in (423, 503):  # 423: held elsewhere; 503: the server still busy
                raise
            wait = float(exc.response.headers.get("Retry-After") or RETRY_AFTER_S)
        else:
            lease = UUID(granted["lease_id"])
            if granted["limits"]:
                return lease
            client.release_concurrency_slots_with_lease(lease)  # the limit was deleted: make it again
            _forget(name)
            ensure_limit(name)
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise _busy(name)
        time.sleep(min(wait, left))


def _renew(client: Any, lease: UUID, released: threading.Event) -> None:
    while not released.wait(LEASE_S / 2):
        try:
            client.renew_concurrency_lease(lease, LEASE_S)
        except Exception as exc:
            if not released.is_set():
                logging.getLogger(__name__).warning("could not renew the GPU slot's lease %s: %s", lease, exc)
            return


def _busy(name: str) -> GPUBusy:
    return GPUBusy(f"{name} stayed busy for {WAIT_S:g} s (KEVOLVE_GPU_WAIT_S); another run is timing on it")


def ensure_limit(name: str) -> None:
    """Create the GPU's limit once per process and server (an existing one keeps the slots it has)."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists

    key = (_api_url(), name)
    with _lock:
        if key in _created:
            return
    try:
        _client().create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=SLOTS_PER_GPU))
    except ObjectAlreadyExists:  # made by another process or host
        pass
    with _lock:
        _created.add(key)


def _forget(name: str) -> None:
    with _lock:
        _created.discard((_api_url(), name))


def _queue(name: str) -> threading.Semaphore:
    with _lock:
        return _queues.setdefault(name, threading.Semaphore(SLOTS_PER_GPU))


def _client() -> Any:
    """This process's client of the API server, kept open (a new one costs tens of ms). It
    answers a 503 with a short Retry-After, which the client honours instead of backing off."""
    from prefect.client.orchestration import get_client

    url = _api_url()
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = get_client(httpx_settings={"event_hooks": {"response": [_retry_soon]}}, sync_client=True)
            client.__enter__()
            _clients[url] = client
        return client


def _retry_soon(response: Any) -> None:
    if response.status_code == 503:
        response.headers["Retry-After"] = RETRY_AFTER_S


def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()  # None: the temporary server Prefect starts for this process
