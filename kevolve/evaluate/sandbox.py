"""The worker's second line of defence, behind the static checks: an audit hook and a snapshot.

The audit hook (PEP 578) sees file writes, sockets, process spawns, native-library calls, frame
and garbage-collector introspection. Writes are allowed only under the worker's scratch folders
(its own caches and the current candidate's folder); processes and native calls only when Triton's
or torch's own code makes them (Triton runs ptxas, torch.compile its compilers). A violation is
recorded and raised as PermissionError; the worker reports it even if the candidate swallowed the
error. Python 3.11 has no audit event for starting a thread, so the live thread count is compared
before and after each call instead.

The snapshot holds the attributes of the modules and classes that timing and checking rely on
(torch, torch.Tensor, torch.cuda.Event, time, triton.testing, the comparison code); a candidate that
replaces one of them has patched the judge.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {  # event -> indices of path arguments that are written
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
    "os.truncate": (0,), "os.utime": (0,), "os.rename": (0, 1), "os.symlink": (1,), "os.link": (1,),
    "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1),
}
_PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn")
_INTROSPECTION_EVENTS = ("sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile",
                         "gc.get_objects", "gc.get_referrers", "gc.get_referents")


class Sandbox:
    def __init__(self, write_roots: Iterable[str | Path], trusted_packages: Iterable[ModuleType]):
        self.write_roots = [os.path.realpath(p) for p in write_roots]
        self.candidate_dir: str | None = None
        self.violations: list[str] = []
        self._trusted = tuple(os.path.dirname(m.__file__) + os.sep for m in trusted_packages)
        paths = sysconfig.get_paths()
        self._stdlib = tuple({paths["stdlib"] + os.sep, paths["platstdlib"] + os.sep})
        self._self_file = __file__
        self._local = threading.local()
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            sys.addaudithook(self._hook)
            self._installed = True

    def set_candidate_dir(self, path: str | Path | None) -> None:
        self.candidate_dir = os.path.realpath(path) if path else None

    def take_violations(self) -> list[str]:
        out, self.violations = self.violations, []
        return out

    # The hook ---------------------------------------------------------------------------------
    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if getattr(self._local, "busy", False):
            return
        self._local.busy = True
        try:
            problem = self._judge(event, args)
        finally:
            self._local.busy = False
        if problem:
            self.violations.append(problem)
            raise PermissionError(f"sandbox: {problem}")

    def _judge(self, event: str, args: tuple[Any, ...]) -> str | None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, 0))[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                     (mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writes and isinstance(path, (str, bytes, os.PathLike)) and not self._writable(path):
                return f"file write outside the candidate's folder: {os.fsdecode(path)}"
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)) \
                        and not self._writable(args[i]):
                    return f"{event} outside the candidate's folder: {os.fsdecode(args[i])}"
        elif event.startswith("socket."):
            return f"network access ({event})"
        elif event.startswith(_PROCESS_EVENTS):
            if not self._called_from_trusted():
                return f"process control ({event})"
        elif event.startswith("ctypes."):
            if not self._called_from_trusted():
                return f"native call through ctypes ({event})"
        elif event in _INTROSPECTION_EVENTS:
            if self._called_from_candidate():  # libraries (typing, torch) introspect for their own ends
                return f"introspection ({event})"
        return None

    def _writable(self, path) -> bool:
        real = os.path.realpath(os.fsdecode(path))
        if real in ("/dev/null", "/dev/shm") or real.startswith("/dev/shm/"):
            return True
        roots = self.write_roots + ([self.candidate_dir] if self.candidate_dir else [])
        return any(real == r or real.startswith(r + os.sep) for r in roots)

    def _nearest_caller(self) -> str:
        """The file of the nearest caller outside the standard library and this module."""
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if name == self._self_file or name.startswith(self._stdlib) or name.startswith("<frozen"):
                frame = frame.f_back
                continue
            return name
        return ""

    def _called_from_trusted(self) -> bool:
        """Is the nearest caller outside the standard library part of torch, triton or the judge?"""
        return self._nearest_caller().startswith(self._trusted)

    def _called_from_candidate(self) -> bool:
        return bool(self.candidate_dir) and self._nearest_caller().startswith(self.candidate_dir + os.sep)


def live_threads() -> int:
    return threading.active_count()


class Snapshot:
    """Identity of every public and dunder attribute of the objects the judge relies on."""

    def __init__(self, objects: dict[str, Any]):
        self._objects = objects
        self._state = {label: _attributes(obj) for label, obj in objects.items()}

    def changed(self) -> list[str]:
        out = []
        for label, before in self._state.items():
            now = vars(self._objects[label])
            for name, value in before.items():
                if now.get(name, _MISSING) is not value:
                    out.append(f"{label}.{name}")
        return out


_MISSING = object()


def _attributes(obj: Any) -> dict[str, Any]:
    return {name: value for name, value in vars(obj).items()
            if not name.startswith("_") or (name.startswith("__") and name.endswith("__"))}


def judged_objects() -> dict[str, Any]:
    """What timing and checking use: patched, they would lie about time or correctness."""
    import builtins
    import math
    import time

    import torch

    import kevolve.specs.compare as compare_module

    objects: dict[str, Any] = {
        "torch": torch, "torch.Tensor": torch.Tensor, "torch.cuda": torch.cuda,
        "torch.cuda.Event": torch.cuda.Event, "torch.linalg": torch.linalg,
        "torch.nn.functional": torch.nn.functional, "time": time, "math": math,
        "builtins": builtins, "kevolve.specs.compare": compare_module,
    }
    tensor_base = getattr(torch._C, "TensorBase", None) or getattr(torch._C, "_TensorBase", None)
    if tensor_base is not None:
        objects["torch._C.TensorBase"] = tensor_base
    try:
        import triton.testing

        objects["triton.testing"] = triton.testing
    except ImportError:
        pass
    return objects
