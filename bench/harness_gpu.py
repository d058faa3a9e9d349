#!/usr/bin/env python3
"""The evaluation harness on a GPU, in one run: what the lead runs on the H100 and commits.

    python3 bench/harness_gpu.py [--ncu] [--out DIR] [--phases specs,adversarial,throughput]

1. Every example spec's honest fixture kernel (tests/fixtures/candidates/honest/) through the
   Evaluator, against eager, torch.compile and torch.compile max-autotune, twice: the run-to-run
   spread of the candidate's median.
2. Every adversarial fixture: the outcome it must get.
3. Throughput: a batch of softmax variants (block x warps x stages) on a warm pool,
   candidates fully evaluated (checked, timed, re-checked, diagnosed) per minute.
4. With --ncu: the achieved bandwidth the harness reports against ncu's DRAM bandwidth, for the
   memory-bound specs.
Results go to $OUT (default bench/results/) as harness_gpu.json and harness_gpu.md (a run of other
phases adds their names to the file name); the table is printed at the end. A phase that would
pass the time budget is skipped and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Baselines are cached here: a second command on the same machine reuses them.
os.environ.setdefault("KEVOLVE_HOME", "/tmp/kevolve-home")

from kevolve.candidate import Candidate, Origin  # noqa: E402
from kevolve.evaluate.evaluator import Evaluator  # noqa: E402
from kevolve.evaluate.pool import WorkerPool  # noqa: E402
from kevolve.evaluate.result import Evaluation, Outcome  # noqa: E402
from kevolve.hardware import detect_target, load_target  # noqa: E402
from kevolve.specs import discover, load_spec  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
HONEST = FIXTURES / "candidates" / "honest"
ADVERSARIAL = FIXTURES / "candidates" / "adversarial"
MEMORY_BOUND = ("softmax", "softmax_fp32", "log_softmax", "gelu_tanh", "swiglu", "bias_gelu_residual",
                "layernorm", "rmsnorm", "clamp_log1p", "rotary_embedding")

VARIANT = '''"""Row softmax, online max and sum over blocks (a throughput variant: BLOCK={block},
warps={warps}, stages={stages})."""

import torch
import triton
import triton.language as tl


@triton.jit
def _softmax_blocks(x_ptr, y_ptr, n_cols, x_stride, y_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * x_stride + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        s = tl.where(m_new == float("-inf"), 0.0, s * tl.exp(m - m_new) + tl.exp(x - m_new))
        m = m_new
    row_max = tl.max(m, axis=0)
    total = tl.sum(s * tl.exp(m - row_max), axis=0)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * y_stride + cols, (tl.exp(x - row_max) / total).to(y_ptr.dtype.element_ty),
                 mask=mask)


def softmax(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    rows, cols = x.shape
    y = torch.empty_like(x)
    _softmax_blocks[(rows,)](x, y, cols, x.stride(0), y.stride(0), BLOCK={block}, num_warps={warps},
                             num_stages={stages})
    return y
'''


def softmax_variants(n: int, offset: int = 0) -> list[str]:
    """Distinct kernels: BLOCK x warps x stages, the first 64 with BLOCK from 1024 to 8192."""
    grid = [(b, w, s) for b in (1024, 2048, 4096, 8192) for w in (4, 8, 16, 2) for s in (1, 2, 3, 4)]
    grid += [(b, w, s) for b in (512, 256) for w in (4, 8, 2, 1) for s in (1, 2, 3, 4)]
    return [VARIANT.format(block=b, warps=w, stages=s) for b, w, s in grid[offset:offset + n]]


def spec_of(name: str):
    if name.startswith("kernelbench_"):
        return load_spec(FIXTURES / "kernelbench" / f"{name.removeprefix('kernelbench_')}_problem.py")
    if "/" in name:
        return load_spec(FIXTURES / name)
    return load_spec(ROOT / "specs" / f"{name}.yaml")


def candidate(code: str, spec, note: str = "") -> Candidate:
    return Candidate(code, spec.name, Origin("manual", note=note))


def summary(ev: Evaluation) -> dict:
    d = ev.diagnosis
    out = {"outcome": ev.outcome.value, "wall_s": round(ev.wall_s, 2),
           "failed": [f"{c.name}: {c.detail}" for c in ev.failed_checks()][:2]}
    if ev.timing:
        out.update(median_ms=ev.timing.median_ms, p20_ms=ev.timing.p20_ms, p80_ms=ev.timing.p80_ms,
                   trials=ev.timing.trials, spread=ev.timing.spread)
    if ev.baselines:
        for name in ("eager", "compile_default", "compile_max_autotune"):
            t = ev.baselines.get(name)
            out[f"{name}_ms"] = t.median_ms if t else None
            out[f"speedup_vs_{name}"] = ev.speedup(name)
        out["baseline_errors"] = dict(ev.baselines.errors)
    if d:
        out.update(bound=d.bound, floor_ms=d.floor_ms, fraction_of_floor=d.fraction_of_floor,
                   achieved_gbps=d.achieved_gbps, achieved_tflops=d.achieved_tflops, min_bytes=d.min_bytes,
                   ncu=dict(d.ncu), kernels=[k.__dict__ for k in d.kernels], diagnosis=d.summary)
    return out


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def phase_specs(pool, target, names, args, log, save) -> list[dict]:
    rows: list[dict] = []

    def one(name: str) -> dict:
        spec = spec_of(name)
        code = (HONEST / f"{name}.py").read_text()
        ev = Evaluator(spec, target, pool=pool, timeout_s=args.timeout, baseline_timeout_s=args.baseline_timeout)
        t0 = time.monotonic()
        base = ev.baselines()
        baseline_s = time.monotonic() - t0
        first = ev.evaluate([candidate(code, spec, "run 1")])[0]
        second = ev.evaluate([candidate(code, spec, "run 2")])[0] if first.correct else None
        row = {"spec": name, "baseline_s": round(baseline_s, 1), "run1": summary(first),
               "run2": summary(second) if second else None}
        if second and second.timing:
            a, b = first.timing.median_ms, second.timing.median_ms
            row["run_to_run"] = abs(a - b) / ((a + b) / 2)
        log(f"  {name:<24} {first.outcome.value:<9} "
            + (f"{first.timing.median_ms:.4g} ms / {second.timing.median_ms:.4g} ms, "
               f"run-to-run {100 * row['run_to_run']:.2f}%" if second and second.timing else first.error[:120])
            + f"  (baselines {baseline_s:.0f} s: {base.errors or 'all timed'})")
        return row

    def record(name: str) -> None:
        rows.append(_guarded(one, name))
        save(rows)  # a run cut short still leaves every finished spec's figures

    # The matmul's max-autotune baseline is the longest pole: start it first.
    ordered = sorted(names, key=lambda n: (n != "matmul_bias_relu", n != "cross_entropy", n))
    with ThreadPoolExecutor(max_workers=len(pool.slots)) as ex:
        list(ex.map(record, ordered))
    return sorted(rows, key=lambda r: r["spec"])


def phase_adversarial(pool, target, args, log) -> list[dict]:
    rows = []
    for path in sorted(ADVERSARIAL.glob("*.py")):
        text = path.read_text()
        expect = re.search(r"# expect: (.+)", text).group(1).strip()
        spec = spec_of(re.search(r"# spec: (\S+)", text).group(1))
        outcome = expect.split()[0]
        ev = Evaluator(spec, target, pool=pool, timeout_s=10.0 if outcome == "timed_out" else args.timeout,
                       baselines=False).evaluate([candidate(text, spec, path.stem)])[0]
        ok = ev.outcome is Outcome(outcome)
        rows.append({"fixture": path.stem, "expected": expect, "outcome": ev.outcome.value, "ok": ok,
                     "wall_s": round(ev.wall_s, 2),
                     "failed": [f"{c.name}: {c.detail}" for c in ev.failed_checks()][:1]})
        log(f"  {path.stem:<26} {ev.outcome.value:<10} expected {expect:<34} {'ok' if ok else 'MISMATCH'}")
    return rows


def phase_throughput(target, args, scratch: Path, log) -> dict:
    spec = spec_of("softmax")
    pool = WorkerPool(target, scratch / "throughput", workers=args.throughput_workers)
    try:
        ev = Evaluator(spec, target, pool=pool, timeout_s=args.timeout, baseline_timeout_s=args.baseline_timeout)
        t0 = time.monotonic()
        warm = ev.evaluate([candidate(c, spec) for c in softmax_variants(len(pool.slots), offset=args.variants)])
        warm_s = time.monotonic() - t0
        batch = [candidate(c, spec) for c in softmax_variants(args.variants)]
        t0 = time.monotonic()
        results = ev.evaluate(batch)
        elapsed = time.monotonic() - t0
    finally:
        pool.close()
    outcomes = {o.value: sum(r.outcome is o for r in results) for o in Outcome if any(r.outcome is o for r in results)}
    timed = sorted(results, key=lambda r: r.timing.median_ms if r.timing else float("inf"))
    out = {"workers": len(pool.slots), "candidates": len(batch), "seconds": round(elapsed, 1),
           "per_minute": round(len(batch) / elapsed * 60, 1), "outcomes": outcomes,
           "warm_up_s": round(warm_s, 1), "warm_up_candidates": len(warm),
           "median_wall_s_per_candidate": round(statistics.median(r.wall_s for r in results), 2),
           "best_ms": timed[0].timing.median_ms if timed and timed[0].timing else None,
           "worst_ms": timed[-1].timing.median_ms if timed and timed[-1].timing else None}
    log(f"  {out['candidates']} candidates in {out['seconds']} s on a warm pool of {out['workers']} workers: "
        f"{out['per_minute']} per minute ({outcomes})")
    return out


def phase_ncu(pool, target, names, args, log) -> list[dict]:
    rows = []
    for name in names:
        spec = spec_of(name)
        ev = Evaluator(spec, target, pool=pool, timeout_s=args.timeout, baselines=False, ncu=True)
        res = ev.evaluate([candidate((HONEST / f"{name}.py").read_text(), spec, "ncu")])[0]
        d = res.diagnosis
        row = {"spec": name, "outcome": res.outcome.value}
        if d and d.ncu:
            harness, measured = d.achieved_gbps, d.ncu.get("dram_gbps")
            row.update(harness_gbps=harness, ncu_dram_gbps=measured, ncu=dict(d.ncu), min_bytes=d.min_bytes,
                       median_ms=res.timing.median_ms, bound=d.bound,
                       ratio=harness / measured if measured else None)
            log(f"  {name:<20} harness {harness:.0f} GB/s, ncu {measured:.0f} GB/s "
                f"(ratio {row['ratio']:.3f}; ncu bytes {d.ncu.get('dram_bytes_per_call', 0) / 1e6:.1f} MB "
                f"vs minimal {d.min_bytes / 1e6:.1f} MB; ncu kernel time {d.ncu.get('duration_ms_per_call', 0):.4g} ms "
                f"vs event median {res.timing.median_ms:.4g} ms)")
        else:
            row["note"] = d.summary[-200:] if d else res.error[-200:]
            log(f"  {name:<20} no ncu figures: {row['note']}")
        rows.append(row)
    return rows


def _guarded(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # one spec's failure must not lose the others' figures
        return {"spec": args[0] if args else "?", "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-1500:]}


def markdown(report: dict) -> str:
    lines = [f"# Evaluation harness on {report['device']}", "",
             f"{report['when']}; torch {report['software'].get('torch')}, triton {report['software'].get('triton')}; "
             f"command: `{report['command']}`; {report['wall_s']:.0f} s in all.", "",
             "## Honest kernels (median ms; speedup = baseline / candidate)", "",
             "| spec | outcome | run 1 | run 2 | run-to-run | p20-p80 | eager | compile | max-autotune | "
             "x eager | x compile | x max-at | bound | % of floor | GB/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["specs"]:
        r1, r2 = row.get("run1") or {}, row.get("run2") or {}
        if "error" in row:
            lines.append(f"| {row['spec']} | error: {row['error'][:80]} |" + " |" * 13)
            continue
        lines.append("| " + " | ".join([
            row["spec"], r1.get("outcome", "?"), _f(r1.get("median_ms")), _f(r2.get("median_ms")),
            _pct(row.get("run_to_run")), _pct(r1.get("spread")), _f(r1.get("eager_ms")),
            _f(r1.get("compile_default_ms")), _f(r1.get("compile_max_autotune_ms")),
            _x(r1.get("speedup_vs_eager")), _x(r1.get("speedup_vs_compile_default")),
            _x(r1.get("speedup_vs_compile_max_autotune")), str(r1.get("bound", "")),
            _pct(r1.get("fraction_of_floor")), _f(r1.get("achieved_gbps"), 0)]) + " |")
    lines += ["", "## Adversarial fixtures", "", "| fixture | expected | outcome | ok |", "|---|---|---|---|"]
    for row in report.get("adversarial", []):
        lines.append(f"| {row['fixture']} | {row['expected']} | {row['outcome']} | {'yes' if row['ok'] else 'NO'} |")
    t = report.get("throughput") or {}
    if t:
        lines += ["", "## Throughput", "",
                  f"{t.get('candidates')} softmax variants on a warm pool of {t.get('workers')} workers: "
                  f"{t.get('seconds')} s, **{t.get('per_minute')} candidates fully evaluated per minute** "
                  f"(outcomes {t.get('outcomes')}; median {t.get('median_wall_s_per_candidate')} s of wall time each; "
                  f"warm-up of {t.get('warm_up_candidates')} took {t.get('warm_up_s')} s)."]
    if report.get("ncu"):
        lines += ["", "## Achieved bandwidth: harness vs ncu", "",
                  "| spec | harness GB/s | ncu DRAM GB/s | ratio | ncu bytes / minimal | ncu kernel ms "
                  "| event median ms |",
                  "|---|---|---|---|---|---|---|"]
        for row in report["ncu"]:
            if "ratio" in row:
                n = row["ncu"]
                lines.append(f"| {row['spec']} | {row['harness_gbps']:.0f} | {row['ncu_dram_gbps']:.0f} | "
                             f"{row['ratio']:.3f} | {n.get('dram_bytes_per_call', 0) / row['min_bytes']:.3f} | "
                             f"{n.get('duration_ms_per_call', 0):.4g} | {row['median_ms']:.4g} |")
            else:
                lines.append(f"| {row['spec']} | - | - | - | - | - | {row.get('note', '')[:80]} |")
    if report.get("skipped"):
        lines += ["", "Skipped for time: " + ", ".join(report["skipped"])]
    return "\n".join(lines) + "\n"


def _f(x, digits: int = 4) -> str:
    return "-" if x is None else (f"{x:.{digits}g}" if digits else f"{x:.0f}")


def _x(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


PHASES = ("specs", "adversarial", "throughput", "ncu")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"))
    p.add_argument("--target", help="hardware target (default: detected)")
    p.add_argument("--specs", nargs="*", help="example specs to run (default: every one with an honest fixture)")
    p.add_argument("--phases", default="specs,adversarial,throughput",
                   help=f"comma-separated, of {', '.join(PHASES)} (--ncu adds ncu)")
    p.add_argument("--ncu", action="store_true", help="compare achieved bandwidth with ncu (memory-bound specs)")
    p.add_argument("--variants", type=int, default=64, help="softmax variants for the throughput batch")
    p.add_argument("--workers", type=int, default=4, help="workers for the spec and adversarial phases")
    p.add_argument("--throughput-workers", type=int, default=8)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per candidate request")
    p.add_argument("--baseline-timeout", type=float, default=300.0, help="seconds per baseline (compile included)")
    p.add_argument("--budget", type=float, default=460.0, help="seconds before later phases are skipped")
    args = p.parse_args(argv)
    phases = [x for x in args.phases.split(",") if x] + (["ncu"] if args.ncu else [])
    unknown = set(phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phases {sorted(unknown)}")

    started, budget = time.monotonic(), Budget(args.budget)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "harness_gpu" if phases[:1] == ["specs"] else "harness_gpu-" + "-".join(phases)
    target = load_target(args.target) if args.target else detect_target()
    names = args.specs or sorted(p.stem for p in HONEST.glob("*.py")
                                 if p.stem.startswith("kernelbench_") or (ROOT / "specs" / f"{p.stem}.yaml").is_file())
    assert {n for n in names if not n.startswith("kernelbench_")} <= {p.stem for p in discover([ROOT / "specs"])}
    scratch = Path(tempfile.mkdtemp(prefix="harness-gpu-"))
    log = lambda text: print(text, flush=True)  # noqa: E731
    report: dict = {"command": " ".join(["python3", "bench/harness_gpu.py", *(argv or sys.argv[1:])]),
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "target": target.name,
                    "specs": [], "skipped": []}
    save = lambda: _write(out_dir, stem, report, started)  # noqa: E731
    log(f"target {target.name}; phases {', '.join(phases)}; {len(names)} specs; "
        f"KEVOLVE_HOME {os.environ['KEVOLVE_HOME']}")
    pool = WorkerPool(target, scratch / "main", workers=args.workers)
    try:
        if "specs" in phases:
            log("1. honest kernels, twice, against eager / torch.compile / max-autotune")
            report["specs"] = phase_specs(pool, target, names, args, log,
                                          lambda rows: _write(out_dir, stem, {**report, "specs": rows}, started))
            save()
        if "adversarial" in phases:
            if budget.left() > 60:
                log("2. adversarial fixtures")
                report["adversarial"] = phase_adversarial(pool, target, args, log)
            else:
                report["skipped"].append("adversarial")
            save()
        report["device"] = pool.device_name or target.display_name
        report["software"] = dict(pool.slots[0].worker.info) if pool.slots[0].worker else {}
    finally:
        pool.close()
    if "throughput" in phases:
        if budget.left() > 60:
            log("3. throughput")
            report["throughput"] = _guarded(phase_throughput, target, args, scratch, log)
        else:
            report["skipped"].append("throughput")
        save()
    if "ncu" in phases:
        if budget.left() > 45:
            pool = WorkerPool(target, scratch / "ncu", workers=1)
            try:
                log("4. achieved bandwidth vs ncu")
                wanted = [n for n in MEMORY_BOUND if n in names]
                report["ncu"] = phase_ncu(pool, target, wanted[: max(1, int(budget.left() // 25))], args, log)
                report["device"] = report.get("device") or pool.device_name
            finally:
                pool.close()
        else:
            report["skipped"].append("ncu")
    save()
    print()
    print(markdown(report))
    bad = [r["fixture"] for r in report.get("adversarial", []) if not r["ok"]]
    wrong = [r["spec"] for r in report["specs"] if (r.get("run1") or {}).get("outcome") != "correct"]
    print(f"honest kernels not correct: {wrong or 'none'}; adversarial mismatches: {bad or 'none'}; "
          f"results in {out_dir}/{stem}.json and .md")
    return 0 if not bad and not wrong else 1


_WRITING = threading.Lock()


def _write(out_dir: Path, stem: str, report: dict, started: float) -> None:
    with _WRITING:
        report["wall_s"] = time.monotonic() - started
        report.setdefault("device", "")
        report.setdefault("software", {})
        (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
        (out_dir / f"{stem}.md").write_text(markdown(report))


if __name__ == "__main__":
    raise SystemExit(main())
