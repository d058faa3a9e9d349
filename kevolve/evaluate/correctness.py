"""Correctness of a candidate, run inside a worker: trials, guards, and what each run must satisfy.

Per shape (the tuned one first, then the spec's others): several trials with fresh seeds from the
spec's distributions plus one shifted and scaled, each against the float64 reference. Inputs sit
in guard bands and are refilled in place between trials, so a result cached by pointer is caught;
outputs are poisoned; every run must leave its inputs unchanged and its guard bands intact, run
only allowed aten ops, and return outputs of the reference's dtype, shape and strides. The first
trial is run twice and must repeat bit for bit. After timing, one more trial on new inputs (a
cached trial's values permuted on the device, its reference computed afresh).

Inputs and float64 references are cached per shape, so a candidate pays only for its own runs.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from kevolve.evaluate.guards import GuardMode, guarded_copy
from kevolve.evaluate.result import Check, Outcome
from kevolve.evaluate.sandbox import Sandbox, Snapshot, describe_threads, live_threads
from kevolve.specs.compare import compare
from kevolve.specs.model import Dims, Tolerance, dims_key
from kevolve.specs.runtime import OperatorRuntime, as_outputs, clone_all
from kevolve.specs.validate import tolerance_for

TUNE_TRIALS = ((11, False), (12, False), (13, True))  # (seed, shifted)
CHECK_TRIALS = ((21, False), (22, True))
SHIFT_SCALE, SHIFT_OFFSET = 1.75, 0.5
ERROR_CHARS = 2000


class CandidateFailure(Exception):
    """Ends a candidate's evaluation with an outcome and the check that decided it."""

    def __init__(self, outcome: Outcome, check: Check, error: str = "", reusable: bool = True):
        super().__init__(check.detail)
        self.outcome, self.check, self.error, self.reusable = outcome, check, error, reusable


@dataclass
class Trial:
    label: str
    inputs: list[Any]  # pristine, on the device
    refs: list[torch.Tensor]  # float64 where the reference allows
    meta: list[tuple[torch.dtype, tuple[int, ...], tuple[int, ...]]]  # the native outputs'
    tolerances: list[Tolerance]


@dataclass
class Output:
    value: torch.Tensor  # a copy
    stride: tuple[int, ...]  # the stride of the tensor the candidate returned


class TrialFactory:
    """Inputs and references of a spec at a shape, cached."""

    def __init__(self, runtime: OperatorRuntime, device: str):
        self.runtime, self.device = runtime, device
        self._cache: dict[str, list[Trial]] = {}

    def trials(self, dims: Dims, tuned: bool) -> list[Trial]:
        key = dims_key(dims)
        if key not in self._cache:
            plan = TUNE_TRIALS if tuned else CHECK_TRIALS
            made = [self.make(dims, seed, shifted) for seed, shifted in plan]
            self._cache[key] = [t for t in made if t is not None]
        return self._cache[key]

    def make(self, dims: Dims, seed: int, shifted: bool = False) -> Trial | None:
        """None for a shifted trial the reference itself cannot pass in its own precision."""
        inputs = self.runtime.inputs(dims, seed=seed, device=self.device)
        if shifted:
            inputs = [_shift(x) for x in inputs]
        return self._trial(dims, inputs, f"{'shifted ' if shifted else ''}seed={seed} {dims_key(dims)}",
                           check=shifted)


    def reshuffled(self, dims: Dims, seed: int) -> Trial:
        """New inputs made on the device from a cached trial's: the values of each input whose
        distribution has no order (normal, uniform, randint; every floating KernelBench input)
        permuted at random, the reference computed afresh. Cheap where drawing new inputs on the
        host would cost seconds at production shapes."""
        base = self.trials(dims, tuned=True)[0]
        generator = torch.Generator(device=self.device).manual_seed(seed)
        inputs = []
        for i, x in enumerate(base.inputs):
            if isinstance(x, torch.Tensor) and x.numel() > 1 and self._unordered(i, x):
                order = torch.randperm(x.numel(), generator=generator, device=self.device)
                x = x.flatten()[order].view(x.shape)
            inputs.append(x)
        return self._trial(dims, inputs, f"reshuffled {dims_key(dims)}", check=False)

    def _unordered(self, i: int, x: torch.Tensor) -> bool:
        if self.runtime.spec.format != "yaml":
            return x.is_floating_point()
        return self.runtime.spec.inputs[i].dist.kind in ("normal", "uniform", "randint")

    def _trial(self, dims: Dims, inputs: list[Any], label: str, check: bool) -> Trial | None:
        with torch.no_grad():
            native = as_outputs(self.runtime.reference(dims, self.device)(*clone_all(inputs)))
            exact = as_outputs(self.runtime.reference(dims, self.device, float64=True)(*clone_all(inputs)))
        tolerances = [no_stricter_than_eager(tolerance_for(self.runtime.spec, n), n, e)
                      for n, e in zip(native, exact)]
        if check and not all(bool(torch.isfinite(e).all()) and compare(n, e, tol).ok
                             for n, e, tol in zip(native, exact, tolerances) if e.is_floating_point()):
            return None
        meta = [(o.dtype, tuple(o.shape), tuple(o.stride())) for o in native]
        return Trial(label, inputs, [e.detach() for e in exact], meta, tolerances)


EAGER_ERROR_MARGIN = 2.0


def no_stricter_than_eager(tol: Tolerance, native: torch.Tensor, exact: torch.Tensor) -> Tolerance:
    """The tolerance, widened where PyTorch's own result at this shape misses the float64 one
    by more: a candidate need not be more exact than the reference it replaces (long fp32 sums
    over jagged segments, say), but it gets no more room than twice that error, so computing in
    lower precision still fails."""
    if not native.is_floating_point() or not bool(torch.isfinite(exact).all()):
        return tol
    own = compare(native, exact, Tolerance(atol=float("inf"), rtol=0.0, max_rel_l2=float("inf")))
    if own.max_abs_error == float("inf"):
        return tol
    return Tolerance(atol=max(tol.atol, EAGER_ERROR_MARGIN * own.max_abs_error), rtol=tol.rtol,
                     max_rel_l2=max(tol.max_rel_l2, EAGER_ERROR_MARGIN * own.rel_l2_error))


def _shift(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return (x.float() * SHIFT_SCALE + SHIFT_OFFSET).to(x.dtype)
    return x


class Watch:
    """Runs candidate code and turns what it did into checks: sandbox violations, patched
    attributes, threads left running, aten ops, broken guards."""

    def __init__(self, sandbox: Sandbox | None, snapshot: Snapshot | None):
        self.sandbox, self.snapshot = sandbox, snapshot

    def call(self, fn: Callable[..., Any], args: Sequence[Any], *,
             guard: bool = True) -> tuple[list[Output], GuardMode | None]:
        threads = live_threads()
        mode = GuardMode() if guard else None
        try:
            with torch.no_grad():
                if mode is not None:
                    with mode:
                        result = fn(*args)
                else:
                    result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - a candidate may raise anything
            self.after(threads)
            raise failure_from_exception(exc) from None
        self.after(threads, mode)
        try:
            outputs = as_outputs(result)
        except TypeError as exc:
            raise CandidateFailure(Outcome.WRONG, Check("outputs", False, str(exc))) from None
        # Copies, so a later call that reuses a buffer cannot change what was returned here.
        return [Output(o.clone(), tuple(o.stride())) for o in outputs], mode

    def after(self, threads_before: frozenset, mode: GuardMode | None = None) -> None:
        problems = self.sandbox.take_violations() if self.sandbox else []
        if self.snapshot is not None:
            problems += [f"replaced {name}" for name in self.snapshot.changed()]
        now = live_threads()
        if len(now) > len(threads_before):  # a net gain: a library may retire a thread as it starts one
            problems.append(f"left {len(now) - len(threads_before)} thread(s) running: "
                            f"{describe_threads(now - threads_before)}")
        if problems:
            raise CandidateFailure(Outcome.REJECTED, Check("sandbox", False, "; ".join(problems[:3])),
                                   reusable=False)
        if mode is not None and mode.computation_ops():
            ops = ", ".join(f"aten::{op}" for op in mode.computation_ops()[:6])
            raise CandidateFailure(Outcome.REJECTED, Check("runtime.aten_ops", False,
                                   f"ran {ops} outside its kernels: torch computation, not allocation, "
                                   "views or copies"))


def failure_from_exception(exc: BaseException) -> CandidateFailure:
    text = "".join(traceback.format_exception(exc))[-ERROR_CHARS:]
    line = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
    if isinstance(exc, PermissionError) and str(exc).startswith("sandbox:"):
        return CandidateFailure(Outcome.REJECTED, Check("sandbox", False, str(exc)[9:]), text, reusable=False)
    if _is_compile_error(exc):
        return CandidateFailure(Outcome.COMPILE_ERROR, Check("compile", False, line), text)
    fault = _is_device_fault(exc)
    return CandidateFailure(Outcome.CRASHED, Check("run", False, line), text, reusable=not fault)


def _is_compile_error(exc: BaseException) -> bool:
    """Triton refused to compile it: a language error, or more shared memory or registers than the
    device has."""
    try:
        from triton.compiler.errors import CompilationError
        from triton.runtime.errors import OutOfResources
    except ImportError:  # pragma: no cover - every supported triton has both
        return False
    return isinstance(exc, (CompilationError, OutOfResources))


def _is_device_fault(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return any(m in text for m in ("AcceleratorError", "CUDA error", "illegal memory access",
                                   "device-side assert", "unspecified launch failure"))


def check_shape(watch: Watch, fn: Callable[..., Any], trials: Sequence[Trial], *, repeat_first: bool) -> list[Check]:
    """Every trial of one shape, on the same guarded input buffers refilled in place."""
    checks: list[Check] = []
    first = trials[0]
    buffers, guards = [], []
    for x in first.inputs:
        if isinstance(x, torch.Tensor):
            b, g = guarded_copy(x)
            buffers.append(b)
            guards.append(g)
        else:
            buffers.append(x)
    for i, trial in enumerate(trials):
        for b, x in zip(buffers, trial.inputs):
            if isinstance(x, torch.Tensor):
                b.copy_(x)
        outputs, mode = watch.call(fn, buffers)
        refill = " (inputs refilled in place: a result cached by pointer fails here)" if i else ""
        _expect(_meta_problem(outputs, trial), f"outputs[{trial.label}]")
        broken = sum(not g.intact() for g in guards) + (mode.broken_guards() if mode else 0)
        _expect(f"{broken} guard band(s) around inputs or allocations overwritten: writes out of bounds"
                if broken else "", f"guard_bands[{trial.label}]")
        changed = [j for j, (b, x) in enumerate(zip(buffers, trial.inputs))
                   if isinstance(x, torch.Tensor) and not torch.equal(b, x)]
        _expect(f"input(s) {changed} modified" if changed else "", f"inputs_unchanged[{trial.label}]")
        details = []
        for j, (out, ref, tol) in enumerate(zip(outputs, trial.refs, trial.tolerances)):
            verdict = compare(out.value, ref, tol)
            _expect("" if verdict.ok else f"output {j}: {verdict.reason}{refill}", f"trial[{trial.label}]")
            details.append(f"max error {verdict.max_abs_error:.2g}, relative L2 {verdict.rel_l2_error:.2g}")
        checks.append(Check(f"trial[{trial.label}]", True,
                            "; ".join(details) + (" (inputs refilled in place)" if i else "")))
        if i == 0 and repeat_first:
            again, _ = watch.call(fn, buffers)
            same = all(torch.equal(a.value, b.value) for a, b in zip(outputs, again))
            _expect("" if same else "a second run on the same inputs gave different bits",
                    f"repeat_identical[{trial.label}]")
            checks.append(Check(f"repeat_identical[{trial.label}]", True))
    return checks


def recheck(watch: Watch, fn: Callable[..., Any], trial: Trial) -> Check:
    """One more trial on new inputs, after timing."""
    outputs, _ = watch.call(fn, clone_all(trial.inputs))
    _expect(_meta_problem(outputs, trial), f"recheck[{trial.label}]")
    for j, (out, ref, tol) in enumerate(zip(outputs, trial.refs, trial.tolerances)):
        verdict = compare(out.value, ref, tol)
        _expect("" if verdict.ok else f"output {j} after timing: {verdict.reason}", f"recheck[{trial.label}]")
    return Check(f"recheck[{trial.label}]", True, "correct on new inputs after timing")


def _meta_problem(outputs: list[Output], trial: Trial) -> str:
    """dtype, shape and strides as the reference's (strides of size-1 dimensions do not matter)."""
    if len(outputs) != len(trial.meta):
        return f"{len(outputs)} outputs; the reference returns {len(trial.meta)}"
    for j, (out, (dtype, shape, stride)) in enumerate(zip(outputs, trial.meta)):
        if out.value.dtype != dtype:
            return f"output {j} is {out.value.dtype}; the reference's is {dtype}"
        if tuple(out.value.shape) != shape:
            return f"output {j} has shape {tuple(out.value.shape)}; the reference's is {shape}"
        if any(a != b for a, b, n in zip(out.stride, stride, shape) if n > 1):
            return f"output {j} has strides {out.stride}; the reference's are {stride}"
    return ""


def _expect(problem: str, name: str) -> None:
    if problem:
        raise CandidateFailure(Outcome.WRONG, Check(name, False, problem))
