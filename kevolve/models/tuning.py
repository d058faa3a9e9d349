"""The steps of tuning a whole model, as plain functions the `tune_model` flow wraps: choose
the specs worth the budget, and put each run's best kernel into the library."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from kevolve.evaluate.result import Evaluation, Outcome
from kevolve.hardware.target import HardwareTarget
from kevolve.models.specgen import WrittenSpec
from kevolve.specs.model import Dims, OperatorSpec


@dataclass(frozen=True)
class Registration:
    spec: str
    entry: str | None  # NAME@VERSION when the library took the kernel
    message: str  # what happened, one line


def choose_specs(written: Sequence[WrittenSpec], top: int) -> list[WrittenSpec]:
    """The `top` valid specs by estimated time (write_specs keeps the ranking's order)."""
    return [w for w in written if w.ok][:top]


def validated_dims(spec: OperatorSpec, target: HardwareTarget) -> list[Dims]:
    """The shapes the harness checks a kernel at on this target: the tuned one and the others
    the spec requires (interpreter shapes on the CPU)."""
    tune, others = spec.shapes_for(target.interpreter)
    out: list[Dims] = []
    for dims in (tune, *others):
        if dict(dims) not in [dict(d) for d in out]:
            out.append(dict(dims))
    return out


def register_best(spec: OperatorSpec, target: HardwareTarget, code: str, evaluation: Evaluation,
                  *, min_speedup: float = 1.0) -> Registration:
    """Put a run's best kernel in the library when it passed and, on a GPU, beats the fastest
    baseline by more than `min_speedup` (a slower kernel would only slow the model down)."""
    from kevolve.library.store import LibraryError, register

    if evaluation.outcome is not Outcome.CORRECT:
        return Registration(spec.name, None, f"no kernel passed every check ({evaluation.outcome.value})")
    speedup = evaluation.speedup()
    if not target.interpreter and (speedup is None or speedup <= min_speedup):
        shown = f"{speedup:.2f}x" if speedup is not None else "not measured"
        return Registration(spec.name, None, f"not registered: {shown} over the fastest baseline")
    try:
        entry = register(spec, target, code, evaluation, validated_dims(spec, target))
    except LibraryError as exc:
        return Registration(spec.name, None, exc.message)
    speed = f"{entry.speedup:.2f}x" if entry.speedup is not None else "correct (interpreter: no speed)"
    return Registration(spec.name, entry.ref, f"registered {entry.ref}: {speed}")


def register_run_outputs(spec_path: Path, target: HardwareTarget, outputs: Path) -> Registration:
    """Register what a `tune_operator` run left in its outputs folder (best_kernel.py and
    best_evaluation.json); a run that found nothing correct says so."""
    from kevolve.specs import load_spec

    spec = load_spec(spec_path)
    kernel, record = Path(outputs) / "best_kernel.py", Path(outputs) / "best_evaluation.json"
    if not kernel.is_file() or not record.is_file():
        return Registration(spec.name, None, f"the run found no correct kernel (nothing in {outputs})")
    return register_best(spec, target, kernel.read_text(), Evaluation.from_json(record.read_text()))
