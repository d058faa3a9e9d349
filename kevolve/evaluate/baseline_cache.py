"""Baseline timings kept per (spec, shape, device) in the state folder.

The key also covers the spec's and reference's text, the torch and Triton versions and the timing
method, so a changed reference or a new torch is timed again rather than compared with stale figures.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

from kevolve.evaluate.result import Baselines
from kevolve.hardware.calibrate import slug
from kevolve.paths import state_dir
from kevolve.specs.model import OperatorSpec, dims_key

METHOD_VERSION = "1"  # bump when timing.py measures differently


def cache_path(spec: OperatorSpec, dims: Mapping[str, int], device: str, software: Mapping[str, str],
               trials: int) -> Path:
    h = hashlib.sha256()
    for part in (spec.name, _read(spec.path), spec.reference_source(), dims_key(dims), device,
                 json.dumps(dict(sorted(software.items()))), str(trials), METHOD_VERSION):
        h.update(part.encode())
        h.update(b"\0")
    return state_dir() / "baselines" / f"{slug(spec.name)}-{slug(device)}-{h.hexdigest()[:16]}.json"


def load(path: Path) -> Baselines | None:
    try:
        return Baselines.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def store(path: Path, baselines: Baselines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(baselines.to_dict(), indent=2))
    tmp.replace(path)


def _read(path: Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""
