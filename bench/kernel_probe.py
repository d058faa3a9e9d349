"""Configs of one spec on the GPU, kernel against kernel: the spec's best config from an offline
run (bench/results/offline_gpu_h200.json, or --run) with each override applied, against torch.compile's
kernels (default, and max-autotune with --max-autotune). Profiler device time per call, summed
over the call's kernels, medians of 50 calls, so the launch paths do not count; each variant is
checked against the float64 reference first, as the search checks it.

    python3 bench/kernel_probe.py SPEC ['{"knob": value, ...}' ...] [--max-autotune] [--run JSON]
"""
import argparse
import json
import os
import shlex
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


def knob_override(text: str) -> dict:
    """An override from the command line: a JSON object of knobs."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object of knobs, e.g. '{{\"num_warps\": 8}}'")
    return value


def main() -> None:
    import triton

    from kevolve.hardware.detect import detect_target

    p = argparse.ArgumentParser()
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*", type=knob_override, help="JSON objects of knobs to set on the best config")
    p.add_argument("--max-autotune", action="store_true")
    p.add_argument("--run", type=Path, default=RUN, help="the offline run whose best config is the base")
    args = p.parse_intermixed_args()
    if not args.run.is_file():
        sys.exit(f"no offline run at {args.run}; make one with bench/offline_gpu.py or name one with --run")
    runs = {r["spec"]: r for r in json.loads(args.run.read_text())["specs"] if r.get("best_config")}
    if args.spec not in runs:
        sys.exit(f"{args.run} has no best config for {args.spec}; it has: {', '.join(runs)}")
    best = runs[args.spec]
    spec = resolve_spec(args.spec)
    runtime = OperatorRuntime(spec)
    dims = spec.shapes_for(False)[0]
    xs = runtime.inputs(dims, seed=0, device="cuda")
    ref = runtime.reference(dims, "cuda")
    native = as_outputs(ref(*clone_all(xs)))[0]
    exact = as_outputs(runtime.reference(dims, "cuda", float64=True)(*clone_all(xs)))[0]
    tol = spec.tolerance or Tolerance.for_dtype(str(native.dtype).removeprefix("torch."))
    rows = []
    math = vendor_math(detect_target())  # runs recorded before the libdevice entry lack it
    for override in [{}] + args.overrides:
        config = {**best["best_config"], **math, **override}
        fn = entry_point(render(spec, best["family"], config), spec.entry_point)
        ok = compare(as_outputs(fn(*clone_all(xs)))[0], exact, tol).ok
        rows.append((call_us(lambda: fn(*xs)), f"best {json.dumps(override)}" if override else "best", ok))
    for mode in ["default"] + (["max-autotune-no-cudagraphs"] if args.max_autotune else []):
        torch._dynamo.reset()
        compiled = torch.compile(lambda *a: ref(*a), dynamic=False, mode=mode)
        compiled(*xs)
        rows.append((call_us(lambda: compiled(*xs)), f"torch.compile {mode}", True))
    command = "python3 bench/kernel_probe.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"\n## {args.spec}\n\n{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}, triton {triton.__version__}; best config from {args.run}: {best['best_config']}; command: `{command}`\n\n"
          "| kernel | us per call | correct |\n|---|---|---|")
    for us, label, ok in sorted(rows):
        print(f"| {label} | {us:.1f} | {'yes' if ok else 'NO'} |")


if __name__ == "__main__":
    main()
