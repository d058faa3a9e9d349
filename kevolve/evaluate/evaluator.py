"""The judge's front door: candidates in, typed evaluations out, in the same order.

For each candidate: static checks in this process (the candidate is never imported here), then in
a worker: load, correctness on every shape (under the GPU's shared lock, several workers at once),
timing and a re-check on new inputs (under the GPU's exclusive lock), then a diagnosis against the
roofline. Baselines (eager, torch.compile default and max-autotune) are timed once per
(spec, shape, device) by the same method in the same kind of worker, and cached.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

from kevolve.candidate import Candidate
from kevolve.evaluate import baseline_cache, ncu
from kevolve.evaluate.diagnose import diagnose, implausibly_fast
from kevolve.evaluate.phases import PhaseClock
from kevolve.evaluate.pool import Reply, Slot, WorkerPool, gpu_identity, worker_env, write_roots
from kevolve.evaluate.result import (
    BASELINE_NAMES, Baselines, Check, Diagnosis, Evaluation, KernelStats, Outcome, Timing,
)
from kevolve.evaluate.static_checks import rejection_reason, static_checks
from kevolve.hardware.calibrate import Ceilings, load_ceilings
from kevolve.hardware.target import HardwareTarget
from kevolve.paths import state_dir
from kevolve.specs.model import OperatorSpec

BASELINE_TIMEOUT_S = 600.0  # torch.compile max-autotune of a large matmul takes minutes
NCU_TIMEOUT_S = 300.0
NOT_REQUESTED = "not requested"
_STATUS_OUTCOMES = {"timed_out": Outcome.TIMED_OUT, "died": Outcome.CRASHED, "memory": Outcome.CRASHED}
HARNESS = Path(__file__).resolve().parent

# Held around each timing with the GPU's identity (host and device; None on the CPU): an
# orchestrator's lock that keeps timings of other processes and hosts off the same GPU.
TimingGuard = Callable[[str | None], ContextManager[Any]]


class Evaluator:
    def __init__(self, spec: OperatorSpec, target: HardwareTarget, *, workers: int | None = None,
                 timeout_s: float = 120.0, memory_limit_mb: int = 16384, scratch_root: Path | None = None,
                 gpus: Sequence[int] | None = None, baselines: bool = True, max_autotune: bool = True,
                 timing_trials: int = 100, time_budget_s: float = 2.0, ncu: bool = False,
                 baseline_timeout_s: float = BASELINE_TIMEOUT_S, pool: WorkerPool | None = None,
                 timing_guard: TimingGuard | None = None):
        self.spec, self.target = spec, target
        self.timing_guard = timing_guard or (lambda gpu: nullcontext())
        self.recipe: Any = None  # an EvaluatorRecipe that builds this evaluator elsewhere, where known
        self.timeout_s = timeout_s
        self.with_baselines, self.max_autotune = baselines, max_autotune
        self.timing_trials, self.time_budget_s = timing_trials, time_budget_s
        self.with_ncu = ncu
        self.baseline_timeout_s = max(baseline_timeout_s, timeout_s)
        self.dims = dict(spec.shapes_for(target.interpreter)[0])
        self._own_pool = pool is None
        if pool is None:
            root = Path(scratch_root) if scratch_root else state_dir() / "scratch"
            root.mkdir(parents=True, exist_ok=True)
            pool = WorkerPool(target, Path(tempfile.mkdtemp(prefix="eval-", dir=root)), workers=workers,
                              gpus=gpus, memory_limit_mb=memory_limit_mb)
        self.pool = pool
        self._baselines: Baselines | None = None
        self._baselines_lock = threading.Lock()
        self._ceilings: Ceilings | None = None
        self._judge: str | None = None  # judge_digest, made on the first cache_key
        self._judge_lock = threading.Lock()  # a round's tasks ask at once: made by one of them

    # Public API -------------------------------------------------------------------------------
    def evaluate(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        """One Evaluation per candidate, same order; a bad candidate never raises."""
        results: list[Evaluation | None] = [None] * len(candidates)
        todo = []
        for i, candidate in enumerate(candidates):
            checks = static_checks(candidate.code, self.spec.entry_point, candidate.language)
            if all(c.passed for c in checks):
                todo.append((i, checks))
            else:
                results[i] = self._result(candidate, Outcome.REJECTED, checks, error=rejection_reason(checks))
        if todo:
            base = self.baselines() if self.with_baselines else None
            with ThreadPoolExecutor(max_workers=len(self.pool.slots)) as ex:
                # Each thread runs in a copy of the caller's context: an orchestrator's settings
                # (which server the timing guard asks) reach it.
                futures = {i: ex.submit(contextvars.copy_context().run, self._evaluate_one, candidates[i], checks,
                                        base) for i, checks in todo}
                for i, future in futures.items():
                    results[i] = future.result()
        return results  # type: ignore[return-value]

    def remeasure(self, candidate: Candidate) -> Evaluation:
        """Evaluate again from scratch (new inputs, new timing): for promoting a new best."""
        return self.evaluate([candidate])[0]

    def baselines(self) -> Baselines:
        """Timed once per (spec, shape, device) and cached under the state folder."""
        with self._baselines_lock:
            if self._baselines is None:
                self._baselines = self._load_or_time_baselines()
            return self._baselines

    def cache_key(self, candidate: Candidate) -> str:
        """What decides this candidate's evaluation: its code, the spec (file and reference), the
        target, the judge's settings and the harness's own source. Same key, same verdict."""
        with self._judge_lock:
            if self._judge is None:  # once: the workers keep the spec as it was first loaded, too
                self._judge = judge_digest(self.spec, self.target.name,
                                           f"timeout={self.timeout_s} baselines={self.with_baselines} "
                                           f"autotune={self.max_autotune} trials={self.timing_trials}")
        return hashlib.sha256(f"{self._judge}\0{candidate.code_hash}".encode()).hexdigest()[:32]

    def close(self) -> None:
        if self._own_pool:
            self.pool.close()
            shutil.rmtree(self.pool.scratch, ignore_errors=True)

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def ceilings(self) -> Ceilings:
        if self._ceilings is None:
            self._ceilings = load_ceilings(self.target, self.pool.device_name or None)
        return self._ceilings

    # One candidate ----------------------------------------------------------------------------
    def _evaluate_one(self, candidate: Candidate, static: tuple[Check, ...], base: Baselines | None) -> Evaluation:
        started, t0 = _now(), time.monotonic()
        folder = self.pool.scratch / "candidates" / f"{candidate.code_hash}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        path = folder / "candidate.py"
        path.write_text(candidate.code)
        checks = list(static)
        clock = PhaseClock()

        def done(outcome: Outcome, error: str = "", **kw: Any) -> Evaluation:
            return self._result(candidate, outcome, checks, error=error, baselines=base, started_at=started,
                                wall_s=time.monotonic() - t0, phases=clock.rounded(), **kw)

        try:
            with clock.entering("queue", self.pool.slot()) as slot:
                with clock.phase("start"):
                    worker = self.pool.worker(slot)
                lock = self.pool.locks[slot.gpu]
                with clock.entering("wait", lock.shared()), clock.phase("check"):
                    reply = worker.request({"op": "check", "spec": str(self.spec.path), "path": str(path),
                                            "entry_point": self.spec.entry_point}, self.timeout_s)
                clock.add("worker", reply.data.get("worker_s", 0.0))
                failed = self._failure(reply, slot, checks)
                if failed:
                    return done(*failed)
                cost, kernels = reply.data["cost"], reply.data.get("kernels", [])
                with clock.entering("wait", lock.exclusive()), \
                        clock.entering("guard", self.timing_guard(gpu_identity(slot.gpu))):
                    timed = self._time(slot, checks, clock)
                    if isinstance(timed, tuple):
                        return done(*timed)
                    diagnosis = self._diagnose(cost, kernels, timed)
                    if implausibly_fast(diagnosis.fraction_of_floor):
                        timed = self._time(slot, checks, clock)  # noise makes false elites: measure again
                        if isinstance(timed, tuple):
                            return done(*timed)
                        diagnosis = self._diagnose(cost, kernels, timed)
                        if implausibly_fast(diagnosis.fraction_of_floor):
                            detail = (f"measured {timed.median_ms:.4g} ms, {diagnosis.fraction_of_floor:.2f}x "
                                      f"faster than the roofline floor of {diagnosis.floor_ms:.4g} ms allows: "
                                      "the timing is not trusted")
                            checks.append(Check("timing.plausible", False, detail))
                            return done(Outcome.WRONG, detail, timing=timed, diagnosis=diagnosis)
                    if self.with_ncu and not self.target.interpreter:
                        with clock.phase("ncu"):
                            diagnosis = self._with_ncu(diagnosis, path, slot, cost, kernels, timed)
                with clock.phase("release"):
                    worker.request({"op": "release"}, self.timeout_s)
                return done(Outcome.CORRECT, timing=timed, diagnosis=diagnosis)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _time(self, slot: Slot, checks: list[Check], clock: PhaseClock) -> Timing | tuple:
        with clock.phase("time"):
            reply = slot.worker.request({"op": "time", "trials": self.timing_trials,
                                         "budget_s": self.time_budget_s}, self.timeout_s)
        clock.add("worker", reply.data.get("worker_s", 0.0))
        failed = self._failure(reply, slot, checks)
        if failed:
            return failed
        return Timing(**reply.data["timing"])

    def _failure(self, reply: Reply, slot: Slot, checks: list[Check]) -> tuple[Outcome, str] | None:
        """Record a reply's checks; (outcome, error) when the candidate is done, else None."""
        if reply.status != "ok":
            self.pool.discard(slot)
            outcome = _STATUS_OUTCOMES[reply.status]
            if reply.status == "timed_out":
                detail = f"killed after {self.timeout_s:g} s"
            elif reply.status == "memory":
                detail = (f"killed at {reply.data.get('rss_mb', 0):.0f} MB resident "
                          f"(limit {self.pool.memory_limit_mb} MB)")
            else:
                detail = f"the worker died (exit status {reply.data.get('returncode')})"
            checks.append(Check("run", False, detail))
            return outcome, f"{detail}\n{reply.log_tail[-1500:]}".strip()
        data = reply.data
        if not data.get("ok"):  # the worker's own failure, not the candidate's: do not reuse it
            self.pool.discard(slot)
            checks.append(Check("worker", False, _last_line(data.get("error", ""))))
            return Outcome.CRASHED, data.get("error", "")
        checks.extend(Check(name, passed, detail) for name, passed, detail in data.get("checks", []))
        if data["outcome"] != Outcome.CORRECT.value:
            if not data.get("reusable", True):
                self.pool.discard(slot)
            return Outcome(data["outcome"]), data.get("error", "")
        return None

    def _diagnose(self, cost: dict, kernels: list[dict], timing: Timing,
                  ncu_metrics: dict[str, float] | None = None) -> Diagnosis:
        return diagnose(matmul_flops=cost["matmul_flops"], other_flops=cost["other_flops"],
                        min_bytes=cost["min_bytes"], dtype=cost["dtype"], timing=timing,
                        kernels=[KernelStats(**k) for k in kernels], target=self.target,
                        ceilings=self.ceilings, ncu=ncu_metrics)

    def _with_ncu(self, diagnosis: Diagnosis, path: Path, slot: Slot, cost: dict, kernels: list[dict],
                  timing: Timing) -> Diagnosis:
        request = {"spec": str(self.spec.path), "path": str(path), "entry_point": self.spec.entry_point,
                   "interpreter": False, "flush_bytes": 0, "calls": 3,
                   "write_roots": [*write_roots(self.pool.scratch), str(path.parent)]}
        env = worker_env(self.pool.scratch, slot.gpu, False)
        try:
            metrics = ncu.profile(request, path.parent, env, NCU_TIMEOUT_S)
        except ncu.NcuError as exc:
            return replace(diagnosis, summary=f"{diagnosis.summary} (ncu: {exc})")
        return self._diagnose(cost, kernels, timing, metrics)

    # Baselines --------------------------------------------------------------------------------
    def _load_or_time_baselines(self) -> Baselines:
        names = [n for n in BASELINE_NAMES if self.max_autotune or n != "compile_max_autotune"]
        with self.pool.slot() as slot:
            worker = self.pool.worker(slot)
            software = {k: worker.info.get(k, "") for k in ("torch", "triton", "python")}
            path = baseline_cache.cache_path(self.spec, self.dims, self.pool.device_name, software,
                                             self.timing_trials)
            cached = baseline_cache.load(path) or Baselines()
            timings = {n: cached.get(n) for n in BASELINE_NAMES if cached.get(n) is not None}
            errors = {n: e for n, e in cached.errors.items() if not e.startswith(NOT_REQUESTED)}
            if all(n in timings or n in errors for n in names):
                return Baselines(**timings, errors=errors)
            lock = self.pool.locks[slot.gpu]
            transient: set[str] = set()  # failures of the moment (timeouts, dead workers): not cached
            for name in BASELINE_NAMES:
                if name in timings or name in errors:
                    continue
                if name not in names:
                    errors[name] = f"{NOT_REQUESTED} (max_autotune=False)"
                    continue
                request = {"op": "baseline", "spec": str(self.spec.path), "name": name,
                           "trials": self.timing_trials, "budget_s": self.time_budget_s}
                with lock.shared():  # compiling needs no exclusive GPU
                    reply = self.pool.worker(slot).request({**request, "phase": "prepare"},
                                                           self.baseline_timeout_s)
                if reply.status == "ok" and reply.data.get("ok") and not reply.data.get("error"):
                    with lock.exclusive():
                        reply = slot.worker.request({**request, "phase": "time"}, self.baseline_timeout_s)
                if reply.status != "ok" or not reply.data.get("ok"):
                    self.pool.discard(slot)
                    errors[name] = f"{reply.status}: " + _last_line(reply.data.get("error") or reply.log_tail)
                    transient.add(name)
                elif reply.data.get("timing"):
                    timings[name] = Timing(**reply.data["timing"])
                else:
                    errors[name] = reply.data.get("error") or "not timed"
        baseline_cache.store(path, Baselines(**timings, errors={n: e for n, e in errors.items() if n not in transient}))
        return Baselines(**timings, errors=errors)

    # Results ----------------------------------------------------------------------------------
    def _result(self, candidate: Candidate, outcome: Outcome, checks, **kw: Any) -> Evaluation:
        return Evaluation(candidate_hash=candidate.code_hash, spec_name=self.spec.name, target=self.target.name,
                          device=self.pool.device_name or self.target.display_name, dims=self.dims,
                          outcome=outcome, checks=tuple(checks), **kw)


def judge_digest(spec: OperatorSpec, target: str, settings: str) -> str:
    """What decides every verdict of one evaluator, whatever the candidate: the spec (file and
    reference), the target, the judge's settings and the harness's own source."""
    digest = hashlib.sha256()
    for part in (target, settings, spec.path.read_bytes(), spec.reference_source(), _harness_hash()):
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


@functools.cache
def _harness_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(HARNESS.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def save_evaluation(directory: Path, candidate: Candidate, evaluation: Evaluation) -> Path:
    """The candidate's code and its evaluation side by side (`<hash>.py`, `<hash>.json`); returns
    the JSON's path. The JSON reads back with Evaluation.from_json; it also names the code file and
    the candidate's origin."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = candidate.code_hash
    code_path, json_path = directory / f"{stem}.py", directory / f"{stem}.json"
    doc = evaluation.to_dict()
    doc["candidate"] = {"code_file": code_path.name, "language": candidate.language,
                        "origin": json.loads(json.dumps(asdict(candidate.origin), default=str))}
    _write_atomic(code_path, candidate.code)
    _write_atomic(json_path, json.dumps(doc, indent=2))
    return json_path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _last_line(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""
