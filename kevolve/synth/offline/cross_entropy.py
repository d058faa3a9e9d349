"""Cross-entropy family: log-softmax over a vocabulary followed by NLL (mean, sum or none).

One program takes BLOCK_M rows and streams each row once in chunks of BLOCK_N, keeping an
online max and rescaled sum of exponentials per lane; the target's logit is one gathered load.
Per-row losses go to an fp32 buffer, and a second single-program kernel reduces them in a
fixed order (so two runs give the same bits), dividing by the count of non-ignored targets.
"""

from __future__ import annotations

from dataclasses import dataclass

from kevolve.hardware.target import HardwareTarget
from kevolve.specs.model import OperatorSpec
from kevolve.synth.offline.expr import CAST_OPS, Unsupported
from kevolve.synth.offline.module import Entry, launch, module_source, torch_dtype
from kevolve.synth.offline.template import (BLOCK_M, BLOCK_N, EVICT, NUM_STAGES, NUM_WARPS, PERSISTENT,
                                            PROGRAMS_PER_SM, Config, Match, Template, next_pow2, sizes_at,
                                            tuned_dims, warps_for)
from kevolve.synth.offline.trace import Graph, Node, Ref, trace

REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}


@dataclass(frozen=True)
class CrossEntropyDetail:
    logits: str  # the input holding the logits [M, V]
    target: str  # the input holding class indices [M]
    reduction: str
    ignore_index: int
    output: str


def _ref(graph: Graph, a) -> Node | None:
    return graph.node(a.name) if isinstance(a, Ref) else None


def _strip_casts(graph: Graph, node: Node) -> Node:
    while node.op in CAST_OPS or node.op in ("alias", "clone", "detach"):
        node = graph.node(node.args[0].name)
    return node


def _log_softmax_input(graph: Graph, node: Node) -> Node | None:
    """t when node is t - amax(t) - log(sum(exp(t - amax(t)))) over the last dim."""
    if node.op != "sub":
        return None
    shifted, lse = _ref(graph, node.args[0]), _ref(graph, node.args[1])
    if shifted is None or lse is None or shifted.op != "sub" or lse.op != "log":
        return None
    t, mx = _ref(graph, shifted.args[0]), _ref(graph, shifted.args[1])
    total = _ref(graph, lse.args[0])
    if t is None or mx is None or total is None or mx.op != "amax" or total.op != "sum":
        return None
    e = _ref(graph, total.args[0])
    if e is None or e.op != "exp" or _ref(graph, e.args[0]) is not shifted or _ref(graph, mx.args[0]) is not t:
        return None
    rank = len(t.shape)
    if rank != 2 or [d % rank for d in mx.args[1]] != [1] or [d % rank for d in total.args[1]] != [1]:
        return None
    return t


class CrossEntropyTemplate(Template):
    families = ("cross_entropy",)
    knobs = (BLOCK_M, BLOCK_N, NUM_WARPS, NUM_STAGES, PERSISTENT, PROGRAMS_PER_SM, EVICT)

    def match(self, graph: Graph, spec: OperatorSpec) -> Match | None:
        nll = [n for n in graph.nodes if n.op in ("nll_loss_forward", "nll_loss_nd")]
        if not nll:
            return None
        node = nll[0]
        logp = _ref(graph, node.args[0])
        t = _log_softmax_input(graph, logp) if logp else None
        if t is None:
            raise Unsupported("an NLL loss whose input is not a log-softmax over the classes of [N, C] logits")
        logits = _strip_casts(graph, t)
        target = _ref(graph, node.args[1])
        if logits.op != "input" or target is None or target.op != "input":
            raise Unsupported("cross-entropy logits or targets that are computed, not inputs")
        if node.args[2] is not None:
            raise Unsupported("cross-entropy with class weights")
        out = graph.node(graph.outputs[0])
        if len(graph.outputs) != 1 or out.op != "getitem" or out.args[0] != Ref(node.name) or out.args[1] != 0:
            raise Unsupported("cross-entropy followed by other operations")
        reduction = REDUCTIONS[node.args[3]]
        if reduction == "none" and out.dtype != "float32":
            raise Unsupported("an unreduced cross-entropy in a dtype other than float32")
        detail = CrossEntropyDetail(logits.name, target.name, reduction, int(node.args[4]), out.name)
        return Match("cross_entropy", f"log-softmax over {logits.dtype} logits then NLL ({reduction}, "
                     f"ignore_index {detail.ignore_index})", detail)

    def seeds(self, match: Match, spec: OperatorSpec, target: HardwareTarget) -> list[dict]:
        d: CrossEntropyDetail = match.detail
        graph = trace(spec)
        rows, vocab = sizes_at(graph, spec, graph.node(d.logits).shape, tuned_dims(spec, target))
        chunk = min(next_pow2(vocab), 4096)
        base = {"BLOCK_M": 1, "BLOCK_N": chunk, "num_warps": warps_for(chunk, target, 8), "num_stages": 2,
                "persistent": False, "programs_per_sm": 4, "evict": "stream", "sm_count": target.sm_count}
        seeds = [base,
                 dict(base, BLOCK_N=min(next_pow2(vocab), 8192), num_warps=warps_for(min(next_pow2(vocab), 8192),
                                                                                     target, 16), num_stages=1),
                 dict(base, BLOCK_N=min(chunk, 2048), BLOCK_M=2, num_warps=warps_for(4096, target, 8),
                      persistent=True, programs_per_sm=4 if rows > 4 * target.sm_count else 1)]
        if target.interpreter:
            for s in seeds:
                s["num_warps"] = 1
        return seeds

    def check(self, config: Config, match: Match, target: HardwareTarget, spec: OperatorSpec) -> str | None:
        if config["BLOCK_M"] * config["BLOCK_N"] > 16384:
            return "more than 16384 running maxima and sums per program spill"
        return super().check(config, match, target, spec)

    def render(self, spec: OperatorSpec, match: Match, config: Config) -> str:
        d: CrossEntropyDetail = match.detail
        graph = trace(spec)
        entry = Entry.of(spec, graph)
        ev_x = ', eviction_policy="evict_first"' if config["evict"] == "stream" else ""
        body = f'''rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
rmask = rows < M
if IDX64:
    rows = rows.to(tl.int64)
base = rows * stride_m
# online log-sum-exp: a running max per lane and a sum rescaled when the max grows
m = tl.full([BLOCK_M, BLOCK_N], float("-inf"), tl.float32)
s = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
for c0 in tl.range(0, V, BLOCK_N):
    cols = c0 + tl.arange(0, BLOCK_N)
    mask = rmask[:, None] & (cols < V)[None, :]
    x = tl.load(x_ptr + base[:, None] + cols[None, :], mask=mask, other=float("-inf"){ev_x}).to(tl.float32)
    m_new = tl.maximum(m, x)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
    m = m_new
row_max = tl.max(m, axis=1)
row_safe = tl.where(row_max == float("-inf"), 0.0, row_max)
row_sum = tl.sum(s * tl.exp(m - row_safe[:, None]), axis=1)
lse = row_safe + tl.log(row_sum)
target = tl.load(t_ptr + rows, mask=rmask, other=IGNORE)
valid = rmask & (target != IGNORE) & (target >= 0) & (target < V)
picked = tl.load(x_ptr + base + tl.where(valid, target, 0), mask=valid, other=0.0).to(tl.float32)
tl.store(loss_ptr + rows, tl.where(valid, lse - picked, 0.0), mask=rmask)'''
        if config["persistent"]:
            head, ind = ["    for tile in tl.range(pid, tl.cdiv(M, BLOCK_M), NPROG):"], "        "
        else:
            head, ind = ["    tile = pid"], "    "
        rows_kernel = "\n".join(
            ["@triton.jit", "def _ce_rows(x_ptr, t_ptr, loss_ptr, M, V, stride_m, IGNORE, NPROG,",
             "             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IDX64: tl.constexpr):",
             "    pid = tl.program_id(0)"] + head + [ind + line for line in body.split("\n")])
        reduce_kernel = '''@triton.jit
def _ce_reduce(loss_ptr, t_ptr, out_ptr, M, IGNORE, BLOCK: tl.constexpr, MEAN: tl.constexpr):
    # one program, a fixed order: the same inputs give the same bits
    total = tl.zeros([BLOCK], tl.float32)
    count = tl.zeros([BLOCK], tl.float32)
    for start in tl.range(0, M, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < M
        total += tl.load(loss_ptr + offs, mask=mask, other=0.0)
        target = tl.load(t_ptr + offs, mask=mask, other=IGNORE)
        count += tl.where(mask & (target != IGNORE), 1.0, 0.0)
    result = tl.sum(total, axis=0)
    if MEAN:
        result = result / tl.sum(count, axis=0)
    tl.store(out_ptr, result.to(out_ptr.dtype.element_ty))
'''
        x, t = entry.var(d.logits), entry.var(d.target)
        out_dtype = torch_dtype(graph.node(d.output).dtype)
        lines = [f"{x} = {x}.contiguous()", f"{t} = {t}.contiguous()", f"_m, _v = {x}.shape",
                 f"_loss = torch.empty([_m], dtype=torch.float32, device={x}.device)",
                 f"_idx64 = {x}.numel() >= 2 ** 31",
                 f"_tiles = triton.cdiv(_m, {config['BLOCK_M']})",
                 (f"_grid = min(_tiles, {config['sm_count'] * config['programs_per_sm']})" if config["persistent"]
                  else "_grid = _tiles"),
                 "if _m > 0:"]
        lines += ["    " + l for l in launch("_ce_rows", "(_grid,)",
                                            [x, t, "_loss", "_m", "_v", f"{x}.stride()[0]", str(d.ignore_index),
                                             "_grid"],
                                            {"BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"],
                                             "IDX64": "_idx64"}, config["num_warps"], config["num_stages"])]
        if d.reduction == "none":
            lines.append("return _loss")
        else:
            lines.append(f"_out = torch.empty([], dtype={out_dtype}, device={x}.device)")
            lines += launch("_ce_reduce", "(1,)", ["_loss", t, "_out", "_m", str(d.ignore_index)],
                            {"BLOCK": 1024, "MEAN": d.reduction == "mean"}, 4, 1)
            lines.append("return _out")
        return module_source(spec, entry, "cross_entropy", config, [rows_kernel, reduce_kernel], lines)
