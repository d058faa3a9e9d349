"""Where things live: the source tree's data folders and the state kept outside it."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_dir(name: str, env: str) -> Path:
    """A data folder of the source tree (hardware/, specs/, knowledge/), overridable by env."""
    return Path(os.environ.get(env) or REPO_ROOT / name)


def hardware_dir() -> Path:
    return repo_dir("hardware", "KEVOLVE_HARDWARE_DIR")


def specs_dir() -> Path:
    return repo_dir("specs", "KEVOLVE_SPECS_DIR")


def knowledge_dir() -> Path:
    return repo_dir("knowledge", "KEVOLVE_KNOWLEDGE_DIR")


def state_dir() -> Path:
    """Databases, caches and run outputs: never inside the source tree."""
    base = os.environ.get("KEVOLVE_HOME")
    if not base:
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        base = str(Path(xdg) / "kevolve")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path
