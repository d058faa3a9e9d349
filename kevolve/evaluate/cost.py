"""The work an operator must do, measured on its reference: FLOPs and minimal bytes.

FLOPs: torch's FlopCounterMode for matmuls, convolutions and attention, plus one FLOP per output
element of every other computing aten op (FlopCounterMode counts none of those). Minimal bytes:
every input read once and every output written once, at their dtypes, and a module's parameters
read once; an input that the reference only gathers rows from (embedding, index_select) counts
the rows gathered where that is less than the whole table.

Also: the compiled kernels' statistics, read from Triton's caches (layouts of Triton 3.6 and 3.9).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from kevolve.evaluate.guards import ALLOWED_OPS
from kevolve.specs.runtime import OperatorRuntime, as_outputs

_FLOP_COUNTED = frozenset({"mm", "addmm", "bmm", "baddbmm", "matmul", "convolution", "_convolution",
                           "conv1d", "conv2d", "conv3d", "_scaled_dot_product_flash_attention",
                           "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"})
_GATHERS = {"embedding": (0, 1), "embedding_bag": (0, 1), "_embedding_bag": (0, 1),
            "_embedding_bag_forward_only": (0, 1), "index_select": (0, 2)}  # op: (table arg, index arg)


@dataclass(frozen=True)
class Cost:
    matmul_flops: float
    other_flops: float
    min_bytes: float
    dtype: str  # the dtype of the largest floating input, for the compute ceiling

    def to_dict(self) -> dict[str, Any]:
        return {"matmul_flops": self.matmul_flops, "other_flops": self.other_flops,
                "min_bytes": self.min_bytes, "dtype": self.dtype}


class _WorkMode(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.elementwise_flops = 0.0
        # storage pointer of a table -> (bytes per row, the index tensors that gathered from it)
        self.gathered: dict[int, tuple[int, list[torch.Tensor]]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in _GATHERS:
            table_i, index_i = _GATHERS[name]
            table, index = args[table_i], args[index_i]
            row_bytes = table.stride(0) * table.element_size() if table.dim() else table.element_size()
            key = table.untyped_storage().data_ptr()
            self.gathered.setdefault(key, (row_bytes, []))[1].append(index.detach().flatten())
        elif name not in ALLOWED_OPS and name not in _FLOP_COUNTED:
            self.elementwise_flops += sum(t.numel() for t in _tensors(out))
        return out

    def gathered_bytes(self) -> dict[int, float]:
        """Bytes of the distinct rows read from each gathered table: a row looked up twice need
        only come from DRAM once, so repeats are not part of the least traffic."""
        return {key: float(torch.unique(torch.cat(ids)).numel() * row_bytes)
                for key, (row_bytes, ids) in self.gathered.items()}


def reference_cost(runtime: OperatorRuntime, dims, device: str | torch.device) -> Cost:
    inputs = runtime.inputs(dims, seed=0, device=device)
    fn = runtime.reference(dims, device)
    work = _WorkMode()
    with torch.no_grad(), FlopCounterMode(display=False) as counter, work:
        outputs = as_outputs(fn(*inputs))
    gathered = work.gathered_bytes()
    total = 0.0
    floats = [t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()]
    for t in inputs:
        if isinstance(t, torch.Tensor):
            size = t.numel() * t.element_size()
            total += min(size, gathered.get(t.untyped_storage().data_ptr(), size))
    if isinstance(fn, torch.nn.Module):
        total += sum(p.numel() * p.element_size() for p in (*fn.parameters(), *fn.buffers()))
    total += sum(o.numel() * o.element_size() for o in outputs)
    dtype = max(floats, key=lambda t: t.numel()).dtype if floats else torch.float32
    return Cost(matmul_flops=float(counter.get_total_flops()), other_flops=work.elementwise_flops,
                min_bytes=float(total), dtype=str(dtype).removeprefix("torch."))


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _tensors(item)]
    return []


def compiled_kernel_stats(module: ModuleType) -> list[dict[str, Any]]:
    """Registers, spills, shared memory, warps and stages of every kernel the module compiled.
    Empty under the interpreter, which compiles nothing."""
    out: dict[str, dict[str, Any]] = {}
    for value in list(vars(module).values()):
        fn = value
        for _ in range(4):  # Autotuner / Heuristics wrap the JITFunction in .fn
            if hasattr(fn, "device_caches") or (hasattr(fn, "cache") and hasattr(fn, "src")):
                break
            fn = getattr(fn, "fn", None)
        if fn is None:
            continue
        for kernel in _compiled(fn):
            stats = _kernel_stats(kernel)
            if stats:
                out.setdefault(f"{stats['name']}:{stats['num_warps']}:{stats['num_stages']}:"
                               f"{stats['num_regs']}:{stats['shared_bytes']}", stats)
    return list(out.values())


def _compiled(fn: Any) -> list[Any]:
    caches = getattr(fn, "device_caches", None)
    if caches is None:
        caches = getattr(fn, "cache", None)
    if not isinstance(caches, dict):
        return []
    kernels = []
    for per_device in caches.values():
        table = per_device[0] if isinstance(per_device, tuple) else per_device
        if isinstance(table, dict):
            for kernel in table.values():
                if hasattr(kernel, "result") and not hasattr(kernel, "metadata"):
                    try:
                        kernel = kernel.result()
                    except Exception:
                        continue
                kernels.append(kernel)
    return kernels


def _kernel_stats(kernel: Any) -> dict[str, Any] | None:
    meta = getattr(kernel, "metadata", None)
    if meta is None:
        return None
    if getattr(kernel, "n_regs", None) is None and hasattr(kernel, "_init_handles"):
        try:
            kernel._init_handles()
        except Exception:
            return None
    return {
        "name": str(getattr(meta, "name", getattr(kernel, "name", "kernel"))),
        "num_regs": int(getattr(kernel, "n_regs", 0) or 0),
        "num_spills": int(getattr(kernel, "n_spills", 0) or 0),
        "shared_bytes": int(getattr(meta, "shared", 0) or 0),
        "num_warps": int(getattr(meta, "num_warps", 0) or 0),
        "num_stages": int(getattr(meta, "num_stages", 0) or 0),
    }
