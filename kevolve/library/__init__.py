"""The kernel library: a versioned store of tuned kernels, loaded at run time as callables and
torch custom ops that dispatch by shape and fall back to PyTorch outside validated shapes."""

from kevolve.library.store import (
    LibraryEntry, LibraryError, NotAnImprovement, entries, export, get, register,
)

__all__ = ["LibraryEntry", "LibraryError", "NotAnImprovement", "entries", "export", "get", "register"]
