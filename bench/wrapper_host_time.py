"""Host time of each example spec's generated wrapper: the Python around the kernel launch (shape
and stride bookkeeping, index-width checks, the output's allocation), per call, with every Triton
kernel replaced by a no-op so neither a device nor Triton's launcher is timed. On a GPU this time,
plus Triton's launcher, is what torch.compile's own launch path competes with when do_bench's
cache flush no longer hides it (rmsnorm on an H200: kernels 65.0 us against 65.2, do_bench 0.0874
ms against 0.0769). Host time only, never a kernel speed; inputs at the spec's interpreter shapes,
so allocation stays small. The configs are each family's first GPU seed for an H200.

    python3 bench/wrapper_host_time.py [SPEC ...]
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())
import torch  # noqa: E402
import triton  # noqa: E402

from bench.rendered import entry_point  # noqa: E402
from kevolve.errors import SpecError  # noqa: E402
from kevolve.hardware.target import load_target  # noqa: E402
from kevolve.specs import resolve_spec  # noqa: E402
from kevolve.specs.runtime import OperatorRuntime  # noqa: E402
from kevolve.synth.offline import match_family, render, template_for  # noqa: E402

SPECS = ("clamp_log1p", "bias_gelu_residual", "rotary_embedding", "rmsnorm", "layernorm", "softmax",
         "cross_entropy", "matmul_bias_relu", "embedding_bag_sum", "bucketize")


class NoLaunch:
    """Stands for a @triton.jit kernel: `kernel[grid](...)` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def host_us(spec, calls: int = 2000, rounds: int = 5) -> float:
    found = match_family(spec)
    config = template_for(found.family).seeds(found.match, spec, load_target("h200"))[0]
    fn = entry_point(render(spec, found.family, config), spec.entry_point)
    module = fn.__globals__
    for key, value in list(module.items()):
        if isinstance(value, triton.JITFunction):
            module[key] = NoLaunch()
    runtime = OperatorRuntime(spec)
    inputs = runtime.inputs(spec.shapes_for(True)[0], seed=0, device="cpu")
    for _ in range(200):
        fn(*inputs)
    per_round = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn(*inputs)
        per_round.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(per_round)


def main() -> None:
    names = sys.argv[1:] or SPECS
    try:
        specs = [resolve_spec(name) for name in names]
    except SpecError as exc:
        sys.exit(f"{exc}; name example specs from specs/, e.g. {' '.join(SPECS[:3])}")
    print(f"# Wrapper host time\n\n{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, torch {torch.__version__}, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; command: `python3 bench/wrapper_host_time.py`. "
          "Median of 5 rounds of 2000 calls, kernels not launched.\n\n| spec | host us per call |\n|---|---|")
    for spec in specs:
        print(f"| {spec.name} | {host_us(spec):.1f} |")


if __name__ == "__main__":
    main()
