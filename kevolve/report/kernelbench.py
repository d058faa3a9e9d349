"""KernelBench mode: a level of a KernelBench checkout (or chosen problems of it) tuned problem by
problem, a `ModelNew` file written for each solved one, and KernelBench's own metrics.

KernelBench's fast_p is the share of ALL the problems asked for whose kernel is correct and more
than p times faster than the baseline: fast_0 is the share that is correct, fast_1 the share that
is correct and faster. Problems that fail to load, that no synthesizer covers (the offline one
without an LLM), or that end with no correct kernel count in the denominator as failures. The
baselines are the harness's, timed in this run on this machine (eager, as KernelBench; torch.compile
beside it); published timings on an H100 (KernelBench's results/timing files), when given, are a
second opinion only. Under Triton's interpreter there is no kernel speed: fast_0 is reported, and
fast_1 and fast_p are marked as not measurable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from kevolve.errors import KevolveError
from kevolve.report.bench import BenchSettings, SpecResult, bench_spec, ms_cell, shared_pool, speedup_cell

PUBLISHED_FILES = {"eager": "baseline_time_torch.json", "compile_default": "baseline_time_torch_compile_inductor_default.json"}


def level_dir(root: Path, level: int) -> Path:
    for candidate in (root / "KernelBench" / f"level{level}", root / f"level{level}"):
        if candidate.is_dir():
            return candidate
    raise KevolveError(f"no level{level} folder under {root} (looked for KernelBench/level{level} and "
                       f"level{level}); point at a KernelBench checkout")


def problem_number(path: Path) -> int:
    m = re.match(r"(\d+)_", path.name)
    return int(m.group(1)) if m else 1 << 30


def select_problems(folder: Path, problems: Sequence[str]) -> list[Path]:
    """Every problem file of the level, or those named by number (19) or file name (19_ReLU)."""
    files = sorted((f for f in folder.glob("*.py") if not f.name.startswith("_")), key=lambda f: (problem_number(f), f.name))
    if not problems:
        return files
    chosen: list[Path] = []
    for want in problems:
        hits = [f for f in files if want in (str(problem_number(f)), f.stem, f.name)]
        if not hits:
            raise KevolveError(f"no problem {want!r} in {folder}; give a number (19) or a file name (19_ReLU)")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def fast_p(results: Sequence[dict[str, Any]], p: float, baseline: str = "eager") -> float | None:
    """KernelBench's fast_p over every problem asked for; None when nothing was timed (interpreter)."""
    if not results:
        return None
    if p > 0 and all(r["best_ms"] is None for r in results if r["correct_kernel"]):
        if any(r["correct_kernel"] for r in results):
            return None  # correct kernels, but no kernel speed to compare
    hits = sum(1 for r in results if r["correct_kernel"] and (
        p <= 0 or ((s := r["speedup"].get(baseline)) is not None and s > p)))
    return hits / len(results)


def published_times(folder: Path | None, level: int) -> dict[str, dict[str, float]]:
    """{baseline: {problem file: mean ms}} from KernelBench's published timing files."""
    if folder is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for name, file in PUBLISHED_FILES.items():
        path = folder / file
        if path.is_file():
            level_times = json.loads(path.read_text()).get(f"level{level}", {})
            out[name] = {k: float(v["mean"]) for k, v in level_times.items() if isinstance(v, dict) and "mean" in v}
    return out


def run_kernelbench(root: Path, level: int, problems: Sequence[str], settings: BenchSettings, out: Path, *,
                    ps: Sequence[float] = (1.5,), published: Path | None = None, command: str = "",
                    say: Callable[[str], None] = print) -> dict[str, Any]:
    from kevolve.hardware import detect_target, load_target

    files = select_problems(level_dir(root, level), problems)
    target = load_target(settings.target) if settings.target else detect_target()
    settings = replace(settings, offline=settings.offline or not _llm_answers(settings))
    if target.interpreter:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    kernels_dir = out / f"level{level}"
    kernels_dir.mkdir(parents=True, exist_ok=True)
    times = published_times(published, level)
    doc: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "level": level,
                           "root": str(root), "target": target.name, "interpreter": target.interpreter,
                           "synthesizer": "offline" if settings.offline else "llm", "command": command,
                           "settings": asdict(settings), "ps": list(ps), "published": str(published or ""),
                           "problems": []}
    started = time.monotonic()
    with shared_pool(target, settings.workers) as pool:
        for path in files:
            say(f"== level{level}/{path.name}")
            row = solve(path, target, pool, settings, kernels_dir)
            row["published_ms"] = {b: t.get(path.name) for b, t in times.items()}
            doc["problems"].append(row)
            doc["metrics"] = metrics(doc["problems"], ps, target.interpreter)
            doc["seconds"] = round(time.monotonic() - started, 1)
            write(out, doc)
            say(f"   {row['status']}" + (f": {row['note']}" if row["note"] else ""))
    return doc


def solve(path: Path, target: Any, pool: Any, settings: BenchSettings, kernels_dir: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"problem": path.name, "status": "", "note": "", "correct_kernel": False, "best_ms": None,
                           "speedup": {}, "baselines_ms": {}, "evaluations": 0, "source": "", "model_new": ""}
    if settings.offline:
        uncovered = _not_covered(path)
        if uncovered:
            row.update(status="not covered", note=uncovered)
            return row
    result: SpecResult = bench_spec(path, target, pool, settings)
    row.update(status=result.status, note=result.error, best_ms=result.best_ms, speedup=result.speedup,
               baselines_ms=result.baselines_ms, evaluations=result.evaluations, source=result.source,
               correct_kernel=result.status == "ok", report=result.report)
    if result.status == "ok" and result.kernel:
        dest = kernels_dir / path.name
        shutil.copyfile(result.kernel, dest)
        row["model_new"] = str(dest)
    return row


def _not_covered(path: Path) -> str:
    """Why the offline synthesizer cannot seed this problem ("" when it can)."""
    from kevolve.specs import load_spec
    from kevolve.synth.offline import match_family

    try:
        match_family(load_spec(path))
    except KevolveError as exc:
        return exc.message
    return ""


def _llm_answers(settings: BenchSettings) -> bool:
    if settings.llm:
        return True  # named: the search says clearly if it does not answer
    from kevolve.search.components import llm_answers
    from kevolve.synth.llm.client import default_llm_url

    if importlib.util.find_spec("openai") is None:
        return False
    return bool(llm_answers(default_llm_url()))


def metrics(rows: Sequence[dict[str, Any]], ps: Sequence[float], interpreter: bool) -> dict[str, Any]:
    n = len(rows)
    out: dict[str, Any] = {"problems": n, "correct": sum(r["correct_kernel"] for r in rows),
                           "not_covered": sum(r["status"] == "not covered" for r in rows),
                           "fast_0": fast_p(rows, 0.0)}
    for p in (1.0, *ps):
        for baseline in ("eager", "compile_default"):
            key = f"fast_{p:g}" + ("" if baseline == "eager" else "_vs_compile")
            out[key] = None if interpreter else fast_p(rows, p, baseline)
    return out


def write(out: Path, doc: dict[str, Any]) -> None:
    stem = f"kernelbench_level{doc['level']}"
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    (out / f"{stem}.md").write_text(markdown(doc))


def markdown(doc: dict[str, Any]) -> str:
    m, interp = doc["metrics"], doc["interpreter"]
    lines = [f"# KernelBench level {doc['level']} on {doc['target']}", ""]
    if interp:
        lines += ["**Interpreter run (CPU): no kernel speed is measured here. fast_0 (correctness) is real; fast_1 "
                  "and fast_p cannot be measured and are marked n/a; times are interpreter wall clock.**", ""]
    lines += [f"{doc['date']}; synthesizer: {doc['synthesizer']}; command: `{doc['command'] or 'kevolve kernelbench'}`; "
              f"{doc.get('seconds', 0):g} s in all.", "",
              f"fast_p = share of the {m['problems']} problems asked for that are correct and more than p times "
              "faster than the baseline timed in this run (KernelBench's definition; problems not covered or "
              "not solved count as failures).", "",
              "| metric | vs eager | vs torch.compile |", "|---|---|---|",
              f"| fast_0 (correct) | {_share(m['fast_0'])} | {_share(m['fast_0'])} |"]
    for p in [1.0, *doc["ps"]]:
        lines.append(f"| fast_{p:g} | {_share(m.get(f'fast_{p:g}'), interp)} | "
                     f"{_share(m.get(f'fast_{p:g}_vs_compile'), interp)} |")
    lines += ["", f"Correct: {m['correct']} of {m['problems']}; not covered by any synthesizer here: "
                  f"{m['not_covered']}.", "",
              "| problem | status | best ms | eager ms | compile ms | x eager | x compile | published eager ms "
              "(H100, second opinion) | evals | ModelNew | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["problems"]:
        b, x = r["baselines_ms"], r["speedup"]
        best = "correct (no speed)" if interp and r["correct_kernel"] else ms_cell(r["best_ms"])
        pub = ms_cell(r.get("published_ms", {}).get("eager"))
        lines.append(f"| {r['problem']} | {r['status']} | {best} | {ms_cell(b.get('eager'))} | "
                     f"{ms_cell(b.get('compile_default'))} | {speedup_cell(x.get('eager'))} | "
                     f"{speedup_cell(x.get('compile_default'))} | "
                     f"{pub} | {r['evaluations']} | {Path(r['model_new']).name if r['model_new'] else '-'} | "
                     f"{r['note'][:160]} |")
    return "\n".join(lines) + "\n"


def _share(v: float | None, interpreter: bool = False) -> str:
    if v is None:
        return "n/a (interpreter: no kernel speed)" if interpreter else "n/a"
    return f"{v:.1%}"
