"""Row-wise family: reductions over a dim, normalisations and softmax, from the traced graph.

The graph is elementwise ops around reductions (sum, max, min, var) that all reduce the same
dims of the same *frame*. Rows are the frame's other dims. A program takes BLOCK_M rows and:

- `whole_row`: loads each row once as one tile (BLOCK_N >= the row length) and computes
  everything in registers; rows longer than WHOLE_ROW_MAX fall back to the looped kernel.
- `looped`: walks each row in chunks of BLOCK_N, one pass per level of dependent reductions
  (a norm's statistics, then its output), re-reading the row from cache. With `online`, a
  softmax's max and sum of exponentials share one pass (rescaling the running sum).

Family names follow the output: a row-scalar output is a `reduction`; a full output with a
max-then-sum-of-exp pair is `softmax`; any other full output is a `normalization`.
"""

from __future__ import annotations

from kevolve.hardware.target import HardwareTarget
from kevolve.specs.model import OperatorSpec
from kevolve.synth.offline import frame as fr
from kevolve.synth.offline.expr import Emitter, Unsupported, Val, VIEW_OPS, helpers_source, kind_of
from kevolve.synth.offline.frame import Leaf
from kevolve.synth.offline.module import Entry, launch, module_source, torch_dtype
from kevolve.synth.offline.pointwise import EXTENT_HELPER, is_elementwise
from kevolve.synth.offline.rowcode import Red, RowCode, RowDetail
from kevolve.synth.offline.template import (BLOCK_M, BLOCK_N, EVICT, NUM_STAGES, NUM_WARPS, PERSISTENT,
                                            PROGRAMS_PER_SM, UNMASKED, Config, Knob, Match, Template, even_flag,
                                            next_pow2, sizes_at, tuned_dims, vendor_math, warps_for)
from kevolve.synth.offline.trace import Graph, Node, Ref, trace

REDUCE_KIND = {"sum": "sum", "prims.sum": "sum", "amax": "max", "prims.amax": "max", "amin": "min",
               "prims.amin": "min", "prims.var": "var", "var": "var", "max": "max", "min": "min"}
WHOLE_ROW_MAX = 32768  # longest row one tile holds; longer rows take the looped kernel
TILE_MAX = 32768  # elements of a whole-row tile (BLOCK_M x BLOCK_N)

VARIANT = Knob("variant", ("whole_row", "looped"), "one tile per row, or a loop over row chunks")
ONLINE = Knob("online", (True, False), "softmax max and sum of exp in one pass (rescaled running sum)")
STATIC_N = Knob("static_n", (False, True), "the row length compiled in, as a static-shape compiler has it: "
                "index math, masks and loop bounds fold (one compile per row length)")


def _dims(arg, rank: int) -> tuple[int, ...]:
    dims = arg if isinstance(arg, (list, tuple)) else [arg]
    return tuple(sorted(d + rank if d < 0 else d for d in dims))


def _reduction(node: Node, graph: Graph) -> tuple[Red, tuple[str, ...], tuple[int, ...]] | None:
    kind = REDUCE_KIND.get(node.op)
    if kind is None:
        return None
    src = graph.node(node.args[0].name)
    rank = len(src.shape)
    dims = _dims(node.args[1], rank) if len(node.args) > 1 and node.args[1] is not None else tuple(range(rank))
    if node.kwargs.get("dtype") not in (None, "float32") or kind_of(src.dtype) != "f":
        raise Unsupported(f"a {node.op} over {src.dtype} values")
    correction = 0.0
    if kind == "var":
        correction = float(node.args[2] if len(node.args) > 2 else node.kwargs.get("correction", 1) or 0)
    return Red(node.name, kind, src.name, correction), src.shape, dims


def _through_views(graph: Graph, name: str) -> str:
    node = graph.node(name)
    while node.op in VIEW_OPS:
        node = graph.node(node.args[0].name)
    return node.name


def _softmax_pairs(graph: Graph, reds: dict[str, Red]) -> list[tuple[str, str]]:
    """(max, sum) pairs where the sum is of exp(t - max(t)): an online pass can fuse them."""
    pairs = []
    for s in reds.values():
        if s.kind != "sum":
            continue
        e = graph.node(s.input)
        if e.op not in ("exp", "prims.exp"):
            continue
        sub = graph.node(e.args[0].name) if isinstance(e.args[0], Ref) else None
        if sub is None or sub.op not in ("sub", "prims.sub") or not all(isinstance(a, Ref) for a in sub.args[:2]):
            continue
        mx = reds.get(_through_views(graph, sub.args[1].name))
        if mx and mx.kind == "max" and mx.input == sub.args[0].name and sub.kwargs.get("alpha", 1) == 1:
            pairs.append((mx.name, s.name))
    return pairs


def _levels(graph: Graph, reds: dict[str, Red]) -> dict[str, int]:
    """Pass of each reduction: one more than the reductions its input needs (var takes two)."""
    memo: dict[str, set[str]] = {}

    def needs(name: str) -> set[str]:  # reductions reachable from a node without crossing one
        if name not in memo:
            node = graph.node(name)
            out: set[str] = set()
            for r in node.refs:
                out |= {r} if r in reds else needs(r)
            memo[name] = out
        return memo[name]

    levels: dict[str, int] = {}

    def level(name: str) -> int:
        if name not in levels:
            red = reds[name]
            base = max((level(r) for r in needs(red.input)), default=0)
            levels[name] = base + (2 if red.kind == "var" else 1)
        return levels[name]

    for name in reds:
        level(name)
    return levels


class RowwiseTemplate(Template):
    families = ("softmax", "normalization", "reduction")
    knobs = (VARIANT, BLOCK_M, BLOCK_N, NUM_WARPS, NUM_STAGES, ONLINE, PERSISTENT, PROGRAMS_PER_SM, EVICT,
             UNMASKED, STATIC_N)

    def match(self, graph: Graph, spec: OperatorSpec) -> Match | None:
        found, aliases = [], {}
        for n in graph.nodes:
            r = _reduction(n, graph)
            if r is not None:
                found.append(r)
            elif n.op == "getitem" and any(f[0].name == n.args[0].name for f in found):
                if n.args[1] != 0:
                    raise Unsupported("the indices of a max or min (an argmax)")
                aliases[n.name] = n.args[0].name
            elif not is_elementwise(n.op):
                return None
        if not found or len(graph.outputs) != 1:
            return None
        frames = {(shape, dims) for _, shape, dims in found}
        if len(frames) != 1:
            raise Unsupported("reductions over different dims or shapes in one graph")
        (frame, cols), = frames
        reds = {r.name: r for r, _, _ in found}
        out = graph.node(graph.outputs[0])
        rank = len(frame)
        out_full = tuple(out.shape) == tuple(frame)
        if out_full:
            out_emb = fr.identity(rank)
        else:
            keep = [d for d in range(rank) if d not in cols]
            if len(out.shape) == rank:
                out_emb = tuple(None if d in cols else d for d in range(rank))
            elif len(out.shape) == len(keep):
                out_emb = tuple(keep)
            else:
                raise Unsupported(f"an output of shape {list(out.shape)} from a frame {list(frame)}")
            expected = [frame[f] if f is not None else "1" for f in out_emb]
            if list(out.shape) != expected:
                raise Unsupported(f"an output of shape {list(out.shape)} from a frame {list(frame)}")
        leaves = self._leaves(graph, reds, aliases, out.name, out_emb, frame, cols)
        pairs = tuple(_softmax_pairs(graph, reds))
        levels = _levels(graph, reds)
        family = "reduction" if not out_full else ("softmax" if pairs else "normalization")
        kinds = ", ".join(sorted({r.kind for r in reds.values()}))
        detail = RowDetail(out.name, tuple(frame), cols, tuple(reds.values()), tuple(sorted(levels.items())), pairs,
                           leaves, out_full, tuple(out_emb), tuple(sorted(aliases.items())))
        return Match(family, f"{kinds} over dim(s) {list(cols)} of a {rank}-d frame with elementwise ops around "
                     f"them, {'a full' if out_full else 'a reduced'} output", detail)

    @staticmethod
    def _leaves(graph, reds, aliases, output, out_emb, frame, cols) -> tuple[Leaf, ...]:
        leaves: list[Leaf] = []
        trailing = cols == tuple(range(len(frame) - len(cols), len(frame)))

        def record(node: Node, emb) -> Val:
            key = (node.name, tuple(emb))
            if all((l.node, l.emb) != key for l in leaves):
                along_cols = any(f in cols for f in emb if f is not None)
                along_rows = any(f not in cols for f in emb if f is not None)
                dense = trailing and fr.is_dense(node, emb, frame)
                leaves.append(Leaf(node.name, tuple(emb), dense, kind_of(node.dtype), along_rows, along_cols))
            return Val("x", kind_of(node.dtype))

        def special(node: Node, emb):
            name = aliases.get(node.name, node.name)
            if name in reds:
                em.gen(reds[name].input, fr.identity(len(frame)))
                return Val("r", "f")
            return None

        em = Emitter(graph, record, special)
        em.gen(output, out_emb)
        fr.frame_dims_covered(frame, [(graph.node(l.node), l.emb) for l in leaves])
        # The reduced dims are walked as one column run, which an input read along some of them
        # and broadcast along others does not have (a (B,) target against (B, N) predictions).
        reduced = {d for d in cols if frame[d] != 1}
        for leaf in leaves:
            along = reduced & {f for f in leaf.emb if f is not None}
            if along and along != reduced:
                raise Unsupported(f"an input broadcast along some of the reduced dims {sorted(reduced)}")
        return tuple(leaves)

    def seeds(self, match: Match, spec: OperatorSpec, target: HardwareTarget) -> list[dict]:
        d: RowDetail = match.detail
        sizes = sizes_at(trace(spec), spec, d.frame, tuned_dims(spec, target))
        n = self.row_length(match, spec, target)
        rows = max(1, _prod(sizes) // max(1, n))
        sm = target.sm_count
        base = {"variant": "whole_row", "BLOCK_M": 1, "BLOCK_N": 1024, "num_warps": 4, "num_stages": 1,
                "persistent": False, "programs_per_sm": 4, "evict": "none", "unmasked": True, "static_n": False,
                "sm_count": sm, **vendor_math(target)}
        if d.pairs:
            base["online"] = True
        row = next_pow2(n)
        short = max(1, min(64, 2048 // row))  # short rows: several per program
        seeds = []
        # Up to the longest whole-row tile: softmax over fp32 rows of 32000 held in 16 warps reached
        # 96% of copy bandwidth on an H200 in four searches of four; from the looped seeds, 80% in six evaluations.
        if row <= WHOLE_ROW_MAX:
            seeds.append(dict(base, BLOCK_N=row, BLOCK_M=short, num_warps=warps_for(row * short, target, 16)))
        # Row chunks of 2048 over 8 warps, the row length compiled in: rmsnorm's rows of 4096 took
        # 64.6 us so on an H200 (inductor's looped kernel 65.4), 78.0 with 16 warps, 66.9 with 1024.
        seeds.append(dict(base, variant="looped", BLOCK_N=min(row, 2048), BLOCK_M=1,
                          num_warps=warps_for(min(row, 2048), target, 8), evict="stream", static_n=True))
        if row <= 16384:
            seeds.append(dict(base, BLOCK_N=row, BLOCK_M=short, num_warps=warps_for(row * short, target, 8),
                              persistent=True, programs_per_sm=4 if rows > 4 * sm else 1, unmasked=False))
        seeds.append(dict(base, variant="looped", BLOCK_N=min(row, 1024), BLOCK_M=max(1, short // 2),
                          num_warps=warps_for(min(row, 1024), target, 4), static_n=True))
        if target.interpreter:
            for s in seeds:
                s["num_warps"] = 1
        return seeds

    def inert(self, config: Config) -> set[str]:
        inert = super().inert(config)
        if config["variant"] == "whole_row":  # the tile is the row; BLOCK_N only sizes the fallback
            inert |= {"BLOCK_N", "online"}
        return inert

    def check(self, config: Config, match: Match, target: HardwareTarget, spec: OperatorSpec) -> str | None:
        if config["variant"] == "looped" and config["BLOCK_M"] * config["BLOCK_N"] > 16384:
            return "a looped tile of more than 16384 elements spills its accumulators"
        if config["variant"] == "whole_row":
            row = next_pow2(self.row_length(match, spec, target))
            if row > WHOLE_ROW_MAX:
                return f"rows of {row} are longer than a whole-row tile; the looped variant runs instead"
            if config["BLOCK_M"] > 1 and config["BLOCK_M"] * row > TILE_MAX:
                return f"{config['BLOCK_M']} rows of {row} exceed a {TILE_MAX}-element tile"
        return super().check(config, match, target, spec)

    @staticmethod
    def row_length(match: Match, spec: OperatorSpec, target: HardwareTarget) -> int:
        """Elements reduced per row at the tuned shape."""
        d: RowDetail = match.detail
        sizes = sizes_at(trace(spec), spec, d.frame, tuned_dims(spec, target))
        return _prod(sizes[c] for c in d.cols)

    def render(self, spec: OperatorSpec, match: Match, config: Config) -> str:
        d: RowDetail = match.detail
        graph = trace(spec)
        entry = Entry.of(spec, graph)
        code = RowCode(graph, d, config)
        kernels, names = [], []
        variants = ["looped"] if config["variant"] == "looped" else ["whole_row", "looped"]
        for variant in variants:
            code.config = dict(config, variant=variant)
            body = code.whole_row() if variant == "whole_row" else code.looped()
            names.append(f"_rowwise_{variant}")
            kernels.append(body)
        params = self._params(code)
        consts = ["BLOCK_M: tl.constexpr", "BLOCK_N: tl.constexpr", "EVEN: tl.constexpr", "IDX64: tl.constexpr"]
        sources = [f"@triton.jit\ndef {name}(" + ", ".join(params + consts) + "):\n" + "\n".join(body)
                   for name, body in zip(names, kernels)]
        wrapper = self._wrapper(entry, d, config, code, graph)
        helpers = helpers_source(code.helper_lines, config.get("libdevice", False))
        return module_source(spec, entry, match.family, config, [helpers] + sources, wrapper,
                             helpers=[fr.HELPERS, EXTENT_HELPER])

    @staticmethod
    def _params(code: RowCode) -> list[str]:
        d = code.d
        n = "N: tl.constexpr" if code.config.get("static_n") else "N"
        params = [f"{code.tags[(l.node, l.emb)]}_ptr" for l in d.leaves] + ["out_ptr", "R", n, "G1", "G2"]
        for l in d.leaves:
            if not l.dense:
                params += fr.leaf_stride_params(code.tags[(l.node, l.emb)])
        if d.out_full and not code.dense_out():
            params += fr.leaf_stride_params("out")
        return params + list(code.scalars.values()) + ["NPROG"]

    @staticmethod
    def _wrapper(entry: Entry, d: RowDetail, config: Config, code: RowCode, graph: Graph) -> list[str]:
        rank = len(d.frame)
        out = graph.node(d.output)
        lines = [f"{entry.var(n)} = {entry.var(n)}.contiguous()" for n in sorted({l.node for l in d.leaves if l.dense})]
        leaf_list = ", ".join(f"({entry.var(l.node)}, {l.emb!r})" for l in d.leaves)
        lines.append(f"_shape = _frame_shape({rank}, [{leaf_list}])")
        out_shape = ", ".join(f"_shape[{f}]" if f is not None else "1" for f in d.out_emb)
        device = entry.var(d.leaves[0].node)
        lines.append(f"_out = torch.empty([{out_shape}], dtype={torch_dtype(out.dtype)}, device={device}.device)")
        generic = [l for l in d.leaves if not l.dense]
        layout = [f"({entry.var(l.node)}, {l.emb!r})" for l in generic]
        if d.out_full and not code.dense_out():
            layout.append(f"(_out, {fr.identity(rank)!r})")
        lines.append(f"_R, _N, _G1, _G2, _st = _frame_layout(_shape, {d.cols!r}, [{', '.join(layout)}])")
        lines.append("if _out.numel() == 0:\n    return _out")
        tensors = ", ".join(entry.var(l.node) for l in d.leaves)
        lines.append(f"_idx64 = max(_extent(t) for t in ({tensors}, _out)) >= 2 ** 31")
        strides = [f"*_st[{i}]" for i in range(len(layout))]
        sizes = [entry.size(n) for n in code.scalars]
        args = [entry.var(l.node) for l in d.leaves] + ["_out", "_R", "_N", "_G1", "_G2"] + strides + sizes + ["_grid"]
        nprog = config["sm_count"] * config["programs_per_sm"]

        def grid_lines(bm: str) -> list[str]:
            tiles = f"_cdiv(_R, {bm})"
            return [f"_grid = min({tiles}, {nprog})" if config["persistent"] else f"_grid = {tiles}"]

        even_looped = even_flag(config, f"_N % {config['BLOCK_N']} == 0 and _R % {config['BLOCK_M']} == 0")
        looped = grid_lines(str(config["BLOCK_M"])) + launch(
            "_rowwise_looped", "(_grid,)", args, {"BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"],
                                                 "EVEN": even_looped, "IDX64": "_idx64"},
            config["num_warps"], config["num_stages"])
        if config["variant"] == "looped":
            lines += looped
        else:
            even = even_flag(config, "_N == _bn and _R % _bm == 0")
            whole = (["_bn = _pow2(_N)", f"_bm = max(1, min({config['BLOCK_M']}, {TILE_MAX} // _bn))"]
                     + grid_lines("_bm")
                     + launch("_rowwise_whole_row", "(_grid,)", args, {"BLOCK_M": "_bm", "BLOCK_N": "_bn",
                                                                       "EVEN": even, "IDX64": "_idx64"},
                              config["num_warps"], config["num_stages"]))
            lines.append(f"if _N <= {WHOLE_ROW_MAX}:")
            lines += ["    " + l for l in whole]
            lines.append("else:  # rows too long for one tile")
            lines += ["    " + l for l in looped]
        lines.append("return _out")
        return lines


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= x
    return n
