"""The `unmasked` knob on the GPU, kernel against kernel: each spec's best config from an offline
run (bench/results/offline_gpu_h200.json), rendered with and without bounds masks, against
torch.compile's kernels (default mode, which compiles in seconds; the offline run has
max-autotune's). Profiler device time per call, summed over the call's kernels, medians of 50
calls, so the launch paths do not count; each variant is checked against float64 first.

    python3 bench/unmasked_probe.py [SPEC ...]
"""
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench.rendered import entry_point  # noqa: E402
from kevolve.specs import resolve_spec  # noqa: E402
from kevolve.specs.compare import compare  # noqa: E402
from kevolve.specs.model import Tolerance  # noqa: E402
from kevolve.specs.runtime import OperatorRuntime, as_outputs, clone_all  # noqa: E402
from kevolve.synth.offline import render  # noqa: E402
from kevolve.synth.offline.template import vendor_math  # noqa: E402

RUN = Path("bench/results/offline_gpu_h200.json")
DEFAULT = ["bias_gelu_residual", "clamp_log1p", "rotary_embedding", "rmsnorm", "layernorm", "swiglu", "gelu_tanh"]


def call_us(fn, calls: int = 50) -> float:
    """Median over calls of the summed device time of one call's kernels."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    events = [e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    per_call = len(events) // calls
    return statistics.median(sum(events[i:i + per_call]) for i in range(0, per_call * calls, per_call))


def probe(name: str, best: dict, target) -> list[str]:
    spec = resolve_spec(name)
    runtime = OperatorRuntime(spec)
    dims = spec.shapes_for(False)[0]
    xs = runtime.inputs(dims, seed=0, device="cuda")
    exact = as_outputs(runtime.reference(dims, "cuda", float64=True)(*clone_all(xs)))[0]
    ref = runtime.reference(dims, "cuda")
    tol = spec.tolerance or Tolerance.for_dtype(str(exact.dtype).removeprefix("torch."))
    rows = []
    for unmasked in (False, True):
        config = dict(best["best_config"], unmasked=unmasked, **vendor_math(target))
        fn = entry_point(render(spec, best["family"], config), spec.entry_point)
        verdict = compare(as_outputs(fn(*clone_all(xs)))[0], exact, tol)
        rows.append((call_us(lambda: fn(*xs)), f"best config, unmasked={unmasked}", verdict.ok))
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: ref(*a), dynamic=False)
    compiled(*xs)
    rows.append((call_us(lambda: compiled(*xs)), "torch.compile default", True))
    lines = [f"\n## {name}\n", f"best config: {best['best_config']}\n", "| kernel | us | correct |", "|---|---|---|"]
    lines += [f"| {label} | {us:.1f} | {'yes' if ok else 'NO'} |" for us, label, ok in sorted(rows)]
    return lines


def main() -> None:
    import triton

    from kevolve.hardware.detect import detect_target

    names = sys.argv[1:] or DEFAULT
    run = {r["spec"]: r for r in json.loads(RUN.read_text())["specs"]}
    target = detect_target()
    print(f"# Bounds masks on or off: probe\n\n{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; command: "
          f"`python3 bench/unmasked_probe.py {' '.join(sys.argv[1:])}`".rstrip() + " (stdout). Best configs from "
          f"{RUN}. Profiler device time per call, summed over its kernels, medians of 50 calls.")
    for name in names:
        print("\n".join(probe(name, run[name], target)), flush=True)


if __name__ == "__main__":
    main()
