"""Errors a user can act on.

Each carries one line that says what is wrong and what to do; the CLI prints it without a
traceback and exits with `exit_code`.
"""


class KevolveError(Exception):
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class SpecError(KevolveError):
    """A spec file that cannot be used: names the file and the field."""

    exit_code = 2

    def __init__(self, path, field: str, problem: str):
        self.path = _display_path(path)
        self.field = field
        self.problem = problem
        super().__init__(f"{self.path}: {field}: {problem}")


class HardwareError(KevolveError):
    exit_code = 2


class LLMUnavailable(KevolveError):
    exit_code = 3


class GPUBusy(KevolveError):
    """A GPU stayed taken by other timings longer than a run waits for it."""

    exit_code = 3


def _display_path(path) -> str:
    """Relative to the working directory where that is shorter, as a user typed it."""
    from pathlib import Path

    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
