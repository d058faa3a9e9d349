"""Run a model once on fake tensors and record every ATen operator it calls.

No weights and no real memory: the model is built and run under `FakeTensorMode`, so a 7B
configuration costs well under a second. Each call is kept with its arguments' shapes and
dtypes, its FLOPs (torch's own flop formulas), the bytes it moves, the module it ran in, and
which earlier call produced each of its tensor arguments, so fusions can be recognised on the
data flow rather than on the order of calls.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from kevolve.errors import KevolveError

class ModelError(KevolveError):
    """A model description that cannot be built or run: says which and what to do."""

    exit_code = 2


# Calls that only re-describe existing memory: they move no bytes.
VIEW_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "t", "transpose", "permute", "expand",
    "unsqueeze", "squeeze", "select", "slice", "detach", "alias", "as_strided", "unbind", "split",
    "split_with_sizes", "narrow", "diagonal", "lift_fresh", "unfold", "view_as_real", "view_as_complex",
})
# Table lookups: (table, indices, ...); they read only the rows they gather.
GATHER_OPS = frozenset({"embedding", "_embedding_bag", "_embedding_bag_forward_only"})
# Calls that do not touch data at all.
SILENT_OPS = frozenset({"device", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "dim",
                        "is_contiguous", "is_same_size", "_local_scalar_dense"})


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: str  # as torch spells it after "torch.": bfloat16, float32, int64
    contiguous: bool
    stored_elements: int  # elements actually backing the tensor (an expanded tensor stores fewer)
    parameter: bool = False

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=getattr(torch, self.dtype)).element_size()

    @property
    def nbytes(self) -> int:
        return self.stored_elements * self.itemsize


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument: `value` names the tensor (one id per distinct tensor in the run)."""

    value: int
    meta: TensorMeta


@dataclass(frozen=True)
class OpCall:
    index: int
    op: str  # the overload: "aten.mm.default"
    name: str  # the operator: "mm"
    args: tuple[Any, ...]  # TensorArg for tensors, tuples for lists, plain values otherwise
    kwargs: tuple[tuple[str, Any], ...]
    outputs: tuple[TensorArg, ...]
    flops: int
    bytes: int
    phase: str  # forward | backward
    module: str  # qualified name of the innermost module it ran in ("" at the top)

    @property
    def tensor_args(self) -> tuple[TensorArg, ...]:
        return tuple(_flat_tensors(self.args)) + tuple(_flat_tensors(v for _, v in self.kwargs))

    def kwarg(self, name: str, default: Any = None) -> Any:
        return dict(self.kwargs).get(name, default)

    @property
    def is_view(self) -> bool:
        return self.name in VIEW_OPS


@dataclass(frozen=True)
class ModelTrace:
    name: str
    calls: tuple[OpCall, ...]
    producers: dict[int, tuple[int, int]] = field(repr=False)  # tensor value -> (call index, output slot)


@dataclass(frozen=True)
class ModelCase:
    """What to trace: `build()` returns the module, in the mode to trace (eval for inference),
    and its example forward arguments (module, args, kwargs). It is called under fake tensors,
    so production sizes cost nothing."""

    name: str
    build: Callable[[], tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any]]]


def _flat_tensors(values) -> list[TensorArg]:
    out = []
    for v in values:
        if isinstance(v, TensorArg):
            out.append(v)
        elif isinstance(v, tuple):
            out.extend(_flat_tensors(v))
    return out


def tensor_meta(t: torch.Tensor) -> TensorMeta:
    shape = tuple(int(s) for s in t.shape)
    if t.numel() == 0:
        stored = 0
    else:
        span = 1 + sum((s - 1) * abs(int(st)) for s, st in zip(shape, t.stride()))
        stored = min(t.numel(), span)
    return TensorMeta(shape=shape, dtype=str(t.dtype).removeprefix("torch."),
                      contiguous=bool(t.is_contiguous()), stored_elements=stored,
                      parameter=isinstance(t, torch.nn.Parameter))


class _Recorder(TorchDispatchMode):
    def __init__(self, module_stack: list[str]):
        super().__init__()
        self.calls: list[OpCall] = []
        self.producers: dict[int, tuple[int, int]] = {}
        self.phase = "forward"
        self._module_stack = module_stack
        self._values: dict[int, int] = {}  # id(tensor) -> value
        self._alive: list[torch.Tensor] = []  # keeps ids from being reused during the run
        self._next_value = itertools.count()

    def _value(self, t: torch.Tensor) -> int:
        key = id(t)
        if key not in self._values:
            self._values[key] = next(self._next_value)
            self._alive.append(t)
        return self._values[key]

    def _arg(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            return TensorArg(self._value(a), tensor_meta(a))
        if isinstance(a, (list, tuple)):
            return tuple(self._arg(x) for x in a)
        if isinstance(a, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
            return str(a).removeprefix("torch.")
        if isinstance(a, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return str(a)
        return a

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._overloadpacket.__name__
        if func.namespace == "prim" or name in SILENT_OPS:
            return out
        index = len(self.calls)
        rec_args = tuple(self._arg(a) for a in args)
        rec_kwargs = tuple((k, self._arg(v)) for k, v in kwargs.items())
        flat_out = [o for o in (out if isinstance(out, (list, tuple)) else [out]) if isinstance(o, torch.Tensor)]
        outputs = []
        for slot, o in enumerate(flat_out):
            # A fresh output id: an in-place op returns its input, which now holds new data.
            self._values.pop(id(o), None)
            arg = TensorArg(self._value(o), tensor_meta(o))
            self.producers[arg.value] = (index, slot)
            outputs.append(arg)
        inputs = {t.value: t for t in _flat_tensors(rec_args + tuple(v for _, v in rec_kwargs))}
        moved = 0 if name in VIEW_OPS else (sum(t.meta.nbytes for t in inputs.values())
                                            + sum(o.meta.nbytes for o in outputs))
        if name in GATHER_OPS:  # a lookup reads the rows it gathers, not the whole table
            table, ids = rec_args[0].meta, rec_args[1].meta
            row_bytes = table.nbytes // max(table.shape[0], 1)
            moved -= table.nbytes - min(table.nbytes, ids.numel * row_bytes)
        self.calls.append(OpCall(index=index, op=str(func), name=name, args=rec_args, kwargs=rec_kwargs,
                                 outputs=tuple(outputs), flops=_flops(func, name, args, kwargs, out),
                                 bytes=moved, phase=self.phase,
                                 module=self._module_stack[-1] if self._module_stack else ""))
        return out


def _flops(func, name: str, args, kwargs, out) -> int:
    formula = flop_registry.get(func._overloadpacket)
    if formula is not None:
        try:
            return int(formula(*args, **kwargs, out_val=out))
        except Exception:  # a formula that does not know this overload: count nothing
            return 0
    if "scaled_dot_product" in name and len(args) >= 3:  # CPU attention has no formula
        q, k, v = args[:3]
        batch = q.numel() // (q.shape[-2] * q.shape[-1])
        return 2 * batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    return 0


def trace_model(case: ModelCase, *, backward: bool = False) -> ModelTrace:
    """Build and run the model on fake tensors, recording each ATen call (and the backward
    pass's calls too when `backward`)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    stack: list[str] = []
    with FakeTensorMode(allow_non_fake_inputs=True):
        try:
            model, args, kwargs = case.build()
        except Exception as exc:
            raise ModelError(f"cannot build {case.name} on fake tensors: {type(exc).__name__}: "
                             f"{_first_line(exc)}") from None
        names = {id(m): n for n, m in model.named_modules()}
        def enter(module, _inputs) -> None:
            stack.append(names.get(id(module), type(module).__name__))

        def leave(_module, _inputs, _output) -> None:  # returning a value would replace the output
            if stack:
                stack.pop()

        hooks = [torch.nn.modules.module.register_module_forward_pre_hook(enter),
                 torch.nn.modules.module.register_module_forward_hook(leave)]
        recorder = _Recorder(stack)
        try:
            with torch.set_grad_enabled(backward), recorder:
                try:
                    out = model(*args, **kwargs)
                except Exception as exc:
                    raise ModelError(f"{case.name} fails in its forward pass on fake tensors: "
                                     f"{type(exc).__name__}: {_first_line(exc)}") from None
                if backward:
                    loss = _first_float_tensor(out)
                    recorder.phase = "backward"
                    loss.backward(torch.ones_like(loss))
        finally:
            for h in hooks:
                h.remove()
    return ModelTrace(name=case.name, calls=tuple(recorder.calls), producers=dict(recorder.producers))


def _first_float_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor) and out.is_floating_point():
        return out
    values = out.values() if hasattr(out, "values") else out if isinstance(out, (list, tuple)) else []
    for v in values:
        try:
            return _first_float_tensor(v)
        except ModelError:
            continue
    raise ModelError("the model returned no floating-point tensor to run the backward pass from; "
                     "trace without --backward")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
