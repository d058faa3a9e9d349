"""bias_gelu_residual (16384 x 4096, bf16) on the GPU: is its kernel held back by erf's arithmetic?

The spec moves the same bytes per element as swiglu (two bf16 reads, one write) yet reaches 88%
of a copy of its bytes where swiglu reaches 99-103%. Here the template's flat kernel (B2048,
4 warps, unmasked, the bias at offs % N) is timed with gelu's erf computed several ways, and with
no gelu at all (the bytes alone), against torch.compile max-autotune and a copy of the same bytes.
Each variant's output is checked against a float64 reference: the largest error, and how many of
its bf16 outputs differ from those of the tl.erf kernel. Times are kernel medians from the
profiler (bench/offline_gpu.py's kernel_times: medians of 20 calls, L2 flushed before each),
five rounds.

    python3 bench/gelu_probe.py
"""
import os
import statistics
import sys

sys.path.insert(0, os.getcwd())

if not __import__("torch").cuda.is_available():
    sys.exit("gelu_probe: no CUDA device; run it on a GPU machine")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from bench.offline_gpu import kernel_times  # noqa: E402

M, N = 16384, 4096
BLOCK, WARPS = 2048, 4
g = torch.Generator(device="cuda").manual_seed(0)
x = (torch.randn(M, N, device="cuda", generator=g) * 2).bfloat16()
bias = torch.randn(N, device="cuda", generator=g).bfloat16()
res = torch.randn(M, N, device="cuda", generator=g).bfloat16()
exact = F.gelu(x.double() + bias.double()) + res.double()


def _template_erf():
    """The `erf` knob's polynomial as the template writes it (triton reads a kernel's source
    from a file, so the helper goes through one)."""
    import importlib.util
    import tempfile
    from pathlib import Path

    from kevolve.synth.offline.expr import POLY_ERF

    path = Path(tempfile.mkdtemp()) / "poly_erf.py"
    path.write_text("import triton\nimport triton.language as tl\n\n" + POLY_ERF)
    loaded = importlib.util.spec_from_file_location("poly_erf", path)
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module._erf


_erf_as = _template_erf()


@triton.jit
def _gelu_tanh_approx(v):
    # the tanh form with the hardware's approximate tanh: not gelu's erf, a lower bound on time
    u = 0.7978845608028654 * (v + 0.044715 * v * v * v)
    t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True, pack=1)
    return 0.5 * v * (1.0 + t)


@triton.jit
def flat(x_ptr, b_ptr, r_ptr, o_ptr, N: tl.constexpr, BLOCK: tl.constexpr, HOW: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    xv = tl.load(x_ptr + offs, eviction_policy="evict_first").to(tl.float32)
    bv = tl.load(b_ptr + offs % N, eviction_policy="evict_last").to(tl.float32)
    rv = tl.load(r_ptr + offs, eviction_policy="evict_first").to(tl.float32)
    v = xv + bv
    if HOW == "erf":
        v = 0.5 * v * (1.0 + tl.erf(v * 0.7071067811865476))
    elif HOW == "erf_as":
        v = 0.5 * v * (1.0 + _erf_as(v * 0.7071067811865476))
    elif HOW == "tanh_approx":
        v = _gelu_tanh_approx(v)
    tl.store(o_ptr + offs, (v + rv).to(o_ptr.dtype.element_ty))


def kernel_us(fn, rounds=5):
    """Device time of fn's kernels per call, L2 flushed before each call: the median, least and
    most of `rounds` rounds."""
    sums = [sum(kernel_times(fn, flush_bytes=256 << 20).values()) for _ in range(rounds)]
    return statistics.median(sums), min(sums), max(sums)


def main():
    out = torch.empty_like(x)
    grid = (M * N // BLOCK,)
    variants = {how: (lambda how=how: flat[grid](x, bias, res, out, N=N, BLOCK=BLOCK, HOW=how, num_warps=WARPS))
                for how in ("erf", "erf_as", "tanh_approx", "none")}
    outputs = {}
    for how, fn in variants.items():
        fn()
        outputs[how] = out.clone()
    compiled = torch.compile(lambda a, b, r: F.gelu(a + b) + r, mode="max-autotune-no-cudagraphs", dynamic=False)
    compiled(x, bias, res)
    src = torch.empty(3 * M * N // 4, dtype=torch.float32, device="cuda")  # 6 bytes an element, half each way
    dst = torch.empty_like(src)
    timed = dict(variants)
    timed["inductor max-autotune"] = lambda: compiled(x, bias, res)
    timed["copy of the same bytes"] = lambda: dst.copy_(src)
    nbytes = 3 * M * N * 2
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"{M}x{N} bf16, flat kernel BLOCK={BLOCK} num_warps={WARPS}; kernel us, median of 5 rounds (min-max)")
    for name, fn in timed.items():
        med, lo, hi = kernel_us(fn)
        line = f"{name:24s} {med:7.1f} us  {nbytes / med / 1e3:6.0f} GB/s  ({lo:.1f}-{hi:.1f})"
        if name in outputs:
            got = outputs[name].double()
            err = (got - exact).abs().max().item() if name != "none" else float("nan")
            differ = (outputs[name] != outputs["erf"]).float().mean().item()
            line += f"  max |err| {err:.4f}, {100 * differ:.3f}% of outputs differ from erf's"
        print(line, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/inductor-gelu-probe")
    main()
