#!/usr/bin/env python3
"""The offline synthesizer on a GPU: for each example spec, its seeds and the children that its
diagnosis-driven transformations propose, each checked against the float64 reference on the
tuned shape and timed beside eager PyTorch and torch.compile (default, max-autotune-no-cudagraphs).

    python3 bench/offline_gpu.py --part 1/2      # then --part 2/2: about 5-8 minutes each on an H100
    python3 bench/offline_gpu.py --merge $OUT/offline_gpu-1of2.json $OUT/offline_gpu-2of2.json
    python3 bench/offline_gpu.py --specs softmax,layernorm --budget-s 30

Needs torch, triton, numpy and pyyaml (not prefect or chromadb) and no harness worker: correctness
is checked here with the spec's runtime and compare(), after the harness's static checks (a
candidate they reject is reported as rejected, as the search would see it). Timing: triton.testing.do_bench medians
(L2 flushed before every repeat), the same inputs and method for every contender; the search itself
ranks its candidates as the harness times them (kevolve.evaluate.timing, launch hidden). Ceilings (copy
bandwidth, bf16 matmul rate) are measured in the same run. Writes offline_gpu[-PART].json and
.md under $OUT (default bench/results). `--interpreter` runs the same pipeline on the CPU under
TRITON_INTERPRET=1 at the interpreter shapes, to check the script; its times are not speeds.
`--merge A.json B.json` joins part files into one table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MEMORY_FAMILIES = {"pointwise", "rotary", "softmax", "normalization", "reduction", "cross_entropy",
                   "embedding_bag", "segment_sum", "bucketize"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--specs", default="", help="comma-separated spec names (default: every spec in specs/)")
    p.add_argument("--part", default="1/1", help="K/N: run the K-th of N equal slices of the spec list")
    p.add_argument("--budget-s", type=float, default=15.0, help="search seconds per spec (compiles included)")
    p.add_argument("--max-evals", type=int, default=32, help="candidates per spec at most")
    p.add_argument("--no-max-autotune", action="store_true", help="skip the slowest baseline")
    p.add_argument("--interpreter", action="store_true", help="check the pipeline on the CPU (no figures)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "results"))
    p.add_argument("--merge", nargs="*", help="run JSON files to join into one table, a spec's later run "
                   "replacing its earlier (no GPU needed)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        runs = [json.loads(Path(f).read_text()) for f in args.merge]
        specs = {s["spec"]: s for r in runs for s in r["specs"]}  # a later run of a spec replaces an earlier
        merged = dict(runs[0], specs=list(specs.values()), part="merged")
        return write(out, "offline_gpu", merged)
    if args.interpreter:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from kevolve.specs import discover, load_spec

    names = [n for n in args.specs.split(",") if n]
    paths = [REPO / "specs" / f"{n}.yaml" for n in names] if names else discover([REPO / "specs"])
    k, n = (int(x) for x in args.part.split("/"))
    paths = paths[k - 1::n]
    device = "cpu" if args.interpreter else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on the GPU machine, or pass --interpreter to check the script", file=sys.stderr)
        return 2
    ceilings = measure_ceilings(device)
    run = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)",
           "software": {"torch": torch.__version__, "triton": __import__("triton").__version__},
           "ceilings": ceilings, "part": args.part, "budget_s": args.budget_s, "interpreter": args.interpreter,
           "specs": []}
    for i, path in enumerate(paths):
        spec = load_spec(path)
        print(f"== {spec.name}", flush=True)
        try:
            result = bench_spec(spec, device, ceilings, args)
        except DeviceLost as exc:  # later launches would all fail: keep what was measured and stop
            run["specs"].append({"spec": spec.name, "error": str(exc)})
            write(out, f"offline_gpu{'' if n == 1 else f'-{k}of{n}'}", run)
            rest = ",".join(p.stem for p in paths[i + 1:])
            print(f"the CUDA context is lost ({exc}); rerun the rest with --specs {rest}", file=sys.stderr)
            return 3
        except Exception as exc:  # one spec failing must not lose the others' figures
            traceback.print_exc()
            result = {"spec": spec.name, "error": f"{type(exc).__name__}: {exc}"}
        run["specs"].append(result)
        print(json.dumps({k: v for k, v in result.items() if k not in ("failures", "trail")}), flush=True)
        write(out, f"offline_gpu{'' if n == 1 else f'-{k}of{n}'}", run)
    return 0


class Rejected(Exception):
    """The harness's static checks turned a candidate away."""


class DeviceLost(RuntimeError):
    """A candidate broke the CUDA context (an illegal address, say): nothing after it can run."""


def timer(device: str):
    if device == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")

    def wall(fn):  # the interpreter: the pipeline runs, the figure means nothing
        fn()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    return wall


def measure_ceilings(device: str) -> dict:
    import torch

    bench = timer(device)
    n = 1 << 28 if device == "cuda" else 1 << 20
    x = torch.randn(n, device=device)
    y = torch.empty_like(x)
    copy_gbps = 2 * x.numel() * 4 / (bench(lambda: y.copy_(x)) / 1e3) / 1e9
    del x, y
    m = 8192 if device == "cuda" else 256
    a = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    b = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    tflops = 2 * m ** 3 / (bench(lambda: a @ b) / 1e3) / 1e12
    return {"copy_gbps": float(f"{copy_gbps:.4g}"), "bf16_matmul_tflops": float(f"{tflops:.4g}")}


def floor_of(runtime, dims, device: str, ceilings) -> tuple[float, float, float]:
    """(minimal bytes, matmul FLOPs, floor ms), counted as the harness counts them
    (kevolve.evaluate.cost): every input read once, an embedding bag's distinct rows only, and
    the output written once."""
    from kevolve.evaluate.cost import reference_cost

    cost = reference_cost(runtime, dims, device)
    floor_s = max(cost.min_bytes / (ceilings["copy_gbps"] * 1e9),
                  cost.matmul_flops / (ceilings["bf16_matmul_tflops"] * 1e12))
    return cost.min_bytes, cost.matmul_flops, floor_s * 1e3


_GATHER_SUM = """import triton
import triton.language as tl


@triton.jit
def gather_sum(table_ptr, idx_ptr, out_ptr, L, D, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    # BLOCK_L lookups of whole rows at once, summed into one row per program: the reads of a
    # gather with nothing else to wait on, and writes too few to count
    lanes = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.arange(0, BLOCK_D)
    idx = tl.load(idx_ptr + lanes, mask=lanes < L, other=0)
    m = (lanes < L)[:, None] & (cols < D)[None, :]
    rows = tl.load(table_ptr + idx.to(tl.int64)[:, None] * D + cols[None, :], mask=m, other=0.0)
    tl.store(out_ptr + tl.program_id(0).to(tl.int64) * D + cols, tl.sum(rows, axis=0), mask=cols < D)
"""


def gather_ceiling(table, indices, bench, folder: Path) -> dict:
    """The fastest the rows an embedding bag gathers can be read here, no reduction: random rows
    may not stream at the copy bandwidth on any GPU. Times torch.index_select into [L, D] (its
    write included) and a plain Triton gather at a few tile sizes; `gather_ms` is the fastest read."""
    import torch
    import triton

    (folder / "gather_sum.py").write_text(_GATHER_SUM)  # triton reads a kernel's source from a file
    loaded = importlib.util.spec_from_file_location(f"gather_sum_{time.monotonic_ns()}", folder / "gather_sum.py")
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    n, d = indices.numel(), table.shape[1]
    block_d = triton.next_power_of_2(d)
    out = {"index_select_ms": bench(lambda: torch.index_select(table, 0, indices)), "triton_ms": {}}
    for block_l, warps in ((16, 4), (32, 4), (32, 8), (64, 8)):
        if block_l * block_d > 16384:
            continue
        sums = torch.empty(triton.cdiv(n, block_l), d, device=table.device, dtype=table.dtype)
        grid = (triton.cdiv(n, block_l),)
        out["triton_ms"][f"BLOCK_L={block_l},num_warps={warps}"] = bench(
            lambda: module.gather_sum[grid](table, indices, sums, n, d, BLOCK_L=block_l, BLOCK_D=block_d,
                                            num_warps=warps))
    out["gather_ms"] = min(out["triton_ms"].values(), default=out["index_select_ms"])
    out["row_bytes"] = float(n * d * table.element_size())
    out["gather_gbps"] = out["row_bytes"] / (out["gather_ms"] / 1e3) / 1e9
    return out


def kernel_times(fn, flush_bytes: int) -> dict[str, float]:
    """Device microseconds of each kernel one call launches, medians over 20 calls, L2 flushed
    before each (back to back, the next call finds the last one's bytes in L2): where a
    candidate of several kernels (a table and a search, rows and a reduction) spends its time,
    and what the gaps between them cost (best ms less their sum)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    # flipped bits, not zeros: no candidate or baseline launches a bitwise-not kernel, so the
    # flush's kernels are told apart by name
    flush = torch.empty(max(flush_bytes, 1 << 20) // 4, dtype=torch.int32, device="cuda")
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            flush.bitwise_not_()
            fn()
        torch.cuda.synchronize()
    times: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and "bitwise_not" not in event.name:
            times.setdefault(event.name, []).append(event.device_time)
    return {name: round(statistics.median(ts), 2) for name, ts in times.items()}


def host_us(fn, calls: int = 200) -> float:
    """Host microseconds a call takes to launch its work (the wrapper's Python and the kernel
    launcher), the GPU's queue never draining meanwhile: do_bench counts this wherever it
    outlasts the GPU's work between two timed calls."""
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - t0
    torch.cuda.synchronize()
    return round(elapsed / calls * 1e6, 1)


def launch_hidden_ms(fn, flush_bytes: int) -> float:
    """The call's time as the search's harness takes it: L2 flushed, and the GPU kept busy while
    the host launches the call, so a slower Python launch path (a candidate's wrapper and Triton's
    launcher against inductor's) does not count; do_bench, above, counts it when the launch
    outlasts its cache flush."""
    from kevolve.evaluate.timing import time_cuda

    return time_cuda(lambda: fn(), [()], trials=100, flush_bytes=flush_bytes).median_ms


def head_to_head(contenders: dict, bench, rounds: int = 5) -> dict[str, float]:
    """Each contender timed in turn, `rounds` times over, after the search: the baseline columns
    were timed before it, and a drift of the GPU's clocks in between falls on one side only.
    Here it falls on both alike. Medians of the rounds' medians."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(bench(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def load_candidate(code: str, folder: Path, index: int):
    path = folder / f"candidate_{index}.py"  # triton reads kernels' source from a real file
    path.write_text(code)
    spec = importlib.util.spec_from_file_location(f"offline_candidate_{index}_{time.monotonic_ns()}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_spec(spec, device: str, ceilings: dict, args) -> dict:
    import torch

    from kevolve.candidate import Candidate
    from kevolve.evaluate.result import Diagnosis
    from kevolve.evaluate.static_checks import rejection_reason, static_checks
    from kevolve.hardware.calibrate import Ceilings
    from kevolve.hardware.detect import detect_target
    from kevolve.hardware.target import load_target
    from kevolve.specs.compare import compare
    from kevolve.specs.model import Tolerance
    from kevolve.specs.runtime import OperatorRuntime, as_outputs, clone_all
    from kevolve.synth.base import Attempt, SynthesisRequest
    from kevolve.synth.offline import OfflineSynthesizer, match_family

    target = load_target("cpu-interpreter") if args.interpreter else detect_target()
    dims = spec.shapes_for(target.interpreter)[0]
    family = match_family(spec).family
    runtime = OperatorRuntime(spec)
    xs = runtime.inputs(dims, seed=0, device=device)
    ref = runtime.reference(dims, device)
    expected = as_outputs(ref(*clone_all(xs)))[0]
    exact = as_outputs(runtime.reference(dims, device, float64=True)(*clone_all(xs)))[0]
    tol = spec.tolerance or Tolerance.for_dtype(str(expected.dtype).removeprefix("torch."))
    nbytes, flops, floor_ms = floor_of(runtime, dims, device, ceilings)
    bench = timer(device)
    flush = int(2 * target.l2_cache_mib * (1 << 20))  # bytes written between timed calls
    # The search ranks candidates as the harness times them: with do_bench a short kernel's
    # Python launch path decided the order (clamp_log1p's seeds, all 33-38 us kernels, took
    # 37-60 us on an H200), so configs were kept or dropped for their launch time.
    rank = (lambda fn: launch_hidden_ms(fn, flush)) if device == "cuda" else bench
    result = {"spec": spec.name, "family": family, "dims": dict(dims), "min_bytes": nbytes, "flops": flops,
              "floor_ms": floor_ms, "baselines_ms": {}, "baseline_errors": {}}
    result["baselines_ms"]["eager"] = bench(lambda: ref(*xs))
    modes = [("compile_default", {})]
    if not args.no_max_autotune and not args.interpreter:
        modes.append(("compile_max_autotune", {"mode": "max-autotune-no-cudagraphs"}))
    compiled_last = None  # the last mode compiled: still callable after the search (no reset since)
    for name, kw in modes if not args.interpreter else []:
        try:
            torch._dynamo.reset()
            t0 = time.perf_counter()
            compiled = torch.compile(lambda *a: ref(*a), dynamic=False, **kw)
            compiled(*xs)
            compiled_last = (name, compiled)
            result["baselines_ms"][name] = bench(lambda: compiled(*xs))
            result[f"{name}_compile_s"] = round(time.perf_counter() - t0, 1)
            if device == "cuda":
                result.setdefault("launch_hidden_ms", {})[name] = launch_hidden_ms(lambda: compiled(*xs), flush)
                result.setdefault("baseline_kernels_us", {})[name] = kernel_times(lambda: compiled(*xs), flush)
                result.setdefault("host_us", {})[name] = host_us(lambda: compiled(*xs))
        except Exception as exc:
            result["baseline_errors"][name] = f"{type(exc).__name__}: {str(exc)[:200]}"

    folder = Path(tempfile.mkdtemp(prefix=f"offline-{spec.name}-"))
    if family == "embedding_bag":
        # the bag's least time if its rows came at the measured gather rate and the rest at copy rate
        gather = gather_ceiling(xs[0], xs[1], bench, folder)
        rest = sum(t.numel() * t.element_size() for t in xs[1:]) + expected.numel() * expected.element_size()
        gather["floor_ms"] = gather["gather_ms"] + rest / (ceilings["copy_gbps"] * 1e9) * 1e3
        result["gather_ceiling"] = gather
    if family in MEMORY_FAMILIES and device == "cuda":
        # the copy bandwidth is measured on 2 GB; a spec of tens of MB also pays the ramp and tail
        # of a short kernel: a copy of its own bytes is the fairer yardstick
        src = torch.empty(int(nbytes // 8), dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        result["same_size_copy_ms"] = bench(lambda: dst.copy_(src))
        del src, dst
    if family == "bucketize":
        # the same bytes with no search: torch's casting copy reads the fp32 values and writes int64
        cast = torch.empty_like(expected)
        stream_ms = bench(lambda: cast.copy_(xs[0]))
        result["stream_ceiling"] = {"what": f"torch copy_ of {xs[0].dtype} values into {expected.dtype}",
                                    "stream_ms": stream_ms, "gbps": nbytes / (stream_ms / 1e3) / 1e9}
    synth = OfflineSynthesizer(rng_seed=0)
    ceil = Ceilings(copy_gbps=ceilings["copy_gbps"], matmul_tflops={"bf16": ceilings["bf16_matmul_tflops"]},
                    source="measured")
    bound = "compute" if family == "matmul" else "memory"
    evaluated: list[dict] = []
    attempts: dict[str, Attempt] = {}
    failures: list[str] = []
    start = time.perf_counter()

    def evaluate(c: Candidate) -> Attempt:
        t0 = time.perf_counter()
        entry = {"config": dict(c.origin.config), "transforms": [str(t) for t in c.origin.transforms],
                 "note": c.origin.note}
        time_ms, outcome, error = None, "wrong", ""
        rejected = rejection_reason(static_checks(c.code, spec.entry_point))
        try:
            if rejected:  # the search's harness would not run it: neither does the bench
                raise Rejected(rejected)
            fn = runtime.candidate(load_candidate(c.code, folder, len(evaluated)), dims, device)
            got = as_outputs(fn(*clone_all(xs)))[0]
            cmp = compare(got, exact, tol) if got.dtype == expected.dtype else None
            if cmp is not None and cmp.ok:
                time_ms, outcome = rank(lambda: fn(*xs)), "correct"
            else:
                error = cmp.reason if cmp is not None else f"dtype {got.dtype}, expected {expected.dtype}"
        except Rejected as exc:
            outcome, error = "rejected", str(exc)
        except Exception as exc:
            outcome, error = "crashed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            if device == "cuda" and ("CUDA error" in str(exc) or "illegal" in str(exc).lower()):
                raise DeviceLost(f"{spec.name}: {error} from {entry['transforms'] or 'a seed'}") from exc
        entry.update(outcome=outcome, time_ms=time_ms, error=error, wall_s=round(time.perf_counter() - t0, 2))
        evaluated.append(entry)
        if error:
            failures.append(f"{entry['transforms'] or 'seed'}: {error}")
        fraction = floor_ms / time_ms if time_ms else None
        diag = Diagnosis(bound=bound, summary="", floor_ms=floor_ms, fraction_of_floor=fraction)
        a = Attempt(code=c.code, origin=c.origin, outcome=outcome, time_ms=time_ms, error=error, diagnosis=diag)
        attempts[json.dumps(c.origin.config, sort_keys=True)] = a
        return a

    def request(**kw) -> SynthesisRequest:
        return SynthesisRequest(spec=spec, target=target, ceilings=ceil, **kw)

    for c in synth.propose(request(n=4)):
        evaluate(c)
    expanded: set[str] = set()
    stale = 0
    while time.perf_counter() - start < args.budget_s and len(evaluated) < args.max_evals:
        ranked = sorted((a for a in attempts.values() if a.time_ms), key=lambda a: a.time_ms)
        frontier = [a for a in ranked if json.dumps(a.origin.config, sort_keys=True) not in expanded][:2]
        if not frontier:
            break
        best_before = ranked[0].time_ms
        parent = frontier[0]
        expanded.add(json.dumps(parent.origin.config, sort_keys=True))
        mode = "restart" if stale >= 2 else "inherit"
        try:
            children = synth.propose(request(parent=parent, memory_mode=mode, n=4, history=tuple(attempts.values())))
        except Exception as exc:  # every move tried: the next parent
            failures.append(f"propose: {exc}")
            continue
        for c in children:
            if time.perf_counter() - start > args.budget_s or len(evaluated) >= args.max_evals:
                break
            evaluate(c)
        best_now = min(a.time_ms for a in attempts.values() if a.time_ms)
        # one restart per stall, then back to refining the best: restarts are costly guesses
        stale = 0 if best_now < best_before * 0.99 or mode == "restart" else stale + 1

    correct = [e for e in evaluated if e["outcome"] == "correct"]
    chosen = min(correct, key=lambda e: e["time_ms"]) if correct else None
    best = dict(chosen) if chosen else None
    if best and device == "cuda":
        code = attempts[json.dumps(best["config"], sort_keys=True)].code
        fn = runtime.candidate(load_candidate(code, folder, len(evaluated)), dims, device)
        result["best_kernels_us"] = kernel_times(lambda: fn(*xs), flush)
        result.setdefault("host_us", {})["best"] = host_us(lambda: fn(*xs))
        result.setdefault("launch_hidden_ms", {})["best"] = best["time_ms"]
        best["time_ms"] = bench(lambda: fn(*xs))  # by do_bench, as the baselines were timed
        if compiled_last:
            name, compiled = compiled_last
            result["head_to_head_ms"] = head_to_head({"best": lambda: fn(*xs), name: lambda: compiled(*xs)}, bench)
    base = result["baselines_ms"]
    result.update(
        evaluations=len(evaluated), correct=len(correct), gpu_s=round(time.perf_counter() - start, 1),
        best_ms=best["time_ms"] if best else None, best_config=best["config"] if best else None,
        best_transforms=best["transforms"] if best else None,
        fraction_of_floor=floor_ms / best["time_ms"] if best else None,
        achieved_gbps=nbytes / (best["time_ms"] / 1e3) / 1e9 if best else None,
        fraction_of_copy=(nbytes / (best["time_ms"] / 1e3) / 1e9) / ceilings["copy_gbps"] if best else None,
        # the bandwidth the kernels themselves reach, as ncu counts it: no launch, no event records
        fraction_of_copy_kernels=(nbytes / (sum(result["best_kernels_us"].values()) / 1e6) / 1e9
                                  / ceilings["copy_gbps"]) if result.get("best_kernels_us") else None,
        fraction_of_same_size_copy=result["same_size_copy_ms"] / best["time_ms"]
        if best and "same_size_copy_ms" in result else None,
        fraction_of_gather=(result["gather_ceiling"]["floor_ms"] / best["time_ms"]
                            if best and "gather_ceiling" in result else None),
        speedup={k: v / best["time_ms"] for k, v in base.items()} if best else {},
        memory_bound=family in MEMORY_FAMILIES, failures=failures[:8],
        trail=[{k: e[k] for k in ("transforms", "outcome", "time_ms", "note")} for e in evaluated],
    )
    return result


def write(out: Path, stem: str, run: dict) -> int:
    (out / f"{stem}.json").write_text(json.dumps(run, indent=2, default=str))
    c = run["ceilings"]
    lines = [f"# Offline search on {run['device']}", "",
             f"torch {run['software']['torch']}, triton {run['software']['triton']}; measured in the same run: "
             f"copy {c['copy_gbps']} GB/s, bf16 matmul {c['bf16_matmul_tflops']} TFLOP/s. Medians of do_bench "
             "(L2 flushed each repeat). Floor = max(min bytes / copy, FLOPs / matmul); % floor = floor / best. "
             f"Search budget {run['budget_s']} s per spec; the search ranks candidates as the harness times "
             "them (launch hidden, below) and best ms is its pick by do_bench. An embedding bag's least bytes "
             "count each distinct row once; % gather = its time if the rows came at the rate a plain gather of "
             "the same rows reaches here (the gather ceiling below) and the rest at copy bandwidth, over best. % same-size copy = "
             "the time of a plain copy of the spec's least bytes (half read, half written) over best: a short "
             "kernel's ramp and tail included. Launch hidden: the best and max-autotune timed again as the "
             "search's harness times them (the GPU kept busy while the host launches the call), so the Python "
             "launch path does not count. Head to head: the best and max-autotune timed by turns, five rounds "
             "each, after the search (medians). Kernels: the sum of the profiler's kernel times of one call (L2 "
             "flushed before each), max-autotune's over the best's (below), untouched by the host; % copy BW, "
             "kernels = the least bytes over that sum, against the copy bandwidth, as ncu would count it.", "",
             "| spec | family | eager ms | compile ms | max-autotune ms | best ms | vs max-autotune | "
             "vs max-autotune, head to head | vs max-autotune, launch hidden | vs max-autotune, kernels | % floor | "
             "% copy BW | % copy BW, kernels | % same-size copy | % gather | evals (correct) | GPU s | best config |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(v):
        return f"{v:.4f}" if isinstance(v, (int, float)) else "-"

    for s in run["specs"]:
        if "error" in s:
            lines.append(f"| {s['spec']} | error: {s['error'][:80]} |" + " |" * 16)
            continue
        b = s["baselines_ms"]
        best = s.get("best_ms")
        vs = b.get("compile_max_autotune") or b.get("compile_default")
        cfg = ", ".join(f"{k}={v}" for k, v in (s.get("best_config") or {}).items() if k != "sm_count")
        vs_best = f"{vs / best:.2f}x" if best and vs else "-"
        hidden = s.get("launch_hidden_ms", {})
        hidden_vs = (f"{hidden['compile_max_autotune'] / hidden['best']:.2f}x"
                     if {"compile_max_autotune", "best"} <= set(hidden) else "-")
        duel = s.get("head_to_head_ms", {})
        duel_vs = (f"{duel['compile_max_autotune'] / duel['best']:.2f}x"
                   if {"compile_max_autotune", "best"} <= set(duel) else "-")
        theirs = sum(s.get("baseline_kernels_us", {}).get("compile_max_autotune", {}).values())
        ours = sum(s.get("best_kernels_us", {}).values())
        kernels_vs = f"{theirs / ours:.2f}x" if theirs and ours else "-"
        floor = f"{100 * s['fraction_of_floor']:.0f}%" if best else "-"
        copy = f"{100 * s['fraction_of_copy']:.0f}%" if best and s["memory_bound"] else "-"
        by_kernels = (f"{100 * s['fraction_of_copy_kernels']:.0f}%"
                      if s.get("fraction_of_copy_kernels") and s["memory_bound"] else "-")
        same = f"{100 * s['fraction_of_same_size_copy']:.0f}%" if s.get("fraction_of_same_size_copy") else "-"
        gather = f"{100 * s['fraction_of_gather']:.0f}%" if s.get("fraction_of_gather") else "-"
        lines.append(
            f"| {s['spec']} | {s['family']} | {ms(b.get('eager'))} | {ms(b.get('compile_default'))} | "
            f"{ms(b.get('compile_max_autotune'))} | {ms(best)} | {vs_best} | {duel_vs} | {hidden_vs} | {kernels_vs} | {floor} | {copy} | {by_kernels} | {same} | {gather} | "
            f"{s['evaluations']} ({s['correct']}) | {s['gpu_s']} | {cfg} |")
    lines += table("Gather ceiling (the rows an embedding bag reads, gathered with no reduction)",
                   ["spec", "rows read MB", "index_select ms (+ its write)", "best Triton gather ms", "GB/s",
                    "% of copy BW", "gather floor ms"],
                   [[s["spec"], f"{g['row_bytes'] / 1e6:.1f}", ms(g["index_select_ms"]), ms(g["gather_ms"]),
                     f"{g['gather_gbps']:.0f}", f"{100 * g['gather_gbps'] / c['copy_gbps']:.0f}%", ms(g["floor_ms"])]
                    for s in run["specs"] if (g := s.get("gather_ceiling"))])
    lines += table("Stream ceiling (the spec's bytes moved by a plain casting copy, no search)",
                   ["spec", "what", "ms", "GB/s", "% of copy BW", "best ms", "% of this ceiling"],
                   [[s["spec"], t["what"], ms(t["stream_ms"]), f"{t['gbps']:.0f}",
                     f"{100 * t['gbps'] / c['copy_gbps']:.0f}%", ms(s["best_ms"]),
                     f"{100 * t['stream_ms'] / s['best_ms']:.0f}%"]
                    for s in run["specs"] if (t := s.get("stream_ceiling")) and s.get("best_ms")])
    lines += table("Kernels of each best candidate (device us per call, medians; profiler) and host us a "
                   "call takes to launch them (wrapper and launcher, the GPU busy meanwhile)",
                   ["spec", "best ms", "kernels", "max-autotune's kernels", "host us: best", "compile default",
                    "max-autotune"],
                   [[s["spec"], ms(s["best_ms"]), kernels(s["best_kernels_us"]),
                     kernels(s.get("baseline_kernels_us", {}).get("compile_max_autotune", {}))]
                    + [f"{s['host_us'][k]:.1f}" if k in s.get("host_us", {}) else "-"
                       for k in ("best", "compile_default", "compile_max_autotune")]
                    for s in run["specs"] if s.get("best_kernels_us")])
    failing = [s for s in run["specs"] if s.get("failures")]
    if failing:
        lines += ["", "## Candidates that failed (first few per spec)", ""]
        for s in failing:
            lines += [f"- {s['spec']}: " + "; ".join(f[:160] for f in s["failures"][:4])]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / stem}.json and .md")
    return 0


def kernels(times_us: dict) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in times_us.items()) or "-"


def table(title: str, columns: list[str], rows: list[list[str]]) -> list[str]:
    """A titled markdown table; nothing where there are no rows."""
    if not rows:
        return []
    return (["", f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(row) + " |" for row in rows])


if __name__ == "__main__":
    sys.exit(main())
