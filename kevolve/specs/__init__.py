"""Operator specs: load, discover and validate them."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from kevolve.errors import SpecError
from kevolve.specs.kernelbench_format import load_kernelbench_spec, looks_like_kernelbench
from kevolve.specs.model import Dims, InputSpec, OperatorSpec, Tolerance, dims_key
from kevolve.specs.yaml_format import load_yaml_spec

__all__ = ["Dims", "InputSpec", "OperatorSpec", "Tolerance", "dims_key", "discover", "load_spec",
           "resolve_spec"]


def load_spec(path: str | Path) -> OperatorSpec:
    """Load a spec, telling the format from the file's content."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(path, "file", "not found")
    text = path.read_text(errors="replace")
    if looks_like_kernelbench(text):
        return load_kernelbench_spec(path.resolve())
    if path.suffix in (".yaml", ".yml"):
        return load_yaml_spec(path.resolve())
    raise SpecError(path, "format", "neither a YAML spec nor a KernelBench problem "
                    "(class Model, get_inputs, get_init_inputs)")


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """Spec files named, or found directly inside named folders (YAML specs, KernelBench files)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.iterdir()):
                if f.suffix in (".yaml", ".yml") or (
                        f.suffix == ".py" and looks_like_kernelbench(f.read_text(errors="replace"))):
                    found.append(f)
        else:
            found.append(p)
    return found


def resolve_spec(name_or_path: str | Path) -> OperatorSpec:
    """A spec by path, or by the name of an example spec in specs/ (`softmax`)."""
    from kevolve.paths import specs_dir

    path = Path(name_or_path)
    if not path.exists():
        for suffix in (".yaml", ".py"):
            candidate = specs_dir() / f"{name_or_path}{suffix}"
            if candidate.is_file():
                path = candidate
                break
    return load_spec(path)
