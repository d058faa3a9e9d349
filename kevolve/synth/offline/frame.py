"""Frames: the index space a kernel tile walks, as rows x columns.

A frame is an n-dim shape (a pointwise op's output, the input of a row reduction, a matmul's
output). Some of its dims are columns (the reduced dims, or just the last one), the others are
rows. Every input ("leaf") is embedded in the frame (`emb[i]` = the frame dim of the input's
dim i, None for a broadcast dim), and the generated wrapper works out, from the tensors' real
shapes and strides, each leaf's stride along three row groups and one column. So broadcasting,
transposed or permuted inputs and reductions over a middle dim all use one kernel shape:

    i2 = rows % G2; i1 = (rows // G2) % G1; i0 = rows // (G1 * G2)
    ptr + i0 * s0 + i1 * s1 + i2 * s2 + cols * sc

A leaf that is the frame itself, contiguous, skips that: `rows * C + cols`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kevolve.synth.offline.expr import Emb, Unsupported
from kevolve.synth.offline.trace import Node

@dataclass(frozen=True)
class Leaf:
    """An input read over a rows x columns frame: where its dims sit in the frame (`emb`), whether
    it is the frame itself and contiguous (`dense`), its value kind, and whether it varies along
    the rows and along the columns (a bias varies along the columns only)."""

    node: str
    emb: tuple
    dense: bool
    kind: str
    along_rows: bool
    along_cols: bool


# Plain Python, emitted into candidates that need it: only shapes and strides are read.
HELPERS = '''
def _frame_strides(t, emb, rank):
    """Strides of `t` over a frame of `rank` dims; emb[i] is the frame dim of t's dim i."""
    st = [0] * rank
    for i, f in enumerate(emb):
        if f is not None and t.shape[i] != 1:
            st[f] = t.stride()[i]
    return st


def _frame_shape(rank, leaves):
    """The frame's sizes, read off the inputs embedded in it."""
    shape = [1] * rank
    for t, emb in leaves:
        for i, f in enumerate(emb):
            if f is not None and t.shape[i] != 1:
                shape[f] = t.shape[i]
    return shape


def _merge(dims, shape, strides):
    groups = []
    for d in dims:
        if shape[d] == 1:
            continue
        if groups and all(st[groups[-1][-1]] == st[d] * shape[d] for st in strides):
            groups[-1].append(d)
        else:
            groups.append([d])
    return groups


_LAYOUTS = {}


def _frame_layout(shape, cols, leaves):
    """Rows x columns of the frame: (R, C, G1, G2, per-leaf (s0, s1, s2, sc)), worked out once per
    layout of the inputs: the bookkeeping is most of a launch's host time."""
    key = (tuple(shape), cols, tuple((t.shape, t.stride(), emb) for t, emb in leaves))
    layout = _LAYOUTS.get(key)
    if layout is None:
        if len(_LAYOUTS) >= 256:  # many shapes (a varying batch, say): forget the old ones
            _LAYOUTS.clear()
        layout = _LAYOUTS[key] = _work_out_layout(shape, cols, leaves)
    return layout


def _work_out_layout(shape, cols, leaves):
    """Dims merge where every leaf's strides allow; at most three row groups and one column group."""
    rank = len(shape)
    strides = [_frame_strides(t, emb, rank) for t, emb in leaves]
    col_groups = _merge([d for d in range(rank) if d in cols], shape, strides)
    row_groups = _merge([d for d in range(rank) if d not in cols], shape, strides)
    if len(col_groups) > 1:
        raise ValueError("the reduced dims of an input are not contiguous with each other; "
                         "pass a contiguous tensor")
    if len(row_groups) > 3:
        raise ValueError("an input's strides split the rows into more than three groups; "
                         "pass contiguous tensors")
    row_groups = [[] for _ in range(3 - len(row_groups))] + row_groups

    def size(group):
        n = 1
        for d in group:
            n *= shape[d]
        return n

    rows = size(row_groups[0]) * size(row_groups[1]) * size(row_groups[2])
    cols_n = size(col_groups[0]) if col_groups else 1
    per_leaf = []
    for st in strides:
        per_leaf.append(tuple(st[g[-1]] if g else 0 for g in row_groups)
                        + ((st[col_groups[0][-1]] if col_groups else 0),))
    return rows, cols_n, size(row_groups[1]), size(row_groups[2]), tuple(per_leaf)
'''


def identity(rank: int) -> Emb:
    return tuple(range(rank))


def is_dense(leaf: Node, emb: Emb, frame: tuple[str, ...]) -> bool:
    """An input that is the frame itself (same sizes, dims in order): indexable as rows * C + cols
    once made contiguous."""
    return tuple(leaf.shape) == tuple(frame) and tuple(emb) == identity(len(frame))


def frame_dims_covered(frame: tuple[str, ...], leaves: list[tuple[Node, Emb]]) -> None:
    """Every frame dim of size > 1 must be read off some leaf at run time."""
    covered = {f for node, emb in leaves for i, f in enumerate(emb) if f is not None and node.shape[i] != "1"}
    for d, size in enumerate(frame):
        if size != "1" and d not in covered:
            raise Unsupported(f"an output dim of size {size} that no input carries")


def row_decomposition(rows: str = "rows", indent: str = "    ") -> list[str]:
    """Kernel lines splitting row indices into the three row groups."""
    return [f"{indent}i2 = {rows} % G2",
            f"{indent}i1 = ({rows} // G2) % G1",
            f"{indent}i0 = {rows} // (G1 * G2)"]


def leaf_row_offset(tag: str) -> str:
    return f"(i0 * {tag}_s0 + i1 * {tag}_s1 + i2 * {tag}_s2)"


def leaf_stride_params(tag: str) -> list[str]:
    return [f"{tag}_s0", f"{tag}_s1", f"{tag}_s2", f"{tag}_sc"]
