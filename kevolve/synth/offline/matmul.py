"""Matmul family: mm / addmm / bmm with a fused elementwise epilogue (bias, activation,
residual, scale), generated from the traced graph.

Operands are inputs seen through views (a Linear's `weight.t()`, a 3-d input flattened to
rows); the wrapper replays those views and the kernel reads the operands through their strides.
The epilogue is emitted by expr.Emitter over the matmul's output frame, with the accumulator
standing in for the matmul node. Knobs: tile shape, warps, stages, grouped tile order (GROUP_M),
split-K (partial sums in an fp32 workspace, reduced by a second kernel that applies the
epilogue), a persistent grid, operand tiles fetched by the tensor memory accelerator (TMA), and
for float32 operands the dot's precision.
"""

from __future__ import annotations

from dataclasses import dataclass

from kevolve.hardware.target import HardwareTarget
from kevolve.specs.model import OperatorSpec
from kevolve.synth.offline import frame as fr
from kevolve.synth.offline.frame import Leaf
from kevolve.synth.offline.expr import Emitter, Unsupported, Val, VIEW_OPS, helpers_source, kind_of
from kevolve.synth.offline.module import Entry, launch, module_source, torch_dtype
from kevolve.synth.offline.pointwise import EXTENT_HELPER, is_elementwise
from kevolve.synth.offline.template import (NUM_STAGES, NUM_WARPS, PERSISTENT, PROGRAMS_PER_SM, Config, Knob,
                                            Match, Template, pow2, vendor_math)
from kevolve.synth.offline.trace import Graph, Node, Ref, trace

MATMUL_OPS = {"mm": 2, "addmm": 2, "bmm": 3, "baddbmm": 3}
OPERAND_VIEWS = {"t", "transpose", "permute", "view", "_unsafe_view", "reshape", "unsqueeze", "squeeze",
                 "expand", "alias", "detach", "clone", "lift_fresh_copy"}

BLOCK_M = Knob("BLOCK_M", pow2(16, 256), "output rows per tile")
BLOCK_N = Knob("BLOCK_N", pow2(16, 256), "output columns per tile")
BLOCK_K = Knob("BLOCK_K", pow2(16, 128), "reduction depth per loop step")
GROUP_M = Knob("GROUP_M", (1, 4, 8, 16), "tiles of rows visited together (L2 reuse of the B operand)")
SPLIT_K = Knob("SPLIT_K", (1, 2, 4, 8), "programs sharing one tile's reduction (partials in fp32)")
DOT_PRECISION = Knob("dot_precision", ("ieee", "tf32x3"), "float32 dot: exact, or three tf32 passes")
MAX_ACC_PER_THREAD = 128  # fp32 accumulators a thread holds; at 256 ptxas spills or fails (H200, 2026-12-02)
TMA = Knob("tma", (False, True), "operand tiles fetched by TMA descriptors (Hopper on); pointers where unaligned")


@dataclass(frozen=True)
class MatmulDetail:
    mm: str  # the matmul node
    a: tuple[str, ...]  # the A operand's view chain, input first
    b: tuple[str, ...]
    batched: bool
    dtype: str  # operands' dtype
    core: str  # the last epilogue node before any output views
    output: str
    leaves: tuple[Leaf, ...]
    core_emb: tuple = ()  # the core's dims in the matmul frame; -1: the flattened rows of a reshape
    shape_from: str | None = None  # the view whose sizes the output takes, if it is reshaped


def _chain(graph: Graph, name: str) -> tuple[str, ...]:
    """Views from an input to `name` (input first); Unsupported when something computes."""
    chain = []
    node = graph.node(name)
    while node.op != "input":
        if node.op not in OPERAND_VIEWS:
            raise Unsupported(f"a matmul operand computed by {node.op} (only inputs seen through views)")
        chain.append(node.name)
        node = graph.node(node.args[0].name)
    chain.append(node.name)
    return tuple(reversed(chain))


class MatmulTemplate(Template):
    families = ("matmul",)
    knobs = (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SPLIT_K, NUM_WARPS, NUM_STAGES, PERSISTENT, PROGRAMS_PER_SM,
             DOT_PRECISION, TMA)

    def match(self, graph: Graph, spec: OperatorSpec) -> Match | None:
        mms = [n for n in graph.nodes if n.op in MATMUL_OPS]
        if not mms:
            return None
        if len(mms) > 1:
            raise Unsupported("more than one matmul in the graph")
        if len(graph.outputs) != 1:
            raise Unsupported("a matmul graph with several outputs")
        mm = mms[0]
        ai, bi = (1, 2) if mm.op in ("addmm", "baddbmm") else (0, 1)
        a, b = _chain(graph, mm.args[ai].name), _chain(graph, mm.args[bi].name)
        dtypes = {graph.node(a[-1]).dtype, graph.node(b[-1]).dtype}
        if len(dtypes) != 1 or kind_of(next(iter(dtypes))) != "f":
            raise Unsupported(f"matmul operands of dtypes {sorted(map(str, dtypes))}")
        operand_nodes = set(a) | set(b)
        for n in graph.nodes:
            if n.name in operand_nodes or n.name == mm.name:
                continue
            if not is_elementwise(n.op):
                raise Unsupported(f"{n.op} beside the matmul")
        core = graph.outputs[0]
        views_after = []
        while graph.node(core).op in VIEW_OPS and core != mm.name:
            views_after.append(core)
            core = graph.node(core).args[0].name
        frame = tuple(mm.shape)
        batched = MATMUL_OPS[mm.op] == 3
        core_shape = tuple(graph.node(core).shape)
        core_emb = fr.identity(len(frame))
        reshapes = [n.name for n in graph.nodes if _row_reshape(graph, n, mm)]
        if core_shape != frame:
            # a Linear on a 3-d input: rows reshaped back to [..., N], elementwise ops after that
            if batched or core_shape[-1] != frame[-1] or not reshapes:
                raise Unsupported(f"an epilogue that changes the matmul's shape {list(frame)} to {list(core_shape)}")
            core_emb = (-1,) * (len(core_shape) - 1) + (1,)
        shape_from = views_after[0] if views_after else (reshapes[0] if reshapes else None)
        leaves = self._leaves(graph, mm, core, frame, core_emb, core_shape)
        epi = sorted({n.op for n in graph.nodes if n.name not in operand_nodes and n.op not in ("input",)
                      and n.name != mm.name and not n.op.startswith("sym")})
        detail = MatmulDetail(mm.name, a, b, batched, next(iter(dtypes)), core, graph.outputs[0], leaves, core_emb,
                              shape_from)
        return Match("matmul", f"{mm.op} of {detail.dtype} operands with the epilogue "
                     f"{', '.join(epi) if epi else '(none)'}", detail)

    @staticmethod
    def _leaves(graph: Graph, mm: Node, core: str, frame, core_emb, core_shape) -> tuple[Leaf, ...]:
        leaves: list[Leaf] = []
        rank = len(frame)

        def record(node: Node, emb) -> Val:
            if all((l.node, l.emb) != (node.name, tuple(emb)) for l in leaves):
                along_cols = (rank - 1) in emb
                along_rows = any(f is not None and f != rank - 1 for f in emb)
                dense = fr.is_dense(node, emb, frame)
                if -1 in emb:  # seen after the rows were reshaped: only the whole output shape is readable
                    if tuple(emb) != tuple(core_emb) or tuple(node.shape) != core_shape:
                        raise Unsupported("an input broadcast over part of a reshaped matmul output")
                    dense = True
                leaves.append(Leaf(node.name, tuple(emb), dense, kind_of(node.dtype), along_rows, along_cols))
            return Val("x", kind_of(node.dtype))

        em = Emitter(graph, record, lambda n, e: _claim(em, n, e, mm, Val("acc", "f")))
        em.gen(core, core_emb)
        return tuple(leaves)

    def seeds(self, match: Match, spec: OperatorSpec, target: HardwareTarget) -> list[dict]:
        d: MatmulDetail = match.detail
        sm = target.sm_count
        base = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "SPLIT_K": 1, "num_warps": 8,
                "num_stages": 3, "persistent": False, "programs_per_sm": 1, "sm_count": sm,
                **vendor_math(target)}
        if d.dtype == "float32":
            base["dot_precision"] = "ieee"
        if has_tma(target) and not d.batched:
            base["tma"] = False
        if target.interpreter:
            return [dict(base, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=1, num_stages=1),
                    dict(base, BLOCK_M=16, BLOCK_N=64, BLOCK_K=16, GROUP_M=4, SPLIT_K=2, num_warps=1,
                         num_stages=1, persistent=True)]
        if d.dtype == "float32":
            return [dict(base, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
                    dict(base, BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=3,
                         dot_precision="tf32x3"),
                    dict(base, BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=4)]
        if "tma" in base:  # the best of bench/matmul_sweep.py on the H200, then its runners-up
            wide = dict(base, BLOCK_N=256, tma=True)
            return [dict(wide, persistent=True), wide, dict(wide, BLOCK_K=32, num_stages=5), base]
        return [base,
                dict(base, BLOCK_N=256, num_warps=8, num_stages=3),
                dict(base, BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=4),
                dict(base, persistent=True, programs_per_sm=1, num_stages=4)]

    def check(self, config: Config, match: Match, target: HardwareTarget, spec: OperatorSpec) -> str | None:
        d: MatmulDetail = match.detail
        size = 4 if d.dtype == "float32" else 2
        smem = (config["BLOCK_M"] + config["BLOCK_N"]) * config["BLOCK_K"] * size * max(1, config["num_stages"])
        if not target.interpreter and smem > target.shared_memory_per_block_kib * 1024:
            return (f"tiles of {config['BLOCK_M']}x{config['BLOCK_K']} and {config['BLOCK_K']}x{config['BLOCK_N']} "
                    f"over {config['num_stages']} stages need {smem // 1024} KiB of shared memory")
        if config.get("tma") and (d.batched or not has_tma(target)):
            return ("TMA descriptors need compute capability 9.0 or later" if not has_tma(target)
                    else "TMA descriptors here cover 2-d operands, not a batched matmul")
        acc_per_thread = config["BLOCK_M"] * config["BLOCK_N"] // (config["num_warps"] * target.warp_size_threads)
        if not target.interpreter and acc_per_thread > MAX_ACC_PER_THREAD:
            return f"a {config['BLOCK_M']}x{config['BLOCK_N']} accumulator over {config['num_warps']} warps spills"
        return super().check(config, match, target, spec)

    def render(self, spec: OperatorSpec, match: Match, config: Config) -> str:
        d: MatmulDetail = match.detail
        graph = trace(spec)
        entry = Entry.of(spec, graph)
        mm = graph.node(d.mm)
        tags = {(l.node, l.emb): f"l{i}" for i, l in enumerate(d.leaves)}
        split = config["SPLIT_K"] > 1

        def load(node: Node, emb) -> Val:
            leaf = next(l for l in d.leaves if (l.node, l.emb) == (node.name, tuple(emb)))
            tag = tags[(leaf.node, leaf.emb)]
            if leaf.dense:
                ptr, mask = f"{tag}_ptr + rows[:, None] * N + rn[None, :]", "mask"
            elif not leaf.along_rows and not leaf.along_cols:
                ptr, mask = f"{tag}_ptr", None
            elif not leaf.along_rows:
                ptr, mask = f"{tag}_ptr + rn[None, :] * {tag}_sc", "cmask[None, :]"
            elif not leaf.along_cols:
                ptr, mask = f"{tag}_ptr + {tag}_row[:, None]", "rmask[:, None]"
            else:
                ptr, mask = f"{tag}_ptr + {tag}_row[:, None] + rn[None, :] * {tag}_sc", "mask"
            other = "0.0" if leaf.kind == "f" else "0"
            masking = f", mask={mask}, other={other}" if mask else ""
            cast = ".to(tl.float32)" if leaf.kind == "f" else ""
            return em.emit(f"tl.load({ptr}{masking}){cast}", leaf.kind, node.name)

        em = Emitter(graph, load, lambda n, e: _claim(em, n, e, mm, Val("acc", "f")))
        result = em.gen(d.core, d.core_emb)
        epilogue = self._epilogue_prelude(d, tags) + em.lines
        store = f"tl.store(out_ptr + rows[:, None] * N + rn[None, :], {result.expr}.to(out_ptr.dtype.element_ty), mask=mask)"
        leaf_params = [f"{tags[(l.node, l.emb)]}_ptr" for l in d.leaves]
        stride_params = [p for l in d.leaves if not l.dense for p in fr.leaf_stride_params(tags[(l.node, l.emb)])]
        sizes = list(em.scalars.values())
        consts = ["BLOCK_M: tl.constexpr", "BLOCK_N: tl.constexpr", "BLOCK_K: tl.constexpr", "GROUP_M: tl.constexpr",
                  "SPLIT_K: tl.constexpr", "EVEN_K: tl.constexpr", "IDX64: tl.constexpr", "UPCAST: tl.constexpr"]
        tma = bool(config.get("tma"))
        if tma:
            consts += ["TMA: tl.constexpr", "A_T: tl.constexpr", "B_T: tl.constexpr"]
        main_params = (["a_ptr", "b_ptr"] + (["a_desc", "b_desc"] if tma else []) + ([] if split else leaf_params)
                       + ["out_ptr", "M", "N", "K", "BATCH", "sa_b", "sa_m", "sa_k", "sb_b", "sb_k", "sb_n"])
        main_params += ([] if split else ["G1", "G2"] + stride_params + sizes) + ["NPROG"]
        body = self._main_body(config, d, tma)
        if split:
            body += ["        ws = out_ptr + pid_k * BATCH * M * N + rows[:, None] * N + rn[None, :]",
                     "        tl.store(ws, acc, mask=mask)"]
        else:
            body += ["        " + l for l in epilogue + [store]]
        if not config["persistent"]:  # one tile per program: no tile loop around the k loop
            head = body.index("    for tile in tl.range(pid, per_batch * BATCH, NPROG):")
            body = body[:head] + ["    tile = pid"] + [l[4:] for l in body[head + 1:]]
        kernels = [helpers_source(em.lines, config.get("libdevice", False)),
                   "@triton.jit\ndef _matmul_kernel(" + ", ".join(main_params + consts) + "):\n" + "\n".join(body)]
        if split:
            red_params = ["ws_ptr"] + leaf_params + ["out_ptr", "M", "N", "BATCH", "G1", "G2"] + stride_params + sizes
            red_body = ["    pid = tl.program_id(0)",
                        "    n_col = tl.cdiv(N, BLOCK_N)",
                        "    rows = (pid // n_col) * BLOCK_M + tl.arange(0, BLOCK_M)",
                        "    rn = (pid % n_col) * BLOCK_N + tl.arange(0, BLOCK_N)",
                        "    rmask = rows < BATCH * M",
                        "    cmask = rn < N",
                        "    if IDX64:", "        rows = rows.to(tl.int64)",
                        "    mask = rmask[:, None] & cmask[None, :]",
                        "    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)",
                        "    for s in tl.static_range(SPLIT_K):",
                        "        acc += tl.load(ws_ptr + s * BATCH * M * N + rows[:, None] * N + rn[None, :], mask=mask, other=0.0)"]
            red_body += ["    " + l for l in epilogue + [store]]
            kernels.append("@triton.jit\ndef _splitk_epilogue(" + ", ".join(
                red_params + ["BLOCK_M: tl.constexpr", "BLOCK_N: tl.constexpr", "SPLIT_K: tl.constexpr",
                              "IDX64: tl.constexpr"]) + "):\n" + "\n".join(red_body))
        wrapper = self._wrapper(entry, graph, d, config, em.scalars)
        helpers = [fr.HELPERS, EXTENT_HELPER] + ([TMA_HELPER] if tma else [])
        return module_source(spec, entry, "matmul", config, kernels, wrapper, helpers=helpers)

    @staticmethod
    def _epilogue_prelude(d: MatmulDetail, tags) -> list[str]:
        generic = [l for l in d.leaves if not l.dense and l.along_rows]
        lines = fr.row_decomposition("rows", "") if generic else []
        return lines + [f"{tags[(l.node, l.emb)]}_row = {fr.leaf_row_offset(tags[(l.node, l.emb)])}" for l in generic]

    @staticmethod
    def _main_body(config: Config, d: MatmulDetail, tma: bool) -> list[str]:
        precision = f', input_precision="{config["dot_precision"]}"' if d.dtype == "float32" else ""
        mask_k = ("(rk[None, :] < K - k * BLOCK_K * SPLIT_K)", "(rk[:, None] < K - k * BLOCK_K * SPLIT_K)")
        # TMA: the descriptor fetches a whole tile and fills what lies outside the operand with
        # zeros, so no masks; an operand stored transposed is fetched as stored and turned here.
        by_tma = [
            "            if TMA:",
            "                kk = (pid_k + k * SPLIT_K) * BLOCK_K",
            "                if A_T:",
            "                    a = a_desc.load([kk, pid_m * BLOCK_M]).T",
            "                else:",
            "                    a = a_desc.load([pid_m * BLOCK_M, kk])",
            "                if B_T:",
            "                    b = b_desc.load([pid_n * BLOCK_N, kk]).T",
            "                else:",
            "                    b = b_desc.load([kk, pid_n * BLOCK_N])",
            "            elif EVEN_K:",
        ] if tma else ["            if EVEN_K:"]
        return [
            "    pid = tl.program_id(0)",
            "    pid_k = tl.program_id(1)",
            "    num_pid_m = tl.cdiv(M, BLOCK_M)",
            "    num_pid_n = tl.cdiv(N, BLOCK_N)",
            "    per_batch = num_pid_m * num_pid_n",
            "    for tile in tl.range(pid, per_batch * BATCH, NPROG):",
            "        batch = tile // per_batch",
            "        t = tile % per_batch",
            "        # grouped order: GROUP_M row tiles share the B columns they read while in L2",
            "        in_group = GROUP_M * num_pid_n",
            "        first_m = (t // in_group) * GROUP_M",
            "        group_m = tl.minimum(num_pid_m - first_m, GROUP_M)",
            "        pid_m = first_m + (t % in_group) % group_m",
            "        pid_n = (t % in_group) // group_m",
            "        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)",
            "        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)",
            "        rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)",
            "        ram = rm % M",
            "        rbn = rn % N",
            "        if IDX64:",
            "            ram = ram.to(tl.int64)",
            "            rbn = rbn.to(tl.int64)",
            "        a_base = a_ptr + batch.to(tl.int64) * sa_b",
            "        b_base = b_ptr + batch.to(tl.int64) * sb_b",
            "        a_ptrs = a_base + ram[:, None] * sa_m + rk[None, :] * sa_k",
            "        b_ptrs = b_base + rk[:, None] * sb_k + rbn[None, :] * sb_n",
            "        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)",
            "        for k in range(0, tl.cdiv(K, BLOCK_K * SPLIT_K)):",
            *by_tma,
            "                a = tl.load(a_ptrs)",
            "                b = tl.load(b_ptrs)",
            "            else:",
            f"                a = tl.load(a_ptrs, mask={mask_k[0]}, other=0.0)",
            f"                b = tl.load(b_ptrs, mask={mask_k[1]}, other=0.0)",
            "            if UPCAST:",
            "                a = a.to(tl.float32)",
            "                b = b.to(tl.float32)",
            f"            acc = tl.dot(a, b, acc{precision})",
            "            a_ptrs += BLOCK_K * SPLIT_K * sa_k",
            "            b_ptrs += BLOCK_K * SPLIT_K * sb_k",
            "        rows = batch * M + rm",
            "        if IDX64:",
            "            rows = rows.to(tl.int64)",
            "        rmask = rm < M",
            "        cmask = rn < N",
            "        mask = rmask[:, None] & cmask[None, :]",
        ]

    @staticmethod
    def _wrapper(entry: Entry, graph: Graph, d: MatmulDetail, config: Config, scalars) -> list[str]:
        lines = []
        for name, chain in (("_a", d.a), ("_b", d.b)):
            lines.append(f"{name} = {_replay(entry, graph, chain)}")
        mm = graph.node(d.mm)
        rank = len(mm.shape)
        if d.batched:
            lines += ["_batch, _m, _k = _a.shape", "_n = _b.shape[2]",
                      "_sa = _a.stride()", "_sb = _b.stride()",
                      "_strides = (_sa[0], _sa[1], _sa[2], _sb[0], _sb[1], _sb[2])"]
        else:
            lines += ["_m, _k = _a.shape", "_n = _b.shape[1]", "_batch = 1",
                      "_strides = (0, _a.stride()[0], _a.stride()[1], 0, _b.stride()[0], _b.stride()[1])"]
        for n in sorted({l.node for l in d.leaves if l.dense}):
            lines.append(f"{entry.var(n)} = {entry.var(n)}.contiguous()")
        core = graph.node(d.core)
        shape = "[_batch, _m, _n]" if d.batched else "[_m, _n]"
        lines.append(f"_out = torch.empty({shape}, dtype={torch_dtype(core.dtype)}, device=_a.device)")
        generic = [l for l in d.leaves if not l.dense]
        layout = ", ".join(f"({entry.var(l.node)}, {l.emb!r})" for l in generic)
        lines.append(f"_R, _C, _G1, _G2, _st = _frame_layout({shape}, ({rank - 1},), [{layout}])")
        tensors = ", ".join(["_a", "_b", "_out"] + [entry.var(l.node) for l in d.leaves])
        split = config["SPLIT_K"]
        lines.append(f"_idx64 = max(_extent(t) for t in ({tensors},)) * {split} >= 2 ** 31")
        bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
        lines.append(f"_tiles = _batch * _cdiv(_m, {bm}) * _cdiv(_n, {bn})")
        nprog = config["sm_count"] * config["programs_per_sm"]
        lines.append(f"_grid = min(_tiles, {nprog})" if config["persistent"] else "_grid = _tiles")
        lines.append(f"_even_k = _k % ({bk} * {split}) == 0")
        # Tensors on the CPU run under Triton's interpreter, which multiplies 16-bit float tiles as
        # raw integers: widen them there.
        lines.append('_upcast = _a.device.type == "cpu"  # the interpreter multiplies 16-bit tiles as integers')
        leaf_args = [entry.var(l.node) for l in d.leaves]
        stride_args = [f"*_st[{i}]" for i in range(len(generic))]
        sizes = [entry.size(n) for n in scalars]
        consts = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": config["GROUP_M"], "SPLIT_K": split,
                  "EVEN_K": "_even_k", "IDX64": "_idx64", "UPCAST": "_upcast"}
        descs = []
        if config.get("tma"):
            lines.append(f"_a_desc, _a_t = _tma_operand(_a, ({bm}, {bk}))")
            lines.append(f"_b_desc, _b_t = _tma_operand(_b, ({bk}, {bn}))")
            lines.append("_tma = _a_desc is not None and _b_desc is not None")
            lines.append("if not _tma:  # an operand TMA cannot read: pointers, same tiles")
            lines.append("    _a_desc = _b_desc = None")
            descs = ["_a_desc", "_b_desc"]
            consts.update(TMA="_tma", A_T="_a_t", B_T="_b_t")
        lines.append("if _out.numel() == 0:\n    return _out" + _final_view(entry, graph, d, "_out"))
        if split > 1:
            lines.append(f"_ws = torch.empty([{split}, _batch * _m, _n], dtype=torch.float32, device=_a.device)")
            args = ["_a", "_b", *descs, "_ws", "_m", "_n", "_k", "_batch", "*_strides", "_grid"]
            lines += launch("_matmul_kernel", f"(_grid, {split})", args, consts, config["num_warps"],
                            config["num_stages"])
            red_args = ["_ws"] + leaf_args + ["_out", "_m", "_n", "_batch", "_G1", "_G2"] + stride_args + sizes
            lines.append("_red_grid = _cdiv(_batch * _m, 32) * _cdiv(_n, 64)")
            lines += launch("_splitk_epilogue", "(_red_grid,)", red_args,
                            {"BLOCK_M": 32, "BLOCK_N": 64, "SPLIT_K": split, "IDX64": "_idx64"}, 4, 1)
        else:
            args = ["_a", "_b", *descs] + leaf_args + ["_out", "_m", "_n", "_k", "_batch", "*_strides", "_G1", "_G2"]
            args += stride_args + sizes + ["_grid"]
            lines += launch("_matmul_kernel", "(_grid, 1)", args, consts, config["num_warps"], config["num_stages"])
        lines.append("return _out" + _final_view(entry, graph, d, "_out"))
        return lines


def has_tma(target: HardwareTarget) -> bool:
    """Tensor descriptors: NVIDIA from compute capability 9.0 (Hopper), and Triton's interpreter."""
    if target.interpreter:
        return True
    try:
        return target.vendor == "nvidia" and float(target.compute_capability) >= 9.0
    except ValueError:
        return False


TMA_HELPER = '''
def _tma_operand(t, block):
    """A TMA descriptor over a 2-d operand and whether it is stored transposed; (None, False)
    when TMA cannot read it: no unit-stride dim, or a base or row not on 16 bytes."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    if t.stride(1) == 1 or t.shape[1] == 1:
        stored, box, transposed = t, list(block), False
    elif t.stride(0) == 1 or t.shape[0] == 1:
        stored, box, transposed = t.t(), list(block)[::-1], True
    else:
        return None, False
    row_bytes = stored.stride(0) * stored.element_size()
    if stored.data_ptr() % 16 or row_bytes % 16 or stored.shape[1] * stored.element_size() < 16:
        return None, False
    return TensorDescriptor(stored, list(stored.shape), [stored.stride(0), 1], box), transposed
'''


def _row_reshape(graph: Graph, node: Node, mm: Node) -> bool:
    """A view of the 2-d matmul's frame back to [..., N] (a Linear applied to a 3-d input)."""
    if node.op not in ("view", "_unsafe_view", "reshape") or len(mm.shape) != 2:
        return False
    src = graph.node(node.args[0].name)
    return tuple(src.shape) == tuple(mm.shape) and tuple(node.shape) != tuple(mm.shape) \
        and node.shape[-1] == mm.shape[-1]


def _claim(em: Emitter, node: Node, emb, mm: Node, acc: Val) -> Val | None:
    """The accumulator stands for the matmul; addmm/baddbmm add their beta * input; a reshape of
    the rows back to [..., N] is the same elements in the same order."""
    if _row_reshape(em.graph, node, mm):
        return em.gen(node.args[0].name, fr.identity(2))
    if node.name != mm.name:
        return None
    if mm.op in ("mm", "bmm"):
        return acc
    alpha, beta = mm.kwargs.get("alpha", 1), mm.kwargs.get("beta", 1)
    c = em.arg(mm.args[0], mm, emb)
    scaled = acc.expr if alpha == 1 else f"{acc.expr} * {float(alpha)!r}"
    c_expr = c.expr if c.kind == "f" else f"{c.expr}.to(tl.float32)"
    if beta == 0:
        return em.emit(scaled, "f")
    return em.emit(f"({scaled} + {c_expr}{'' if beta == 1 else f' * {float(beta)!r}'})", "f")


def _size_arg(entry: Entry, a) -> str:
    if isinstance(a, Ref):
        return entry.size(a.name)
    return repr(a)


def _replay(entry: Entry, graph: Graph, chain: tuple[str, ...]) -> str:
    """An operand's views as Python on the wrapper's tensor (`p_linear_weight.t()`)."""
    expr = entry.var(chain[0])
    for name in chain[1:]:
        node = graph.node(name)
        args = node.args[1:]
        if node.op == "t":
            expr += ".t()"
        elif node.op == "transpose":
            expr += f".transpose({args[0]}, {args[1]})"
        elif node.op == "permute":
            expr += f".permute({', '.join(map(str, args[0]))})"
        elif node.op in ("view", "_unsafe_view", "reshape"):
            expr += f".reshape({', '.join(_size_arg(entry, s) for s in args[0])})"
        elif node.op == "unsqueeze":
            expr += f".unsqueeze({args[0]})"
        elif node.op == "squeeze":
            expr += f".squeeze({args[0]})" if args else ".squeeze()"
        elif node.op == "expand":
            expr += f".expand({', '.join(_size_arg(entry, s) for s in args[0])})"
    return expr


def _final_view(entry: Entry, graph: Graph, d: MatmulDetail, var: str) -> str:
    """The output's shape when the reference reshapes the matmul's result (a 3-d Linear)."""
    if d.shape_from is None:
        return ""
    node = graph.node(d.shape_from)
    if node.op not in ("view", "_unsafe_view", "reshape"):
        raise Unsupported(f"the output view {node.op}")
    return f".reshape({', '.join(_size_arg(entry, s) for s in node.args[1])})"
