"""Recognise tunable operators, fused sequences included, on a traced model's data flow.

Each matcher starts at an anchor call (the `rsqrt` of an RMSNorm, the `silu` of a SwiGLU, the
`mm` of a linear layer) and walks producers and consumers through reshaping views, so the
same sequence is found whatever the surrounding code looks like. A match says which calls it
covers, the operator's inputs over named dimensions (the spec's shapes), their dtypes and the
variant (epsilon, activation, casts) that the written reference must reproduce exactly.
Matchers run in priority order and a call belongs to one match at most.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from kevolve.models.trace import ModelTrace, OpCall, TensorArg, TensorMeta

# Views that keep element order: producers and consumers are followed through them.
TRANSPARENT = frozenset({"view", "_unsafe_view", "reshape", "_reshape_alias", "detach", "alias",
                         "lift_fresh"})
ACTIVATIONS = frozenset({"relu", "gelu", "silu", "sigmoid", "tanh"})


@dataclass(frozen=True)
class PatternInput:
    name: str
    shape: tuple[str, ...]  # dimension names
    dtype: str


@dataclass(frozen=True)
class Match:
    pattern: str  # rmsnorm | layernorm | softmax | glu | linear | bmm | pairwise_dot | bias_act | ...
    variant: tuple[tuple[str, Any], ...]  # what the reference must reproduce (eps, act, casts)
    calls: frozenset[int]
    inputs: tuple[PatternInput, ...]
    dims: tuple[tuple[str, int], ...]
    output: TensorMeta

    @property
    def variant_dict(self) -> dict[str, Any]:
        return dict(self.variant)

    @property
    def dims_dict(self) -> dict[str, int]:
        return dict(self.dims)


class Graph:
    """The trace as data flow: who produced a tensor, who consumed it."""

    def __init__(self, trace: ModelTrace):
        self.calls = trace.calls
        self.producers = trace.producers
        self.claimed: set[int] = set()  # calls already part of an accepted match
        self.users: dict[int, list[int]] = {}
        for call in self.calls:
            for t in call.tensor_args:
                users = self.users.setdefault(t.value, [])
                if not users or users[-1] != call.index:
                    users.append(call.index)

    def producer(self, arg: Any) -> OpCall | None:
        if not isinstance(arg, TensorArg) or arg.value not in self.producers:
            return None
        return self.calls[self.producers[arg.value][0]]

    def origin(self, arg: Any) -> tuple[OpCall | None, list[int]]:
        """The call that made `arg`'s data, looking back through transparent views."""
        path: list[int] = []
        call = self.producer(arg)
        while call is not None and call.name in TRANSPARENT and call.tensor_args:
            path.append(call.index)
            call = self.producer(call.tensor_args[0])
        return call, path

    def consumers(self, call: OpCall, slot: int = 0) -> list[tuple[OpCall, list[int]]]:
        """Calls that read `call`'s output, looking forward through transparent views."""
        out: list[tuple[OpCall, list[int]]] = []
        if slot >= len(call.outputs):
            return out
        pending = [(call.outputs[slot].value, [])]
        while pending:
            value, path = pending.pop()
            for index in self.users.get(value, []):
                user = self.calls[index]
                if user.name in TRANSPARENT and user.outputs:
                    pending.append((user.outputs[0].value, path + [index]))
                else:
                    out.append((user, path))
        return out

    def sole_consumer(self, call: OpCall) -> tuple[OpCall, list[int]] | None:
        """The one unclaimed call reading `call`'s output, if exactly one reads it."""
        found = self.consumers(call)
        if len(found) != 1 or found[0][0].index in self.claimed:
            return None
        return found[0]


def _row_dims(meta: TensorMeta) -> tuple[tuple[str, int], ...]:
    n = meta.shape[-1]
    return (("M", meta.numel // n if n else 0), ("N", n))


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _other(call: OpCall, value: int) -> TensorArg | None:
    """The tensor argument of a binary call that is not `value`."""
    args = [a for a in call.args[:2] if isinstance(a, TensorArg)]
    if len(args) == 2 and value in (args[0].value, args[1].value):
        return args[1] if args[0].value == value else args[0]
    return None


def _last_dim(dim: Any, ndim: int) -> bool:
    dims = dim if isinstance(dim, tuple) else (dim,)
    return len(dims) == 1 and isinstance(dims[0], int) and dims[0] in (-1, ndim - 1)


def _act_name(call: OpCall) -> str:
    if call.name == "gelu" and (call.kwarg("approximate") == "tanh"
                                or (len(call.args) > 1 and call.args[1] == "tanh")):
        return "gelu_tanh"
    return call.name


def _match(pattern: str, variant: dict[str, Any], calls, inputs, dims, output: TensorMeta) -> Match:
    return Match(pattern=pattern, variant=tuple(sorted(variant.items())), calls=frozenset(calls),
                 inputs=tuple(inputs), dims=tuple(dims), output=output)


# Matchers ----------------------------------------------------------------------------------------

def match_rmsnorm(g: Graph, rsqrt: OpCall) -> Match | None:
    add, p1 = g.origin(rsqrt.args[0])
    if add is None or add.name != "add" or len(add.args) < 2 or not _is_scalar(add.args[1]):
        return None
    mean, p2 = g.origin(add.args[0])
    if mean is None or mean.name != "mean" or len(mean.args) < 3 or mean.args[2] is not True:
        return None
    square, p3 = g.origin(mean.args[0])
    if square is None:
        return None
    xf = square.args[0]
    if not isinstance(xf, TensorArg) or not _last_dim(mean.args[1], len(xf.meta.shape)):
        return None
    if not ((square.name == "pow" and square.args[1] == 2)
            or (square.name == "mul" and isinstance(square.args[1], TensorArg)
                and square.args[1].value == xf.value)):
        return None
    calls = {rsqrt.index, add.index, mean.index, square.index, *p1, *p2, *p3}
    x = xf
    cast_in = g.producer(xf)
    upcast = cast_in is not None and cast_in.name == "_to_copy" and xf.meta.dtype == "float32"
    if upcast:
        x = cast_in.args[0]
        calls.add(cast_in.index)
    normed = next((c for c, path in g.consumers(rsqrt) if c.name == "mul" and _other(c, xf.value)
                   and g.origin(_other(c, xf.value))[0] is rsqrt), None)
    if normed is None:
        return None
    calls.add(normed.index)
    n = x.meta.shape[-1]
    weight, order, casted, last = None, "none", False, normed
    while True:
        nxt = g.sole_consumer(last)
        if nxt is None:
            break
        user, path = nxt
        if (user.name == "_to_copy" and not casted and upcast
                and user.outputs[0].meta.dtype == x.meta.dtype):
            casted = True
        elif user.name == "mul" and weight is None and len(user.args) >= 2:
            other = next((a for a in user.args[:2] if isinstance(a, TensorArg)
                          and a.meta.shape == (n,) and g.origin(a)[0] is not last), None)
            if other is None:
                break
            weight, order = other, ("after_cast" if casted else "before_cast")
        else:
            break
        calls.update([user.index, *path])
        last = user
    inputs = [PatternInput("x", ("M", "N"), x.meta.dtype)]
    if weight is not None:
        inputs.append(PatternInput("weight", ("N",), weight.meta.dtype))
    variant = {"eps": float(add.args[1]), "upcast": upcast, "weight": order, "cast_back": casted}
    return _match("rmsnorm", variant, calls, inputs, _row_dims(x.meta), last.outputs[0].meta)


def match_layernorm(g: Graph, ln: OpCall) -> Match | None:
    x, shape = ln.args[0], ln.args[1]
    if not isinstance(x, TensorArg) or tuple(shape) != (x.meta.shape[-1],):
        return None
    weight = ln.args[2] if len(ln.args) > 2 else None
    bias = ln.args[3] if len(ln.args) > 3 else None
    inputs = [PatternInput("x", ("M", "N"), x.meta.dtype)]
    for name, t in (("weight", weight), ("bias", bias)):
        if isinstance(t, TensorArg):
            inputs.append(PatternInput(name, ("N",), t.meta.dtype))
    variant = {"eps": float(ln.args[4]), "weight": isinstance(weight, TensorArg),
               "bias": isinstance(bias, TensorArg)}
    return _match("layernorm", variant, {ln.index}, inputs, _row_dims(x.meta), ln.outputs[0].meta)


def match_softmax(g: Graph, sm: OpCall) -> Match | None:
    x = sm.args[0]
    if not isinstance(x, TensorArg) or not _last_dim(sm.args[1], len(x.meta.shape)):
        return None
    calls = {sm.index}
    cast_in = g.producer(x)
    upcast = bool(sm.name == "_softmax" and len(sm.args) > 2 and sm.args[2])
    if (cast_in is not None and cast_in.name == "_to_copy" and x.meta.dtype == "float32"
            and g.users.get(x.value) == [sm.index]):
        calls.add(cast_in.index)
        x, upcast = cast_in.args[0], True
    last = sm
    nxt = g.sole_consumer(sm)
    cast_back = bool(upcast and nxt and nxt[0].name == "_to_copy"
                     and nxt[0].outputs[0].meta.dtype == x.meta.dtype)
    if cast_back:
        calls.update([nxt[0].index, *nxt[1]])
        last = nxt[0]
    variant = {"upcast": upcast and x.meta.dtype != "float32", "cast_back": cast_back, "scale": None, "mask": None}
    inputs, dims = [PatternInput("x", ("M", "N"), x.meta.dtype)], _row_dims(x.meta)
    masked = _attention_scores(g, x)
    if masked is not None:  # attention's scores: softmax(x * scale + mask), one kernel
        scores, mask, scale, more = masked
        x = scores
        calls |= more
        names = ("B", "H", "M", "N")
        broadcast = tuple(m == 1 and d != 1 for m, d in zip(mask.meta.shape, x.meta.shape))
        variant.update(scale=scale, mask="".join("1" if b else "x" for b in broadcast))
        inputs = [PatternInput("x", names, x.meta.dtype),
                  PatternInput("mask", tuple("1" if b else n for b, n in zip(broadcast, names)), mask.meta.dtype)]
        dims = tuple(zip(names, x.meta.shape))
    return _match("softmax", variant, calls, inputs, dims, last.outputs[0].meta)


def _attention_scores(g: Graph, x: TensorArg):
    """(scores, mask, scale, calls) where x = scores * scale + mask over 4-D attention scores."""
    add = g.producer(x)
    if (add is None or add.name != "add" or add.kwarg("alpha", 1) != 1 or len(x.meta.shape) != 4
            or g.users.get(x.value, [None])[0] is None or len(g.consumers(add)) != 1):
        return None
    tensors = [a for a in add.args[:2] if isinstance(a, TensorArg)]
    if len(tensors) != 2:
        return None
    full = next((t for t in tensors if t.meta.shape == x.meta.shape), None)
    mask = next((t for t in tensors if t is not full), None)
    if full is None or mask is None or len(mask.meta.shape) != 4 or any(
            m not in (1, d) for m, d in zip(mask.meta.shape, x.meta.shape)):
        return None
    calls, scale = {add.index}, None
    mul = g.producer(full)
    if (mul is not None and mul.name == "mul" and len(mul.args) == 2 and _is_scalar(mul.args[1])
            and len(g.consumers(mul)) == 1):
        full, scale = mul.args[0], float(mul.args[1])
        calls.add(mul.index)
    return full, mask, scale, calls


def match_glu(g: Graph, act: OpCall) -> Match | None:
    a = act.args[0]
    found = g.sole_consumer(act)
    if not isinstance(a, TensorArg) or found is None or found[0].name != "mul":
        return None
    mul, path = found
    b = next((t for t in mul.args[:2] if isinstance(t, TensorArg) and g.origin(t)[0] is not act), None)
    if b is None or b.meta.shape != a.meta.shape or b.meta.dtype != a.meta.dtype:
        return None
    inputs = [PatternInput("a", ("M", "N"), a.meta.dtype), PatternInput("b", ("M", "N"), b.meta.dtype)]
    return _match("glu", {"act": _act_name(act)}, {act.index, mul.index, *path}, inputs,
                  _row_dims(a.meta), mul.outputs[0].meta)


def match_linear(g: Graph, mm: OpCall) -> Match | None:
    if mm.name == "addmm":
        if mm.kwarg("beta", 1) != 1 or mm.kwarg("alpha", 1) != 1 or len(mm.args) != 3:
            return None
        bias, x, w = mm.args
        if not isinstance(bias, TensorArg) or len(bias.meta.shape) != 1:
            return None
    else:
        bias, (x, w) = None, mm.args[:2]
    m, k = x.meta.shape
    n = w.meta.shape[1]
    calls = {mm.index}
    transposed = g.producer(w)
    layout = "kn"
    if transposed is not None and len(transposed.tensor_args[0].meta.shape) == 2 and (
            transposed.name == "t"
            or (transposed.name == "transpose" and transposed.args[1] % 2 != transposed.args[2] % 2)
            or (transposed.name == "permute" and tuple(transposed.args[1]) == (1, 0))):
        w, layout = transposed.args[0], "nk"
        calls.add(transposed.index)
    bias_kind = "fused" if bias is not None else "none"
    last = mm
    found = g.sole_consumer(mm)
    if bias is None and found and found[0].name == "add" and found[0].kwarg("alpha", 1) == 1:
        other = next((t for t in found[0].args[:2] if isinstance(t, TensorArg)
                      and t.meta.shape == (n,)), None)
        if other is not None:
            bias, bias_kind, last = other, "add", found[0]
            calls.update([found[0].index, *found[1]])
            found = g.sole_consumer(last)
    act = "none"
    if found and found[0].name in ACTIVATIONS:
        act, last = _act_name(found[0]), found[0]
        calls.update([found[0].index, *found[1]])
    inputs = [PatternInput("x", ("M", "K"), x.meta.dtype),
              PatternInput("weight" if layout == "nk" else "w", ("N", "K") if layout == "nk" else ("K", "N"),
                           w.meta.dtype)]
    if bias is not None:
        inputs.append(PatternInput("bias", ("N",), bias.meta.dtype))
    variant = {"layout": layout, "bias": bias_kind, "act": act}
    return _match("linear", variant, calls, inputs, (("M", m), ("N", n), ("K", k)),
                  last.outputs[0].meta)


def match_pairwise_dot(g: Graph, bmm: OpCall) -> Match | None:
    a, b = bmm.args[:2]
    t = g.producer(b)
    if t is None or t.name not in ("transpose", "permute") or t.args[0].value != a.value:
        return None
    if t.name == "transpose" and sorted(d % 3 for d in t.args[1:3]) != [1, 2]:
        return None
    if t.name == "permute" and tuple(d % 3 for d in t.args[1]) != (0, 2, 1):
        return None
    batch, f, d = a.meta.shape
    return _match("pairwise_dot", {}, {bmm.index, t.index}, [PatternInput("x", ("B", "F", "D"), a.meta.dtype)],
                  (("B", batch), ("F", f), ("D", d)), bmm.outputs[0].meta)


def match_bmm(g: Graph, bmm: OpCall) -> Match | None:
    a, b = bmm.args[:2]
    batch, m, k = a.meta.shape
    n = b.meta.shape[2]
    inputs = [PatternInput("a", ("B", "M", "K"), a.meta.dtype), PatternInput("b", ("B", "K", "N"), b.meta.dtype)]
    return _match("bmm", {}, {bmm.index}, inputs, (("B", batch), ("M", m), ("N", n), ("K", k)),
                  bmm.outputs[0].meta)


def match_bias_act(g: Graph, act: OpCall) -> Match | None:
    add, path = g.origin(act.args[0])
    if add is None or add.name != "add" or add.kwarg("alpha", 1) != 1:
        return None
    x, bias = (list(add.args[:2]) + [None, None])[:2]
    if not (isinstance(x, TensorArg) and isinstance(bias, TensorArg)):
        return None
    if len(x.meta.shape) == 1:
        x, bias = bias, x
    if len(bias.meta.shape) != 1 or bias.meta.shape[0] != x.meta.shape[-1] or len(x.meta.shape) < 2:
        return None
    inputs = [PatternInput("x", ("M", "N"), x.meta.dtype), PatternInput("bias", ("N",), bias.meta.dtype)]
    return _match("bias_act", {"act": _act_name(act)}, {add.index, act.index, *path}, inputs,
                  _row_dims(x.meta), act.outputs[0].meta)


def match_embedding_bag(g: Graph, eb: OpCall) -> Match | None:
    args = list(eb.args) + [None] * 9
    table, indices, offsets, _scale, mode, _sparse, weights, last_offset, padding = args[:9]
    if (not all(isinstance(t, TensorArg) for t in (table, indices, offsets)) or mode not in (0, 1)
            or weights is not None or padding not in (None, -1)
            or len(indices.meta.shape) != 1 or len(offsets.meta.shape) != 1):
        return None
    v, d = table.meta.shape
    bags = offsets.meta.shape[0] - (1 if last_offset else 0)
    inputs = [PatternInput("table", ("V", "D"), table.meta.dtype),
              PatternInput("indices", ("L",), indices.meta.dtype),
              PatternInput("offsets", ("B+1",), offsets.meta.dtype)]
    return _match("embedding_bag", {"mode": "sum" if mode == 0 else "mean"}, {eb.index}, inputs,
                  (("V", v), ("D", d), ("B", bags), ("L", indices.meta.shape[0])), eb.outputs[0].meta)


def match_embedding(g: Graph, emb: OpCall) -> Match | None:
    table, ids = emb.args[:2]
    v, d = table.meta.shape
    inputs = [PatternInput("table", ("V", "D"), table.meta.dtype), PatternInput("ids", ("M",), ids.meta.dtype)]
    return _match("embedding", {}, {emb.index}, inputs, (("V", v), ("D", d), ("M", ids.meta.numel)),
                  emb.outputs[0].meta)


def match_rotary(g: Graph, cat: OpCall) -> Match | None:
    parts, dim = cat.args[0], cat.args[1] if len(cat.args) > 1 else 0
    if len(parts) != 2 or not _last_dim(dim, len(parts[0].meta.shape)):
        return None
    neg, upper, lower = g.producer(parts[0]), None, g.producer(parts[1])
    if neg is None or neg.name != "neg" or lower is None or lower.name != "slice":
        return None
    upper = g.producer(neg.args[0])
    if upper is None or upper.name != "slice" or upper.args[0].value != lower.args[0].value:
        return None
    x = upper.args[0]
    if len(x.meta.shape) != 4:
        return None
    batch, heads, seq, d = x.meta.shape
    if (d % 2 or upper.args[1] not in (-1, 3) or lower.args[1] not in (-1, 3)
            or upper.args[2] != d // 2 or lower.args[2] != 0 or lower.args[3] != d // 2):
        return None
    found = g.sole_consumer(cat)
    if found is None or found[0].name != "mul":
        return None
    mul_sin = found[0]
    sin = _other(mul_sin, cat.outputs[0].value)
    added = g.sole_consumer(mul_sin)
    if sin is None or added is None or added[0].name != "add":
        return None
    add = added[0]
    mul_cos = next((c for c in (g.producer(t) for t in add.args[:2] if isinstance(t, TensorArg))
                    if c is not None and c is not mul_sin and c.name == "mul"), None)
    cos = _other(mul_cos, x.value) if mul_cos is not None else None
    if cos is None:
        return None
    for table in (cos, sin):
        lead, tail = table.meta.shape[:-2], table.meta.shape[-2:]
        if any(s != 1 for s in lead) or tail != (seq, d):
            return None
    inputs = [PatternInput("x", ("B", "H", "S", "D"), x.meta.dtype),
              PatternInput("cos", ("S", "D"), cos.meta.dtype), PatternInput("sin", ("S", "D"), sin.meta.dtype)]
    calls = {upper.index, lower.index, neg.index, cat.index, mul_sin.index, mul_cos.index, add.index,
             *found[1], *added[1]}
    return _match("rotary", {}, calls, inputs, (("B", batch), ("H", heads), ("S", seq), ("D", d)),
                  add.outputs[0].meta)


# In priority order: fusions before the single operators they contain.
MATCHERS: tuple[tuple[str, frozenset[str], Callable[[Graph, OpCall], Match | None]], ...] = (
    ("rmsnorm", frozenset({"rsqrt"}), match_rmsnorm),
    ("layernorm", frozenset({"native_layer_norm"}), match_layernorm),
    ("softmax", frozenset({"_softmax", "_safe_softmax"}), match_softmax),
    ("rotary", frozenset({"cat"}), match_rotary),
    ("glu", frozenset({"silu", "gelu"}), match_glu),
    ("embedding_bag", frozenset({"_embedding_bag", "_embedding_bag_forward_only"}), match_embedding_bag),
    ("embedding", frozenset({"embedding"}), match_embedding),
    ("pairwise_dot", frozenset({"bmm"}), match_pairwise_dot),
    ("linear", frozenset({"mm", "addmm"}), match_linear),
    ("bmm", frozenset({"bmm"}), match_bmm),
    ("bias_act", ACTIVATIONS, match_bias_act),
)


def find_matches(trace: ModelTrace) -> list[Match]:
    """Every recognised operator in the trace; each call in one match at most."""
    g = Graph(trace)
    found: list[Match] = []
    for _name, anchors, matcher in MATCHERS:
        for call in _anchors(g, anchors):
            if call.index in g.claimed:
                continue
            try:
                m = matcher(g, call)
            except (AttributeError, IndexError, TypeError, ValueError):
                m = None  # an unusual signature of the anchor: not this pattern
            if m is not None and not (m.calls & g.claimed):
                g.claimed |= m.calls
                found.append(m)
    return found


def _anchors(g: Graph, names: frozenset[str]) -> Iterator[OpCall]:
    return (c for c in g.calls if c.name in names)
