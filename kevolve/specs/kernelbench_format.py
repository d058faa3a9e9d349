"""KernelBench problem files, read exactly as published.

A problem is a module with `class Model(nn.Module)`, `get_inputs()`, `get_init_inputs()` and
module-level integer constants (or tuples of them) that set the sizes. Those constants are the spec's dimensions:
the functions read them when called, so setting them on the loaded module gives other shapes.
The published sizes are the tuned shape; a smaller shape for the interpreter and an odd-sized
check shape are derived and kept only where the reference accepts them (tried on the meta device,
so no memory is spent).
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from kevolve.errors import SpecError
from kevolve.specs.model import Dims, OperatorSpec

INTERPRETER_MAX_ELEMENTS = 1 << 16  # the interpreter runs a kernel program by program, in Python
_module_counter = itertools.count()
_META_LOCK = threading.Lock()


def looks_like_kernelbench(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    names = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    return {"Model", "get_inputs", "get_init_inputs"} <= names


def size_constants(source: str) -> dict[str, int]:
    """Module-level `name = <int>` and `name = (<int>, ...)` assignments, in file order; a tuple's
    items are dimensions of their own, `name.0`, `name.1`, ... (`input_shape = (32768,)`)."""
    out: dict[str, int] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name, value = node.targets[0].id, node.value
        if isinstance(value, ast.Constant) and type(value.value) is int:
            out[name] = value.value
        elif isinstance(value, ast.Tuple) and value.elts and all(
                isinstance(e, ast.Constant) and type(e.value) is int for e in value.elts):
            out.update({f"{name}.{i}": e.value for i, e in enumerate(value.elts)})
    return out


def load_module(path: Path) -> ModuleType:
    """Import a trusted reference file under a private name (never a candidate's code)."""
    name = f"kevolve_ref_{path.stem}_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_kernelbench_spec(path: Path) -> OperatorSpec:
    source = path.read_text()
    dims = size_constants(source)
    try:
        module = load_module(path)
    except Exception as exc:  # a broken problem file: say so in one line
        raise SpecError(path, "module", f"does not import: {type(exc).__name__}: {exc}") from None
    tune = dict(dims)
    interp = _interpreter_shapes(module, tune)
    if not interp:
        raise SpecError(path, "constants", "no smaller shape runs the reference; the interpreter cannot check it")
    check = _check_shape(module, tune)
    return OperatorSpec(
        name=path.stem,
        path=path,
        format="kernelbench",
        reference_path=path,
        reference_name="Model",
        entry_point="ModelNew",
        tune_dims=tune,
        check_dims=(check,) if check else (),
        interpreter_dims=tuple(interp),
        description=(ast.get_docstring(_model_class(source)) or "").strip(),
    )


def _model_class(source: str) -> ast.ClassDef:
    return next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Model")


def set_dims(module: ModuleType, dims: Dims) -> None:
    tuples: dict[str, dict[int, int]] = {}
    for k, v in dims.items():
        name, dot, index = k.partition(".")
        if dot:
            tuples.setdefault(name, {})[int(index)] = int(v)
        else:
            setattr(module, k, int(v))
    for name, items in tuples.items():
        setattr(module, name, tuple(items[i] for i in sorted(items)))


def meta_numel(module: ModuleType, dims: Dims) -> int | None:
    """Total input elements at `dims`, or None where the reference fails there (run on meta)."""
    import torch

    try:
        inputs, model = on_meta(module, dims)
        with torch.device("meta"):  # what forward creates lands there too
            model(*inputs)
    except Exception:
        return None
    return sum(t.numel() for t in inputs if isinstance(t, torch.Tensor))


def on_meta(module: ModuleType, dims: Dims) -> tuple[list, Any]:
    """The problem's inputs and model at `dims` on the meta device: shapes, no memory."""
    import torch
    from torch.distributions import Distribution

    with _META_LOCK:  # the switch below is process-wide: one caller at a time sets and restores it
        set_dims(module, dims)
        validating = Distribution._validate_args
        # a distribution (`Pareto(...).sample`) checks its parameters' values, which meta tensors lack
        Distribution.set_default_validate_args(False)
        try:
            with torch.device("meta"):
                return module.get_inputs(), module.Model(*module.get_init_inputs())
        finally:
            Distribution.set_default_validate_args(validating)


def _scaled(dims: Dims, factor: float, odd: bool) -> dict[str, int]:
    out = {}
    for k, v in dims.items():
        if v >= 8:
            n = max(4, int(v * factor))
            out[k] = n | 1 if odd and n > 4 else n
        else:
            out[k] = v
    return out


def _interpreter_shapes(module: ModuleType, tune: Dims) -> list[dict[str, int]]:
    found: list[dict[str, int]] = []
    factor = 1.0
    while factor > 1e-6 and len(found) < 2:
        for odd in (True, False):
            dims = _scaled(tune, factor, odd)
            numel = meta_numel(module, dims)
            if numel is not None and numel <= INTERPRETER_MAX_ELEMENTS and dims not in found:
                found.append(dims)
                break
        factor /= 2
    set_dims(module, tune)
    return found


def _check_shape(module: ModuleType, tune: Dims) -> dict[str, int] | None:
    dims = {k: (v - v // 7) | 1 if v >= 8 else v for k, v in tune.items()}
    ok = dims != dict(tune) and meta_numel(module, dims) is not None
    set_dims(module, tune)
    return dims if ok else None
