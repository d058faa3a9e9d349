"""What an operator spec says, as frozen values.

A spec names an operator, its PyTorch reference, how to make its inputs, the shape to tune for,
the shapes that must also be correct, and how close a candidate must come to the reference.
Shapes are written over named dimensions (`M`, `N`, ...); a `Dims` mapping gives them values.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

Dims = Mapping[str, int]

# Names accepted in specs, mapped to the torch dtype attribute they mean.
DTYPE_ALIASES: dict[str, str] = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float64": "float64", "fp64": "float64", "double": "float64",
    "float8_e4m3fn": "float8_e4m3fn", "fp8": "float8_e4m3fn",
    "int64": "int64", "long": "int64", "int32": "int32", "int": "int32",
    "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool",
}
FLOAT_DTYPES = {"float32", "float16", "bfloat16", "float64", "float8_e4m3fn"}

DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    # kind: the parameters it takes
    "normal": ("mean", "std"),
    "uniform": ("low", "high"),
    "randint": ("low", "high"),
    "sorted_uniform": ("low", "high"),
    # Offsets of a jagged tensor: B+1 non-decreasing values from 0 to `total`, some segments empty.
    "offsets": ("total",),
}


@dataclass(frozen=True)
class Tolerance:
    """A candidate passes when every element is within atol + rtol * |ref| of the reference and
    the whole error is at most max_rel_l2 of the reference's norm (that second test catches an
    all-zero output that a loose atol would pass)."""

    atol: float
    rtol: float
    max_rel_l2: float

    @staticmethod
    def for_dtype(dtype: str) -> "Tolerance":
        if dtype in ("float32", "float64"):
            return Tolerance(atol=1e-4, rtol=1e-4, max_rel_l2=1e-4)
        if dtype == "float16":
            return Tolerance(atol=1e-2, rtol=1e-2, max_rel_l2=2e-3)
        if dtype == "bfloat16":
            return Tolerance(atol=1e-2, rtol=1e-2, max_rel_l2=1e-2)
        if dtype == "float8_e4m3fn":
            return Tolerance(atol=1e-1, rtol=1e-1, max_rel_l2=8e-2)
        return Tolerance(atol=0.0, rtol=0.0, max_rel_l2=0.0)  # integers and bools: exact


@dataclass(frozen=True)
class Distribution:
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[str, ...]  # each entry an integer or an expression over dims, e.g. "B+1"
    dtype: str
    dist: Distribution

    def concrete_shape(self, dims: Dims) -> tuple[int, ...]:
        return tuple(eval_dim(expr, dims) for expr in self.shape)


@dataclass(frozen=True)
class OperatorSpec:
    name: str
    path: Path
    format: Literal["yaml", "kernelbench"]
    reference_path: Path
    reference_name: str  # the function (yaml) or the class `Model` (kernelbench)
    entry_point: str  # what a candidate module must define: a function name, or `ModelNew`
    tune_dims: Dims
    check_dims: tuple[Dims, ...]
    interpreter_dims: tuple[Dims, ...]
    inputs: tuple[InputSpec, ...] = ()  # empty for kernelbench: its get_inputs() makes them
    params: Mapping[str, Any] = field(default_factory=dict)  # keyword arguments of the reference
    tolerance: Tolerance | None = None  # None: by the output's dtype
    family: str | None = None
    description: str = ""
    tags: tuple[str, ...] = ()

    @property
    def dim_names(self) -> tuple[str, ...]:
        return tuple(self.tune_dims)

    def shapes_for(self, target_is_interpreter: bool) -> tuple[Dims, tuple[Dims, ...]]:
        """(the shape to tune for, the others that must also be correct) on a kind of target."""
        if target_is_interpreter:
            return self.interpreter_dims[0], tuple(self.interpreter_dims[1:])
        return self.tune_dims, self.check_dims

    def reference_source(self) -> str:
        return self.reference_path.read_text()


def dims_key(dims: Dims) -> str:
    """A stable text form of a shape, for cache keys and reports: `M=8192,N=4096`."""
    return ",".join(f"{k}={int(v)}" for k, v in dims.items())


def resolve_dtype(name: str) -> str | None:
    return DTYPE_ALIASES.get(str(name).strip().lower())


_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}


def eval_dim(expr: str | int, dims: Dims) -> int:
    """Evaluate a shape entry: an integer, a dimension name, or + - * // % ** over those."""
    if isinstance(expr, int):
        return expr
    try:
        tree = ast.parse(str(expr), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"cannot read shape entry {expr!r}") from exc

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in dims:
                raise ValueError(f"dimension {node.id!r} is not defined")
            return int(dims[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"shape entry {expr!r} may use only integers, dimension names and + - * // % **")

    return int(walk(tree))
