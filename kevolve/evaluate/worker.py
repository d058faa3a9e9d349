"""`python -m kevolve.evaluate.worker`: a long-lived process that loads, checks and times candidates.

The parent writes one JSON request per line on stdin and reads one JSON reply per line from the
worker's original stdout; the worker points its own fd 1 at stderr at start, so whatever candidate
code prints cannot corrupt the protocol. Requests:

    {"op": "setup", "interpreter": bool, "flush_bytes": int, "write_roots": [...]}
    {"op": "check", "spec": PATH, "path": CANDIDATE.py, "entry_point": NAME}
    {"op": "time", "trials": N, "budget_s": S}        # the candidate of the last check
    {"op": "baseline", "spec": PATH, "name": "eager" | "compile_default" | "compile_max_autotune", ...}
    {"op": "release"} | {"op": "exit"}

Every reply has "ok"; a candidate's reply has "outcome", "checks", "error" and "reusable" (False
after a GPU fault or a sandbox violation: the parent then replaces this worker).

`--profile REQUEST.json` runs one candidate a few times between cudaProfilerStart/Stop, for ncu.
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import json
import os
import random
import sys
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

SPECS_KEPT = 1  # specs whose inputs and references stay cached; each can hold GBs on a GPU
_module_ids = itertools.count()


class NotTimed(Exception):
    """A baseline that this worker does not time, and why."""


class SpecState:
    def __init__(self, spec_path: str, device: str):
        from kevolve.evaluate.correctness import TrialFactory
        from kevolve.specs import load_spec
        from kevolve.specs.runtime import OperatorRuntime

        self.spec = load_spec(spec_path)
        self.runtime = OperatorRuntime(self.spec)
        self.trials = TrialFactory(self.runtime, device)
        self.cost: dict[str, Any] | None = None
        self.baseline_inputs: list | None = None  # the same two input sets for every baseline


class Worker:
    def __init__(self):
        self.interpreter = False
        self.device = "cpu"
        self.flush_bytes = 0
        self.sandbox = None
        self.watch = None
        self.specs: OrderedDict[str, SpecState] = OrderedDict()
        self.current: tuple[ModuleType, Callable[..., Any], dict, SpecState] | None = None
        self.prepared: dict[tuple[str, str], tuple[Callable[..., Any], list]] = {}

    # Requests ---------------------------------------------------------------------------------
    def setup(self, req: dict) -> dict:
        import numpy
        import torch
        import triton

        from kevolve.evaluate.correctness import Watch
        from kevolve.evaluate.sandbox import Sandbox, Snapshot, judged_objects

        self.interpreter = bool(req.get("interpreter"))
        self.device = "cpu" if self.interpreter else "cuda"
        self.flush_bytes = int(req.get("flush_bytes", 0))
        if self.interpreter:
            _single_config_autotune()
            _bf16_dot_in_fp32()
        name = _warm_up(self.device)
        import kevolve.evaluate as evaluate_package

        generated = [os.environ[k] for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR") if os.environ.get(k)]
        self.sandbox = Sandbox(req.get("write_roots", []), [torch, triton, numpy, evaluate_package], generated)
        self.sandbox.install()
        self.watch = Watch(self.sandbox, Snapshot(judged_objects()))
        return {"ok": True, "device": name, "pid": os.getpid(), "torch": torch.__version__,
                "triton": triton.__version__, "python": sys.version.split()[0]}

    def check(self, req: dict) -> dict:
        from kevolve.evaluate.correctness import CandidateFailure, check_shape
        from kevolve.evaluate.cost import compiled_kernel_stats

        self.release()
        state = self.spec_state(req["spec"])
        if state.cost is None:
            from kevolve.evaluate.cost import reference_cost

            state.cost = reference_cost(state.runtime, state.spec.shapes_for(self.interpreter)[0],
                                        self.device).to_dict()
        tune, others = state.spec.shapes_for(self.interpreter)
        checks: list = []
        kernels: list = []
        try:
            module = self._load(Path(req["path"]), req["entry_point"])
            for k, dims in enumerate((tune, *others)):
                fn = self._build(state, module, dims)
                checks += check_shape(self.watch, fn, state.trials.trials(dims, tuned=k == 0),
                                      repeat_first=k == 0)
                if k == 0:
                    kernels = compiled_kernel_stats(module)
                    self.current = (module, fn, dict(dims), state)
        except CandidateFailure as failure:
            self.release()
            return _failure_reply(failure, checks, kernels=kernels, cost=state.cost)
        return {"ok": True, "outcome": "correct", "checks": _plain(checks), "error": "", "reusable": True,
                "kernels": kernels, "cost": state.cost, "dims": dict(tune)}

    def time(self, req: dict) -> dict:
        """Time the checked candidate on copies of its shape's trial inputs (rotated), then check it
        once more on reshuffled inputs."""
        import torch

        from kevolve.evaluate.correctness import CandidateFailure, failure_from_exception, recheck
        from kevolve.evaluate.sandbox import live_threads
        from kevolve.specs.runtime import clone_all

        if self.current is None:
            return {"ok": False, "error": "no candidate checked in this worker"}
        _, fn, dims, state = self.current
        sets = [clone_all(t.inputs) for t in state.trials.trials(dims, tuned=True)[:2]]
        threads = live_threads()
        try:
            try:
                with torch.no_grad():
                    timing = self._time(fn, sets, int(req.get("trials", 100)), float(req.get("budget_s", 2.0)))
            except BaseException as exc:  # noqa: BLE001 - candidate code raised while timed
                raise failure_from_exception(exc) from None
            self.watch.after(threads)
            check = recheck(self.watch, fn, state.trials.reshuffled(dims, random.randrange(1 << 62)))
        except CandidateFailure as failure:
            self.release()
            return _failure_reply(failure, [])
        return {"ok": True, "outcome": "correct", "checks": _plain([check]), "error": "", "reusable": True,
                "timing": _timing_dict(timing)}

    def baseline(self, req: dict) -> dict:
        """`phase: prepare` builds and warms a baseline (torch.compile compiles here, which may take
        minutes and needs no exclusive GPU); `phase: time` times what was prepared."""
        from kevolve.evaluate.sandbox import Snapshot, judged_objects

        try:
            return self._baseline(req)
        finally:  # compiling may load modules that rebind attributes: trusted code, new reference
            self.watch.snapshot = Snapshot(judged_objects())

    def _baseline(self, req: dict) -> dict:
        import torch

        self.release()
        key = (req["spec"], req["name"])
        if req.get("phase") == "prepare" or key not in self.prepared:
            self.prepared.pop(key, None)
            state = self.spec_state(req["spec"])
            tune = state.spec.shapes_for(self.interpreter)[0]
            try:
                fn = self._baseline_fn(state, tune, req["name"])
                if state.baseline_inputs is None:
                    state.baseline_inputs = [state.runtime.inputs(tune, seed=seed, device=self.device)
                                             for seed in (101, 102)]
                sets = state.baseline_inputs
                with torch.no_grad():
                    for args in sets:
                        fn(*args)
            except Exception as exc:  # a baseline that fails (inductor on an odd op) is recorded as such
                self._reset_compiler(req["name"])
                return {"ok": True, "error": str(exc) if isinstance(exc, NotTimed)
                        else f"{type(exc).__name__}: {_first_line(exc)}"}
            self.prepared[key] = (fn, sets)
            if req.get("phase") == "prepare":
                return {"ok": True, "error": ""}
        fn, sets = self.prepared.pop(key)
        try:
            with torch.no_grad():
                timing = self._time(fn, sets, int(req.get("trials", 100)), float(req.get("budget_s", 2.0)))
        except Exception as exc:
            return {"ok": True, "error": f"{type(exc).__name__}: {_first_line(exc)}"}
        finally:
            self._reset_compiler(req["name"])
        return {"ok": True, "timing": _timing_dict(timing), "error": ""}

    def _baseline_fn(self, state: SpecState, tune, name: str) -> Callable[..., Any]:
        import torch

        if self.interpreter and name != "eager":
            raise NotTimed("torch.compile is not timed on the interpreter target")
        fn = state.runtime.reference(tune, self.device)
        if name == "compile_default":
            return torch.compile(fn)
        if name == "compile_max_autotune":
            return torch.compile(fn, mode="max-autotune-no-cudagraphs")
        if name != "eager":
            raise NotTimed(f"unknown baseline {name!r}")
        return fn

    @staticmethod
    def _reset_compiler(name: str) -> None:
        if name != "eager":
            import torch

            torch._dynamo.reset()  # compiled graphs of one spec are no use to the next

    def release(self, req: dict | None = None) -> dict:
        if self.current is not None:
            sys.modules.pop(self.current[0].__name__, None)
            self.current = None
            gc.collect()
        if self.sandbox is not None:
            self.sandbox.set_candidate_dir(None)
        return {"ok": True}

    # Helpers ----------------------------------------------------------------------------------
    def spec_state(self, path: str) -> SpecState:
        if path not in self.specs:
            self.specs[path] = SpecState(path, self.device)
            while len(self.specs) > SPECS_KEPT:
                self.specs.popitem(last=False)
                self.prepared.clear()
                gc.collect()
                if self.device == "cuda":  # give the memory back to the other workers on this GPU
                    import torch

                    torch.cuda.empty_cache()
        self.specs.move_to_end(path)
        return self.specs[path]

    def _load(self, path: Path, entry_point: str) -> ModuleType:
        from kevolve.evaluate.correctness import CandidateFailure, failure_from_exception
        from kevolve.evaluate.result import Check, Outcome
        from kevolve.evaluate.sandbox import live_threads

        self.sandbox.set_candidate_dir(path.parent)
        name = f"kevolve_candidate_{next(_module_ids)}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Triton's JIT and dataclasses look modules up here
        threads = live_threads()
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:  # noqa: BLE001 - import runs candidate code
            failure = failure_from_exception(exc)
            if failure.outcome is Outcome.CRASHED:
                failure = CandidateFailure(Outcome.COMPILE_ERROR, Check("load", False, failure.check.detail),
                                           failure.error, failure.reusable)
            sys.modules.pop(name, None)
            raise failure from None
        self.watch.after(threads)
        if not hasattr(module, entry_point):
            sys.modules.pop(name, None)
            raise CandidateFailure(Outcome.COMPILE_ERROR, Check("load", False, f"defines no {entry_point!r}"))
        return module

    def _build(self, state: SpecState, module: ModuleType, dims) -> Callable[..., Any]:
        """The entry point at a shape (a KernelBench ModelNew is constructed like the reference)."""
        from kevolve.evaluate.correctness import CandidateFailure, failure_from_exception
        from kevolve.evaluate.result import Check, Outcome
        from kevolve.evaluate.sandbox import live_threads

        threads = live_threads()
        try:
            fn = state.runtime.candidate(module, dims, self.device, seed=0)
        except BaseException as exc:  # noqa: BLE001
            failure = failure_from_exception(exc)
            raise CandidateFailure(Outcome.COMPILE_ERROR, Check("build", False, failure.check.detail),
                                   failure.error, failure.reusable) from None
        self.watch.after(threads)
        return fn

    def _time(self, fn, sets, trials: int, budget_s: float):
        from kevolve.evaluate.timing import time_cuda, time_wall

        if self.interpreter:
            return time_wall(fn, sets)
        return time_cuda(fn, sets, trials=trials, flush_bytes=self.flush_bytes, budget_s=budget_s)


def _failure_reply(failure, checks: list, **extra) -> dict:
    return {"ok": True, "outcome": failure.outcome.value, "checks": _plain([*checks, failure.check]),
            "error": failure.error or failure.check.detail, "reusable": failure.reusable, **extra}


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else "")[:300]


def _plain(checks) -> list[list]:
    return [[c.name, c.passed, c.detail] for c in checks]


def _timing_dict(t) -> dict:
    from dataclasses import asdict

    return asdict(t)


def _warm_up(device: str) -> str:
    """Initialise the device and Triton's launcher once, before the sandbox closes."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def _fill(out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, offs.to(tl.float32), mask=offs < n)

    import torch._dynamo  # noqa: F401 - importing it rewraps torch functions; do it before the snapshot

    from kevolve.evaluate.guards import GuardMode

    with torch.no_grad(), GuardMode():
        out = torch.empty(100, device=device)
        _fill[(1,)](out, 100, BLOCK=128)
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.get_device_name()
    return "cpu (Triton interpreter)"


def _single_config_autotune() -> None:
    """Under the interpreter there is no device to benchmark on: an autotuned kernel takes its
    first config (the same for every candidate, so results stay comparable)."""
    import triton.testing

    def first_config(fn, *args, quantiles=None, **kwargs):
        fn()
        return [1.0] * len(quantiles) if quantiles else 1.0

    triton.testing.do_bench = first_config


def _bf16_dot_in_fp32() -> None:
    """Triton's interpreter (3.9) keeps bf16 as raw uint16 and multiplies those bits in tl.dot; a
    bf16 matmul would be judged wrong for the interpreter's fault. Widen bf16 operands first (exact),
    which is what the GPU's bf16 dot with fp32 accumulation computes."""
    try:
        import triton.language as tl
        from triton.runtime.interpreter import InterpreterBuilder
    except ImportError:
        return
    original = InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16:
            a = self.cast_impl(a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = self.cast_impl(b, tl.float32)
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)

    InterpreterBuilder.create_dot = create_dot


HANDLERS = {"setup": Worker.setup, "check": Worker.check, "time": Worker.time,
            "baseline": Worker.baseline, "release": Worker.release}


def serve() -> int:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # candidate prints go to the log, never into the protocol
    sys.stdout = sys.stderr
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        started = time.perf_counter()
        try:
            req = json.loads(line)
            if req.get("op") == "exit":
                protocol.write(json.dumps({"ok": True}) + "\n")
                break
            reply = HANDLERS[req["op"]](worker, req)
        except Exception:  # the worker's own failure: report it, keep serving
            reply = {"ok": False, "error": traceback.format_exc()[-2000:]}
        reply["worker_s"] = round(time.perf_counter() - started, 4)
        protocol.write(json.dumps(reply) + "\n")
    return 0


def profile(request_path: str) -> int:
    """Run one candidate for a profiler: warm up, then `calls` calls between cudaProfilerStart/Stop."""
    import torch

    req = json.loads(Path(request_path).read_text())
    worker = Worker()
    worker.setup(req)
    state = worker.spec_state(req["spec"])
    tune = state.spec.shapes_for(False)[0]
    module = worker._load(Path(req["path"]), req["entry_point"])
    fn = worker._build(state, module, tune)
    inputs = state.runtime.inputs(tune, seed=7, device="cuda")
    with torch.no_grad():
        for _ in range(3):
            fn(*inputs)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        for _ in range(int(req.get("calls", 3))):
            fn(*inputs)
            torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--profile":
        raise SystemExit(profile(sys.argv[2]))
    raise SystemExit(serve())
