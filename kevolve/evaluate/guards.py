"""Memory guards for a candidate's run: poisoned allocations, guard bands, and the aten ops it runs.

While a candidate runs under `GuardMode`:
- every tensor it allocates (`torch.empty*`, `new_empty`, `zeros`, ...) is carved out of a larger
  buffer whose bands before and after hold a poison pattern; `empty*` memory itself starts
  poisoned (NaN for floats, a sentinel for integers), so an output element never written shows;
- every aten op it runs is recorded; anything but allocation, views, copies, fills and dtype
  conversions is computation that the kernel was meant to do (`self.linear(x)` in a ModelNew,
  an op reached through `getattr`), which the syntax tree cannot always see.
Inputs are placed inside guard bands too (`guarded_copy`), so a kernel that reads past an input
reads NaN and shows wrong values, and one that writes past any tensor breaks a band.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

GUARD_BYTES = 4096  # a multiple of Triton's 16-byte pointer alignment

# aten overload packets a candidate may run outside its kernels.
ALLOCATION_OPS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
                            "zeros", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones",
                            "full", "full_like", "new_full"})
POISONED_ALLOCATIONS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"})
ALLOWED_OPS = ALLOCATION_OPS | frozenset({
    # copies, fills and conversions
    "copy_", "_to_copy", "to", "clone", "contiguous", "fill_", "zero_", "_local_scalar_dense",
    "lift_fresh", "lift_fresh_copy", "detach", "detach_", "alias", "set_", "resize_",
    "_has_compatible_shallow_copy_type", "is_same_size",
    # views
    "view", "_unsafe_view", "_reshape_alias", "reshape", "expand", "t", "transpose", "permute",
    "squeeze", "unsqueeze", "flatten", "unflatten", "slice", "select", "narrow", "as_strided",
    "split", "split_with_sizes", "chunk", "unbind", "view_as", "expand_as", "sym_size",
    "sym_stride", "sym_numel", "sym_storage_offset", "resolve_conj", "resolve_neg",
})


def poison_value(dtype: torch.dtype) -> float | int | bool:
    if dtype.is_floating_point:
        return math.nan
    if dtype is torch.bool:
        return True
    if dtype is torch.uint8:
        return 0xA5
    return torch.iinfo(dtype).max - 3  # never an index, bucket or count a real output holds


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass
class Guard:
    """A buffer holding one tensor between two poisoned bands."""

    buffer: torch.Tensor
    band: int  # elements in each band
    span: int  # elements the tensor's storage covers

    def intact(self) -> bool:
        head = self.buffer[: self.band]
        tail = self.buffer[self.band + self.span:]
        bits = _BITS[self.buffer.element_size()]
        pattern = torch.full((1,), poison_value(self.buffer.dtype), dtype=self.buffer.dtype,
                             device=self.buffer.device).view(bits)
        return bool((head.view(bits) == pattern).all()) and bool((tail.view(bits) == pattern).all())


def storage_span(size: tuple[int, ...], stride: tuple[int, ...]) -> int:
    if any(s == 0 for s in size):
        return 0
    return 1 + sum((s - 1) * abs(st) for s, st in zip(size, stride))


def guarded_empty(size, stride, dtype: torch.dtype, device) -> tuple[torch.Tensor, Guard]:
    """A poisoned tensor of this size and stride inside a poisoned buffer."""
    span = storage_span(tuple(size), tuple(stride))
    band = max(1, GUARD_BYTES // dtype.itemsize)
    buffer = torch.full((span + 2 * band,), poison_value(dtype), dtype=dtype, device=device)
    return buffer.as_strided(tuple(size), tuple(stride), band), Guard(buffer, band, span)


def guarded_copy(t: torch.Tensor) -> tuple[torch.Tensor, Guard]:
    """A contiguous copy of `t` inside guard bands."""
    out, guard = guarded_empty(t.shape, torch.empty(t.shape, device="meta").stride(), t.dtype, t.device)
    out.copy_(t)
    return out, guard


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_TRITON_DIR = os.path.dirname(importlib.util.find_spec("triton").origin) + os.sep


def _called_by_triton() -> bool:
    """Is the op run on behalf of Triton's own code (its autotuner's benchmark, its interpreter)?"""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_TORCH_DIR) or name == __file__:
            frame = frame.f_back
            continue
        return name.startswith(_TRITON_DIR)
    return False


class GuardMode(TorchDispatchMode):
    """Poison and guard allocations; record the aten ops run. Use once per candidate call."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()
        self.guards: list[Guard] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        trusted = _called_by_triton()
        if not trusted:
            self.ops.add(name)
        out = func(*args, **kwargs)
        if name in ALLOCATION_OPS and not trusted and isinstance(out, torch.Tensor) and out.numel() > 0 \
                and out.layout is torch.strided and out.device.type != "meta":
            guarded, guard = guarded_empty(out.shape, out.stride(), out.dtype, out.device)
            if name not in POISONED_ALLOCATIONS:
                guarded.copy_(out)
            self.guards.append(guard)
            return guarded
        return out

    def computation_ops(self) -> list[str]:
        return sorted(op for op in self.ops if op not in ALLOWED_OPS)

    def broken_guards(self) -> int:
        return sum(not g.intact() for g in self.guards)
