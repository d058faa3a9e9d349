"""What a running search tells whoever watches it (the CLI's progress bar, a log)."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterator


@dataclass(frozen=True)
class Event:
    kind: str  # start | note | evaluated | promoted | round | end
    message: str
    evaluations: int = 0  # candidates evaluated so far in the run
    budget: int = 0


Listener = Callable[[Event], None]
_listeners: ContextVar[tuple[Listener, ...]] = ContextVar("kevolve_search_listeners", default=())


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    token = _listeners.set(_listeners.get() + (listener,))
    try:
        yield
    finally:
        _listeners.reset(token)


def emit(event: Event) -> None:
    for listener in _listeners.get():
        listener(event)
