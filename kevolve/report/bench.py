"""`kevolve bench`: the figures we publish. For each spec of a suite: eager PyTorch,
torch.compile (default and max-autotune), and the best kernel, taken from the library when it
holds one for the spec, target and shape, else found by a fresh search within a budget; with the
fraction of the roofline floor it reaches and what it cost (evaluations, GPU seconds, LLM tokens).

One worker pool serves the whole suite (starting workers is the expensive part), each spec's
baselines are timed once by the harness and cached. Written after every spec, so a suite cut
short keeps what it measured: NAME.json, NAME.md, NAME_speedup.svg, NAME_curves.svg, and each
search's report page in NAME_reports/.
Under Triton's interpreter nothing here is a kernel speed: the figures say so and no speedup
is computed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from kevolve.errors import KevolveError
from kevolve.evaluate.result import BASELINE_NAMES, Evaluation

BASELINE_LABELS = {"eager": "eager", "compile_default": "torch.compile", "compile_max_autotune": "max-autotune"}
INTERPRETER_WARNING = ("Interpreter run (CPU): times are Triton-interpreter wall clock, never kernel speed; "
                       "no speedup is reported.")


@dataclass(frozen=True)
class BenchSettings:
    target: str | None = None  # None: this machine's
    budget: int = 8  # evaluations per spec's search
    wall_time_s: float | None = None  # per spec's search
    suite_time_s: float | None = None  # start no spec after this long; the rest are marked not run
    policy: str = "mcts"
    offline: bool = False
    llm: str | None = None
    knowledge: bool = True
    fresh: bool = False  # search even where the library holds a kernel
    workers: int | None = None

    def __post_init__(self) -> None:
        from kevolve.search.config import SearchConfig

        SearchConfig.from_dict(self.search_settings())  # a bad policy or budget: one error now, not one per spec

    def search_settings(self) -> dict[str, Any]:
        """The SearchConfig fields of each spec's search."""
        search: dict[str, Any] = {"budget": self.budget, "policy": self.policy}
        if self.wall_time_s:
            search["wall_time_s"] = self.wall_time_s
        return search


@dataclass
class SpecResult:
    spec: str
    status: str  # ok | no correct kernel | not run | error
    source: str = ""  # "library NAME@V" or "search RUN_ID"
    dims: dict[str, int] = field(default_factory=dict)
    baselines_ms: dict[str, float | None] = field(default_factory=dict)
    baseline_errors: dict[str, str] = field(default_factory=dict)
    best_ms: float | None = None
    speedup: dict[str, float | None] = field(default_factory=dict)  # baseline time / best time
    # each timing's p20-p80 range over its median: how far apart two medians must be to differ
    baselines_spread: dict[str, float | None] = field(default_factory=dict)
    best_spread: float | None = None
    fraction_of_floor: float | None = None
    floor_ms: float | None = None
    bound: str | None = None
    evaluations: int = 0
    correct: int = 0
    gpu_s: float = 0.0  # evaluation seconds: workers' wall clock compiling, checking, timing
    wall_s: float = 0.0  # the spec's whole turn, baselines included
    llm_tokens: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)  # (evaluations, best so far)
    report: str = ""
    kernel: str = ""  # the best kernel's file (a run's best_kernel.py, or the library's kernel.py)
    error: str = ""


# Running ---------------------------------------------------------------------------------------
def suite_paths(suite: Sequence[str]) -> list[Path]:
    """Spec files from folders, files and example names; the example specs by default."""
    from kevolve.paths import specs_dir
    from kevolve.specs import discover

    paths: list[Path] = []
    for item in suite or [str(specs_dir())]:
        p = Path(item)
        if p.exists():
            paths += discover([p])
            continue
        # each name as `kevolve tune NAME` takes it: NAME.yaml, else NAME.py
        found = [next((c for s in (".yaml", ".py") if (c := specs_dir() / f"{n}{s}").is_file()), None)
                 for n in item.split(",") if n]
        if None in found:
            raise KevolveError(f"{item!r} is neither a spec file, a folder of specs, nor example spec names "
                               f"(see `kevolve specs list`)")
        paths += found
    if not paths:
        raise KevolveError("the suite holds no spec files (YAML specs or KernelBench problems)")
    return paths


def run_suite(paths: Sequence[Path], settings: BenchSettings, out: Path, name: str = "bench_suite",
              command: str = "", say: Callable[[str], None] = print) -> dict[str, Any]:
    from kevolve.hardware import detect_target, load_target
    from kevolve.hardware.calibrate import calibrate_if_needed

    target = load_target(settings.target) if settings.target else detect_target()
    if target.interpreter:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any worker starts
    if measured := calibrate_if_needed(target):  # before any floor is computed
        say(measured)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "target": target.name,
                           "interpreter": target.interpreter, "device": "", "command": command,
                           "software": _software(), "settings": asdict(settings), "specs": []}
    started = time.monotonic()
    with shared_pool(target, settings.workers) as pool:
        for path in paths:
            if settings.suite_time_s is not None and time.monotonic() - started > settings.suite_time_s:
                result = SpecResult(path.stem, "not run", error=f"suite time limit ({settings.suite_time_s:g} s)")
            else:
                say(f"== {path.stem}")
                result = bench_spec(path, target, pool, settings)
                result.report = _keep_report(result, out / f"{name}_reports")
            doc["specs"].append(asdict(result))
            doc["device"] = doc["device"] or pool.device_name or ("cpu" if target.interpreter else "")
            doc["seconds"] = round(time.monotonic() - started, 1)
            write(out, name, doc)
            say(f"   {one_line(result, target.interpreter)}")
    return doc


def _keep_report(result: SpecResult, folder: Path) -> str:
    """The run's page beside the figures (the state folder may be a machine's /tmp)."""
    if not result.report or not Path(result.report).is_file():
        return result.report
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.report, folder / f"{result.spec}.html")
    return f"{folder.name}/{result.spec}.html"


@contextmanager
def shared_pool(target: Any, workers: int | None) -> Iterator[Any]:
    """One pool of evaluation workers for every spec: starting workers is the expensive part."""
    from kevolve.evaluate.pool import WorkerPool
    from kevolve.paths import state_dir

    scratch = Path(tempfile.mkdtemp(prefix="bench-", dir=state_dir()))
    pool = WorkerPool(target, scratch, workers=workers)
    try:
        yield pool
    finally:
        pool.close()
        shutil.rmtree(scratch, ignore_errors=True)


def bench_spec(path: Path, target: Any, pool: Any, settings: BenchSettings) -> SpecResult:
    from kevolve.evaluate.evaluator import Evaluator
    from kevolve.specs import load_spec

    t0 = time.monotonic()
    try:
        spec = load_spec(path)
    except Exception as exc:
        return SpecResult(path.stem, "error", error=_error(exc))
    result = SpecResult(spec.name, "error", dims=dict(spec.shapes_for(target.interpreter)[0]))
    evaluator = Evaluator(spec, target, pool=pool, baselines=not target.interpreter)
    try:
        entry = None if settings.fresh else _library_entry(spec, target, result.dims)
        if entry is not None:
            best = evaluator.evaluate([_library_candidate(spec, entry)])[0]
            result.source, result.evaluations = f"library {entry.ref}", 1
            result.kernel = str(entry.kernel_path)
            result.correct, result.gpu_s = int(best.correct), best.wall_s
            result.curve = _library_curve(best)
        else:
            best = _search(spec, path, target, evaluator, settings, result)
        _fill(result, best, evaluator, target.interpreter)
    except Exception as exc:  # one spec failing must not lose the others' figures
        if not isinstance(exc, KevolveError):  # an error a user can act on is its one line; a bug shows where
            traceback.print_exc(file=sys.stderr)
        result.status, result.error = "error", _error(exc)
    finally:
        evaluator.close()
        result.wall_s = round(time.monotonic() - t0, 1)
    return result


def _search(spec: Any, path: Path, target: Any, evaluator: Any, settings: BenchSettings,
            result: SpecResult) -> Evaluation | None:
    from flows.tune_operator import tune
    from kevolve.report.run_page import curve, load_run
    from kevolve.search import outputs
    from kevolve.search.launch import plan_run
    from kevolve.search.store import SearchStore

    plan = plan_run(str(path), target=target.name, llm=settings.llm, offline=settings.offline,
                    search=settings.search_settings(), knowledge=settings.knowledge)
    summary = tune(plan, evaluator=evaluator)
    with SearchStore() as store:
        run = load_run(store, summary.run_id)
    result.source = f"search {summary.run_id}"
    result.report = str(outputs.run_dir(summary.run_id) / "report.html")
    if summary.best_node is not None:
        result.kernel = str(outputs.run_dir(summary.run_id) / "best_kernel.py")
    result.evaluations, result.correct = summary.evaluations, summary.correct
    result.gpu_s = round(run.evaluation_seconds(), 1)
    result.llm_tokens = summary.llm.prompt_tokens + summary.llm.completion_tokens
    c = curve(run.tree)
    result.curve = list(zip(c.xs, c.ys))
    best = run.tree.get(summary.best_node) if summary.best_node is not None else None
    return (best.remeasure or best.evaluation) if best is not None else None


def _fill(result: SpecResult, best: Evaluation | None, evaluator: Any, interpreter: bool) -> None:
    base = None if interpreter else evaluator.baselines()
    if base is not None:
        result.baselines_ms = {n: (t.median_ms if (t := base.get(n)) else None) for n in BASELINE_NAMES}
        result.baselines_spread = {n: (round(t.spread, 4) if (t := base.get(n)) else None) for n in BASELINE_NAMES}
        result.baseline_errors = dict(base.errors)
    if best is None or not best.correct:
        result.status = "no correct kernel"
        return
    result.status = "ok"
    if interpreter or best.timing is None or best.timing.interpreter:
        return  # no kernel speed: no time, no speedup, no roofline figure
    result.best_ms = best.timing.median_ms
    result.best_spread = round(best.timing.spread, 4)
    result.speedup = {n: (ms / best.timing.median_ms if ms else None) for n, ms in result.baselines_ms.items()}
    if best.diagnosis is not None:
        result.fraction_of_floor = best.diagnosis.fraction_of_floor
        result.floor_ms = best.diagnosis.floor_ms or None
        result.bound = best.diagnosis.bound


def _library_entry(spec: Any, target: Any, dims: dict[str, int]) -> Any:
    from kevolve.library import store as library

    found = [e for e in library.entries(spec.name, target.name) if e.covers(dims)]
    return found[-1] if found else None


def _library_candidate(spec: Any, entry: Any) -> Any:
    from kevolve.candidate import Candidate, Origin

    return Candidate(code=entry.kernel_path.read_text(), spec_name=spec.name,
                     origin=Origin(synthesizer="library", note=f"library entry {entry.ref}"))


def _library_curve(best: Evaluation) -> list[tuple[int, float]]:
    s = best.speedup() if best.correct else None
    return [(1, s)] if s is not None else []


def _software() -> dict[str, str]:
    import torch
    import triton

    return {"python": sys.version.split()[0], "torch": torch.__version__, "triton": triton.__version__}


def _error(exc: BaseException) -> str:
    return (getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}").splitlines()[0][:300]


def fastest_and_spread(row: dict[str, Any]) -> tuple[float, float] | None:
    """The fastest baseline's time and the wider of its and the best's p20-p80 spreads; None for
    no timed kernel or baseline, or figures from before spreads were kept."""
    timed = [(ms, n) for n, ms in row["baselines_ms"].items() if ms]
    if row.get("best_ms") is None or row.get("best_spread") is None or not timed:
        return None
    base_ms, name = min(timed)
    return base_ms, max(row["best_spread"], (row.get("baselines_spread") or {}).get(name) or 0.0)


def against_fastest(row: dict[str, Any]) -> str:
    """"faster", "tie" or "slower" than the fastest baseline ("" where unknown). A tie is two
    medians closer than the wider spread: the rule by which a search confirms a new best."""
    if (found := fastest_and_spread(row)) is None:
        return ""
    from kevolve.search.fitness import within_spread  # the search package is heavy to import

    (base_ms, spread), best_ms = found, row["best_ms"]
    if within_spread(base_ms, best_ms, spread):
        return "tie"
    return "faster" if best_ms < base_ms else "slower"


def one_line(r: SpecResult, interpreter: bool) -> str:
    if r.status != "ok":
        return f"{r.spec}: {r.status}" + (f" ({r.error})" if r.error else "")
    if interpreter or r.best_ms is None:
        return f"{r.spec}: correct kernel ({r.source}; interpreter: no kernel speed), {r.evaluations} evaluations"
    vs = ", ".join(f"{s:.2f}x {BASELINE_LABELS[n]}" for n, s in r.speedup.items() if s is not None)
    verdict = against_fastest(asdict(r))
    verdict = "; a tie with the fastest, within the timings' spread" if verdict == "tie" else ""
    return f"{r.spec}: {r.best_ms:.4g} ms ({vs}{verdict}) from {r.source}, {r.evaluations} evaluations"


# Writing ---------------------------------------------------------------------------------------
def write(out: Path, name: str, doc: dict[str, Any]) -> None:
    """The JSON, the table and (where matplotlib is installed) the plots. A GPU machine without
    matplotlib still writes the figures; `kevolve bench --replot NAME.json` draws them later."""
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1))
    drawn = importlib.util.find_spec("matplotlib") is not None
    (out / f"{name}.md").write_text(markdown(doc, name, drawn))
    if drawn:
        for suffix, svg in plots(doc).items():
            (out / f"{name}_{suffix}.svg").write_text(svg)


def replot(json_path: Path) -> Path:
    """The table and plots again from a bench's JSON (e.g. one written where matplotlib was missing)."""
    try:
        doc = json.loads(json_path.read_text())
        doc["specs"]
    except (OSError, ValueError, KeyError, TypeError):
        raise KevolveError(f"{json_path} is not a JSON file written by `kevolve bench`") from None
    if importlib.util.find_spec("matplotlib") is None:
        raise KevolveError("drawing the plots needs matplotlib: pip install 'matplotlib>=3.8'")
    write(json_path.parent, json_path.stem, doc)
    return json_path.parent / f"{json_path.stem}.md"


def markdown(doc: dict[str, Any], name: str, drawn: bool = True) -> str:
    interp = doc["interpreter"]
    s = doc["settings"]
    lines = [f"# Suite bench on {doc['device'] or doc['target']} ({doc['target']})", ""]
    if interp:
        lines += [f"**{INTERPRETER_WARNING}**", ""]
    sw = doc["software"]
    lines += [f"{doc['date']}; python {sw['python']}, torch {sw['torch']}, triton {sw['triton']}; "
              f"command: `{doc['command'] or 'kevolve bench'}`; {doc.get('seconds', 0):g} s in all.", "",
              f"Per spec: the library's kernel where it holds one for this shape (unless --fresh), else a "
              f"{s['policy']} search of {s['budget']} evaluations"
              + (f" or {s['wall_time_s']:g} s" if s["wall_time_s"] else "")
              + ". Times: the harness's medians (CUDA events, L2 flushed, inputs rotated); baselines timed "
                "the same way in the same run. Speedup = baseline time / best time. % floor = roofline floor "
                "(measured ceilings) / best time. GPU s = the evaluations' worker wall clock. "
                "vs fastest: a tie where the best and the fastest baseline differ by less than the wider "
                "of their timings' p20-p80 spreads (shown).", ""]
    ms_head = "interp. s" if interp else "GPU s"
    lines += ["| spec | source | eager ms | compile ms | max-autotune ms | best ms | x eager | x compile | "
              f"x max-autotune | vs fastest | % floor | bound | evals (correct) | {ms_head} | LLM tokens |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["specs"]:
        if r["status"] in ("error", "not run"):
            lines.append(f"| {r['spec']} | {r['status']}: {r['error'][:120]} |" + " - |" * 13)
            continue
        b, x = r["baselines_ms"], r["speedup"]
        best = ms_cell(r["best_ms"]) if r["status"] == "ok" else "none correct"
        if interp and r["status"] == "ok":
            best = "correct (no speed)"
        floor = f"{100 * r['fraction_of_floor']:.0f}%" if r["fraction_of_floor"] is not None else "-"
        source = f"[{r['source']}]({r['report']})" if r["report"] and not r["report"].startswith("/") else r["source"]
        lines.append(f"| {r['spec']} | {source} | {ms_cell(b.get('eager'))} | "
                     f"{ms_cell(b.get('compile_default'))} | {ms_cell(b.get('compile_max_autotune'))} | {best} | "
                     f"{speedup_cell(x.get('eager'))} | {speedup_cell(x.get('compile_default'))} | "
                     f"{speedup_cell(x.get('compile_max_autotune'))} | {verdict_cell(r)} | {floor} | "
                     f"{r['bound'] or '-'} | {r['evaluations']} ({r['correct']}) | {r['gpu_s']:.1f} | "
                     f"{r['llm_tokens']} |")
    ok = [r for r in doc["specs"] if r["status"] == "ok" and r["best_ms"] is not None]
    if ok:
        fastest = [min((v for v in r["speedup"].values() if v is not None), default=None) for r in ok]
        verdicts = [against_fastest(r) for r in ok]
        wins = sum(1 for v in fastest if v is not None and v > 1.0)
        lines += ["", f"Faster than every baseline on {wins} of {len(doc['specs'])} specs; geometric mean speedup "
                      f"over the fastest baseline: {_geomean(fastest):.2f}x (over the {len(ok)} specs with a timed "
                      f"kernel)."]
        if any(verdicts):
            lines[-1] += (f" Against the fastest baseline, beyond the timings' spread: faster on "
                          f"{verdicts.count('faster')}, slower on {verdicts.count('slower')}; within it (a tie): "
                          f"{verdicts.count('tie')}.")
    missing = [(r["spec"], n, e) for r in doc["specs"] for n, e in r["baseline_errors"].items()]
    if missing:
        lines += ["", "Baselines that could not be timed:", ""]
        lines += [f"- {spec}, {BASELINE_LABELS.get(n, n)}: {e[:160]}" for spec, n, e in missing]
    if drawn:
        lines += ["", f"![speedup per spec]({name}_speedup.svg)", "", f"![speedup over evaluations]({name}_curves.svg)"]
    else:
        lines += ["", f"No plots: matplotlib is not installed here; `kevolve bench --replot {name}.json` draws them."]
    return "\n".join(lines) + "\n"


def plots(doc: dict[str, Any]) -> dict[str, str]:
    from kevolve.report.plots import Series, bars_svg, line_svg

    specs = [r for r in doc["specs"] if r["status"] != "not run"]
    labels = [r["spec"] for r in specs]
    curves = [Series(r["spec"], [x for x, _ in r["curve"]], [y for _, y in r["curve"]]) for r in specs if r["curve"]]
    if doc["interpreter"]:
        groups = {"(interpreter: no kernel speed)": [None] * len(specs)}
        return {
            "speedup": bars_svg(labels, groups, title="Speedup per spec", ylabel="speedup (x)",
                                note=INTERPRETER_WARNING, reference=None),
            "curves": line_svg(curves, title="Correct kernels over the evaluations", xlabel="evaluations",
                               ylabel="correct kernels so far", note=INTERPRETER_WARNING),
        }
    groups = {BASELINE_LABELS[n]: [r["speedup"].get(n) for r in specs] for n in BASELINE_NAMES}
    return {
        "speedup": bars_svg(labels, groups, title=f"Best kernel's speedup per spec ({doc['device'] or doc['target']})",
                            ylabel="baseline time / best time (x)", note="n/a: no correct kernel or no baseline"),
        "curves": line_svg(curves, title="Best speedup so far over each run's evaluations", xlabel="evaluations",
                           ylabel="speedup over the fastest baseline (x)", reference=1.0),
    }


def ms_cell(v: float | None) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else "-"


def verdict_cell(row: dict[str, Any]) -> str:
    verdict = against_fastest(row)
    if verdict == "tie":
        return f"tie (spread {100 * fastest_and_spread(row)[1]:.1f}%)"
    return verdict or "-"


def speedup_cell(v: float | None) -> str:
    return f"{v:.2f}x" if isinstance(v, (int, float)) else "-"


def _geomean(values: Sequence[float | None]) -> float:
    import math

    present = [v for v in values if v]
    return math.exp(sum(map(math.log, present)) / len(present)) if present else float("nan")
