"""Checks that a spec can be used before any search spends time on it.

Loading already checks the fields; this runs the reference: on the CPU at every interpreter shape
(its outputs finite, its own native-precision result within the tolerance of the float64 one) and
on the meta device at the tuned and check shapes, so an inconsistent production shape is caught
without allocating it.
"""

from __future__ import annotations

import re

import torch

from kevolve.errors import SpecError
from kevolve.specs.compare import compare
from kevolve.specs.model import OperatorSpec, Tolerance, dims_key
from kevolve.specs.runtime import OperatorRuntime, as_outputs, clone_all

# Failures on the meta device that say nothing about the spec: data-dependent shapes and ops
# without a meta implementation.
_SHAPE_WORDS = re.compile(r"shape|size|dimension|cannot be multiplied|must match|broadcast", re.I)
_META_UNSUPPORTED = ("meta", "data-dependent", "item()", "Cannot copy out of meta",
                     "not implemented for", "NotImplementedError")


def tolerance_for(spec: OperatorSpec, output: torch.Tensor) -> Tolerance:
    return spec.tolerance or Tolerance.for_dtype(str(output.dtype).removeprefix("torch."))


def validate_spec(spec: OperatorSpec) -> None:
    """Raise SpecError naming the file and field of the first problem found."""
    try:
        runtime = OperatorRuntime(spec)
    except Exception as exc:
        raise SpecError(spec.path, "reference", f"does not load: {type(exc).__name__}: {exc}") from None
    for dims in spec.interpreter_dims:
        _check_on_cpu(spec, runtime, dims)
    if spec.format == "yaml":
        for dims in (spec.tune_dims, *spec.check_dims):
            _check_on_meta(spec, runtime, dims)


def _check_on_cpu(spec: OperatorSpec, runtime: OperatorRuntime, dims) -> None:
    field = f"shapes.interpreter[{dims_key(dims)}]"
    try:
        inputs = runtime.inputs(dims, seed=0)
        originals = clone_all(inputs)
        native = as_outputs(runtime.reference(dims)(*inputs))
        exact = as_outputs(runtime.reference(dims, float64=True)(*originals))
    except Exception as exc:
        if _SHAPE_WORDS.search(str(exc)):
            raise SpecError(spec.path, "inputs", f"shapes inconsistent for the reference at {field}: "
                            f"{_first_line(exc)}") from None
        raise SpecError(spec.path, "reference",
                        f"fails on its own inputs at {field}: {type(exc).__name__}: {_first_line(exc)}") from None
    for i, (out, ref) in enumerate(zip(native, exact)):
        if out.is_floating_point() and not bool(torch.isfinite(ref).all()):
            raise SpecError(spec.path, "inputs", f"the reference's output {i} has NaN or Inf at {field}; "
                            "change the value distributions")
        verdict = compare(out, ref, tolerance_for(spec, out))
        if not verdict.ok:
            raise SpecError(spec.path, "tolerance",
                            f"the reference in its own precision misses its float64 result at {field} "
                            f"({verdict.reason}); loosen the tolerance")


def _check_on_meta(spec: OperatorSpec, runtime: OperatorRuntime, dims) -> None:
    inputs = [torch.empty(i.concrete_shape(dims), dtype=getattr(torch, i.dtype), device="meta")
              for i in spec.inputs]
    try:
        runtime.reference(dims)(*inputs)
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if any(marker in text for marker in _META_UNSUPPORTED):
            return
        raise SpecError(spec.path, "shapes", f"the reference fails at {dims_key(dims)}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
