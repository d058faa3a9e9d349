"""Pointwise family: any composition of elementwise ops, broadcasting included; and rotary
embeddings, which are elementwise but for a rotate-half of the last dim.

The kernel body is generated from the traced graph (expr.Emitter). When every input is the
output's shape the kernel walks the tensor flat. So it does when the others repeat along the flat
output: one indexed by the column alone (a bias) is read at `offs % C`; one that is the output's
trailing dims (rotary's cos and sin tables [S, D] under x [B, H, S, D]) at `offs % P`, P their
size. C and P are compile-time constants, as torch.compile has them: a multiply and a shift
where a tile's two-level index costs more (4% of a bias-GELU-residual's time on an H200).
Otherwise it walks rows x columns of the output and each broadcast input is indexed through its
frame strides (frame.py). A rotate-half (`cat((-x[..., h:], x[..., :h]), -1)`) becomes a second
load of x at the partner columns: `offs + HALF` or `offs - HALF` in the flat walk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kevolve.hardware.target import HardwareTarget
from kevolve.specs.model import OperatorSpec, resolve_dtype
from kevolve.synth.offline import frame as fr
from kevolve.synth.offline.expr import (CAST_OPS, FLOAT_OPS, BOOL_OPS, INT_OPS, LOGIC_OPS, SIZE_OPS, VIEW_OPS,
                                        Emitter, Unsupported, Val, base_op, helpers_source, kind_of)
from kevolve.synth.offline.module import Entry, launch, module_source, torch_dtype
from kevolve.synth.offline.template import (BLOCK, EVICT, NUM_STAGES, NUM_WARPS, PERSISTENT, PROGRAMS_PER_SM,
                                            UNMASKED, Config, Knob, Match, Template, bounds_mask, even_flag,
                                            vendor_math, warps_for)
from kevolve.synth.offline.trace import Graph, Node, Ref, trace

ELEMENTWISE = (set(FLOAT_OPS) | set(BOOL_OPS) | set(LOGIC_OPS) | INT_OPS
               | {"clamp", "pow", "logical_not", "bitwise_not", "isnan", "isinf", "floor_divide",
                  "scalar_tensor", "full", "full_like", "zeros_like", "ones_like"})


def is_elementwise(op: str) -> bool:
    return op == "input" or op in VIEW_OPS or op in CAST_OPS or op in SIZE_OPS or base_op(op) in ELEMENTWISE


@dataclass(frozen=True)
class Leaf:
    node: str
    emb: tuple
    dense: bool
    kind: str  # f, i, b
    rotate: bool = False  # read at the rotate-half partner column
    trailing_from: int | None = None  # k when the input is the output's dims k.. exactly

    def row_free(self, rank: int) -> bool:
        """Indexed by the column alone (a bias over the last dim, or a scalar)."""
        return all(f is None or f == rank - 1 for f in self.emb)


def _norm(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def rotate_half_source(graph: Graph, node: Node) -> str | None:
    """The input x when `node` is cat((-x[..., h:], x[..., :h]), dim=-1) with h = half the last dim."""
    if node.op != "cat" or len(node.args[0]) != 2:
        return None
    rank = len(node.shape)
    if _norm(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0), rank) != rank - 1:
        return None
    neg, low = (graph.node(r.name) for r in node.args[0])
    if neg.op != "neg":
        return None
    high = graph.node(neg.args[0].name)
    if high.op != "slice" or low.op != "slice" or high.args[0] != low.args[0]:
        return None
    x = graph.node(high.args[0].name)
    if x.op != "input" or _norm(high.args[1], rank) != rank - 1 or _norm(low.args[1], rank) != rank - 1:
        return None
    h, h_end = high.args[2], low.args[3] if len(low.args) > 3 else None
    if h != h_end or low.args[2] != 0 or (len(high.args) > 4 and high.args[4] != 1):
        return None
    if isinstance(h, Ref):  # floordiv(size of x's last dim, 2)
        half = graph.node(h.name)
        size = graph.node(half.args[0].name) if half.op == "floordiv" and isinstance(half.args[0], Ref) else None
        if not (size and half.args[1] == 2 and size.op == "sym_size" and size.args[0] == Ref(x.name)
                and _norm(size.args[1], rank) == rank - 1):
            return None
    elif not (x.shape[-1].isdigit() and h * 2 == int(x.shape[-1])):  # a fixed last dim
        return None
    return x.name


def trailing_from(node: Node, emb, frame: tuple[str, ...]) -> int | None:
    """k when an input is the frame's dims k.. (in order, any other dims of size 1): once
    contiguous it repeats every prod(frame[k:]) elements of the flat output."""
    dims = [(f, size) for f, size in zip(emb, node.shape) if size != "1"]
    if not dims or any(f is None or size != frame[f] for f, size in dims):
        return None
    k = dims[0][0]
    return k if [f for f, _ in dims] == list(range(k, len(frame))) else None


@dataclass(frozen=True)
class PointwiseDetail:
    output: str
    frame: tuple[str, ...]
    leaves: tuple[Leaf, ...]

    @property
    def flat(self) -> bool:
        return all(leaf.dense and not leaf.rotate for leaf in self.leaves)

    @property
    def broadcast_flat(self) -> bool:
        """Every broadcast input repeats along the flat output: indexed by the column alone (a
        bias, a scalar; read at offs % C) or the output's trailing dims (read at offs % P). The
        kernel still walks the output flat; a rotate-half reads x at offs +- HALF."""
        rank = len(self.frame)
        return not self.flat and all(l.dense or (not l.rotate and (l.row_free(rank) or l.trailing_from is not None))
                                     for l in self.leaves)

    @property
    def rotary(self) -> bool:
        return any(l.rotate for l in self.leaves)

    @property
    def by_column(self) -> list[Leaf]:
        """Broadcast inputs indexed by the column alone (biases, scalars)."""
        return [l for l in self.leaves if not l.dense and l.row_free(len(self.frame))]

    @property
    def tables(self) -> list[Leaf]:
        """In the flat walk, broadcast inputs that are the output's trailing dims (read at offs % P)."""
        if not self.broadcast_flat:
            return []
        return [l for l in self.leaves if not l.dense and not l.row_free(len(self.frame))]

    def tag(self, leaf: Leaf) -> str:
        """The leaf's name in the kernel: l0, l1, ... in the order the graph reads them."""
        return f"l{self.leaves.index(leaf)}"


def collect_leaves(graph: Graph, output: str, frame: tuple[str, ...]) -> tuple[Leaf, ...]:
    """The inputs an elementwise graph reads and where they sit in the frame (a dry run)."""
    leaves: list[Leaf] = []

    def record(node: Node, emb, rotate: bool = False) -> Val:
        leaf = Leaf(node.name, tuple(emb), fr.is_dense(node, emb, frame), kind_of(node.dtype), rotate,
                    trailing_from(node, emb, frame))
        if leaf not in leaves:
            leaves.append(leaf)
        return Val("x", leaf.kind)

    def special(node: Node, emb):
        x = rotate_half_source(graph, node)
        if x is None:
            return None
        if emb[-1] != len(frame) - 1:
            raise Unsupported("a rotate-half along a dim that is not the output's last")
        return record(graph.node(x), emb, rotate=True)

    Emitter(graph, record, special).gen(output, fr.identity(len(frame)))
    fr.frame_dims_covered(frame, [(graph.node(l.node), l.emb) for l in leaves])
    return tuple(leaves)


# Eviction hints by role: "reuse" keeps what is read again (a bias, rotary's tables and the
# rotate-half partner) with evict_last and leaves streams unhinted, as torch.compile writes them;
# "stream" also reads streams evict_first.
EVICT_BY_ROLE = Knob("evict", ("none", "reuse", "stream"), EVICT.doc + "; reuse: only the reused loads")
# Seeded only where the graph computes erf (gelu's exact form): elsewhere it would change nothing.
ERF = Knob("erf", ("library", "poly"), "erf from the math library, or from one exponential and a polynomial "
           "(|error| < 1.5e-7): fewer instructions per element")


class PointwiseTemplate(Template):
    families = ("pointwise", "rotary")
    knobs = (BLOCK, NUM_WARPS, NUM_STAGES, PERSISTENT, PROGRAMS_PER_SM, EVICT_BY_ROLE, UNMASKED, ERF)

    def match(self, graph: Graph, spec: OperatorSpec) -> Match | None:
        rotations = {n.name for n in graph.nodes if rotate_half_source(graph, n)}
        inside = {r.name for n in rotations for r in graph.node(n).args[0]}
        inside |= {graph.node(n).args[0].name for n in inside if graph.node(n).op == "neg"}
        if len(graph.outputs) != 1 or not all(is_elementwise(n.op) or n.name in rotations | inside
                                              for n in graph.nodes):
            return None
        out = graph.node(graph.outputs[0])
        if not out.is_tensor:
            return None
        leaves = collect_leaves(graph, out.name, out.shape)
        if not leaves:
            raise Unsupported("an output that reads no input")
        ops = sorted({base_op(n.op) for n in graph.nodes if n.op not in ("input",) and n.op not in SIZE_OPS})
        how = "flat" if all(l.dense and not l.rotate for l in leaves) else "rows x columns, broadcast inputs"
        family = "rotary" if any(l.rotate for l in leaves) else "pointwise"
        return Match(family, f"elementwise ops ({', '.join(ops)}) over {len(out.shape)}-d tensors, {how}",
                     PointwiseDetail(out.name, out.shape, leaves))

    def seeds(self, match: Match, spec: OperatorSpec, target: HardwareTarget) -> list[dict]:
        sm = target.sm_count
        base = {"BLOCK": 1024, "num_warps": 4, "num_stages": 1, "persistent": False, "programs_per_sm": 4,
                "evict": "none", "unmasked": True, "sm_count": sm, **vendor_math(target)}
        # erf from a polynomial: bias_gelu_residual's kernel 104.5 us against 111.4 with the
        # library's erf on an H200 (bench/gelu_probe.py); torch.compile's own seed keeps the library's
        erf = any(base_op(n.op) in ("erf", "erfc") for n in trace(spec).nodes)
        if erf:
            base["erf"] = "poly"
        if target.interpreter:
            return [dict(base, BLOCK=1024, num_warps=1), dict(base, BLOCK=256, num_warps=1, persistent=True,
                                                              programs_per_sm=2, evict="stream", unmasked=False)]
        # The first guess gives each thread two 16-byte vectors of its narrowest input: with 8 bf16
        # elements a thread, bias_gelu_residual ran 5% slower on an H200 than with 16.
        vectors = max(4, 32 // min(_item_bytes(i.dtype) for i in spec.inputs))
        # Dropping the masks gained up to 3% on some specs (rotary_embedding, layernorm) and lost
        # up to 8% on gelu_tanh (H200): seeds of both.
        # The third is torch.compile's own choice for a long pointwise kernel, 1024 elements over 4
        # warps, reused reads kept: no config the search had reached beat it on clamp_log1p (H200:
        # 32.5 us against 34.4). It replaced a persistent seed, the slowest seed on four of five
        # pointwise specs; a persistent grid is still a knob.
        return [
            dict(base, BLOCK=2048, num_warps=warps_for(2048, target, per_thread=vectors)),
            dict(base, BLOCK=4096, num_warps=warps_for(4096, target, per_thread=16), evict="stream", unmasked=False),
            dict(base, BLOCK=1024, num_warps=4, evict="reuse", **({"erf": "library"} if erf else {})),
            dict(base, BLOCK=8192, num_warps=warps_for(8192, target, per_thread=16), num_stages=2),
        ]

    def check(self, config: Config, match: Match, target: HardwareTarget, spec: OperatorSpec) -> str | None:
        threads = config["num_warps"] * target.warp_size_threads
        if not target.interpreter and config["BLOCK"] < threads:
            return f"BLOCK={config['BLOCK']} is smaller than the {threads} threads of {config['num_warps']} warps"
        if not target.interpreter and config["BLOCK"] > threads * 64:
            return f"BLOCK={config['BLOCK']} puts more than 64 elements in each thread's registers"
        return super().check(config, match, target, spec)

    def render(self, spec: OperatorSpec, match: Match, config: Config) -> str:
        d: PointwiseDetail = match.detail
        graph = trace(spec)
        entry = Entry.of(spec, graph)
        out = graph.node(d.output)
        rank = len(d.frame)
        flat, broadcast_flat = d.flat, d.broadcast_flat
        stream = config["evict"] == "stream"
        keep = config["evict"] in ("reuse", "stream")
        reread = {l.node for l in d.leaves if l.rotate}  # read again at the partner columns
        last = "evict_last" if keep else ""

        def load(node: Node, emb, rotate: bool = False) -> Val:
            leaf = next(l for l in d.leaves if (l.node, l.emb, l.rotate) == (node.name, tuple(emb), rotate))
            tag = d.tag(leaf)
            other = "0.0" if leaf.kind == "f" else "0"
            cols = "rot_cols" if rotate else "cols"
            if leaf.dense and not rotate:
                first = stream and leaf.node not in reread  # evicting x would lose its partner load's lines
                ptr, policy = f"{tag}_ptr + offs", "evict_first" if first else ""
            elif leaf.dense and broadcast_flat:  # two masked loads at +-HALF: addresses stay contiguous
                ptr, policy = None, last
            elif leaf.dense:
                ptr, policy = f"{tag}_ptr + rows[:, None] * C + rot_cols[None, :]", last
            elif broadcast_flat and leaf.row_free(rank):
                ptr, policy = f"{tag}_ptr + cols * {tag}_sc", last
            elif broadcast_flat:  # the output's trailing dims, contiguous
                ptr, policy = f"{tag}_ptr + offs % {tag}_P", last
            elif leaf.row_free(rank):  # a bias: only the column moves it
                ptr, policy = f"{tag}_ptr + {cols}[None, :] * {tag}_sc", last
            else:
                ptr, policy = f"{tag}_ptr + {fr.leaf_row_offset(tag)}[:, None] + {cols}[None, :] * {tag}_sc", last
            ev = f', eviction_policy="{policy}"' if policy else ""
            cast = ".to(tl.float32)" if leaf.kind == "f" else ""
            if ptr is None:
                v = em.emit(f"tl.where(cols < HALF, tl.load({tag}_ptr + offs + HALF, mask=mask & (cols < HALF), "
                            f"other={other}{ev}), tl.load({tag}_ptr + offs - HALF, mask=mask & (cols >= HALF), "
                            f"other={other}{ev})){cast}", leaf.kind, node.name)
            else:
                v = em.emit(f"tl.load({ptr}, mask=mask, other={other}{ev}){cast}", leaf.kind, node.name)
            if rotate:  # cat((-x[..., h:], x[..., :h])): the first half is negated
                first_half = "cols < HALF" if broadcast_flat else "(cols < HALF)[None, :]"
                v = em.emit(f"tl.where({first_half}, -{v.expr}, {v.expr})", leaf.kind, "rotate-half")
            return v

        def special(node: Node, emb):
            x = rotate_half_source(graph, node)
            return load(graph.node(x), emb, rotate=True) if x else None

        em = Emitter(graph, load, special)
        result = em.gen(d.output, fr.identity(rank))
        generic = [l for l in d.leaves if not l.dense]
        rotary, by_cols = d.rotary, d.by_column
        by_rows = any(not l.row_free(rank) for l in generic)
        body = self._kernel_body(flat or broadcast_flat, by_rows, config["persistent"], rotary)
        if broadcast_flat and (by_cols or rotary):
            body.append(("        " if config["persistent"] else "    ") + "cols = offs % C")
        store_val = result.expr if result.kind != "b" else f"{result.expr}.to(tl.int8)"
        store = f"tl.store(out_ptr + offs, {store_val}.to(out_ptr.dtype.element_ty), mask=mask)"
        ind = "        " if config["persistent"] else "    "
        params = [f"{d.tag(l)}_ptr" for l in d.leaves] + ["out_ptr"]
        if flat:
            params += ["N"]
        elif broadcast_flat:
            params += ["N"] + [f"{d.tag(l)}_sc" for l in by_cols]
        else:
            params += ["R", "C", "G1", "G2"] + [
                p for l in generic for p in fr.leaf_stride_params(d.tag(l))]
        params += list(em.scalars.values()) + (["HALF"] if rotary and not broadcast_flat else []) + ["NPROG"]
        if flat:
            consts = ["BLOCK: tl.constexpr"]
        elif broadcast_flat:
            consts = (["BLOCK: tl.constexpr"] + (["C: tl.constexpr"] if by_cols or rotary else [])
                      + (["HALF: tl.constexpr"] if rotary else [])
                      + [f"{d.tag(l)}_P: tl.constexpr" for l in d.tables])
        else:
            consts = ["BLOCK_R: tl.constexpr", "BLOCK_C: tl.constexpr"]
        consts += ["EVEN: tl.constexpr", "IDX64: tl.constexpr"]
        kernel_lines = body + [ind + line for line in em.lines] + [ind + store]
        kernel = ("@triton.jit\ndef _pointwise_kernel(" + ", ".join(params + consts) + "):\n"
                  + "\n".join(kernel_lines))
        wrapper = self._wrapper(entry, d, out, config, em.scalars)
        helpers = helpers_source(em.lines, config.get("libdevice", False), config.get("erf", "library"))
        return module_source(spec, entry, match.family, config, [helpers, kernel], wrapper,
                             helpers=[fr.HELPERS, EXTENT_HELPER])

    @staticmethod
    def _kernel_body(flat: bool, generic: bool, persistent: bool, rotary: bool) -> list[str]:
        lines = ["    pid = tl.program_id(0)"]
        if flat:
            n_tiles = "tl.cdiv(N, BLOCK)"
        else:
            lines.append("    n_col_blocks = tl.cdiv(C, BLOCK_C)")
            n_tiles = "tl.cdiv(R, BLOCK_R) * n_col_blocks"
        if persistent:
            lines.append(f"    for tile in tl.range(pid, {n_tiles}, NPROG):")
            ind = "        "
        else:
            lines.append("    tile = pid")
            ind = "    "
        if flat:
            lines += [f"{ind}if IDX64:", f"{ind}    start = tile.to(tl.int64) * BLOCK", f"{ind}else:",
                      f"{ind}    start = tile * BLOCK",
                      f"{ind}offs = start + tl.arange(0, BLOCK)", *bounds_mask(ind, "mask", "[BLOCK]", "offs < N")]
            return lines
        lines += [f"{ind}rows = (tile // n_col_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)",
                  f"{ind}cols = (tile % n_col_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)",
                  f"{ind}if IDX64:", f"{ind}    rows = rows.to(tl.int64)",
                  *bounds_mask(ind, "mask", "[BLOCK_R, BLOCK_C]", "(rows[:, None] < R) & (cols[None, :] < C)"),
                  f"{ind}offs = rows[:, None] * C + cols[None, :]"]
        if generic:
            lines += fr.row_decomposition("rows", ind)
        if rotary:
            lines.append(f"{ind}rot_cols = tl.where(cols < HALF, cols + HALF, cols - HALF)")
        return lines

    @staticmethod
    def _wrapper(entry: Entry, d: PointwiseDetail, out: Node, config: Config, scalars) -> list[str]:
        rank = len(d.frame)
        lines = []
        for name in sorted({l.node for l in d.leaves if l.dense} | {l.node for l in d.tables}):
            v = entry.var(name)
            lines.append(f"{v} = {v}.contiguous()")
        leaf_list = ", ".join(f"({entry.var(l.node)}, {l.emb!r})" for l in d.leaves)
        lines.append(f"_shape = _frame_shape({rank}, [{leaf_list}])")
        device = entry.var(d.leaves[0].node)
        lines.append(f"_out = torch.empty(_shape, dtype={torch_dtype(out.dtype)}, device={device}.device)")
        lines.append("if _out.numel() == 0:\n    return _out")
        tensors = ", ".join(entry.var(l.node) for l in d.leaves)
        lines.append(f"_idx64 = max(_extent(t) for t in ({tensors}, _out)) >= 2 ** 31")
        sizes = [entry.size(n) for n in scalars]
        if d.flat or d.broadcast_flat:
            lines.append("_n = _out.numel()")
            lines.append(f"_tiles = _cdiv(_n, {config['BLOCK']})")
            even = f"_n % {config['BLOCK']} == 0"
            shape_args, consts = ["_n"], {"BLOCK": config["BLOCK"], "IDX64": "_idx64"}
            # each bias's stride along the last dim; C, HALF and each table's period compiled in
            shape_args += [f"_frame_strides({entry.var(l.node)}, {l.emb!r}, {rank})[{rank - 1}]"
                           for l in d.by_column]
            if d.by_column or d.rotary:
                consts["C"] = "_shape[-1]"
            if d.rotary:
                lines.append("if _shape[-1] % 2:\n    raise ValueError('a rotate-half needs an even last dim')")
                consts["HALF"] = "_shape[-1] // 2"
            for l in d.tables:
                consts[f"{d.tag(l)}_P"] = " * ".join(
                    f"_shape[{i}]" for i in range(l.trailing_from, rank))
        else:
            generic = [l for l in d.leaves if not l.dense]
            gl = ", ".join(f"({entry.var(l.node)}, {l.emb!r})" for l in generic)
            lines.append(f"_R, _C, _G1, _G2, _st = _frame_layout(_shape, ({rank - 1},), [{gl}])")
            lines.append(f"_block_c = min(_pow2(_C), {config['BLOCK']})")
            lines.append(f"_block_r = max(1, {config['BLOCK']} // _block_c)")
            lines.append("_tiles = _cdiv(_R, _block_r) * _cdiv(_C, _block_c)")
            shape_args = ["_R", "_C", "_G1", "_G2"] + [f"*_st[{i}]" for i in range(len(generic))]
            even = "_R % _block_r == 0 and _C % _block_c == 0"
            consts = {"BLOCK_R": "_block_r", "BLOCK_C": "_block_c", "IDX64": "_idx64"}
            if d.rotary:
                lines.append("if _C % 2:\n    raise ValueError('a rotate-half needs an even last dim')")
                sizes.append("_C // 2")
        consts["EVEN"] = even_flag(config, even)
        if config["persistent"]:
            lines.append(f"_grid = min(_tiles, {config['sm_count'] * config['programs_per_sm']})")
        else:
            lines.append("_grid = _tiles")
        args = [entry.var(l.node) for l in d.leaves] + ["_out"] + shape_args + sizes + ["_grid"]
        lines += launch("_pointwise_kernel", "(_grid,)", args, consts, config["num_warps"], config["num_stages"])
        lines.append("return _out")
        return lines


def _item_bytes(dtype: str) -> int:
    return getattr(torch, resolve_dtype(dtype) or dtype).itemsize


EXTENT_HELPER = '''
def _extent(t):
    """One past the largest element offset a tensor view reaches."""
    if t.is_contiguous() and t.numel() > 0:
        return t.numel()
    return 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0)
'''
