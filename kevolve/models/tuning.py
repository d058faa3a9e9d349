"""The steps of tuning a whole model, as plain functions the `tune_model` flow wraps:

    extract the operators -> write a spec per recognised group -> tune the specs with the most
    to win (each a search run) -> register each run's best kernel in the library

`tune_model_steps` is that sequence over a function that tunes one spec: the flow hands it the
`tune_operator` sub-flow, the plain path the search without orchestration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from kevolve.errors import KevolveError
from kevolve.evaluate.result import Evaluation, Outcome
from kevolve.hardware.target import HardwareTarget
from kevolve.models.ops import Extraction, extract_ops
from kevolve.models.specgen import WrittenSpec, write_specs
from kevolve.models.trace import ModelCase
from kevolve.specs.model import Dims, OperatorSpec

log = logging.getLogger(__name__)
MEASURED_GROUPS = 12  # recognised groups, largest estimate first, whose eager time is measured


@dataclass(frozen=True)
class Registration:
    spec: str
    entry: str | None  # NAME@VERSION when the library took the kernel
    message: str  # what happened, one line


@dataclass(frozen=True)
class Choice:
    chosen: list[WrittenSpec]  # to tune, most to win first
    skipped: list[tuple[WrittenSpec, str]]  # groups a ranking by time would have taken, and why not


def choose_specs(written: Sequence[WrittenSpec], top: int,
                 eager_s: Mapping[str, float] | None = None) -> Choice:
    """The `top` valid specs with the most to win (eager time above the fused floor; `eager_s`:
    measured times by group name, where known, replace the estimates). Groups already at the
    roofline are skipped, and those among the `top` by time are named with the reason."""
    eager_s = eager_s or {}
    valid = [w for w in written if w.ok]
    worth = [w for w in valid if not w.group.at_roofline(eager_s.get(w.group.name))]
    chosen = sorted(worth, key=lambda w: (-w.group.gain_s(eager_s.get(w.group.name)), w.group.name))[:top]
    by_time = sorted(valid, key=lambda w: -w.group.est_s)[:top]
    skipped = [(w, w.group.at_roofline(eager_s.get(w.group.name))) for w in by_time if w not in worth]
    return Choice(chosen, skipped)


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


# What tuning one spec returns: at least {"outputs": folder with best_kernel.py and
# best_evaluation.json, "run_id": ..., "evaluations": ...} (tune_operator's run summary).
TuneOne = Callable[[str], Mapping[str, Any]]


def measured_eager_s(written: Sequence[WrittenSpec], target: HardwareTarget) -> dict[str, float]:
    """Each recognised group's eager time on this machine's GPU: its reference timed at the largest
    call's shape, times its calls. The estimate is a roofline bound; where eager PyTorch is far
    from it (a gather one bag at a time, say) only a measurement shows what can be won. Nothing
    on the interpreter, whose wall clock says nothing about eager speed: the estimates stand."""
    import torch

    if target.interpreter or not torch.cuda.is_available():
        return {}
    from kevolve.evaluate.timing import time_cuda
    from kevolve.specs import load_spec
    from kevolve.specs.runtime import OperatorRuntime

    out: dict[str, float] = {}
    for w in sorted((w for w in written if w.ok), key=lambda w: -w.group.est_s)[:MEASURED_GROUPS]:
        try:
            runtime = OperatorRuntime(load_spec(w.path))
            dims = dict(w.group.seen_dims)
            inputs = runtime.inputs(dims, seed=0, device="cuda")
            reference = runtime.reference(dims, "cuda")
            with torch.no_grad():
                timing = time_cuda(reference, [inputs], trials=20, flush_bytes=int(target.l2_cache_mib * 2) << 20,
                                   budget_s=1.0)
            out[w.group.name] = timing.median_ms * 1e-3 * w.group.count
            del inputs
        except Exception as exc:  # an unmeasured group keeps its estimate
            log.warning("eager time of %s not measured (%s: %s): its estimate stands", w.group.name,
                        type(exc).__name__, exc)
    torch.cuda.empty_cache()
    return out


@dataclass(frozen=True)
class ModelSteps:
    """The steps of tuning a model; the flow hands Prefect tasks, the plain path these."""

    extract: Callable[..., Extraction] = extract_ops
    write: Callable[..., list[WrittenSpec]] = write_specs
    register: Callable[[Path, HardwareTarget, Path], Registration] = register_run_outputs
    measure: Callable[[Sequence[WrittenSpec], HardwareTarget], Mapping[str, float]] = measured_eager_s


def tune_model_steps(case: ModelCase, target: HardwareTarget, out_dir: Path, tune_one: TuneOne, *,
                     top: int = 3, backward: bool = False, steps: ModelSteps = ModelSteps()) -> dict[str, Any]:
    """extract the operators -> write a spec per recognised group -> tune the `top` specs with
    the most to win -> register each run's best kernel. Returns the report (also written to out_dir/tune_model.md)."""
    extraction = steps.extract(case, target, backward=backward)
    written = steps.write(extraction, out_dir)
    rows = []
    choice = choose_specs(written, top, steps.measure(written, target))
    for w in choice.chosen:
        try:
            summary = dict(tune_one(str(w.path)))
        except KevolveError as exc:  # one spec's failure (an endpoint down) leaves the others to run
            rows.append({"spec": w.group.name, "share": w.group.share, "run": None, "library": None,
                         "result": exc.message})
            continue
        outcome = steps.register(w.path, target, Path(summary["outputs"]))
        rows.append({"spec": w.group.name, "share": w.group.share, "run": summary.get("run_id"),
                     "evaluations": summary.get("evaluations"), "library": outcome.entry,
                     "result": outcome.message})
    report = {"model": extraction.model, "target": target.name, "specs_dir": str(out_dir),
              "estimated_total_ms": extraction.total_s * 1e3, "specs_written": sum(w.ok for w in written),
              "tuned": rows, "skipped": [{"spec": w.group.name, "share": w.group.share, "result": why}
                                         for w, why in choice.skipped]}
    (Path(out_dir) / "tune_model.md").write_text(report_markdown(report))
    return report


def report_markdown(report: Mapping[str, Any]) -> str:
    lines = [f"# {report['model']} on {report['target']}", "",
             f"{report['specs_written']} specs in {report['specs_dir']} (ranking in ops.json); "
             f"estimated eager time {report['estimated_total_ms']:.4g} ms.", "",
             "| spec | share of time | run | library |", "|---|---|---|---|"]
    for row in report["tuned"]:
        lines.append(f"| {row['spec']} | {row['share']:.1%} | {row['run'] or '-'} | {row['result']} |")
    for row in report.get("skipped", ()):
        lines.append(f"| {row['spec']} | {row['share']:.1%} | - | {row['result']} |")
    return "\n".join(lines) + "\n"
