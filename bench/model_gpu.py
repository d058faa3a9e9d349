#!/usr/bin/env python3
"""Operators of real models, tuned and put back: the forward pass with library kernels against
eager PyTorch and torch.compile.

    python3 bench/model_gpu.py             # on the GPU; writes $OUT/model_gpu.{json,md} (default bench/results)
    python3 bench/model_gpu.py --smoke     # tiny sizes on the CPU under Triton's interpreter: checks the path only

Models: a Llama-style decoder (hidden 4096, MLP 11008, 32 heads, 2 layers, bf16, batch 4 x seq
2048, SDPA attention, random weights) and a DLRM-style recommendation model at production sizes
(8 tables of 1M x 128 rows, 16384 samples of about 40 lookups per table, MLPs up to 1024 wide).
For each: extract its operators on fake tensors and write the specs; for the top recognised
groups take kernels (the library's when it holds them; else the offline synthesizer's seeds and
their children when kevolve.synth.offline is installed; else the hand-written kernels of
tests/fixtures/library_kernels); check every kernel against the float64 reference at the tuned
and check shapes; time it and the reference (eager, torch.compile) with CUDA events, L2 flushed;
register the kernels faster than both; patch the model; compare its output with eager; time the
forward pass eager, torch.compile, with library kernels, and torch.compile with library kernels.
Needs torch, triton, transformers, pyyaml. About 5 minutes on an H100.
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

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
os.environ.setdefault("KEVOLVE_HOME", tempfile.mkdtemp(prefix="kevolve-model-gpu-"))

import torch  # noqa: E402

from kevolve.candidate import Candidate, Origin  # noqa: E402
from kevolve.evaluate.result import Baselines, Check, Evaluation, Outcome, Timing  # noqa: E402
from kevolve.hardware import detect_target, device_name, load_ceilings  # noqa: E402
from kevolve.library import NotAnImprovement, register  # noqa: E402
from kevolve.library import runtime as library_runtime  # noqa: E402
from kevolve.library.patch import patch_model  # noqa: E402
from kevolve.models.ops import extract_ops, semantics_key  # noqa: E402
from kevolve.models.specgen import write_specs  # noqa: E402
from kevolve.models.trace import ModelCase  # noqa: E402
from kevolve.specs import load_spec  # noqa: E402
from kevolve.specs.compare import compare  # noqa: E402
from kevolve.specs.kernelbench_format import load_module  # noqa: E402
from kevolve.specs.model import dims_key  # noqa: E402
from kevolve.specs.runtime import OperatorRuntime, as_outputs, clone_all  # noqa: E402
from kevolve.specs.validate import tolerance_for  # noqa: E402

FIXTURE_KERNELS = REPO / "tests" / "fixtures" / "library_kernels"
TOP_GROUPS = 6  # recognised groups per model to find kernels for
CANDIDATES_PER_SPEC = 10
SPEC_BUDGET_S = 20.0  # per spec, for compiling and checking candidates
MODEL_BUDGET_S = 110.0  # per model, for finding kernels: later specs are skipped past it


# Timing -------------------------------------------------------------------------------------------

def measure(fn, device: str, trials: int, warmup: int = 3) -> Timing:
    if device != "cuda":
        for _ in range(1):
            fn()
        times = []
        for _ in range(max(2, trials // 10)):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return _timing(times, "wall clock under the interpreter (not kernel speed)", interpreter=True)
    flush = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")  # 256 MB > the 50 MB L2
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(trials)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(trials)]
    torch.cuda.synchronize()
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return _timing([s.elapsed_time(e) for s, e in zip(starts, ends)],
                   f"cuda events, L2 flushed, {trials} trials after {warmup} warm-ups")


def _timing(times: list[float], method: str, interpreter: bool = False) -> Timing:
    times = sorted(times)
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return Timing(median_ms=statistics.median(times), p20_ms=q(0.2), p80_ms=q(0.8), min_ms=times[0],
                  trials=len(times), method=method, interpreter=interpreter)


# Models -------------------------------------------------------------------------------------------

def llama_builder(smoke: bool):
    from transformers import AutoModel, LlamaConfig

    if smoke:
        config = LlamaConfig(hidden_size=64, intermediate_size=172, num_attention_heads=4, num_key_value_heads=4,
                             num_hidden_layers=2, vocab_size=128, rms_norm_eps=1e-5)
        batch, seq = 2, 8
    else:  # Llama-2-7B widths, two decoder layers
        config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                             num_key_value_heads=32, num_hidden_layers=2, vocab_size=32000, rms_norm_eps=1e-5)
        batch, seq = 4, 2048

    def build(device: str):
        with torch.device(device):
            model = AutoModel.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
            ids = torch.randint(0, config.vocab_size, (batch, seq))
        return model, (), {"input_ids": ids, "use_cache": False}

    shape = dict(hidden=config.hidden_size, intermediate=config.intermediate_size, heads=config.num_attention_heads,
                 layers=config.num_hidden_layers, batch=batch, seq=seq, dtype="bfloat16", attention="sdpa")
    return build, shape


def rec_builder(smoke: bool):
    spec = importlib.util.spec_from_file_location("rec_model_fixture", REPO / "tests" / "fixtures" / "rec_model.py")
    rec = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rec)

    def build(device: str):
        model, args = rec.build() if smoke else rec.build_production(device)
        return model, args, {}

    shape = (dict(batch=8, tables=3, rows=100, dim=16) if smoke else
             dict(batch=16384, tables=8, rows=1_000_000, dim=128, mean_bag=40, bottom=[512, 256],
                  top=[1024, 1024, 512], dtype="float32"))
    return build, shape


def first_tensor(result) -> torch.Tensor:
    if isinstance(result, torch.Tensor):
        return result
    if hasattr(result, "last_hidden_state"):
        return result.last_hidden_state
    return next(t for t in (result.values() if hasattr(result, "values") else result) if isinstance(t, torch.Tensor))


# Kernels for one spec -----------------------------------------------------------------------------

def offline_synthesizer():
    try:
        from kevolve.synth.offline import OfflineSynthesizer
    except ImportError:
        return None
    return OfflineSynthesizer(rng_seed=0)


FIXTURES = {"rmsnorm": "rmsnorm_llama.py", "glu": "swiglu.py", "embedding_bag": "embedding_bag_sum.py"}


def fixture_candidates(spec, pattern: str) -> list[Candidate]:
    name = FIXTURES.get(pattern)
    if name is None or (pattern == "glu" and not spec.name.startswith("swiglu")) or (
            pattern == "embedding_bag" and "_sum_" not in spec.name):
        return []
    return [Candidate(code=(FIXTURE_KERNELS / name).read_text(), spec_name=spec.name,
                      origin=Origin(synthesizer="manual", note=f"hand-written kernel {name}"))]


class Trials:
    """Inputs and reference outputs per (shape, seed), made once and shared by every candidate."""

    def __init__(self, spec, runtime, device: str, dims_list: list[dict]):
        self.spec, self.runtime, self.device = spec, runtime, device
        self.keys = [(dims, seed) for dims in dims_list for seed in (1, 2)]
        self._cache: dict[str, tuple] = {}

    def get(self, dims: dict, seed: int):
        key = f"{dims_key(dims)}/{seed}"
        if key not in self._cache:
            inputs = self.runtime.inputs(dims, seed, self.device)
            exact = as_outputs(self.runtime.reference(dims, self.device, float64=True)(*clone_all(inputs)))
            native = as_outputs(self.runtime.reference(dims, self.device)(*clone_all(inputs)))
            self._cache[key] = (inputs, exact, native)
        return self._cache[key]

    def check(self, module) -> list[Check]:
        checks = []
        for dims, seed in self.keys:
            try:
                inputs, exact, native = self.get(dims, seed)
                outs = as_outputs(self.runtime.candidate(module, dims, self.device)(*clone_all(inputs)))
                problems = [f"{o.dtype} {tuple(o.shape)} but the reference gives {w.dtype} {tuple(w.shape)}"
                            for o, w in zip(outs, native) if o.dtype != w.dtype or o.shape != w.shape]
                for o, r, w in zip(outs, exact, native):
                    verdict = compare(o, r, tolerance_for(self.spec, w)) if o.shape == w.shape else None
                    if verdict is not None and not verdict.ok:
                        problems.append(verdict.reason)
            except Exception as exc:  # a crashing candidate is a result, not the end of the run
                problems = [f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]
            checks.append(Check(f"trial[seed={seed} {dims_key(dims)}]", not problems, "; ".join(problems)))
            if problems:
                break
        return checks


def load_candidate(cand: Candidate):
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "candidate.py"
        file.write_text(cand.code)
        return load_module(file)


def tune_spec(path: Path, pattern: str, target, device: str, smoke: bool) -> dict:
    spec = load_spec(path)
    runtime = OperatorRuntime(spec)
    tune = dict(spec.tune_dims)  # tiny in a smoke run, so every shape fits the interpreter
    dims_list = [tune] + [dict(d) for d in (*spec.check_dims, *(spec.interpreter_dims if smoke else ()))]
    result = {"spec": spec.name, "pattern": pattern, "tune": tune, "validated": dims_list, "candidates": 0,
              "correct": 0, "source": None, "best_ms": None, "registered": None, "errors": []}
    trials = Trials(spec, runtime, device, dims_list)
    inputs = trials.get(tune, 1)[0]
    start = time.monotonic()
    tried: list[tuple[Candidate, list[Check], Timing | None]] = []

    def evaluate(batch: list[Candidate]) -> None:
        for cand in batch:
            if len(tried) >= CANDIDATES_PER_SPEC or time.monotonic() - start > SPEC_BUDGET_S:
                return
            try:
                module = load_candidate(cand)
            except Exception as exc:
                tried.append((cand, [Check("import", False, f"{type(exc).__name__}: {exc}")], None))
                continue
            checks = trials.check(module)
            timing = None
            if all(c.passed for c in checks):
                fn = runtime.candidate(module, tune, device)
                timing = measure(lambda: fn(*inputs), device, trials=30)
            tried.append((cand, checks, timing))

    synth = offline_synthesizer()
    if synth is not None:
        from kevolve.synth.base import Attempt, SynthesisError, SynthesisRequest

        request = SynthesisRequest(spec=spec, target=target, ceilings=load_ceilings(target, device_name()), n=6)
        try:
            evaluate(synth.propose(request))
            timed = [(c, t) for c, _, t in tried if t is not None]
            if timed:  # one round of children from the fastest seed
                best, best_t = min(timed, key=lambda ct: ct[1].median_ms)
                parent = Attempt(code=best.code, origin=best.origin, outcome="correct", time_ms=best_t.median_ms)
                evaluate(synth.propose(SynthesisRequest(spec=spec, target=target, ceilings=request.ceilings,
                                                        parent=parent, n=6)))
            result["source"] = "offline synthesizer"
        except SynthesisError as exc:
            result["errors"].append(f"offline synthesizer: {exc}")
    if not tried:
        evaluate(fixture_candidates(spec, pattern))
        result["source"] = "hand-written fixture kernel" if tried else None
    result["candidates"] = len(tried)
    correct = [(c, checks, t) for c, checks, t in tried if t is not None]
    result["correct"] = len(correct)
    result["errors"] += [f"{c.origin.note or dict(c.origin.config)}: {next(x.detail for x in ch if not x.passed)}"[:300]
                         for c, ch, t in tried if t is None][:3]
    if not correct:
        return result

    # Baselines only where there is a kernel to compare: eager and torch.compile of the reference.
    reference = runtime.reference(tune, device)
    eager = measure(lambda: reference(*inputs), device, trials=30)
    result["eager_ms"] = eager.median_ms
    compiled_t = None
    if not smoke:
        try:
            compiled = torch.compile(reference)
            compiled(*inputs)
            compiled_t = measure(lambda: compiled(*inputs), device, trials=30)
            result["compile_ms"] = compiled_t.median_ms
        except Exception as exc:
            result["errors"].append(f"torch.compile: {type(exc).__name__}: {exc}"[:300])
        torch._dynamo.reset()
    best, checks, timing = min(correct, key=lambda x: x[2].median_ms)
    result["best_ms"] = timing.median_ms
    result["best_origin"] = best.origin.note or json.dumps(dict(best.origin.config), default=str)
    fastest = min(t.median_ms for t in (eager, compiled_t) if t is not None)
    result["speedup"] = None if smoke else fastest / timing.median_ms
    evaluation = Evaluation(candidate_hash=best.code_hash, spec_name=spec.name, target=target.name,
                            device=device_name() or "cpu (Triton interpreter)", dims=tune, outcome=Outcome.CORRECT,
                            checks=tuple(checks), timing=timing,
                            baselines=Baselines(eager=eager, compile_default=compiled_t))
    if smoke or result["speedup"] > 1.0:
        try:
            result["registered"] = register(spec, target, best.code, evaluation, dims_list).ref
        except NotAnImprovement as exc:
            result["registered"] = f"kept: {exc}"
    else:
        result["registered"] = "no: not faster than eager and torch.compile"
    return result


# One model ----------------------------------------------------------------------------------------

def run_model(name: str, builder, smoke: bool, target, device: str, work: Path) -> dict:
    build, shape = builder(smoke)
    record: dict = {"model": name, "shape": shape}
    t0 = time.monotonic()
    extraction = extract_ops(ModelCase(name=name, build=lambda: build("cpu")), target)
    written = write_specs(extraction, work / name, top=TOP_GROUPS)
    record["extract_s"] = round(time.monotonic() - t0, 2)
    record["top_groups"] = [{"name": g.name, "pattern": g.pattern, "calls": g.count, "share": round(g.share, 4),
                             "estimated_ms": g.est_s * 1e3, "fused_floor_ms": g.fused_floor_s * 1e3}
                            for g in extraction.groups[:12]]
    record["estimated_total_ms"] = extraction.total_s * 1e3
    record["kernels"] = []
    tuning_start = time.monotonic()
    for w in written:
        if time.monotonic() - tuning_start > MODEL_BUDGET_S:
            record["kernels"].append({"spec": w.group.name, "errors": ["skipped: the model's tuning budget is spent"]})
            continue
        if not w.ok:
            record["kernels"].append({"spec": w.group.name, "errors": [w.error]})
            continue
        existing = library_runtime.same_computation(semantics_key(w.group.match), target.name)
        if any(e.covers(w.group.dims) for e in existing):
            record["kernels"].append({"spec": w.group.name, "source": "library", "registered": existing[0].ref})
            continue
        spec_start = time.monotonic()
        try:
            record["kernels"].append(tune_spec(w.path, w.group.pattern, target, device, smoke))
            record["kernels"][-1]["wall_s"] = round(time.monotonic() - spec_start, 1)
        except Exception as exc:
            record["kernels"].append({"spec": w.group.name, "errors": [traceback.format_exc(limit=3)[-600:]]})
            print(f"  {w.group.name}: {type(exc).__name__}: {exc}", flush=True)
        print(f"  {json.dumps(record['kernels'][-1], default=str)[:400]}", flush=True)

    torch.manual_seed(0)
    forward = time_forward(*build(device), record, target, device, smoke)
    record["forward_ms"] = {k: t.median_ms for k, t in forward.items()}
    record["forward_spread"] = {k: round(t.spread, 4) for k, t in forward.items()}
    record["timing_method"] = forward["eager"].method
    record["wall_s"] = round(time.monotonic() - t0, 1)
    if device == "cuda":
        torch.cuda.empty_cache()
    return record


def time_forward(model, args, kwargs, record: dict, target, device: str, smoke: bool) -> dict[str, Timing]:
    """Eager, torch.compile, with library kernels, and both; the patched output against eager."""
    trials = 3 if smoke else 20
    forward: dict[str, Timing] = {}

    def run():
        return model(*args, **kwargs)

    def timed_compile(label: str) -> None:
        compiled = torch.compile(model)
        compiled(*args, **kwargs)
        forward[label] = measure(lambda: compiled(*args, **kwargs), device, trials)
        torch._dynamo.reset()

    with torch.no_grad():
        reference = first_tensor(run()).float()
        forward["eager"] = measure(run, device, trials)
        if not smoke:
            timed_compile("torch.compile")
        report = patch_model(model, target.name)
        record["patched"] = [f"{p}: {what} -> {', '.join(ops)}" for p, what, ops in report.patched]
        before = {k: (c.kernel, c.fallback) for k, c in library_runtime.all_counts().items()}
        out = first_tensor(run()).float()
        record["dispatch_per_forward"] = {
            k: {"kernel": c.kernel - before.get(k, (0, 0))[0], "fallback": c.fallback - before.get(k, (0, 0))[1]}
            for k, c in library_runtime.all_counts().items() if (c.kernel, c.fallback) != before.get(k, (0, 0))}
        diff = (out - reference).abs()
        record["output_vs_eager"] = {"max_abs": float(diff.max()),
                                     "rel_l2": float(diff.norm() / reference.norm().clamp_min(1e-30))}
        if report.patched:
            forward["library"] = measure(run, device, trials)
            if not smoke:
                try:
                    timed_compile("torch.compile + library")
                except Exception as exc:
                    record["compile_library_error"] = f"{type(exc).__name__}: {exc}"[:300]
        report.undo()
    return forward


def markdown(results: dict) -> str:
    lines = [f"# Models with library kernels: {results['device']}", "",
             f"torch {results['torch']}, triton {results['triton']}, transformers {results['transformers']}; "
             f"kernels from: {results['kernel_source']}. Command: `python3 bench/model_gpu.py`.", ""]
    for m in results["models"]:
        lines += [f"## {m['model']}", "", f"Shape: {json.dumps(m['shape'])}", "",
                  "| forward | median ms | vs eager |", "|---|---|---|"]
        eager = m["forward_ms"].get("eager")
        for k, v in m["forward_ms"].items():
            lines.append(f"| {k} | {v:.3f} | {eager / v:.2f}x |")
        lines += ["", f"Output with library kernels vs eager: max abs {m['output_vs_eager']['max_abs']:.3g}, "
                      f"relative L2 {m['output_vs_eager']['rel_l2']:.3g}. Timing: {m['timing_method']}.", "",
                  "| spec | source | candidates (correct) | best ms | eager ms | compile ms | speedup | registered |",
                  "|---|---|---|---|---|---|---|---|"]
        for k in m["kernels"]:
            fmt = lambda x: f"{x:.4f}" if isinstance(x, float) else "-"  # noqa: E731
            lines.append(f"| {k['spec']} | {k.get('source') or '-'} | {k.get('candidates', 0)} ({k.get('correct', 0)}) "
                         f"| {fmt(k.get('best_ms'))} | {fmt(k.get('eager_ms'))} | {fmt(k.get('compile_ms'))} "
                         f"| {fmt(k.get('speedup'))} | {k.get('registered') or '-'} |")
        lines += ["", "Dispatch per forward: " + (", ".join(f"{op}: {c['kernel']} kernel / {c['fallback']} fallback"
                                                           for op, c in m["dispatch_per_forward"].items()) or "none"),
                  "", "Top operator groups by estimated time:", "",
                  "| group | calls | share | est ms | fused floor ms |", "|---|---|---|---|---|"]
        lines += [f"| {g['name']} | {g['calls']} | {g['share']:.1%} | {g['estimated_ms']:.3f} | "
                  f"{g['fused_floor_ms']:.3f} |" for g in m["top_groups"]]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (interpreter): the path only")
    parser.add_argument("--only", choices=("llama", "rec"), help="one model only")
    parser.add_argument("--out", help="results folder (default $OUT, else bench/results; a temporary one for --smoke)")
    args = parser.parse_args()
    args.out = args.out or (tempfile.mkdtemp(prefix="model-gpu-smoke-") if args.smoke
                            else os.environ.get("OUT", str(REPO / "bench" / "results")))
    import transformers
    import triton

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke to check the path on the CPU", file=sys.stderr)
        return 2
    target = detect_target()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"device": device_name() or "cpu (Triton interpreter)", "target": target.name,
               "torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__,
               "kernel_source": "offline synthesizer" if offline_synthesizer() else "hand-written fixture kernels",
               "smoke": args.smoke, "models": []}
    work = Path(tempfile.mkdtemp(prefix="kevolve-model-specs-"))
    for name, builder in (("llama-decoder-4096", llama_builder), ("dlrm-style-rec", rec_builder)):
        if args.only and not name.startswith(args.only.replace("rec", "dlrm")):
            continue
        print(f"{name} ...", flush=True)
        results["models"].append(run_model(name, builder, args.smoke, target, device, work))
        (out / "model_gpu.json").write_text(json.dumps(results, indent=2, default=str))  # kept as it goes
    (out / "model_gpu.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
