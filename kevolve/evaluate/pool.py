"""Worker processes, from the parent's side: spawn, talk, watch, kill, replace.

Each worker is `python -m kevolve.evaluate.worker` in its own session (so a kill takes its
children too), with a clean environment, its caches and temporary files inside the scratch
folder, and one GPU. A request has a hard wall-clock deadline; while it waits the parent watches
the worker's resident memory (RLIMIT_AS would break CUDA) and kills it past the limit. A dead,
killed or faulted worker is never reused; the pool starts a fresh one on the next request.

Several workers share a GPU: they check candidates concurrently under the GPU's shared lock and
time them one at a time under its exclusive lock (a writer-preferring reader-writer lock), so a
timing never shares the GPU with a check or another timing.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import site
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from kevolve.errors import KevolveError
from kevolve.hardware.target import HardwareTarget

SETUP_TIMEOUT_S = 300.0
POLL_S = 0.1
LOG_TAIL_CHARS = 3000
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the folder holding `kevolve`
_KEPT_ENV = ("PATH", "LD_LIBRARY_PATH", "CC", "CXX", "LANG", "LC_ALL")  # and every CUDA_* and TRITON_*


class WorkerError(KevolveError):
    """A worker could not start or answer for reasons of its own, not a candidate's."""


@dataclass(frozen=True)
class Reply:
    status: str  # "ok" | "timed_out" | "died" | "memory"
    data: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""
    elapsed_s: float = 0.0


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def worker_env(scratch: Path, gpu: int | None, interpreter: bool, compile_threads: int = 1) -> dict[str, str]:
    """No inherited secrets: only what Python, CUDA and Triton need, caches inside scratch.
    `compile_threads` bounds torch.compile's pool of compiler processes (baselines only), so that
    several workers on one machine do not start one each per core."""
    env = {k: v for k, v in os.environ.items() if k in _KEPT_ENV or k.startswith(("CUDA_", "TRITON_"))}
    env.update({
        "PYTHONPATH": PACKAGE_PARENT,
        "PYTHONDONTWRITEBYTECODE": "1",
        # HOME moves into scratch; packages installed with --user must still be found.
        "PYTHONUSERBASE": site.getuserbase(),
        "HOME": str(scratch / "home"),
        "TMPDIR": str(scratch / "tmp"),
        "TRITON_HOME": str(scratch / "home"),
        "TRITON_CACHE_DIR": str(scratch / "triton-cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor-cache"),
        "TORCHINDUCTOR_COMPILE_THREADS": str(max(1, compile_threads)),
        "HF_HUB_OFFLINE": "1",
    })
    if interpreter:
        env["TRITON_INTERPRET"] = "1"
        env["OMP_NUM_THREADS"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env.pop("TRITON_INTERPRET", None)
        if gpu is not None:  # the worker sees one GPU only
            env["CUDA_VISIBLE_DEVICES"] = physical_gpu(gpu)
    for key in ("home", "tmp", "triton-cache", "inductor-cache"):
        (scratch / key).mkdir(parents=True, exist_ok=True)
    return env


def physical_gpu(gpu: int) -> str:
    """The device a pool index names: an index into this process's CUDA_VISIBLE_DEVICES."""
    visible = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    return visible[gpu] if gpu < len(visible) else str(gpu)


def gpu_identity(gpu: int | None) -> str | None:
    """A GPU's name across hosts (`host-device`), or None on the CPU."""
    return None if gpu is None else f"{socket.gethostname()}-{physical_gpu(gpu)}"


def write_roots(scratch: Path) -> list[str]:
    return [str(scratch / k) for k in ("home", "tmp", "triton-cache", "inductor-cache")]


class WorkerProcess:
    def __init__(self, scratch: Path, gpu: int | None, target: HardwareTarget, memory_limit_mb: int,
                 index: int, compile_threads: int = 1):
        self.scratch, self.gpu, self.target = scratch, gpu, target
        self.compile_threads = compile_threads
        self.memory_limit_mb = memory_limit_mb
        self.log_path = scratch / f"worker-{index}.log"
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}
        self._buffer = b""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        env = worker_env(self.scratch, self.gpu, self.target.interpreter, self.compile_threads)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "kevolve.evaluate.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log, cwd=self.scratch / "tmp", env=env,
                                     start_new_session=True)
        log.close()
        self._buffer = b""
        flush_bytes = int(2 * self.target.l2_cache_mib * (1 << 20))
        reply = self.request({"op": "setup", "interpreter": self.target.interpreter, "flush_bytes": flush_bytes,
                              "write_roots": write_roots(self.scratch)}, SETUP_TIMEOUT_S)
        if reply.status != "ok" or not reply.data.get("ok"):
            self.kill()
            detail = reply.data.get("error") or reply.log_tail or reply.status
            raise WorkerError(f"an evaluation worker failed to start ({_last_line(detail)}); "
                              f"its log is {self.log_path}")
        self.info = reply.data

    def request(self, message: dict[str, Any], timeout_s: float) -> Reply:
        """Send one request and wait for its reply, at most timeout_s."""
        assert self.proc is not None and self.proc.stdin is not None
        started = time.monotonic()
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._dead(started)
        deadline = started + timeout_s
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                now = time.monotonic()
                if now >= deadline:
                    self.kill()
                    return Reply("timed_out", log_tail=self.log_tail(), elapsed_s=now - started)
                if sel.select(min(POLL_S, deadline - now)):
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        return self._dead(started)
                    self._buffer += chunk
                elif self.rss_mb() > self.memory_limit_mb:
                    rss = self.rss_mb()
                    self.kill()
                    return Reply("memory", {"rss_mb": rss}, self.log_tail(), time.monotonic() - started)
        line, self._buffer = self._buffer.split(b"\n", 1)
        return Reply("ok", json.loads(line), elapsed_s=time.monotonic() - started)

    def rss_mb(self) -> float:
        """Resident memory of the worker, from /proc (Linux); 0 where that is not available."""
        try:
            with open(f"/proc/{self.proc.pid}/statm") as f:
                pages = int(f.read().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
        except (OSError, ValueError, IndexError):
            return 0.0

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.alive:
            reply = self.request({"op": "exit"}, timeout_s)
            if reply.status == "ok":
                try:
                    self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    pass
        self.kill()

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def _dead(self, started: float) -> Reply:
        code = self.proc.wait()
        self.kill()
        return Reply("died", {"returncode": code}, self.log_tail(), time.monotonic() - started)


@dataclass
class Slot:
    """A place for one worker on one GPU; the worker is (re)started when needed."""

    index: int
    gpu: int | None
    worker: WorkerProcess | None = None


class WorkerPool:
    """Workers for one target, spread over its GPUs; shareable by several Evaluators."""

    def __init__(self, target: HardwareTarget, scratch: Path, *, workers: int | None = None,
                 gpus: Sequence[int] | None = None, memory_limit_mb: int = 16384):
        self.target = target
        self.scratch = scratch
        self.memory_limit_mb = memory_limit_mb
        self.gpus: list[int | None] = [None] if target.interpreter else list(gpus if gpus is not None else _gpu_ids())
        if not self.gpus:
            raise WorkerError(f"target {target.name} needs a GPU and none is visible; "
                              "use --target cpu-interpreter to check correctness on the CPU")
        count = max(workers or default_workers(len(self.gpus), target.interpreter), len(self.gpus))
        self.slots = [Slot(i, self.gpus[i % len(self.gpus)]) for i in range(count)]  # round-robin over GPUs
        self.locks = {gpu: RWLock() for gpu in self.gpus}
        self._free: list[Slot] = list(self.slots)
        self._cond = threading.Condition()
        self.device_name = ""

    @contextmanager
    def slot(self) -> Iterator[Slot]:
        with self._cond:
            while not self._free:
                self._cond.wait()
            # A free slot whose worker is running saves starting one (seconds of imports).
            slot = next((s for s in self._free if s.worker is not None and s.worker.alive), self._free[0])
            self._free.remove(slot)
        try:
            yield slot
        finally:
            with self._cond:
                self._free.append(slot)
                self._cond.notify()

    def worker(self, slot: Slot) -> WorkerProcess:
        if slot.worker is None or not slot.worker.alive:
            threads = max(1, (os.cpu_count() or 1) // len(self.slots))
            w = WorkerProcess(self.scratch, slot.gpu, self.target, self.memory_limit_mb, slot.index, threads)
            w.start()
            slot.worker = w
            self.device_name = self.device_name or w.info.get("device", "")
        return slot.worker

    def discard(self, slot: Slot) -> None:
        if slot.worker is not None:
            slot.worker.kill()
            slot.worker = None

    def close(self) -> None:
        for slot in self.slots:
            if slot.worker is not None:
                slot.worker.stop()
                slot.worker = None


def default_workers(n_gpus: int, interpreter: bool) -> int:
    cores = os.cpu_count() or 1
    if interpreter:
        return max(1, min(cores, 4))
    return max(n_gpus, min(4 * n_gpus, cores // 2))


def _gpu_ids() -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return list(range(len([x for x in visible.split(",") if x.strip()])))
    import torch

    return list(range(torch.cuda.device_count()))


def _last_line(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"
