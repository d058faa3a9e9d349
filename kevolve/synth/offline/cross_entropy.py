"""Cross-entropy family: log-softmax over a vocabulary followed by NLL (mean, sum or none).

One program takes BLOCK_M rows and streams each row once in chunks of BLOCK_N, keeping an
online max and rescaled sum of exponentials per lane (one exponential per element with
lse=one_exp); with lse=grouped, GROUP neighbouring elements (held by one thread) share a running
max, kept in log2 units, so an element costs a max, a fused multiply-add, an exp2 and an add,
about half the instructions of a per-lane update. The target's logit is one gathered load.
`aligned` starts the chunks on 16-byte boundaries so that rows of an odd length still load as
vectors.
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
                                            PROGRAMS_PER_SM, Config, Knob, Match, Template, next_pow2, pow2, sizes_at,
                                            tuned_dims, warps_for)
from kevolve.synth.offline.trace import Graph, Node, Ref, trace

REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}
LSE = Knob("lse", ("rescale", "one_exp", "grouped"),
           "online log-sum-exp update: per lane with two exponentials per element or one, or per GROUP "
           "neighbouring elements of a thread (a max over them first, then one exp2 and an add each)")
GROUP = Knob("GROUP", pow2(2, 16), "neighbouring elements sharing one running max in the grouped update")
ALIGNED = Knob("aligned", (False, True), "read rows from 16-byte boundaries so the loads vectorize")


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
    knobs = (BLOCK_M, BLOCK_N, LSE, GROUP, ALIGNED, NUM_WARPS, NUM_STAGES, PERSISTENT, PROGRAMS_PER_SM, EVICT)

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
        # a row per program, 16 elements a thread: 95% of copy bandwidth for GPT-2's vocabulary on an H200
        base = {"BLOCK_M": 1, "BLOCK_N": chunk, "lse": "grouped", "GROUP": 8, "aligned": True,
                "num_warps": warps_for(chunk, target, 16), "num_stages": 2, "persistent": False,
                "programs_per_sm": 4, "evict": "none", "sm_count": target.sm_count}
        seeds = [base,
                 # two rows per program: twice the bytes in flight for a long vocabulary
                 dict(base, BLOCK_M=2, num_warps=warps_for(2 * chunk, target, 8)),
                 dict(base, BLOCK_N=min(next_pow2(vocab), 8192), num_warps=warps_for(min(next_pow2(vocab), 8192),
                                                                                     target, 16), num_stages=1),
                 dict(base, BLOCK_N=min(chunk, 2048), BLOCK_M=2, num_warps=warps_for(4096, target, 8),
                      persistent=True, programs_per_sm=4 if rows > 4 * target.sm_count else 1),
                 dict(base, lse="one_exp", evict="stream"),
                 dict(base, lse="rescale", aligned=False)]
        if target.interpreter:
            for s in seeds:
                s["num_warps"] = 1
        return seeds

    def inert(self, config: Config) -> set[str]:
        return set() if config["lse"] == "grouped" else {"GROUP"}

    def check(self, config: Config, match: Match, target: HardwareTarget, spec: OperatorSpec) -> str | None:
        if config["lse"] == "grouped" and config["GROUP"] > config["BLOCK_N"]:
            return "a group larger than the chunk"
        if config["BLOCK_M"] * config["BLOCK_N"] > 16384:
            return "more than 16384 running maxima and sums per program spill"
        return super().check(config, match, target, spec)

    def render(self, spec: OperatorSpec, match: Match, config: Config) -> str:
        d: CrossEntropyDetail = match.detail
        graph = trace(spec)
        entry = Entry.of(spec, graph)
        ev_x = ', eviction_policy="evict_first"' if config["evict"] == "stream" else ""
        body = "\n".join(_rows_body(config, ev_x))
        if config["persistent"]:
            head, ind = ["    for tile in tl.range(pid, tl.cdiv(M, BLOCK_M), NPROG):"], "        "
        else:
            head, ind = ["    tile = pid"], "    "
        rows_kernel = "\n".join(
            ["@triton.jit", "def _ce_rows(x_ptr, t_ptr, loss_ptr, M, V, stride_m, IGNORE, NPROG,",
             "             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr, IDX64: tl.constexpr,",
             "             ALIGN: tl.constexpr):",
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
                 # elements per 16 bytes: aligned chunks only where the base pointer allows them
                 (f"_align = 16 // {x}.element_size() if {x}.data_ptr() % 16 == 0 else 1" if config["aligned"]
                  else "_align = 1"),
                 f"_tiles = _cdiv(_m, {config['BLOCK_M']})",
                 (f"_grid = min(_tiles, {config['sm_count'] * config['programs_per_sm']})" if config["persistent"]
                  else "_grid = _tiles"),
                 "if _m > 0:"]
        lines += ["    " + l for l in launch("_ce_rows", "(_grid,)",
                                            [x, t, "_loss", "_m", "_v", f"{x}.stride()[0]", str(d.ignore_index),
                                             "_grid"],
                                            {"BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"],
                                             "GROUP": config.get("GROUP", 1), "IDX64": "_idx64", "ALIGN": "_align"},
                                            config["num_warps"], config["num_stages"])]
        if d.reduction == "none":
            lines.append("return _loss")
        else:
            lines.append(f"_out = torch.empty([], dtype={out_dtype}, device={x}.device)")
            # up to 8192 losses in one pass: passes of 1024 cost 10 us at M = 8192 on an H200, each
            # waiting on its loads
            lines.append("_rblock = min(max(_pow2(_m), 256), 8192)")
            lines += launch("_ce_reduce", "(1,)", ["_loss", t, "_out", "_m", str(d.ignore_index)],
                            {"BLOCK": "_rblock", "MEAN": d.reduction == "mean"}, 8, 1)
            lines.append("return _out")
        return module_source(spec, entry, "cross_entropy", config, [rows_kernel, reduce_kernel], lines)


# The online log-sum-exp update of a chunk x into per-lane running maxima m and sums s.
_RESCALE = """m_new = tl.maximum(m, x)
m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
m = m_new"""
# One exponential per element instead of two: exp(-|x - m|) is the factor that rescales the old
# sum when x is the new maximum, and x's own term when it is not (the exponentials' unit is busy).
_ONE_EXP = """hi = tl.maximum(m, x)
e = tl.exp(tl.minimum(m, x) - tl.where(hi == float("-inf"), 0.0, hi))
s = tl.where(x > m, s * e + 1.0, s + e)
m = hi"""


# Grouped: the chunk seen as [BLOCK_M, BLOCK_N // GROUP, GROUP], one running max (log2 units,
# m = max(x) * log2(e)) and sum per group; the group's max is taken before its exponentials.
_GROUPED = """xg = tl.reshape(x, [BLOCK_M, BLOCK_N // GROUP, GROUP])
hi = tl.maximum(m, tl.max(xg, axis=2) * 1.4426950408889634)
hi_safe = tl.where(hi == float("-inf"), 0.0, hi)
s = s * tl.math.exp2(m - hi_safe) + tl.sum(tl.math.exp2(xg * 1.4426950408889634 - hi_safe[:, :, None]), axis=2)
m = hi"""


def _rows_body(config: Config, ev_x: str) -> list[str]:
    """The per-tile code of _ce_rows: stream the rows once, then the loss of each row.
    With ALIGN > 1 a row is read from the 16-byte boundary at or before its start, so the interior
    chunks are aligned and unmasked along the row and load as vectors; the first and the last
    chunks carry the masks (a row of an odd length, like GPT-2's 50257, otherwise loads scalars)."""
    grouped = config["lse"] == "grouped"
    update = {"one_exp": _ONE_EXP, "rescale": _RESCALE, "grouped": _GROUPED}[config["lse"]].split("\n")
    lanes = "BLOCK_N // GROUP" if grouped else "BLOCK_N"
    load = (f'x = tl.load(x_ptr + start[:, None] + p[None, :], mask=mask, other=float("-inf"){ev_x}).to(tl.float32)')

    def chunk(loop: str, masked: bool) -> list[str]:
        mask = ["    cols = p[None, :] - lead[:, None]", "    mask = rmask[:, None] & (cols >= 0) & (cols < V)"] \
            if masked else ["    mask = rmask[:, None]"]
        return [loop, "    p = c0 + tl.arange(0, BLOCK_N)"] + mask + ["    " + load] + ["    " + u for u in update]

    out = ["rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)",
           "rmask = rows < M",
           "if IDX64:",
           "    rows = rows.to(tl.int64)",
           "base = rows * stride_m",
           "lead = base % ALIGN  # elements between the 16-byte boundary and the row's start",
           "start = tl.multiple_of(base - lead, ALIGN)",
           "# online log-sum-exp: a running max per lane and a sum rescaled when the max grows",
           f'm = tl.full([BLOCK_M, {lanes}], float("-inf"), tl.float32)',
           f"s = tl.zeros([BLOCK_M, {lanes}], tl.float32)"]
    out += chunk("for c0 in tl.range(0, BLOCK_N, BLOCK_N):", True)  # the head: before the row starts
    full_end = "(V // BLOCK_N) * BLOCK_N"  # chunks below this lie inside every row of the tile
    out += chunk(f"for c0 in tl.range(BLOCK_N, {full_end}, BLOCK_N):", False)
    out += chunk(f"for c0 in tl.range(tl.maximum(BLOCK_N, {full_end}), V + ALIGN - 1, BLOCK_N):", True)
    out += ["row_max = tl.max(m, axis=1)",
            'row_safe = tl.where(row_max == float("-inf"), 0.0, row_max)']
    if grouped:  # back from log2 units
        out += ["row_sum = tl.sum(s * tl.math.exp2(m - row_safe[:, None]), axis=1)",
                "lse = (row_safe + tl.math.log2(row_sum)) * 0.6931471805599453"]
    else:
        out += ["row_sum = tl.sum(s * tl.exp(m - row_safe[:, None]), axis=1)",
                "lse = row_safe + tl.log(row_sum)"]
    out += [
            "target = tl.load(t_ptr + rows, mask=rmask, other=IGNORE)",
            "valid = rmask & (target != IGNORE) & (target >= 0) & (target < V)",
            "picked = tl.load(x_ptr + base + tl.where(valid, target, 0), mask=valid, other=0.0).to(tl.float32)",
            "tl.store(loss_ptr + rows, tl.where(valid, lse - picked, 0.0), mask=rmask)"]
    return out
