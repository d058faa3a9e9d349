"""Writing the row-wise kernels: leaf loads, reductions (whole row, or passes over row
chunks with an online softmax), and stores, for one config of a matched graph.

The passes: a reduction's pass is one more than those of the reductions its input needs (a
variance takes two, its mean first); values constant along a row are computed once per program,
outside the loops; the output is written in a last pass (or once per row for a reduced output).
"""

from __future__ import annotations

from dataclasses import dataclass

from kevolve.synth.offline import frame as fr
from kevolve.synth.offline.expr import Emitter, Val
from kevolve.synth.offline.frame import Leaf
from kevolve.synth.offline.template import Config, bounds_mask
from kevolve.synth.offline.trace import Graph, Node


@dataclass(frozen=True)
class Red:
    name: str
    kind: str  # sum | max | min | var
    input: str
    correction: float = 0.0


@dataclass(frozen=True)
class RowDetail:
    output: str
    frame: tuple[str, ...]
    cols: tuple[int, ...]  # the reduced frame dims
    reductions: tuple[Red, ...]
    levels: tuple[tuple[str, int], ...]  # reduction -> pass, without online fusion
    pairs: tuple[tuple[str, str], ...]  # (max, sum of exp) pairs an online pass can fuse
    leaves: tuple[Leaf, ...]
    out_full: bool
    out_emb: tuple
    aliases: tuple[tuple[str, str], ...] = ()  # getitem(max.dim, 0) -> the max

    @property
    def trailing(self) -> bool:
        rank = len(self.frame)
        return self.cols == tuple(range(rank - len(self.cols), rank))

    def level_map(self, online: bool) -> dict[str, int]:
        levels = dict(self.levels)
        if online:
            for mx, sm in self.pairs:
                levels[sm] = levels[mx]
        return levels


class RowCode:
    """Writes the kernels of one config: shared leaf loads, reductions and stores."""

    def __init__(self, graph: Graph, d: RowDetail, config: Config):
        self.graph, self.d, self.config = graph, d, config
        self.tags = {(l.node, l.emb): f"l{i}" for i, l in enumerate(d.leaves)}
        self.reds = {r.name: r for r in d.reductions}
        self.aliases = dict(d.aliases)
        self.stream = config.get("evict") == "stream"
        self.scalars: dict[str, str] = {}
        self.helper_lines: list[str] = []

    # Leaves -----------------------------------------------------------------------------------
    def leaf(self, node: Node, emb) -> Leaf:
        return next(l for l in self.d.leaves if l.node == node.name and l.emb == tuple(emb))

    def load(self, em: Emitter, node: Node, emb, row_scope: bool, last_read: bool = False) -> Val:
        leaf = self.leaf(node, emb)
        tag = self.tags[(leaf.node, leaf.emb)]
        other = "0.0" if leaf.kind == "f" else "0"
        # A looped kernel reads each row again in its next pass: keep it in L2 until the last.
        full_policy = "evict_last" if self.config["variant"] == "looped" and not last_read else "evict_first"
        if not leaf.along_rows and not leaf.along_cols:
            ptr, mask, policy = f"{tag}_ptr", None, "evict_last"
        elif leaf.dense:
            ptr, mask, policy = f"{tag}_ptr + row_base[:, None] + cols[None, :]", "mask", full_policy
        elif not leaf.along_cols:
            ptr, mask, policy = f"{tag}_ptr + {tag}_row[:, None]", "rmask[:, None]", "evict_last"
        elif not leaf.along_rows:
            ptr, mask, policy = f"{tag}_ptr + cols[None, :] * {tag}_sc", "cmask[None, :]", "evict_last"
        else:
            ptr, mask, policy = f"{tag}_ptr + {tag}_row[:, None] + cols[None, :] * {tag}_sc", "mask", full_policy
        ev = f', eviction_policy="{policy}"' if self.stream else ""
        masking = f", mask={mask}, other={other}" if mask else ""
        cast = ".to(tl.float32)" if leaf.kind == "f" else ""
        return em.emit(f"tl.load({ptr}{masking}{ev}){cast}", leaf.kind, node.name)

    def red_of(self, node: Node) -> str | None:
        """The reduction a node is (or is the value of), if any."""
        name = self.aliases.get(node.name, node.name)
        return name if name in self.reds else None

    def col_free(self, emb) -> bool:
        return not any(f in self.d.cols for f in emb if f is not None)

    # Kernel pieces ----------------------------------------------------------------------------
    def prologue(self, persistent: bool) -> tuple[list[str], str]:
        lines = ["    pid = tl.program_id(0)"]
        if persistent:
            lines.append("    for tile in tl.range(pid, tl.cdiv(R, BLOCK_M), NPROG):")
            ind = "        "
        else:
            lines.append("    tile = pid")
            ind = "    "
        lines += [f"{ind}rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)",
                  *bounds_mask(ind, "rmask", "[BLOCK_M]", "rows < R"),
                  f"{ind}if IDX64:", f"{ind}    rows = rows.to(tl.int64)", f"{ind}row_base = rows * N"]
        generic = [l for l in self.d.leaves if not l.dense and l.along_rows]
        if generic or not self.dense_out():
            lines += fr.row_decomposition("rows", ind)
        for l in generic:
            tag = self.tags[(l.node, l.emb)]
            lines.append(f"{ind}{tag}_row = {fr.leaf_row_offset(tag)}")
        if not self.dense_out() and self.d.out_full:
            lines.append(f"{ind}out_row = {fr.leaf_row_offset('out')}")
        return lines, ind

    @staticmethod
    def col_mask(ind: str) -> list[str]:
        return bounds_mask(ind, "cmask", "[BLOCK_N]", "cols < N") + [f"{ind}mask = rmask[:, None] & cmask[None, :]"]

    def dense_out(self) -> bool:
        return self.d.trailing or not self.d.out_full

    def store_full(self, val: Val) -> str:
        ptr = ("out_ptr + row_base[:, None] + cols[None, :]" if self.dense_out()
               else "out_ptr + out_row[:, None] + cols[None, :] * out_sc")
        return f"tl.store({ptr}, {self.cast_out(val)}, mask=mask)"

    def store_rows(self, val: Val) -> str:
        return f"tl.store(out_ptr + rows[:, None], {self.cast_out(val)}, mask=rmask[:, None])"

    @staticmethod
    def cast_out(val: Val) -> str:
        v = val.expr if val.kind != "b" else f"{val.expr}.to(tl.int8)"
        return f"{v}.to(out_ptr.dtype.element_ty)"

    def emitter(self, prefix: str, special) -> Emitter:
        em = Emitter(self.graph, lambda n, e: None, special, prefix=prefix)
        em.scalars = self.scalars  # one set of kernel size arguments across scopes
        return em

    # Whole row --------------------------------------------------------------------------------
    def whole_row(self) -> list[str]:
        lines, ind = self.prologue(self.config["persistent"])
        lines += [f"{ind}cols = tl.arange(0, BLOCK_N)"] + self.col_mask(ind)
        results: dict[str, Val] = {}

        def special(node: Node, emb):
            name = self.red_of(node)
            if name:
                if name not in results:
                    results[name] = self.reduce_whole(em, self.reds[name])
                return results[name]
            return None

        em = self.emitter("v", special)
        em.load = lambda n, e: self.load(em, n, e, row_scope=False)
        out = em.gen(self.d.output, self.d.out_emb)
        lines += [ind + l for l in em.lines]
        lines.append(ind + (self.store_full(out) if self.d.out_full else self.store_rows(out)))
        self.helper_lines += em.lines
        return lines

    def reduce_whole(self, em: Emitter, red: Red) -> Val:
        v = em.gen(red.input, fr.identity(len(self.d.frame)))
        if red.kind == "sum":
            return em.emit(f"tl.sum(tl.where(mask, {v.expr}, 0.0), axis=1, keep_dims=True)", "f", red.name)
        if red.kind in ("max", "min"):
            fill = 'float("-inf")' if red.kind == "max" else 'float("inf")'
            return em.emit(f"tl.{red.kind}(tl.where(mask, {v.expr}, {fill}), axis=1, keep_dims=True)", "f", red.name)
        mean = em.emit(f"tl.sum(tl.where(mask, {v.expr}, 0.0), axis=1, keep_dims=True) / N", "f", "mean for var")
        dev = em.emit(f"tl.where(mask, {v.expr} - {mean.expr}, 0.0)", "f")
        return em.emit(f"tl.sum({dev.expr} * {dev.expr}, axis=1, keep_dims=True) / (N - {red.correction!r})",
                       "f", red.name)

    # Looped -----------------------------------------------------------------------------------
    def looped(self) -> list[str]:
        lines, ind = self.prologue(self.config["persistent"])
        online = self.config.get("online", False)
        levels = self.d.level_map(online)
        fused = dict((s, m) for m, s in self.d.pairs) if online else {}
        results: dict[str, Val] = {}

        def row_special(node: Node, emb):
            if self.red_of(node):
                return results[self.red_of(node)]
            if node.op == "input":
                return self.load(row_em, node, emb, row_scope=True)
            return None

        row_em = self.emitter("r", row_special)

        def chunk_special(node: Node, emb):
            if self.red_of(node):
                return results[self.red_of(node)]
            if node.is_tensor and self.col_free(emb):  # constant along the row: computed once
                return row_em.gen(node.name, emb)
            return None

        loop = [f"{ind}for c0 in tl.range(0, N, BLOCK_N):", f"{ind}    cols = c0 + tl.arange(0, BLOCK_N)",
                *self.col_mask(ind + "    ")]
        ident = fr.identity(len(self.d.frame))
        for p in range(1, max(levels.values()) + 1):
            reds = [r for r in self.d.reductions if levels[r.name] == p and r.name not in fused]
            # a var needs its mean first: an extra pass one level down
            means = [r for r in self.d.reductions if r.kind == "var" and levels[r.name] == p + 1]
            if not reds and not means:
                continue
            em = self.emitter(f"p{p}_", chunk_special)
            em.load = lambda n, e, em=em: self.load(em, n, e, row_scope=False)
            before = len(row_em.lines)
            init, body, final = [], [], []
            for r in means:
                v = em.gen(r.input, ident)
                init.append(f"acc_mean_{r.name} = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)")
                body.append(f"acc_mean_{r.name} += tl.where(mask, {v.expr}, 0.0)")
                final.append(f"mean_{r.name} = tl.sum(acc_mean_{r.name}, axis=1, keep_dims=True) / N")
            for r in reds:
                v = em.gen(r.input, ident)
                acc = f"acc_{r.name}"
                sm = next((s for m, s in self.d.pairs if m == r.name), None) if online else None
                if r.kind == "sum":
                    init.append(f"{acc} = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)")
                    body.append(f"{acc} += tl.where(mask, {v.expr}, 0.0)")
                    final.append(f"red_{r.name} = tl.sum({acc}, axis=1, keep_dims=True)")
                elif r.kind in ("max", "min"):
                    fill = 'float("-inf")' if r.kind == "max" else 'float("inf")'
                    fn = "maximum" if r.kind == "max" else "minimum"
                    init.append(f"{acc} = tl.full([BLOCK_M, BLOCK_N], {fill}, tl.float32)")
                    if sm:
                        init.append(f"acc_{sm} = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)")
                        body += [f"x_{r.name} = tl.where(mask, {v.expr}, {fill})",
                                 f"m_new = tl.maximum({acc}, x_{r.name})",
                                 'm_safe = tl.where(m_new == float("-inf"), 0.0, m_new)',
                                 f"acc_{sm} = acc_{sm} * tl.exp({acc} - m_safe) + tl.exp(x_{r.name} - m_safe)",
                                 f"{acc} = m_new"]
                    else:
                        body.append(f"{acc} = tl.{fn}({acc}, tl.where(mask, {v.expr}, {fill}))")
                    final.append(f"red_{r.name} = tl.{r.kind}({acc}, axis=1, keep_dims=True)")
                    if sm:
                        final += [f'm_row = tl.where(red_{r.name} == float("-inf"), 0.0, red_{r.name})',
                                  f"red_{sm} = tl.sum(acc_{sm} * tl.exp({acc} - m_row), axis=1, keep_dims=True)"]
                else:  # var: the mean came from the pass before
                    init.append(f"{acc} = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)")
                    body.append(f"{acc} += tl.where(mask, ({v.expr} - mean_{r.name}) * ({v.expr} - mean_{r.name}), 0.0)")
                    final.append(f"red_{r.name} = tl.sum({acc}, axis=1, keep_dims=True) / (N - {r.correction!r})")
            lines += [ind + l for l in row_em.lines[before:]]
            lines += [ind + l for l in init] + loop + [ind + "    " + l for l in em.lines + body]
            lines += [ind + l for l in final]
            self.helper_lines += em.lines
            for r in reds:
                results[r.name] = Val(f"red_{r.name}", "f")
                if online and any(m == r.name for m, _ in self.d.pairs):
                    sm = next(s for m, s in self.d.pairs if m == r.name)
                    results[sm] = Val(f"red_{sm}", "f")
        if self.d.out_full:
            em = self.emitter("o", chunk_special)
            em.load = lambda n, e: self.load(em, n, e, row_scope=False, last_read=True)
            before = len(row_em.lines)
            out = em.gen(self.d.output, self.d.out_emb)
            lines += [ind + l for l in row_em.lines[before:]]
            lines += loop + [ind + "    " + l for l in em.lines + [self.store_full(out)]]
            self.helper_lines += em.lines
        else:
            before = len(row_em.lines)
            out = row_em.gen(self.d.output, self.d.out_emb)
            lines += [ind + l for l in row_em.lines[before:]] + [ind + self.store_rows(out)]
        self.helper_lines += row_em.lines
        return lines
