"""bias_gelu_residual (16384 x 4096, bf16) on the GPU, by hand: the pointwise template's kernel
(rows x columns tile, as it rendered before the flat walk) in several configs, against hand-written
variants (the output walked flat with the bias read at offs % N, N a compile-time constant; a 2-d
tile of several rows sharing one bias load; each with and without masks), torch.compile default and
max-autotune (without CUDA graphs), and a copy of the same bytes. Medians of five rounds of
triton.testing.do_bench, each variant checked against a float64 reference first.

This sweep is what set the template's flat walk and its first seed (two 16-byte vectors a thread).
It renders the template as it is now, so rerun it at the commit that quotes it (see RESULTS.md)
to see the figures as they were (the template rows below were rendered at e3a32cf).

    python3 bench/bias_gelu_sweep.py
"""
import os
import statistics
import sys

sys.path.insert(0, os.getcwd())
import torch, torch.nn.functional as F, triton, triton.language as tl  # noqa: E401,E402
from triton.testing import do_bench  # noqa: E402

from bench.rendered import entry_point  # noqa: E402
from kevolve.specs import resolve_spec  # noqa: E402
from kevolve.synth.offline.families import render  # noqa: E402

M, N = 16384, 4096
g = torch.Generator(device="cuda").manual_seed(0)
x = (torch.randn(M, N, device="cuda", generator=g) * 2).bfloat16()
bias = torch.randn(N, device="cuda", generator=g).bfloat16()
res = torch.randn(M, N, device="cuda", generator=g).bfloat16()
ref = (F.gelu(x.double() + bias.double()) + res.double())


def ref_fn(x, b, r):
    return F.gelu(x + b) + r


spec = resolve_spec("bias_gelu_residual")
fns = {}
for block, warps, evict, stages in [(4096, 8, "stream", 1), (4096, 8, "none", 1), (2048, 8, "stream", 1),
                                    (2048, 4, "stream", 1), (1024, 4, "stream", 1), (8192, 16, "stream", 1),
                                    (4096, 4, "stream", 1)]:
    cfg = {"BLOCK": block, "num_warps": warps, "num_stages": stages, "persistent": False, "programs_per_sm": 4,
           "evict": evict, "sm_count": 132}
    fns[f"template B{block} w{warps} {evict}"] = entry_point(render(spec, "pointwise", cfg), "bias_gelu_residual")


@triton.jit
def flat_mod(x_ptr, b_ptr, r_ptr, o_ptr, n, N: tl.constexpr, BLOCK: tl.constexpr, MASK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if MASK:
        mask = offs < n
    else:
        mask = None
    xv = tl.load(x_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
    bv = tl.load(b_ptr + offs % N, mask=mask, eviction_policy="evict_last").to(tl.float32)
    rv = tl.load(r_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
    v = xv + bv
    v = 0.5 * v * (1.0 + tl.erf(v * 0.7071067811865476))
    tl.store(o_ptr + offs, (v + rv).to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def tile2d(x_ptr, b_ptr, r_ptr, o_ptr, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, MASK: tl.constexpr):
    n_cb = tl.cdiv(C, BLOCK_C)
    pid = tl.program_id(0)
    rows = (pid // n_cb) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (pid % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs = rows[:, None] * C + cols[None, :]
    if MASK:
        mask = (rows[:, None] < R) & (cols[None, :] < C)
        bmask = cols < C
    else:
        mask = None
        bmask = None
    bv = tl.load(b_ptr + cols, mask=bmask, eviction_policy="evict_last").to(tl.float32)
    xv = tl.load(x_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
    rv = tl.load(r_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
    v = xv + bv[None, :]
    v = 0.5 * v * (1.0 + tl.erf(v * 0.7071067811865476))
    tl.store(o_ptr + offs, (v + rv).to(o_ptr.dtype.element_ty), mask=mask)


def flat(block, warps, mask):
    def f(x, b, r):
        o = torch.empty_like(x)
        n = x.numel()
        flat_mod[(triton.cdiv(n, block),)](x, b, r, o, n, N=x.shape[1], BLOCK=block, MASK=mask, num_warps=warps)
        return o
    return f


def t2d(br, bc, warps, mask):
    def f(x, b, r):
        o = torch.empty_like(x)
        R, C = x.shape
        tile2d[(triton.cdiv(R, br) * triton.cdiv(C, bc),)](x, b, r, o, R, C, BLOCK_R=br, BLOCK_C=bc, MASK=mask,
                                                          num_warps=warps)
        return o
    return f


for block, warps in [(1024, 4), (2048, 4), (2048, 8), (4096, 8)]:
    for mask in (True, False):
        fns[f"flat%N B{block} w{warps} mask={mask}"] = flat(block, warps, mask)
for br, bc, warps in [(1, 4096, 8), (2, 2048, 8), (4, 1024, 8), (4, 1024, 4), (8, 512, 8), (2, 1024, 4), (8, 1024, 8)]:
    for mask in (True, False):
        fns[f"2d {br}x{bc} w{warps} mask={mask}"] = t2d(br, bc, warps, mask)

fns["inductor default"] = torch.compile(ref_fn)
fns["inductor max-autotune"] = torch.compile(ref_fn, mode="max-autotune-no-cudagraphs")
copy_src = torch.empty(M * N * 3 // 2, device="cuda", dtype=torch.bfloat16)
copy_dst = torch.empty_like(copy_src)
fns["copy of same bytes"] = lambda x, b, r: copy_dst.copy_(copy_src)

bad = []
for name, f in fns.items():
    out = f(x, bias, res)
    if name.startswith("copy"):
        continue
    err = (out.double() - ref).abs().max().item()
    if err > 0.1:
        bad.append((name, err))
print("wrong:", bad)
times = {k: [] for k in fns}
for rep in range(5):
    for name, f in fns.items():
        times[name].append(do_bench(lambda: f(x, bias, res), warmup=25, rep=150))
med = {k: statistics.median(v) for k, v in times.items()}
copy = med["copy of same bytes"]
for k, v in sorted(med.items(), key=lambda kv: kv[1]):
    print(f"{k:40s} {v*1e3:8.1f} us  {copy / v:6.1%} of copy  spread {min(times[k])*1e3:.1f}-{max(times[k])*1e3:.1f}")
