"""rotary_embedding on the GPU, kernel against kernel: the rotary template's kernel as the offline
synthesizer renders it (reading x at offs and again at offs +- HALF through two masked loads),
with each eviction mode, against kernels that take each row's two halves as a pair, so that every element of x is read
once and no select picks the partner: flat over the pairs, and over tiles of rows x half a row.
torch.compile's kernels beside them, and their source (to $OUT/inductor_*.py) for reading.
Profiler kernel times, device us per call, medians of 50 calls, measured in ROUNDS rounds that
take every kernel in turn (the table gives the median round and the range); each checked
against float64. With $OUT set, the kernels' PTX and TTGIR go to $OUT/rotary_kernels.tgz.

    python3 bench/rotary_probe.py
"""
import glob
import os
import statistics
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.getcwd())
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor_"))
os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="triton_"))
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from bench.kernel_probe import call_us  # noqa: E402
from bench.rendered import entry_point  # noqa: E402
from kevolve.specs import resolve_spec  # noqa: E402
from kevolve.specs.compare import compare  # noqa: E402
from kevolve.specs.runtime import OperatorRuntime, as_outputs, clone_all  # noqa: E402
from kevolve.synth.offline import render  # noqa: E402

ROUNDS = 5


@triton.jit
def _pairs_flat(x_ptr, cos_ptr, sin_ptr, out_ptr, NP, BLOCK: tl.constexpr, HALF: tl.constexpr,
                C: tl.constexpr, P: tl.constexpr):
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    lo = (p // HALF) * C + p % HALF
    hi = lo + HALF
    mask = p < NP
    x1 = tl.load(x_ptr + lo, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    x2 = tl.load(x_ptr + hi, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    c1 = tl.load(cos_ptr + lo % P, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    c2 = tl.load(cos_ptr + hi % P, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    s1 = tl.load(sin_ptr + lo % P, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    s2 = tl.load(sin_ptr + hi % P, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    tl.store(out_ptr + lo, (x1 * c1 - x2 * s1).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + hi, (x2 * c2 + x1 * s2).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pairs_rows(x_ptr, cos_ptr, sin_ptr, out_ptr, R, S, BLOCK_R: tl.constexpr, HALF: tl.constexpr,
                C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, HALF)
    mask = (rows < R)[:, None]
    lo = rows[:, None] * C + cols[None, :]
    t = (rows % S)[:, None] * C + cols[None, :]
    x1 = tl.load(x_ptr + lo, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    x2 = tl.load(x_ptr + lo + HALF, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    c1 = tl.load(cos_ptr + t, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    c2 = tl.load(cos_ptr + t + HALF, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    s1 = tl.load(sin_ptr + t, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    s2 = tl.load(sin_ptr + t + HALF, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    tl.store(out_ptr + lo, (x1 * c1 - x2 * s1).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + lo + HALF, (x2 * c2 + x1 * s2).to(out_ptr.dtype.element_ty), mask=mask)


def pairs_flat(block, warps):
    def run(x, cos, sin):
        out = torch.empty_like(x)
        half, n_pairs = x.shape[-1] // 2, x.numel() // 2
        _pairs_flat[(triton.cdiv(n_pairs, block),)](x, cos, sin, out, n_pairs, BLOCK=block, HALF=half,
                                                   C=x.shape[-1], P=cos.numel(), num_warps=warps)
        return out
    return run


def pairs_rows(block_r, warps):
    def run(x, cos, sin):
        out = torch.empty_like(x)
        rows = x.numel() // x.shape[-1]
        _pairs_rows[(triton.cdiv(rows, block_r),)](x, cos, sin, out, rows, cos.shape[0], BLOCK_R=block_r,
                                                   HALF=x.shape[-1] // 2, C=x.shape[-1], num_warps=warps)
        return out
    return run


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: bench/rotary_probe.py times kernels on a GPU; run it on the GPU machine")
    spec = resolve_spec("rotary_embedding")
    runtime = OperatorRuntime(spec)
    dims = spec.shapes_for(False)[0]
    xs = runtime.inputs(dims, seed=0, device="cuda")
    ref = runtime.reference(dims, "cuda")
    exact = as_outputs(runtime.reference(dims, "cuda", float64=True)(*clone_all(xs)))[0]
    fns = {}
    base = {"num_stages": 1, "persistent": False, "programs_per_sm": 4, "sm_count": 132, "libdevice": True}
    for block, warps, evict, unmasked in [(1024, 4, "stream", False), (1024, 4, "reuse", True),
                                          (2048, 4, "reuse", True), (2048, 4, "none", True)]:
        config = dict(base, BLOCK=block, num_warps=warps, evict=evict, unmasked=unmasked)
        fns[f"template B{block} w{warps} evict={evict} unmasked={unmasked}"] = entry_point(
            render(spec, "rotary", config), spec.entry_point)
    for block, warps in [(512, 4), (1024, 4), (1024, 8), (2048, 8)]:
        fns[f"pairs flat B{block} w{warps}"] = pairs_flat(block, warps)
    for block_r, warps in [(8, 2), (8, 4), (16, 4), (32, 8)]:
        fns[f"pairs rows {block_r}x64 w{warps}"] = pairs_rows(block_r, warps)
    for mode in ["default", "max-autotune-no-cudagraphs"]:
        torch._dynamo.reset()
        fns[f"torch.compile {mode}"] = torch.compile(lambda *a: ref(*a), dynamic=False, mode=mode)
    print(f"\n## rotary_embedding {dims}\n\n{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          "command: `python3 bench/rotary_probe.py`\n\n"
          "| kernel | us per call, median round (range) | correct |\n|---|---|---|")
    correct = {label: compare(as_outputs(fn(*clone_all(xs)))[0], exact, spec.tolerance).ok for label, fn in fns.items()}
    times = {label: [] for label in fns}
    for _ in range(ROUNDS):
        for label, fn in fns.items():
            times[label].append(call_us(lambda: fn(*xs)))
    for label in sorted(fns, key=lambda k: statistics.median(times[k])):
        t = times[label]
        ok = "yes" if correct[label] else "NO"
        print(f"| {label} | {statistics.median(t):.1f} ({min(t):.1f}-{max(t):.1f}) | {ok} |")
    out = os.environ.get("OUT")
    if out:
        with tarfile.open(os.path.join(out, "rotary_kernels.tgz"), "w:gz") as tar:
            for root in (os.environ["TORCHINDUCTOR_CACHE_DIR"], os.environ["TRITON_CACHE_DIR"]):
                for path in glob.glob(os.path.join(root, "**", "*"), recursive=True):
                    inductor_kernel = path.endswith(".py") and "triton_poi" in open(path).read()
                    if path.endswith((".ptx", ".ttgir")) or inductor_kernel:
                        tar.add(path, arcname=os.path.relpath(path, "/"))


if __name__ == "__main__":
    main()
