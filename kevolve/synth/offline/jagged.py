"""Jagged family: the sparse ops of recommendation models over offsets, and plain lookups.

- `embedding_bag`: out[b] = reduce(table[indices[offsets[b]:offsets[b+1]]]), sum, mean or max.
- `segment_sum`: out[b] = values[offsets[b]:offsets[b+1]].sum(0), as the reference writes it
  with index_add_ over ids from repeat_interleave of the offsets' differences.
- `embedding`: out[i] = table[ids[i]] (a row gather, any shape of ids).

A program owns one bag or segment (BLOCK_L ids for a lookup) and a BLOCK_D slice of the feature
dim, walks its rows UNROLL (bag) or BLOCK_L (segment) at a time so that many row loads are in
flight, and keeps an fp32 accumulator. `vec` promises the compiler that gathered rows start at a multiple of
`vec` elements, so it can issue vector loads; the wrapper drops it where that is not true.
"""

from __future__ import annotations

from dataclasses import dataclass

from kevolve.hardware.target import HardwareTarget
from kevolve.specs.model import OperatorSpec
from kevolve.synth.offline.expr import Unsupported
from kevolve.synth.offline.module import Entry, launch, module_source, torch_dtype
from kevolve.synth.offline.template import (EVICT, NUM_STAGES, NUM_WARPS, VEC, Config, Knob, Match, Template,
                                            next_pow2, pow2, sizes_at, tuned_dims, warps_for)
from kevolve.synth.offline.trace import Graph, Node, Ref, trace

BLOCK_D = Knob("BLOCK_D", pow2(16, 1024), "features per program")
UNROLL = Knob("UNROLL", pow2(1, 64), "bag lookups loaded together (bytes in flight)")
BLOCK_L = Knob("BLOCK_L", pow2(1, 64), "segment rows loaded together (bytes in flight)")
MODES = {0: "sum", 1: "mean", 2: "max"}
SEGMENT_HELPERS = {"slice", "sub", "arange", "repeat_interleave", "index_select", "input", "sym_size", "sym_numel",
                   "sub_", "add_", "zeros", "new_zeros", "floordiv", "diff"}


@dataclass(frozen=True)
class JaggedDetail:
    op: str  # embedding_bag | segment_sum
    values: str  # the table (bag) or the jagged values (segment)
    offsets: str
    indices: str | None = None
    mode: str = "sum"
    include_last_offset: bool = True
    output: str = ""


def _inputs_of(graph: Graph, name: str) -> set[str]:
    seen, stack, found = set(), [name], set()
    while stack:
        n = graph.node(stack.pop())
        if n.name in seen:
            continue
        seen.add(n.name)
        if n.op == "input":
            found.add(n.name)
        stack.extend(n.refs)
    return found


def _ops_of(graph: Graph, name: str) -> set[str]:
    seen, stack = set(), [name]
    while stack:
        n = graph.node(stack.pop())
        if n.name not in seen:
            seen.add(n.name)
            stack.extend(n.refs)
    return {graph.node(n).op for n in seen}


class JaggedTemplate(Template):
    families = ("embedding_bag", "segment_sum", "embedding")
    knobs = (BLOCK_D, UNROLL, BLOCK_L, NUM_WARPS, NUM_STAGES, VEC, EVICT)

    def match(self, graph: Graph, spec: OperatorSpec) -> Match | None:
        bags = [n for n in graph.nodes if n.op in ("_embedding_bag_forward_only", "_embedding_bag")]
        adds = [n for n in graph.nodes if n.op in ("index_add", "index_add_")]
        lookups = [n for n in graph.nodes if n.op == "embedding"]
        if bags:
            return self._bag(graph, bags[0])
        if lookups:
            return self._lookup(graph, lookups[0])
        if adds:
            return self._segment(graph, adds[0])
        return None

    @staticmethod
    def _single_output(graph: Graph) -> Node:
        if len(graph.outputs) != 1:
            raise Unsupported("a jagged op with several outputs")
        return graph.node(graph.outputs[0])

    def _bag(self, graph: Graph, node: Node) -> Match:
        out = self._single_output(graph)
        if out.op != "getitem" or out.args[0] != Ref(node.name) or out.args[1] != 0:
            raise Unsupported("an embedding bag followed by other operations")
        table, indices, offsets = (graph.node(a.name) for a in node.args[:3])
        if any(n.op != "input" for n in (table, indices, offsets)):
            raise Unsupported("an embedding bag over computed tensors")
        args = list(node.args) + [None] * 9
        mode, psw, last, pad = args[4], args[6], bool(args[7]), args[8]
        if psw is not None:
            raise Unsupported("per-sample weights in an embedding bag")
        if pad not in (None, -1):
            raise Unsupported("padding_idx in an embedding bag")
        if len(table.shape) != 2 or len(indices.shape) != 1:
            raise Unsupported("an embedding bag over 2-d indices")
        detail = JaggedDetail("embedding_bag", table.name, offsets.name, indices.name, MODES[int(mode or 0)], last,
                              out.name)
        return Match("embedding_bag", f"embedding bag ({detail.mode}) of a {table.dtype} table over jagged indices",
                     detail)

    def _lookup(self, graph: Graph, node: Node) -> Match:
        out = self._single_output(graph)
        if out.name != node.name:
            raise Unsupported("an embedding lookup followed by other operations")
        table, ids = (graph.node(a.name) for a in node.args[:2])
        if table.op != "input" or ids.op != "input" or len(table.shape) != 2:
            raise Unsupported("an embedding lookup over computed tensors")
        # padding_idx, scale_grad_by_freq and sparse change only the gradient
        detail = JaggedDetail("embedding", table.name, "", ids.name, output=out.name)
        return Match("embedding", f"embedding lookup: rows of a {table.dtype} table gathered by ids", detail)

    def _segment(self, graph: Graph, node: Node) -> Match:
        out = self._single_output(graph)
        if out.name != node.name:
            raise Unsupported("an index_add followed by other operations")
        base, dim, index, source = graph.node(node.args[0].name), node.args[1], node.args[2], node.args[3]
        src = graph.node(source.name)
        if base.op not in ("zeros", "new_zeros") or dim != 0 or src.op != "input" or len(src.shape) != 2:
            raise Unsupported("an index_add that is not a segment sum of rows into zeros")
        if node.kwargs.get("alpha", 1) != 1:
            raise Unsupported("an index_add with alpha")
        feeds = _inputs_of(graph, index.name)
        if len(feeds) != 1 or "repeat_interleave" not in _ops_of(graph, index.name) \
                or not _ops_of(graph, index.name) <= SEGMENT_HELPERS:
            raise Unsupported("an index_add whose ids do not come from one offsets tensor through repeat_interleave")
        offsets = next(iter(feeds))
        detail = JaggedDetail("segment_sum", src.name, offsets, output=out.name)
        return Match("segment_sum", "segment sum: index_add of rows into zeros by ids repeated from offsets", detail)

    def seeds(self, match: Match, spec: OperatorSpec, target: HardwareTarget) -> list[dict]:
        d: JaggedDetail = match.detail
        graph = trace(spec)
        width = sizes_at(graph, spec, graph.node(d.values).shape, tuned_dims(spec, target))[1]
        block_d = min(next_pow2(width), 512)
        base = {"BLOCK_D": block_d, "num_warps": warps_for(block_d * 4, target, 8), "num_stages": 2, "vec": 4,
                "evict": "none"}
        # A bag or segment of a few dozen rows in one step: its rows are all in flight at once
        # behind a single dependent load, instead of a round trip per few rows.
        wide = max(1, min(64, 8192 // block_d))
        whole = dict(base, num_stages=1, evict="stream", num_warps=warps_for(block_d * wide, target, 16))
        if d.op == "embedding":
            seeds = [dict(base, BLOCK_L=4, num_warps=warps_for(block_d * 4, target, 8)),
                     dict(base, BLOCK_L=1, num_warps=warps_for(block_d, target, 8), evict="stream"),
                     dict(base, BLOCK_L=16, BLOCK_D=min(block_d, 128), num_warps=warps_for(2048, target, 8))]
        else:  # a bag's or a segment's rows loaded together: the same seeds under either knob
            rows = "UNROLL" if d.op == "embedding_bag" else "BLOCK_L"
            seeds = [dict(base, **{rows: 8}), dict(whole, **{rows: wide}),
                     dict(whole, **{rows: max(1, wide // 2)}, num_warps=warps_for(block_d * wide, target, 32)),
                     dict(base, **{rows: 16}, evict="stream", num_warps=warps_for(block_d * 16, target, 16)),
                     dict(base, **{rows: 4}, BLOCK_D=min(block_d, 64), vec=1)]
        if target.interpreter:
            for s in seeds:
                s["num_warps"] = 1
        return seeds

    def check(self, config: Config, match: Match, target: HardwareTarget, spec: OperatorSpec) -> str | None:
        rows = config.get("UNROLL", config.get("BLOCK_L", 1))
        if rows * config["BLOCK_D"] > 16384:
            return "more than 16384 gathered elements per step spill"
        if config["vec"] > config["BLOCK_D"]:
            return "vec wider than BLOCK_D"
        return super().check(config, match, target, spec)

    def render(self, spec: OperatorSpec, match: Match, config: Config) -> str:
        d: JaggedDetail = match.detail
        graph = trace(spec)
        entry = Entry.of(spec, graph)
        kernel = {"embedding_bag": _BAG_KERNEL, "segment_sum": _SEGMENT_KERNEL, "embedding": _LOOKUP_KERNEL}[d.op]
        stream = config["evict"] == "stream"
        kernel = kernel.replace("EVICT_STREAM", ', eviction_policy="evict_first"' if stream else "")
        kernel = kernel.replace("EVICT_REUSE", ', eviction_policy="evict_last"' if stream else "")
        values = entry.var(d.values)
        offsets = entry.var(d.offsets) if d.offsets else ""
        out_dtype = torch_dtype(graph.node(d.output).dtype)
        lines = [f"{values} = {values}.contiguous()", f"_d = {values}.shape[1]"]
        lines += [f"{offsets} = {offsets}.contiguous()"] if offsets else []
        grid = f"(_out.shape[0], _cdiv(_d, {config['BLOCK_D']}))"
        if d.op == "embedding":
            ids = entry.var(d.indices)
            lines += [f"{ids} = {ids}.contiguous()", f"_n = {ids}.numel()",
                      f"_out = torch.empty([*{ids}.shape, _d], dtype={out_dtype}, device={values}.device)"]
            args = [values, ids, "_out", "_n", "_d"]
            consts = {"BLOCK_D": config["BLOCK_D"], "BLOCK_L": config["BLOCK_L"], "VEC": "_vec"}
            name = "_embedding_kernel"
            grid = f"(_cdiv(_n, {config['BLOCK_L']}), _cdiv(_d, {config['BLOCK_D']}))"
        elif d.op == "embedding_bag":
            indices = entry.var(d.indices)
            lines += [f"{indices} = {indices}.contiguous()",
                      f"_bags = {offsets}.shape[0] - 1" if d.include_last_offset else f"_bags = {offsets}.shape[0]",
                      f"_out = torch.empty([_bags, _d], dtype={out_dtype}, device={values}.device)"]
            args = [values, indices, offsets, "_out", "_bags", "_d", f"{indices}.shape[0]", f"{offsets}.shape[0]"]
            consts = {"BLOCK_D": config["BLOCK_D"], "UNROLL": config["UNROLL"], "VEC": "_vec",
                      "MODE": f'"{d.mode}"'}
            name = "_embedding_bag_kernel"
        else:
            lines += [f"_segments = {offsets}.shape[0] - 1",
                      f"_out = torch.empty([_segments, _d], dtype={out_dtype}, device={values}.device)"]
            args = [values, offsets, "_out", "_segments", "_d"]
            consts = {"BLOCK_D": config["BLOCK_D"], "BLOCK_L": config["BLOCK_L"], "VEC": "_vec"}
            name = "_segment_sum_kernel"
        vec, size = config["vec"], f"{values}.element_size()"
        lines += ["if _out.numel() == 0:\n    return _out",
                  # the alignment promise holds only when every row starts on a multiple of vec elements
                  f"_vec = {vec} if _d % {vec} == 0 and {values}.data_ptr() % ({vec} * {size}) == 0 else 1",
                  f"_grid = {grid}"]
        lines += launch(name, "_grid", args, consts, config["num_warps"], config["num_stages"])
        lines.append("return _out")
        return module_source(spec, entry, match.family, config, [kernel], lines)


_BAG_KERNEL = '''@triton.jit
def _embedding_bag_kernel(table_ptr, idx_ptr, off_ptr, out_ptr, BAGS, D, L, N_OFF,
                          BLOCK_D: tl.constexpr, UNROLL: tl.constexpr, VEC: tl.constexpr, MODE: tl.constexpr):
    bag = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    start = tl.load(off_ptr + bag)
    # with include_last_offset=False the last bag runs to the end of the indices
    end = tl.load(off_ptr + bag + 1, mask=bag + 1 < N_OFF, other=L)
    if MODE == "max":
        acc = tl.full([UNROLL, BLOCK_D], float("-inf"), tl.float32)
    else:
        acc = tl.zeros([UNROLL, BLOCK_D], tl.float32)
    for i in tl.range(start, end, UNROLL):
        lane = i + tl.arange(0, UNROLL)
        lmask = lane < end
        idx = tl.load(idx_ptr + lane, mask=lmask, other=0EVICT_STREAM)
        row = tl.multiple_of(idx.to(tl.int64) * D, VEC)
        m = lmask[:, None] & cmask[None, :]
        vals = tl.load(table_ptr + row[:, None] + cols[None, :], mask=m, other=0.0EVICT_REUSE).to(tl.float32)
        if MODE == "max":
            acc = tl.maximum(acc, tl.where(m, vals, float("-inf")))
        else:
            acc += vals
    count = end - start
    if MODE == "max":
        result = tl.max(acc, axis=0)
        result = tl.where(count > 0, result, 0.0)
    else:
        result = tl.sum(acc, axis=0)
        if MODE == "mean":
            result = result / tl.maximum(count, 1).to(tl.float32)
    tl.store(out_ptr + bag.to(tl.int64) * D + cols, result.to(out_ptr.dtype.element_ty), mask=cmask)
'''

_SEGMENT_KERNEL = '''@triton.jit
def _segment_sum_kernel(values_ptr, off_ptr, out_ptr, SEGMENTS, D,
                        BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, VEC: tl.constexpr):
    seg = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    start = tl.load(off_ptr + seg)
    end = tl.load(off_ptr + seg + 1)
    acc = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
    for r0 in tl.range(start, end, BLOCK_L):
        rows = r0 + tl.arange(0, BLOCK_L)
        m = (rows < end)[:, None] & cmask[None, :]
        base = tl.multiple_of(rows.to(tl.int64) * D, VEC)
        acc += tl.load(values_ptr + base[:, None] + cols[None, :], mask=m, other=0.0EVICT_STREAM).to(tl.float32)
    result = tl.sum(acc, axis=0)
    tl.store(out_ptr + seg.to(tl.int64) * D + cols, result.to(out_ptr.dtype.element_ty), mask=cmask)
'''

_LOOKUP_KERNEL = '''@triton.jit
def _embedding_kernel(table_ptr, ids_ptr, out_ptr, N, D,
                      BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, VEC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < N
    m = rmask[:, None] & (cols < D)[None, :]
    idx = tl.load(ids_ptr + rows, mask=rmask, other=0)
    src = tl.multiple_of(idx.to(tl.int64) * D, VEC)
    vals = tl.load(table_ptr + src[:, None] + cols[None, :], mask=m, other=0.0EVICT_REUSE)
    dst = tl.multiple_of(rows.to(tl.int64) * D, VEC)
    tl.store(out_ptr + dst[:, None] + cols[None, :], vals, mask=m)
'''
