"""Running a spec: its inputs, its reference (native or in float64), and a candidate's callable.

Both formats meet here, so the evaluator need not know which one a spec came from.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Callable, Sequence

import torch

from kevolve.specs import kernelbench_format
from kevolve.specs.inputs import make_inputs
from kevolve.specs.model import Dims, OperatorSpec

Fn = Callable[..., Any]


class OperatorRuntime:
    def __init__(self, spec: OperatorSpec):
        self.spec = spec
        self.module = kernelbench_format.load_module(spec.reference_path)
        if not hasattr(self.module, spec.reference_name):
            raise AttributeError(f"{spec.reference_path.name} has no {spec.reference_name}")

    # Inputs -----------------------------------------------------------------------------------
    def inputs(self, dims: Dims, seed: int, device: str | torch.device = "cpu") -> list[torch.Tensor]:
        if self.spec.format == "yaml":
            return make_inputs(self.spec.inputs, dims, seed, device)
        kernelbench_format.set_dims(self.module, dims)
        torch.manual_seed(seed)
        return [t.to(device) if isinstance(t, torch.Tensor) else t for t in self.module.get_inputs()]

    # Callables --------------------------------------------------------------------------------
    def reference(self, dims: Dims, device: str | torch.device = "cpu", *, float64: bool = False,
                  seed: int = 0) -> Fn:
        """The reference as a callable over positional inputs. With float64 its floating inputs
        (and, for a module, its parameters) are raised to float64 first."""
        if self.spec.format == "yaml":
            fn = functools.partial(getattr(self.module, self.spec.reference_name), **self.spec.params)
        else:
            kernelbench_format.set_dims(self.module, dims)
            torch.manual_seed(seed)
            model = self.module.Model(*self.module.get_init_inputs()).to(device)
            fn = model.double() if float64 else model
        if not float64:
            return fn
        return lambda *xs: fn(*(to_float64(x) for x in xs))

    def candidate(self, module: ModuleType, dims: Dims, device: str | torch.device = "cpu",
                  *, seed: int = 0) -> Fn:
        """The candidate module's entry point, built the way the reference is (same seed for a
        KernelBench `ModelNew`, so parameters start equal)."""
        entry = getattr(module, self.spec.entry_point)
        if self.spec.format == "yaml":
            return functools.partial(entry, **self.spec.params)
        kernelbench_format.set_dims(self.module, dims)
        torch.manual_seed(seed)
        return entry(*self.module.get_init_inputs()).to(device)


def to_float64(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.to(torch.float64)
    return x


def as_outputs(result: Any) -> list[torch.Tensor]:
    """A reference's or candidate's return value as a list of tensors."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in result):
        return list(result)
    raise TypeError(f"expected a tensor or a tuple of tensors, got {type(result).__name__}")


def clone_all(xs: Sequence[Any]) -> list[Any]:
    return [x.clone() if isinstance(x, torch.Tensor) else x for x in xs]
