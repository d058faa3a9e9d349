"""Parsing Python source from several threads.

CPython 3.11 keeps the AST constructor's recursion depth in shared state: a thread switch inside
`ast.parse` (a finalizer run by the garbage collector is enough) fails a concurrent parse with
"AST constructor recursion depth mismatch". The search hashes and checks candidates from several
threads at once, so every parse of candidate code goes through here, one at a time.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse_source(code: str) -> ast.Module:
    with _LOCK:
        return ast.parse(code)
