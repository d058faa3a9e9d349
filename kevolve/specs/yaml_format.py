"""Specs written as YAML beside a reference module.

    name: softmax
    family: softmax
    reference: ref/softmax.py:softmax     # file relative to the spec, then the function
    shapes:
      tune: {M: 8192, N: 8192}            # what the search optimises for
      check: [{M: 1000, N: 3001}]         # must also be correct (odd sizes, non-multiples)
      interpreter: [{M: 5, N: 97}]        # small shapes for the CPU interpreter
    inputs:
      - {name: x, shape: [M, N], dtype: bf16, dist: {kind: normal, std: 3}}
    params: {}                            # keyword arguments of the reference
    tolerance: {atol: 1e-2, rtol: 1e-2}   # optional; defaults by dtype
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kevolve.errors import SpecError
from kevolve.specs.model import (
    DISTRIBUTIONS, Distribution, InputSpec, OperatorSpec, Tolerance, eval_dim, resolve_dtype,
)

KNOWN_KEYS = {"name", "family", "description", "reference", "entry_point", "shapes", "inputs",
              "params", "tolerance", "tags"}


def load_yaml_spec(path: Path) -> OperatorSpec:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "document"
        raise SpecError(path, where, f"not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(doc, dict):
        raise SpecError(path, "document", "expected a mapping with name, reference, shapes and inputs")
    unknown = sorted(set(doc) - KNOWN_KEYS)
    if unknown:
        raise SpecError(path, unknown[0], f"unknown field; known fields are {', '.join(sorted(KNOWN_KEYS))}")

    name = _required(doc, "name", path, str)
    ref_path, ref_name = _reference(doc, path)
    tune, check, interp = _shapes(doc, path)
    inputs = tuple(_input(i, item, path) for i, item in enumerate(_required(doc, "inputs", path, list)))
    if not inputs:
        raise SpecError(path, "inputs", "at least one input is needed")
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        raise SpecError(path, "inputs", f"input names repeat: {names}")
    for label, dims_list in (("shapes.tune", [tune]), ("shapes.check", check), ("shapes.interpreter", interp)):
        for dims in dims_list:
            _check_dims_cover_inputs(inputs, dims, path, label)

    params = doc.get("params") or {}
    if not isinstance(params, dict):
        raise SpecError(path, "params", "expected a mapping of keyword arguments")
    return OperatorSpec(
        name=name,
        path=path,
        format="yaml",
        reference_path=ref_path,
        reference_name=ref_name,
        entry_point=str(doc.get("entry_point") or ref_name),
        tune_dims=tune,
        check_dims=tuple(check),
        interpreter_dims=tuple(interp),
        inputs=inputs,
        params=params,
        tolerance=_tolerance(doc.get("tolerance"), path),
        family=doc.get("family"),
        description=str(doc.get("description") or ""),
        tags=tuple(doc.get("tags") or ()),
    )


def _required(doc: dict, key: str, path: Path, kind: type) -> Any:
    if key not in doc or doc[key] is None:
        raise SpecError(path, key, "missing")
    if not isinstance(doc[key], kind):
        raise SpecError(path, key, f"expected {kind.__name__}, got {type(doc[key]).__name__}")
    return doc[key]


def _reference(doc: dict, path: Path) -> tuple[Path, str]:
    ref = _required(doc, "reference", path, str)
    if ":" not in ref:
        raise SpecError(path, "reference", f"{ref!r} should be FILE.py:FUNCTION")
    file_part, func = ref.rsplit(":", 1)
    ref_path = (path.parent / file_part).resolve()
    if not ref_path.is_file():
        raise SpecError(path, "reference", f"file {file_part} not found next to the spec")
    if not func.isidentifier():
        raise SpecError(path, "reference", f"{func!r} is not a function name")
    return ref_path, func


def _dims(value: Any, path: Path, field: str) -> dict[str, int]:
    if not isinstance(value, dict) or not value:
        raise SpecError(path, field, "expected a mapping of dimension names to sizes, e.g. {M: 1024}")
    out = {}
    for k, v in value.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise SpecError(path, f"{field}.{k}", f"expected a non-negative integer, got {v!r}")
        out[str(k)] = v
    return out


def _shapes(doc: dict, path: Path):
    shapes = _required(doc, "shapes", path, dict)
    tune = _dims(shapes.get("tune"), path, "shapes.tune")
    check = [_dims(d, path, f"shapes.check[{i}]") for i, d in enumerate(shapes.get("check") or [])]
    interp = [_dims(d, path, f"shapes.interpreter[{i}]") for i, d in enumerate(shapes.get("interpreter") or [])]
    if not interp:
        raise SpecError(path, "shapes.interpreter", "give at least one small shape for the CPU interpreter")
    for label, dims_list in (("shapes.check", check), ("shapes.interpreter", interp)):
        for i, dims in enumerate(dims_list):
            if set(dims) != set(tune):
                raise SpecError(path, f"{label}[{i}]",
                                f"names dimensions {sorted(dims)} but shapes.tune names {sorted(tune)}")
    return tune, check, interp


def _input(i: int, item: Any, path: Path) -> InputSpec:
    field = f"inputs[{i}]"
    if not isinstance(item, dict):
        raise SpecError(path, field, "expected a mapping with name, shape, dtype and dist")
    name = item.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise SpecError(path, f"{field}.name", f"{name!r} is not a valid argument name")
    field = f"inputs.{name}"
    dtype = resolve_dtype(item.get("dtype", ""))
    if dtype is None:
        raise SpecError(path, f"{field}.dtype", f"unknown dtype {item.get('dtype')!r}; "
                        "use one of float32, bfloat16, float16, float64, int64, int32, int8, uint8, bool")
    shape = item.get("shape")
    if not isinstance(shape, list):
        raise SpecError(path, f"{field}.shape", "expected a list of sizes or dimension names")
    dist_doc = item.get("dist") or {"kind": "normal"}
    if not isinstance(dist_doc, dict) or dist_doc.get("kind") not in DISTRIBUTIONS:
        raise SpecError(path, f"{field}.dist",
                        f"expected kind to be one of {', '.join(DISTRIBUTIONS)}, got {dist_doc!r}")
    kind = dist_doc["kind"]
    params = {k: v for k, v in dist_doc.items() if k != "kind"}
    extra = set(params) - set(DISTRIBUTIONS[kind])
    if extra:
        raise SpecError(path, f"{field}.dist", f"{kind} takes {', '.join(DISTRIBUTIONS[kind])}, not {sorted(extra)}")
    if kind in ("randint", "offsets") and dtype not in ("int64", "int32"):
        raise SpecError(path, f"{field}.dist", f"{kind} needs an integer dtype, not {dtype}")
    if kind == "randint" and "high" not in params:
        raise SpecError(path, f"{field}.dist", "randint needs high")
    if kind == "offsets" and "total" not in params:
        raise SpecError(path, f"{field}.dist", "offsets needs total (the length of the jagged values)")
    return InputSpec(name=name, shape=tuple(str(s) for s in shape), dtype=dtype,
                     dist=Distribution(kind=kind, params=params))


def _check_dims_cover_inputs(inputs, dims, path: Path, label: str) -> None:
    for inp in inputs:
        try:
            sizes = inp.concrete_shape(dims)
            if inp.dist.kind in ("randint", "offsets"):  # integer bounds may name dimensions
                for key in ("low", "high", "total"):
                    if key in inp.dist.params:
                        eval_dim(inp.dist.params[key], dims)
        except ValueError as exc:
            raise SpecError(path, f"inputs.{inp.name}.shape", f"{exc} in {label}") from None
        if any(s < 0 for s in sizes):
            raise SpecError(path, f"inputs.{inp.name}.shape", f"negative size {sizes} in {label}")


def _tolerance(value: Any, path: Path) -> Tolerance | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SpecError(path, "tolerance", "expected a mapping with atol, rtol and optionally max_rel_l2")
    try:
        atol, rtol = float(value["atol"]), float(value["rtol"])
        max_rel_l2 = float(value.get("max_rel_l2", max(rtol, 1e-4)))
    except (KeyError, TypeError, ValueError):
        raise SpecError(path, "tolerance", f"expected numbers atol and rtol, got {value!r}") from None
    return Tolerance(atol=atol, rtol=rtol, max_rel_l2=max_rel_l2)
