"""Bucketize family: the bucket of each value against sorted boundaries (torch.bucketize).

Each program takes BLOCK values. `binary`: a branch-free binary search of ceil(log2(K+1))
steps, each a gather from the boundaries (which stay in L1/L2). `linear`: count the boundaries
below each value, BLOCK_K boundaries at a time; fewer dependent loads, more compares, which
pays for short boundary lists. `split`: count the value's place among SPLITS - 1 evenly spaced
boundaries, loaded once per program and compared in registers, then a binary search inside the
piece; it trades the first, least parallel gathers (each a round of L1 accesses per warp, the
limit on an H100) for compares.
"""

from __future__ import annotations

from dataclasses import dataclass

from kevolve.hardware.target import HardwareTarget
from kevolve.specs.model import OperatorSpec
from kevolve.synth.offline.expr import Unsupported
from kevolve.synth.offline.module import Entry, launch, module_source, torch_dtype
from kevolve.synth.offline.template import (BLOCK, EVICT, NUM_STAGES, NUM_WARPS, Config, Knob, Match, Template,
                                            next_pow2, pow2, sizes_at, tuned_dims, warps_for)
from kevolve.synth.offline.trace import Graph, trace

SEARCH = Knob("search", ("binary", "linear", "split"),
              "binary search by gathers, a count over boundary chunks, or a count over SPLITS evenly spaced "
              "boundaries followed by a binary search inside the piece it picks")
SPLITS = Knob("SPLITS", pow2(4, 64), "pieces the split search first cuts the boundaries into")
BLOCK_K = Knob("BLOCK_K", pow2(8, 256), "boundaries compared at once by the linear search")


@dataclass(frozen=True)
class BucketizeDetail:
    values: str
    boundaries: str
    right: bool
    output: str


class BucketizeTemplate(Template):
    families = ("bucketize",)
    knobs = (BLOCK, SEARCH, BLOCK_K, SPLITS, NUM_WARPS, NUM_STAGES, EVICT)

    def match(self, graph: Graph, spec: OperatorSpec) -> Match | None:
        nodes = [n for n in graph.nodes if n.op in ("bucketize", "searchsorted")]
        if not nodes:
            return None
        node = nodes[0]
        if len(graph.outputs) != 1 or graph.outputs[0] != node.name:
            raise Unsupported("a bucketize followed by other operations")
        if node.op == "searchsorted":  # searchsorted(sorted_sequence, values)
            bounds, values = (graph.node(a.name) for a in node.args[:2])
            right = bool(node.kwargs.get("right", False)) or node.kwargs.get("side") == "right"
            if node.kwargs.get("sorter") is not None:
                raise Unsupported("searchsorted with a sorter")
        else:
            values, bounds = (graph.node(a.name) for a in node.args[:2])
            right = bool(node.kwargs.get("right", node.args[3] if len(node.args) > 3 else False))
        if values.op != "input" or bounds.op != "input" or len(bounds.shape) != 1:
            raise Unsupported("bucketize of computed tensors, or against boundaries that are not 1-d")
        detail = BucketizeDetail(values.name, bounds.name, right, node.name)
        return Match("bucketize", f"bucketize of {values.dtype} values against sorted 1-d boundaries "
                     f"(right={right})", detail)

    def seeds(self, match: Match, spec: OperatorSpec, target: HardwareTarget) -> list[dict]:
        d: BucketizeDetail = match.detail
        graph = trace(spec)
        k = sizes_at(graph, spec, graph.node(d.boundaries).shape, tuned_dims(spec, target))[0]
        base = {"BLOCK": 1024, "search": "binary", "BLOCK_K": 32, "SPLITS": 16, "num_warps": warps_for(1024, target, 4),
                "num_stages": 1, "evict": "stream"}
        seeds = [base, dict(base, search="split"), dict(base, search="split", SPLITS=32, BLOCK=2048,
                                                        num_warps=warps_for(2048, target, 4)),
                 dict(base, BLOCK=2048, num_warps=warps_for(2048, target, 4)),
                 dict(base, search="linear", BLOCK=256, BLOCK_K=min(64, max(8, next_pow2(k))), num_warps=warps_for(256, target, 2))]
        if k <= 32:
            seeds.insert(0, seeds.pop())
        if target.interpreter:
            for s in seeds:
                s["num_warps"] = 1
        return seeds

    def inert(self, config: Config) -> set[str]:
        return {"binary": {"BLOCK_K", "SPLITS"}, "linear": {"SPLITS"}, "split": {"BLOCK_K"}}[config["search"]]

    def check(self, config: Config, match: Match, target: HardwareTarget, spec: OperatorSpec) -> str | None:
        if config["search"] == "linear" and config["BLOCK"] * config["BLOCK_K"] > 32768:
            return "a linear search tile of more than 32768 compares spills"
        return super().check(config, match, target, spec)

    def render(self, spec: OperatorSpec, match: Match, config: Config) -> str:
        d: BucketizeDetail = match.detail
        graph = trace(spec)
        entry = Entry.of(spec, graph)
        cmp = "<=" if d.right else "<"
        ev = ', eviction_policy="evict_first"' if config["evict"] == "stream" else ""
        halving = f'''    for _ in range(STEPS):
        mid = (lo + hi) // 2
        active = lo < hi
        b = tl.load(b_ptr + mid, mask=active & mask, other=0.0)
        below = b {cmp} x  # the boundary is below the value: the bucket is past mid
        lo = tl.where(active & below, mid + 1, lo)
        hi = tl.where(active & (below == 0), mid, hi)
    result = lo'''
        if config["search"] == "binary":
            search = '''    lo = tl.zeros([BLOCK], tl.int32)
    hi = tl.zeros([BLOCK], tl.int32) + K
''' + halving
        elif config["search"] == "split":
            # The top of the search without gathers: every value compares against the same
            # SPLITS - 1 boundaries, loaded once per program; the gathers that remain are fewer.
            search = f'''    count = tl.zeros([BLOCK], tl.int32)
    for j in tl.static_range(1, SPLITS):
        count += (tl.load(b_ptr + (j * K) // SPLITS) {cmp} x).to(tl.int32)
    lo = tl.where(count > 0, (count * K) // SPLITS + 1, 0)
    hi = tl.where(count < SPLITS - 1, ((count + 1) * K) // SPLITS, K)
''' + halving
        else:
            search = f'''    result = tl.zeros([BLOCK], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        b = tl.load(b_ptr + ks, mask=ks < K, other=0.0)
        below = (b[None, :] {cmp} x[:, None]) & (ks < K)[None, :]
        result += tl.sum(below.to(tl.int32), axis=1)'''
        kernel = f'''@triton.jit
def _bucketize_kernel(x_ptr, b_ptr, out_ptr, N, K, STEPS,
                      BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, SPLITS: tl.constexpr, IDX64: tl.constexpr):
    pid = tl.program_id(0)
    if IDX64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + offs, mask=mask, other=0.0{ev})
{search}
    tl.store(out_ptr + offs, result.to(out_ptr.dtype.element_ty), mask=mask)
'''
        x, b = entry.var(d.values), entry.var(d.boundaries)
        out_dtype = torch_dtype(graph.node(d.output).dtype)
        lines = [f"{x} = {x}.contiguous()", f"{b} = {b}.contiguous()",
                 f"_out = torch.empty({x}.shape, dtype={out_dtype}, device={x}.device)",
                 f"_n, _k = {x}.numel(), {b}.numel()",
                 "if _n == 0:\n    return _out",
                 # ceil(log2(n + 1)) halvings empty a range of n: [0, K], or the widest split piece
                 (f"_steps = max(1, (-(-_k // {config['SPLITS']})).bit_length())" if config["search"] == "split"
                  else "_steps = max(1, _k.bit_length())"),
                 f"_grid = (triton.cdiv(_n, {config['BLOCK']}),)"]
        lines += launch("_bucketize_kernel", "_grid", [x, b, "_out", "_n", "_k", "_steps"],
                        {"BLOCK": config["BLOCK"], "BLOCK_K": config["BLOCK_K"], "SPLITS": config["SPLITS"],
                         "IDX64": "_n >= 2 ** 31"},
                        config["num_warps"], config["num_stages"])
        lines.append("return _out")
        return module_source(spec, entry, "bucketize", config, [kernel], lines)
