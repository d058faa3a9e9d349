"""The worker's second line of defence, behind the static checks: an audit hook and a snapshot.

The audit hook (PEP 578) sees file writes, sockets, process spawns, native-library calls, frame
and garbage-collector introspection. Writes are allowed only under the worker's scratch folders
(its own caches and the current candidate's folder); while a candidate's code is on the stack,
processes and native calls only when Triton's or torch's own code makes them (Triton runs ptxas,
torch.compile its compilers, also from code it generated into its cache). A violation is
recorded and raised as PermissionError; the worker reports it even if the candidate swallowed the
error. Python 3.11 has no audit event for starting a thread, so the live thread count is compared
before and after each call instead.

The snapshot holds the attributes of the modules and classes that timing and checking rely on
(torch, torch.Tensor, torch.cuda.Event, time, triton.testing, the comparison code); a candidate that
replaces one of them has patched the judge.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {  # event -> (index of a path argument written, index of its dir_fd argument or None)
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.truncate": ((0, None),),
    "os.rename": ((0, 2), (1, 3)), "os.symlink": ((1, 2),), "os.link": ((1, 3),),
    "shutil.rmtree": ((0, None),), "shutil.copyfile": ((1, None),), "shutil.copytree": ((1, None),),
    "shutil.move": ((0, None), (1, None)),
}
_PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn")
_INTROSPECTION_EVENTS = ("sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile",
                         "gc.get_objects", "gc.get_referrers", "gc.get_referents")


class Sandbox:
    def __init__(self, write_roots: Iterable[str | Path], trusted_packages: Iterable[ModuleType],
                 trusted_dirs: Iterable[str | Path] = ()):
        self.write_roots = [os.path.realpath(p) for p in write_roots]
        self.candidate_dir: str | None = None
        self.violations: list[str] = []
        self._trusted = tuple([os.path.dirname(m.__file__) + os.sep for m in trusted_packages]
                              + [os.path.realpath(d) + os.sep for d in trusted_dirs])
        # The standard library as this interpreter really loads it: sysconfig's paths can differ
        # from the frames' file names (a venv over a relocated or symlinked install).
        # In a venv, platstdlib is the venv's lib/pythonX.Y, which also holds site-packages: the
        # packages there (triton, torch) must not pass for the standard library.
        paths = sysconfig.get_paths()
        stdlib_dirs = {paths["stdlib"], os.path.dirname(os.__file__), os.path.dirname(subprocess.__file__)}
        site_dirs = {paths["purelib"], paths["platlib"], *sys.path[1:]} - {""}
        self._stdlib = tuple({d + os.sep for d in stdlib_dirs}
                             | {os.path.realpath(d) + os.sep for d in stdlib_dirs})
        self._site = tuple({os.path.abspath(d) + os.sep for d in site_dirs
                            if "-packages" in d} | {os.path.realpath(d) + os.sep for d in site_dirs
                                                     if "-packages" in d})
        self._self_file = __file__
        self._local = threading.local()
        self._installed = False
        self._candidate_prefixes: tuple[str, ...] = ()

    def install(self) -> None:
        if not self._installed:
            sys.addaudithook(self._hook)
            self._installed = True

    def set_candidate_dir(self, path: str | Path | None) -> None:
        self.candidate_dir = os.path.realpath(path) if path else None
        # Frames name the file as it was imported, which may differ from its real path.
        self._candidate_prefixes = (tuple({os.path.abspath(path) + os.sep, self.candidate_dir + os.sep})
                                    if path else ())

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
            for i, fd_i in _PATH_EVENTS[event]:
                dir_fd = args[fd_i] if fd_i is not None and fd_i < len(args) else None
                if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)) \
                        and not self._writable(args[i], dir_fd):
                    return f"{event} outside the candidate's folder: {os.fsdecode(args[i])}"
        elif event.startswith("socket."):
            return f"network access ({event})"
        elif event.startswith(_PROCESS_EVENTS) or event.startswith("ctypes."):
            # Triton runs ptxas and torch.compile its compilers, also on a candidate's behalf; the
            # candidate's own code (or code it generated) may not.
            nearest, candidate_on_stack = self._callers()
            if candidate_on_stack and not nearest.startswith(self._trusted):
                kind = "native call through ctypes" if event.startswith("ctypes.") else "process control"
                return f"{kind} ({event}) from {nearest or 'an unknown caller'}"
        elif event in _INTROSPECTION_EVENTS:
            nearest, _ = self._callers()  # libraries (typing, torch) introspect for their own ends
            if self._candidate_prefixes and nearest.startswith(self._candidate_prefixes):
                return f"introspection ({event})"
        return None

    def _writable(self, path, dir_fd: Any = None) -> bool:
        path = os.fsdecode(path)
        if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):
            try:
                path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
            except OSError:
                return False
        real = os.path.realpath(path)
        if real in ("/dev/null", "/dev/shm") or real.startswith("/dev/shm/"):
            return True
        roots = self.write_roots + ([self.candidate_dir] if self.candidate_dir else [])
        return any(real == r or real.startswith(r + os.sep) for r in roots)

    def is_stdlib(self, filename: str) -> bool:
        return filename.startswith(self._stdlib) and not filename.startswith(self._site)

    def _callers(self) -> tuple[str, bool]:
        """(file of the nearest caller outside the standard library and this module, whether a frame
        of the current candidate is on the stack)."""
        nearest, on_stack = "", False
        prefixes = self._candidate_prefixes
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if not nearest and not (name == self._self_file or self.is_stdlib(name)
                                    or name.startswith("<frozen")):
                nearest = name
            if prefixes and name.startswith(prefixes):
                on_stack = True
                break
            frame = frame.f_back
        return nearest, on_stack


def live_threads() -> frozenset[threading.Thread]:
    return frozenset(threading.enumerate())


def describe_threads(threads: Iterable[threading.Thread]) -> str:
    """Each thread's name and what it runs, so a rejection says whose thread it was."""
    def runs(t: threading.Thread) -> str:
        target = getattr(t, "_target", None)  # private in CPython, but the only record of it
        if target is None:
            return type(t).__qualname__
        return f"{getattr(target, '__module__', None) or '?'}.{getattr(target, '__qualname__', repr(target))}"
    return ", ".join(f"{t.name} ({runs(t)})" for t in sorted(threads, key=lambda t: t.name))


class Snapshot:
    """Identity of the public and dunder attributes of the objects the judge relies on (or of the
    named ones only, for a module whose other attributes change as it initialises)."""

    def __init__(self, objects: dict[str, Any]):
        self._objects = {label: (v if isinstance(v, tuple) else (v, None)) for label, v in objects.items()}
        self._state = {label: _attributes(obj, names) for label, (obj, names) in self._objects.items()}

    def changed(self) -> list[str]:
        out = []
        for label, before in self._state.items():
            now = vars(self._objects[label][0])
            for name, value in before.items():
                if now.get(name, _MISSING) is not value:
                    out.append(f"{label}.{name}")
        return out


_MISSING = object()


def _attributes(obj: Any, names: tuple[str, ...] | None) -> dict[str, Any]:
    return {name: value for name, value in vars(obj).items()
            if (names is None and (not name.startswith("_") or (name.startswith("__") and name.endswith("__"))))
            or (names is not None and name in names)}


def judged_objects() -> dict[str, Any]:
    """What timing and checking use: patched, they would lie about time or correctness."""
    import builtins
    import math
    import time

    import torch

    import kevolve.specs.compare as compare_module

    objects: dict[str, Any] = {
        "torch": torch, "torch.Tensor": torch.Tensor,
        "torch.cuda": (torch.cuda, ("synchronize", "Event", "Stream", "current_stream", "default_stream",
                                    "set_stream", "stream")),
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
