"""Bucketize family: the bucket of each value against sorted boundaries (torch.bucketize).

Each program takes BLOCK values. `binary`: a branch-free binary search of ceil(log2(K+1))
steps, each a gather from the boundaries (which stay in L1/L2). `linear`: count the boundaries
below each value, BLOCK_K boundaries at a time; fewer dependent loads, more compares, which
pays for short boundary lists. `split`: count the value's place among SPLITS - 1 evenly spaced
boundaries, loaded once per program and compared in registers, then a binary search inside the
piece; it trades the first, least parallel gathers (each a round of L1 accesses per warp, the
limit on an H100) for compares. `table`: a first small kernel cuts the boundaries' range into CELLS
equal cells and records, for each cell, the boundaries that fall in it; a value's cell is then
arithmetic, one gather gives its range of candidate boundaries, and a binary search of as many
steps as the widest range in the program finishes it: two or three gathers per value for
boundaries spread like the values, instead of log2(K).

Comparisons are negated (`not x <= b` for `b < x`) so that NaN counts past every boundary, as in
PyTorch.
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

SEARCH = Knob("search", ("binary", "linear", "split", "table"),
              "binary search by gathers, a count over boundary chunks, a count over SPLITS evenly spaced "
              "boundaries followed by a binary search inside the piece it picks, or a table of cells over "
              "the boundaries' range that narrows each value's search to the boundaries of its cell")
SPLITS = Knob("SPLITS", pow2(4, 64), "pieces the split search first cuts the boundaries into")
BLOCK_K = Knob("BLOCK_K", pow2(8, 256), "boundaries compared at once by the linear search")
CELLS = Knob("CELLS", pow2(64, 8192), "equal cells the table search cuts the boundaries' range into")
CELLS_PER_PROGRAM = 64  # cells one program of the table kernel fills
PACKED_K = 1 << 16  # below this a cell's first and last boundary share one int32 entry


@dataclass(frozen=True)
class BucketizeDetail:
    values: str
    boundaries: str
    right: bool
    output: str


class BucketizeTemplate(Template):
    families = ("bucketize",)
    knobs = (BLOCK, SEARCH, BLOCK_K, SPLITS, CELLS, NUM_WARPS, NUM_STAGES, EVICT)

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
        base = {"BLOCK": 1024, "search": "binary", "BLOCK_K": 32, "SPLITS": 16, "CELLS": 1024,
                "num_warps": warps_for(1024, target, 4), "num_stages": 1, "evict": "stream"}
        # sixteen cells per boundary: most hold one boundary or none (77% of copy
        # bandwidth on an H200 at 256 boundaries, against 49% for the best split search)
        table = dict(base, search="table", CELLS=max(64, min(8192, next_pow2(16 * k))), BLOCK=512,
                     num_warps=warps_for(512, target, 8))
        seeds = [table, base, dict(base, search="split"), dict(base, search="split", SPLITS=32, BLOCK=2048,
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
        return {"binary": {"BLOCK_K", "SPLITS", "CELLS"}, "linear": {"SPLITS", "CELLS"},
                "split": {"BLOCK_K", "CELLS"}, "table": {"BLOCK_K", "SPLITS"}}[config["search"]]

    def check(self, config: Config, match: Match, target: HardwareTarget, spec: OperatorSpec) -> str | None:
        if config["search"] == "linear" and config["BLOCK"] * config["BLOCK_K"] > 32768:
            return "a linear search tile of more than 32768 compares spills"
        return super().check(config, match, target, spec)

    def render(self, spec: OperatorSpec, match: Match, config: Config) -> str:
        d: BucketizeDetail = match.detail
        graph = trace(spec)
        entry = Entry.of(spec, graph)
        # `below` counts a boundary under the value; negated so that NaN is past every boundary
        ncmp = "<" if d.right else "<="
        ev = ', eviction_policy="evict_first"' if config["evict"] == "stream" else ""
        search = _SEARCHES[config["search"]].format(ncmp=ncmp)
        kernel = f'''@triton.jit
def _bucketize_kernel(x_ptr, b_ptr, cells_ptr, scale_ptr, out_ptr, N, K, STEPS,
                      BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, SPLITS: tl.constexpr, CELLS: tl.constexpr,
                      PACKED: tl.constexpr, IDX64: tl.constexpr):
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
        kernels = [kernel]
        x, b = entry.var(d.values), entry.var(d.boundaries)
        out_dtype = torch_dtype(graph.node(d.output).dtype)
        lines = [f"{x} = {x}.contiguous()", f"{b} = {b}.contiguous()",
                 f"_out = torch.empty({x}.shape, dtype={out_dtype}, device={x}.device)",
                 f"_n, _k = {x}.numel(), {b}.numel()",
                 "if _n == 0:\n    return _out",
                 "if _k == 0:\n    return _out.zero_()",
                 # ceil(log2(n + 1)) halvings empty a range of n: [0, K], or the widest split piece
                 (f"_steps = max(1, (-(-_k // {config['SPLITS']})).bit_length())" if config["search"] == "split"
                  else "_steps = max(1, _k.bit_length())"),
                 f"_grid = (_cdiv(_n, {config['BLOCK']}),)"]
        cells, scale = f"{b}", f"{b}"  # unused by the searches without a table
        if config["search"] == "table":
            kernels.append(_TABLE_KERNEL)
            cells, scale = "_cells", "_scale"
            lines += [f"_packed = _k < {PACKED_K}",
                      f"_cells = torch.empty([{config['CELLS']} * (1 if _packed else 2)], dtype=torch.int32, "
                      f"device={x}.device)",
                      f"_scale = torch.empty([1], dtype=torch.float32, device={x}.device)"]
            lines += launch("_bucketize_cells", f"({config['CELLS']} // {CELLS_PER_PROGRAM},)",
                            [b, "_cells", "_scale", "_k", "_steps"],
                            {"CELLS": config["CELLS"], "BLOCK_C": CELLS_PER_PROGRAM, "PACKED": "_packed"}, 2, 1)
        lines += launch("_bucketize_kernel", "_grid", [x, b, cells, scale, "_out", "_n", "_k", "_steps"],
                        {"BLOCK": config["BLOCK"], "BLOCK_K": config["BLOCK_K"], "SPLITS": config["SPLITS"],
                         "CELLS": config.get("CELLS", 1024), "PACKED": f"_k < {PACKED_K}",
                         "IDX64": "_n >= 2 ** 31"},
                        config["num_warps"], config["num_stages"])
        lines.append("return _out")
        return module_source(spec, entry, "bucketize", config, kernels, lines)


# Halve [lo, hi) while any lane's range is open; `{steps}` halvings empty the widest range.
_HALVING = """    for _ in range({steps}):
        mid = (lo + hi) // 2
        active = lo < hi
        b = tl.load(b_ptr + mid, mask=active & mask, other=0.0)
        below = (x {ncmp} b) == 0  # the boundary is below the value: the bucket is past mid
        lo = tl.where(active & below, mid + 1, lo)
        hi = tl.where(active & (below == 0), mid, hi)
    result = lo"""

_SEARCHES = {
    "binary": """    lo = tl.zeros([BLOCK], tl.int32)
    hi = tl.zeros([BLOCK], tl.int32) + K
""" + _HALVING.replace("{steps}", "STEPS"),
    # The top of the search without gathers: every value compares against the same SPLITS - 1
    # boundaries, loaded once per program; the gathers that remain are fewer.
    "split": """    count = tl.zeros([BLOCK], tl.int32)
    for j in tl.static_range(1, SPLITS):
        count += ((x {ncmp} tl.load(b_ptr + (j * K) // SPLITS)) == 0).to(tl.int32)
    lo = tl.where(count > 0, (count * K) // SPLITS + 1, 0)
    hi = tl.where(count < SPLITS - 1, ((count + 1) * K) // SPLITS, K)
""" + _HALVING.replace("{steps}", "STEPS"),
    "linear": """    result = tl.zeros([BLOCK], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        b = tl.load(b_ptr + ks, mask=ks < K, other=0.0)
        below = ((x[:, None] {ncmp} b[None, :]) == 0) & (ks < K)[None, :]
        result += tl.sum(below.to(tl.int32), axis=1)""",
    # The cell is monotone in the value, and _cell_of with the stored scale gives the table's
    # cells, so a boundary in a lower cell is below the value and one in a higher cell is above
    # it: only the boundaries of the value's own cell are left to search.
    "table": """    cell = _cell_of(x, tl.load(b_ptr), tl.load(scale_ptr), CELLS)
    if PACKED:
        entry = tl.load(cells_ptr + cell, mask=mask, other=0)
        lo = entry & 0xFFFF
        hi = entry >> 16
    else:
        lo = tl.load(cells_ptr + cell, mask=mask, other=0)
        hi = tl.load(cells_ptr + CELLS + cell, mask=mask, other=0)
    # as many halvings as the widest range among this program's values: its bit length
    widest = tl.max(hi - lo, axis=0)
    steps = 0
    for i in tl.static_range(0, 31):
        steps += ((widest >> i) > 0).to(tl.int32)
""" + _HALVING.replace("{steps}", "steps") + """
    result = tl.where(x != x, K, result)""",
}

# For each of CELLS equal cells over [b[0], b[K-1]], the boundaries that fall in it: [first, last),
# packed in one int32 (first | last << 16) below 2**16 boundaries, else in two halves of the table.
# The boundaries' cells ascend as they do, so a cell's first boundary is a binary search away: one
# lane per cell, STEPS dependent loads of a table the SM's cache soon holds, instead of counting
# K boundaries per cell. Every program computes the same scale; the first stores it for the search.
_TABLE_KERNEL = """@triton.jit
def _cell_of(v, b0, scale, CELLS: tl.constexpr):
    # the one definition of a cell, for the table and the search alike
    c = (v - b0) * scale
    c = tl.where(c > 0.0, c, 0.0)  # NaN (an infinite range) too: the cell of the first boundary
    return tl.where(c < CELLS - 1, c, CELLS - 1).to(tl.int32)


@triton.jit
def _first_of_cell(b_ptr, b0, scale, g, K, STEPS, CELLS: tl.constexpr):
    lo = tl.zeros_like(g)
    hi = tl.zeros_like(g) + K
    for _ in range(STEPS):
        mid = (lo + hi) // 2
        active = lo < hi
        below = _cell_of(tl.load(b_ptr + mid, mask=active, other=0.0), b0, scale, CELLS) < g
        lo = tl.where(active & below, mid + 1, lo)
        hi = tl.where(active & (below == 0), mid, hi)
    return lo


@triton.jit
def _bucketize_cells(b_ptr, cells_ptr, scale_ptr, K, STEPS, CELLS: tl.constexpr, BLOCK_C: tl.constexpr,
                     PACKED: tl.constexpr):
    pid = tl.program_id(0)
    b0 = tl.load(b_ptr)
    span = tl.load(b_ptr + K - 1) - b0
    scale = CELLS / span
    scale = tl.where((span > 0.0) & (scale < float("inf")), scale, 0.0)  # one cell for a point or infinite range
    if pid == 0:
        tl.store(scale_ptr, scale)
    g = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    first = _first_of_cell(b_ptr, b0, scale, g, K, STEPS, CELLS)
    last = _first_of_cell(b_ptr, b0, scale, g + 1, K, STEPS, CELLS)
    if PACKED:
        tl.store(cells_ptr + g, first | (last << 16))
    else:
        tl.store(cells_ptr + g, first)
        tl.store(cells_ptr + CELLS + g, last)
"""
