"""What a tuning run shows in the Prefect UI: artifacts under keys that stay the same from run to
run of an operator on a target, so the UI keeps each key's history (last night's, tonight's).

    tune-OPERATOR-TARGET-progress      evaluations done over the budget, updated as each one ends
    tune-OPERATOR-TARGET-leaderboard   the correct kernels, fittest first
    tune-OPERATOR-TARGET-best-kernel   the run's summary, the best kernel's path through the tree
                                       with each step's diagnosis, and its code
    tune-OPERATOR-TARGET-speedup       best speedup over evaluations (the run page's curve)

Everything shown is read from the run's outputs (kevolve.search.outputs), never re-derived.
"""

from __future__ import annotations

import base64
import contextvars
import json
import logging
import threading
from pathlib import Path
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact,
)

from kevolve.hardware.calibrate import slug
from kevolve.search.progress import Event

FLUSH_S = 120.0  # leaving waits this long for the last figure (the client's own retries included)
log = logging.getLogger(__name__)


def artifact_key(spec_name: str, target: str, what: str) -> str:
    return slug(f"tune-{spec_name}-{target}")[:80].strip("-") + f"-{what}"


class ProgressArtifact:
    """A listener of the search's events (kevolve.search.progress) that moves the progress bar.
    The API calls run in a thread of their own and the latest figure wins: a call on every
    evaluation would sit on the search's path (tens of ms each, and a minute of the client's
    retries when a local server's database is busy). Enter it within the flow run (the artifact
    belongs to that run); leaving it publishes the last figure."""

    def __init__(self, spec_name: str, target: str):
        self.key = artifact_key(spec_name, target, "progress")
        self.description = f"evaluations of {spec_name} on {target}, over the budget"
        self.artifact_id: UUID | None = None
        self.published = -1.0
        self._latest = -1.0
        self._changed = threading.Condition()
        self._closing = False
        self._publisher: threading.Thread | None = None

    def __enter__(self) -> "ProgressArtifact":
        run_context = contextvars.copy_context()
        self._publisher = threading.Thread(target=run_context.run, args=(self._publish,), name="progress-artifact",
                                           daemon=True)
        self._publisher.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify()
        if self._publisher is not None:
            self._publisher.join(FLUSH_S)

    def on_event(self, event: Event) -> None:
        if event.kind not in ("start", "evaluated", "end") or not event.budget:
            return
        percent = 100.0 if event.kind == "end" else round(min(100.0, 100.0 * event.evaluations / event.budget), 1)
        with self._changed:
            if percent != self._latest:
                self._latest = percent
                self._changed.notify()

    def _publish(self) -> None:
        while True:
            with self._changed:
                while self._latest == self.published and not self._closing:
                    self._changed.wait()
                if self._latest == self.published:
                    return
                percent = self._latest
            try:
                if self.artifact_id is None:
                    self.artifact_id = create_progress_artifact(percent, key=self.key, description=self.description)
                else:
                    update_progress_artifact(self.artifact_id, percent)
            except Exception as exc:  # a progress bar is never worth the run
                log.warning("could not publish progress %s%% to %s: %s", percent, self.key, exc)
            self.published = percent


def publish_outputs(summary: dict) -> dict[str, str]:
    """The finished run's leaderboard, best-kernel report and speedup plot; returns key -> kind."""
    out = Path(summary["outputs"])
    name = f"{summary['spec']} on {summary['target']}"
    key = lambda what: artifact_key(summary["spec"], summary["target"], what)  # noqa: E731
    board = json.loads((out / "leaderboard.json").read_text())
    create_table_artifact(table=board or [{"rank": None, "note": "no kernel passed every check"}],
                          key=key("leaderboard"), description=f"correct kernels of {name}, fittest first")
    create_markdown_artifact(markdown=best_kernel_markdown(out), key=key("best-kernel"),
                             description=f"the best kernel of {name}, its path and diagnoses")
    create_markdown_artifact(markdown=speedup_markdown(out), key=key("speedup"),
                             description=f"best speedup of {name} over evaluations")
    return {key("leaderboard"): "table", key("best-kernel"): "markdown", key("speedup"): "markdown"}


def best_kernel_markdown(out: Path) -> str:
    parts = [(out / "summary.md").read_text(), (out / "path.md").read_text()]
    kernel = out / "best_kernel.py"
    if kernel.is_file():
        parts.append("## The kernel\n\n```python\n" + kernel.read_text() + "\n```\n")
    return "\n".join(parts)


def speedup_markdown(out: Path) -> str:
    curve = json.loads((out / "speedup.json").read_text())
    what = "best speedup" if curve["timed"] else "correct kernels (interpreter: no kernel speed)"
    lines = [f"# {what[0].upper() + what[1:]} over evaluations", ""]
    plot = out / "speedup.svg"
    if plot.is_file():
        lines += [f"![{what}](data:image/svg+xml;base64,{base64.b64encode(plot.read_bytes()).decode()})", ""]
    lines += [f"| evaluation | {what} so far |", "|---|---|"]
    lines += [f"| {x} | {y:.3g} |" for x, y in zip(curve["xs"], curve["ys"])]
    return "\n".join(lines) + "\n"
