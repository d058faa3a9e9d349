"""Library kernels at run time: a callable per operator, and a `torch.library` custom op.

A kernel runs only where it was validated: the call's shapes inside the entry's validated
range, the dtypes the spec names, the device of the target it was tuned on, contiguous inputs
(the harness checked it on those). Anywhere else the PyTorch reference runs, since generated
kernels are often wrong or slower out of distribution. Counts of kernel and fallback calls
are kept per operator for tests and reports.

The stored module is imported in this process: it is trusted because it passed the harness.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from kevolve.library.store import LibraryEntry, LibraryError, entries, get
from kevolve.specs.model import InputSpec, OperatorSpec, eval_dim


@dataclass
class DispatchCounts:
    kernel: int = 0
    fallback: int = 0
    reasons: Counter = field(default_factory=Counter)  # why calls fell back

    def __str__(self) -> str:
        why = "; ".join(f"{r} x{n}" for r, n in self.reasons.most_common())
        return f"{self.kernel} kernel, {self.fallback} fallback" + (f" ({why})" if why else "")


def infer_dims(inputs: Sequence[InputSpec], tensors: Sequence[Any]) -> dict[str, int] | None:
    """The spec's dimensions as given by actual tensors, or None where the shapes do not fit
    the spec (wrong rank, inconsistent sizes)."""
    if len(inputs) != len(tensors) or not all(isinstance(t, torch.Tensor) for t in tensors):
        return None
    dims: dict[str, int] = {}
    pending: list[tuple[str, int]] = []
    for spec, t in zip(inputs, tensors):
        if len(spec.shape) != t.dim():
            return None
        for expr, size in zip(spec.shape, t.shape):
            if expr.isidentifier():
                if dims.setdefault(expr, int(size)) != int(size):
                    return None
            elif not expr.isdigit():
                pending.append((expr, int(size)))
    for expr, size in pending:  # e.g. B+1: solve for the one unknown, linearly
        unknown = [n for n in re.findall(r"[A-Za-z_]\w*", expr) if n not in dims]
        if len(set(unknown)) == 1:
            name = unknown[0]
            f0, f1 = eval_dim(expr, {**dims, name: 0}), eval_dim(expr, {**dims, name: 1})
            if f1 == f0 or (size - f0) % (f1 - f0):
                return None
            dims[name] = (size - f0) // (f1 - f0)
    try:
        if any(spec.concrete_shape(dims) != tuple(t.shape) for spec, t in zip(inputs, tensors)):
            return None
    except ValueError:
        return None
    return dims


class LibraryKernel:
    """A library entry as a callable over the spec's inputs, dispatching by shape."""

    def __init__(self, entry: LibraryEntry, *, mode: str = "range"):
        from kevolve.hardware import load_target
        from kevolve.specs.kernelbench_format import load_module
        from kevolve.specs.runtime import OperatorRuntime

        if mode not in ("range", "exact"):
            raise LibraryError(f"dispatch mode {mode!r}: use range or exact")
        self.entry = entry
        self.spec: OperatorSpec = entry.spec()
        if self.spec.format != "yaml":
            raise LibraryError(f"{entry.ref}: only YAML-spec kernels can be loaded as operators "
                               "(KernelBench entries: use `kevolve library export`)")
        self.mode = mode
        self.device_type = "cpu" if load_target(entry.target).interpreter else "cuda"
        runtime = OperatorRuntime(self.spec)
        self.reference: Callable[..., Any] = runtime.reference(self.spec.tune_dims)
        try:
            module = load_module(entry.kernel_path)
        except Exception as exc:
            raise LibraryError(f"{entry.ref}: the stored kernel does not import here: "
                               f"{type(exc).__name__}: {exc}") from None
        self.kernel: Callable[..., Any] = runtime.candidate(module, self.spec.tune_dims)
        self.counts = DispatchCounts()

    @property
    def operator(self) -> str:
        return self.entry.operator

    def refusal(self, args: Sequence[Any]) -> str:
        """Why the kernel must not run on these arguments ("" when it may)."""
        dims = infer_dims(self.spec.inputs, args)
        if dims is None:
            return "shapes do not fit the spec"
        for spec, t in zip(self.spec.inputs, args):
            if str(t.dtype).removeprefix("torch.") != spec.dtype:
                return f"{spec.name} is {str(t.dtype).removeprefix('torch.')}, not {spec.dtype}"
            if t.device.type != self.device_type:
                return f"{spec.name} is on {t.device.type}, the kernel on {self.device_type}"
            if not t.is_contiguous():
                return f"{spec.name} is not contiguous"
        if not self.entry.covers(dims, self.mode):
            return "shape outside the validated range"
        return ""

    def __call__(self, *args: Any) -> Any:
        why = self.refusal(args)
        if why:
            self.counts.fallback += 1
            self.counts.reasons[why] += 1
            return self.reference(*args)
        self.counts.kernel += 1
        return self.kernel(*args)


def current_target(target: str | None) -> str:
    if target:
        return target
    from kevolve.hardware import detect_target

    return detect_target().name


def load(operator: str, target: str | None = None, *, mode: str = "range") -> LibraryKernel:
    """The current kernel for `operator` (or `NAME@VERSION`) on `target` (default: this
    machine's), as a callable that falls back to the PyTorch reference outside its validated
    shapes, dtypes and device."""
    return LibraryKernel(get(operator, current_target(target)), mode=mode)


# Custom ops: registered once per process under kevolve::<operator>; installing again rebinds the
# kernel behind the op (torch.library cannot redefine an op cleanly).
_BOUND: dict[str, LibraryKernel] = {}
_OPS: dict[str, Any] = {}


def op_name(operator: str) -> str:
    return re.sub(r"\W", "_", operator)


def install(operator: str, target: str | None = None, *, mode: str = "range"):
    """Register `kevolve::<operator>` as a torch custom op backed by the library kernel, with
    the reference as its fake implementation (so torch.compile and export can trace through
    it). Returns the op (`torch.ops.kevolve.<operator>`)."""
    kernel = load(operator, target, mode=mode)
    name = op_name(kernel.operator)
    _BOUND[name] = kernel
    if name not in _OPS:
        schema = "(" + ", ".join(f"Tensor {i.name}" for i in kernel.spec.inputs) + ") -> " + _outputs(kernel)

        def impl(*args):
            return _BOUND[name](*args)

        def fake(*args):
            return _BOUND[name].reference(*args)

        op = torch.library.custom_op(f"kevolve::{name}", impl, mutates_args=(), schema=schema)
        op.register_fake(fake)
        _OPS[name] = op
    return getattr(torch.ops.kevolve, name)


def install_choice(operators: Sequence[str]):
    """One custom op over several installed kernels of the same computation (their schemas are
    equal): each call runs the first kernel whose validated shapes cover it, else the first's
    fallback. The choice happens inside the op, so torch.compile sees a single opaque call and
    no graph break. Returns the op; a single operator gets its own op."""
    names = tuple(op_name(o) for o in operators)
    missing = [o for o, n in zip(operators, names) if n not in _BOUND]
    if missing:
        raise LibraryError(f"{', '.join(missing)} not installed in this process; call install() first")
    if len(names) == 1:
        return getattr(torch.ops.kevolve, names[0])
    name = "choice_" + hashlib.sha256("|".join(names).encode()).hexdigest()[:10]
    if name not in _OPS:
        def impl(*args):
            kernels = [_BOUND[n] for n in names]
            return next((k for k in kernels if not k.refusal(args)), kernels[0])(*args)

        def fake(*args):
            return _BOUND[names[0]].reference(*args)

        schema = str(getattr(torch.ops.kevolve, names[0]).default._schema)
        op = torch.library.custom_op(f"kevolve::{name}", impl, mutates_args=(),
                                     schema=schema[schema.index("("):])
        op.register_fake(fake)
        _OPS[name] = op
    return getattr(torch.ops.kevolve, name)


def _outputs(kernel: LibraryKernel) -> str:
    from kevolve.specs.runtime import OperatorRuntime, as_outputs

    dims = kernel.spec.interpreter_dims[0]
    outs = as_outputs(kernel.reference(*OperatorRuntime(kernel.spec).inputs(dims, seed=0)))
    return "Tensor" if len(outs) == 1 else "(" + ", ".join("Tensor" for _ in outs) + ")"


def installed(operator: str) -> LibraryKernel:
    name = op_name(operator)
    if name not in _BOUND:
        raise LibraryError(f"{operator} is not installed in this process; call install({operator!r}) first")
    return _BOUND[name]


def counts(operator: str) -> DispatchCounts:
    """Kernel and fallback calls of an installed operator since it was installed."""
    return installed(operator).counts


def all_counts() -> Mapping[str, DispatchCounts]:
    return {k.operator: k.counts for k in _BOUND.values()}


def same_computation(semantics: str, target: str | None = None) -> list[LibraryEntry]:
    """Current entries that compute the same thing (at any shape) on the target."""
    if not semantics:
        return []
    target = current_target(target)
    return [e for e in entries(target=target) if e.semantics == semantics]
