"""GPU slots: a Prefect global concurrency limit per GPU (`gpu-HOST-DEVICE`, one slot by
default), held around every timing, so two timings never share a GPU whichever run, process or
host they come from. The harness pins each worker to one GPU with CUDA_VISIBLE_DEVICES.

A slot is a lease on the limit, taken with the Prefect client's lease calls rather than through
prefect.concurrency, which cost a timing seconds now and then: a local (SQLite) server answers
an acquisition 503 when another write holds its database (the acquisition reads, then writes),
and Prefect's client waits about 2 s before asking again (here: RETRY_AFTER_S); concurrency()
also spends tens of ms of every timing on events and its queue service. Threads of one process
queue for a GPU here first, so the server is asked only when this process is next and no thread
waits out a Retry-After for a slot its own process is about to release.

Timings on one GPU run one after another, so each call to the server lies on a search's
critical path (on two CPU cores: 10-25 ms a call, and about 100 ms for the first timing of a
round, which meets the database busy writing the round's new task runs). So a lease given
up is kept for this process's next timing on that GPU, the next candidate of the round (within
ms) or of the next round (within a second or two), and given back in the background once unused
for LINGER_S, or at the end of a timing once held HAND_OVER_S, so that other runs and hosts get
a turn. A search alone on its GPU thus asks the server about once every HAND_OVER_S, never on a
timing's way out. The price: another run waiting for that GPU waits until this one pauses for
LINGER_S or reaches HAND_OVER_S, and Prefect then asks it to retry after about the time a lease
was held; where several runs share GPUs and should interleave finely, set KEVOLVE_GPU_LINGER_S=0
(a lease per timing, given back in the background at once)."""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, ContextManager, Iterator
from uuid import UUID

from kevolve.errors import GPUBusy
from kevolve.hardware.calibrate import slug

SLOTS_PER_GPU = int(os.environ.get("KEVOLVE_GPU_SLOTS", "1"))
WAIT_S = float(os.environ.get("KEVOLVE_GPU_WAIT_S", "900"))  # then GPUBusy: the task is retried
# Renewed halfway while held; the slot of a process that dies frees itself then, on a `prefect
# server start` (Prefect's temporary server does not reclaim expired leases).
LEASE_S = 300.0
RETRY_AFTER_S = "0.05"  # after a 503: the server's database was busy with another write
LINGER_S = float(os.environ.get("KEVOLVE_GPU_LINGER_S", "2"))  # kept unused this long for the next timing
HAND_OVER_S = 10.0  # a lease passes between this process's timings this long, then others get a turn
GIVE_BACK_S = 10.0  # a release is asked again this long while the server is busy (exit waits for it)

_lock = threading.Lock()
_clients: dict[str | None, Any] = {}  # by API URL
_created: set[tuple[str | None, str]] = set()  # (API URL, limit)
_gpus: dict[str, "_Gpu"] = {}  # by limit
_pending: set[threading.Thread] = set()  # leases on their way back to the server


def limit_name(gpu: str) -> str:
    return "gpu-" + slug(gpu)


def gpu_slot(gpu: str | None) -> ContextManager[Any]:
    """The Evaluator's timing guard: the GPU's slot; nothing to hold on the CPU."""
    return nullcontext() if gpu is None else _occupied(limit_name(gpu))


class _Lease:
    """A slot taken from the server, renewed in the background until it is given back."""

    def __init__(self, client: Any, lease_id: UUID):
        self.client, self.id = client, lease_id
        self.taken = time.monotonic()
        self.put_backs = 0
        self.done = threading.Event()
        threading.Thread(target=self._renew, name=f"renew-{lease_id}", daemon=True).start()

    def _renew(self) -> None:
        while not self.done.wait(LEASE_S / 2):
            try:
                self.client.renew_concurrency_lease(self.id, LEASE_S)
            except Exception as exc:
                if not self.done.is_set():
                    logging.getLogger(__name__).warning("could not renew the GPU slot's lease %s: %s", self.id, exc)
                return

    def give_back(self) -> None:
        self.done.set()
        self.client.release_concurrency_slots_with_lease(self.id)


class _Gpu:
    """This process's side of one GPU's limit: its threads take turns here, and a lease one of
    them gave up stays for the next (up to LINGER_S) before it goes back to the server."""

    def __init__(self, name: str):
        self.name = name
        self.turns = threading.Semaphore(SLOTS_PER_GPU)
        self.idle: list[_Lease] = []  # held from the server, between two timings of this process

    def take(self, deadline: float) -> _Lease:
        if not self.turns.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise _busy(self.name)
        try:
            with _lock:
                if self.idle:
                    return self.idle.pop()
            client = _client()
            return _Lease(client, _lease(client, self.name, deadline))
        except BaseException:
            self.turns.release()
            raise

    def put_back(self, lease: _Lease) -> None:
        if LINGER_S <= 0 or time.monotonic() - lease.taken >= HAND_OVER_S:  # others get a turn
            _in_background(self._give_back, lease)
            return
        with _lock:
            lease.put_backs += 1
            self.idle.append(lease)
            put_back = lease.put_backs
        self.turns.release()
        _in_background(self._expire, lease, put_back, after_s=LINGER_S)

    def _expire(self, lease: _Lease, put_back: int) -> None:
        with _lock:  # taken by a timing since, or put back again (that put-back's timer decides)
            if lease not in self.idle or lease.put_backs != put_back:
                return
        if not self.turns.acquire(blocking=False):  # a thread of this process is about to take it
            _in_background(self._expire, lease, put_back, after_s=LINGER_S)
            return
        with _lock:
            idle = lease in self.idle
            if idle:
                self.idle.remove(lease)
        if idle:
            self._give_back(lease)
        else:
            self.turns.release()

    def _give_back(self, lease: _Lease) -> None:
        """Holding a turn, so that no thread of this process meets its own lease on the server;
        asking again while the server is busy (off the search's path, there is time)."""
        deadline = time.monotonic() + GIVE_BACK_S
        try:
            while True:
                try:
                    return lease.give_back()
                except Exception as exc:
                    if time.monotonic() > deadline:  # reclaimed after LEASE_S where the server can (see there)
                        logging.getLogger(__name__).warning("could not release the GPU slot's lease %s: %s",
                                                            lease.id, exc)
                        return
                time.sleep(1.0)
        finally:
            self.turns.release()


def _in_background(fn: Callable[..., None], *args: Any, after_s: float = 0.0) -> None:
    """In a non-daemon thread: the interpreter waits for it at exit, so no lease outlives the process."""
    def run() -> None:
        try:
            fn(*args)
        finally:
            with _lock:
                _pending.discard(thread)

    thread = threading.Timer(after_s, run)
    with _lock:
        _pending.add(thread)
    thread.start()


@contextmanager
def _occupied(name: str) -> Iterator[None]:
    gpu = _gpu(name)
    lease = gpu.take(time.monotonic() + WAIT_S)
    try:
        yield
    finally:
        gpu.put_back(lease)


def wait_for_releases(timeout_s: float = 30.0) -> None:
    """Wait until the leases this process gave up are back with the server."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with _lock:
            pending = list(_pending)
        if not pending:
            return
        for thread in pending:
            thread.join(max(0.0, deadline - time.monotonic()))


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


def _gpu(name: str) -> _Gpu:
    with _lock:
        return _gpus.setdefault(name, _Gpu(name))


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
