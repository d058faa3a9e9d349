"""Checks the offline synthesizer's tests share: run a generated module under the interpreter
against the spec's float64 reference, the way the harness judges correctness."""

from __future__ import annotations

import types
from typing import Iterable

import torch

from kevolve.specs.compare import compare
from kevolve.specs.model import Dims, OperatorSpec, Tolerance
from kevolve.specs.runtime import OperatorRuntime, as_outputs, clone_all


def load_module(code: str) -> types.ModuleType:
    module = types.ModuleType("offline_candidate")
    exec(compile(code, "offline_candidate", "exec"), module.__dict__)
    return module


def problems(spec: OperatorSpec, code: str, shapes: Iterable[Dims] | None = None, seeds=(1, 2)) -> list[str]:
    """What is wrong with a candidate on the spec's interpreter shapes (empty when nothing)."""
    runtime = OperatorRuntime(spec)
    module = load_module(code)
    found = []
    for dims in shapes or spec.interpreter_dims:
        for seed in seeds:
            xs = runtime.inputs(dims, seed)
            native = as_outputs(runtime.reference(dims)(*clone_all(xs)))
            exact = as_outputs(runtime.reference(dims, float64=True)(*clone_all(xs)))
            given = clone_all(xs)
            outs = as_outputs(runtime.candidate(module, dims)(*given))
            where = f"{dict(dims)} seed {seed}"
            if any(not torch.equal(a, b) for a, b in zip(given, xs) if isinstance(a, torch.Tensor)):
                found.append(f"{where}: an input was modified")
            for out, ref, ref64 in zip(outs, native, exact):
                if out.dtype != ref.dtype or tuple(out.shape) != tuple(ref.shape):
                    found.append(f"{where}: {out.dtype}{tuple(out.shape)} but the reference gives "
                                 f"{ref.dtype}{tuple(ref.shape)}")
                    continue
                if not out.is_contiguous():
                    found.append(f"{where}: the output is not contiguous")
                tol = spec.tolerance or Tolerance.for_dtype(str(ref.dtype).removeprefix("torch."))
                result = compare(out, ref64, tol)
                if not result.ok:
                    found.append(f"{where}: {result.reason}")
    return found
