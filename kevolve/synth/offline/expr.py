"""Triton expressions for a traced graph's elementwise part.

Code is pulled from the output backwards: `gen(node, emb)` writes the lines that compute `node`
over a tile of a *frame* (the output's index space, or a reduction's) and returns the variable
that holds it. `emb` says where each of the node's dims sits in the frame (None: a broadcast
dim), so broadcasting, unsqueeze, permute and friends cost no code: they only change how a
leaf (an input) is indexed when it is loaded. Every value is computed in float32; integers and
booleans keep their kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from kevolve.synth.offline.trace import Graph, Node, Ref

Emb = tuple  # tuple[int | None, ...]


class Unsupported(Exception):
    """The graph has something a template cannot express; the message says what."""


@dataclass(frozen=True)
class Val:
    expr: str
    kind: str  # "f" float32, "i" integer, "b" boolean


FLOAT_DTYPES = {"float32", "float16", "bfloat16", "float64", "float8_e4m3fn", "float8_e5m2"}

VIEW_OPS = {"alias", "clone", "detach", "lift_fresh_copy", "contiguous", "unsqueeze", "squeeze",
            "expand", "prims.broadcast_in_dim", "permute", "transpose", "t", "view", "_unsafe_view",
            "reshape", "prims.view_of", "expand_copy", "permute_copy", "view_copy"}
CAST_OPS = {"_to_copy", "prims.convert_element_type", "to"}
SIZE_OPS = {"sym_size", "sym_numel", "sym_stride", "sym_float", "sym_int", "add_", "sub_", "mul_",
            "floordiv", "truediv", "neg_", "sym_max", "sym_min"}


def kind_of(dtype: str | None) -> str:
    if dtype in FLOAT_DTYPES:
        return "f"
    return "b" if dtype == "bool" else "i"


TL_DTYPES = {"float32": "tl.float32", "float16": "tl.float16", "bfloat16": "tl.bfloat16",
             "float64": "tl.float64", "int64": "tl.int64", "int32": "tl.int32", "int16": "tl.int16",
             "int8": "tl.int8", "uint8": "tl.uint8", "bool": "tl.int1"}


def literal(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return 'float("nan")'
        if math.isinf(value):
            return 'float("inf")' if value > 0 else 'float("-inf")'
        return repr(value)
    raise Unsupported(f"constant {value!r} of type {type(value).__name__}")


def _f(v: Val) -> str:
    """The value as float32."""
    if v.kind == "f":
        return v.expr
    if v.expr.lstrip("-").replace(".", "", 1).isdigit():
        return f"{float(v.expr)!r}"
    return f"{v.expr}.to(tl.float32)"


def _pow(x: str, e) -> str:
    if isinstance(e, (int, float)) and float(e).is_integer() and abs(e) <= 4:
        e = int(e)
        if e == 0:
            return f"({x} * 0.0 + 1.0)"
        body = " * ".join([f"({x})"] * abs(e))
        return f"({body})" if e > 0 else f"(1.0 / ({body}))"
    if e == 0.5:
        return f"tl.sqrt({x})"
    if e == -0.5:
        return f"tl.rsqrt({x})"
    if isinstance(e, (int, float)) and float(e).is_integer():  # a sign-aware power for larger integers
        sign = f"tl.where(({x} < 0) & ({int(e) % 2} == 1), -1.0, 1.0)"
        return f"({sign} * tl.exp2({float(e)!r} * tl.log2(tl.abs({x}))))"
    return f"tl.exp2(({e}) * tl.log2({x}))"


# Elementwise ops: name -> function(args as float32 expressions, node) -> expression.
# Float results; comparison and logic ops are in BOOL_OPS.
def _round(x: str) -> str:
    return (f"tl.where({x} - tl.floor({x}) == 0.5, tl.floor({x}) + (tl.floor({x}) - 2.0 * tl.floor(tl.floor({x}) * 0.5)), "
            f"tl.floor({x} + 0.5))")


FLOAT_OPS: dict[str, Callable[[list[str], Node], str]] = {
    "add": lambda a, n: f"({a[0]} + {a[1]} * {n.kwargs.get('alpha', 1)!r})" if n.kwargs.get("alpha", 1) != 1 else f"({a[0]} + {a[1]})",
    "sub": lambda a, n: f"({a[0]} - {a[1]} * {n.kwargs.get('alpha', 1)!r})" if n.kwargs.get("alpha", 1) != 1 else f"({a[0]} - {a[1]})",
    "mul": lambda a, n: f"({a[0]} * {a[1]})",
    "div": lambda a, n: {"floor": f"tl.floor({a[0]} / {a[1]})",
                         "trunc": f"_trunc({a[0]} / {a[1]})"}.get(n.kwargs.get("rounding_mode"), f"({a[0]} / {a[1]})"),
    "true_divide": lambda a, n: f"({a[0]} / {a[1]})",
    "neg": lambda a, n: f"(-{a[0]})",
    "abs": lambda a, n: f"tl.abs({a[0]})",
    "exp": lambda a, n: f"tl.exp({a[0]})",
    "exp2": lambda a, n: f"tl.exp2({a[0]})",
    "log": lambda a, n: f"tl.log({a[0]})",
    "log2": lambda a, n: f"tl.log2({a[0]})",
    "log10": lambda a, n: f"(tl.log({a[0]}) * 0.4342944819032518)",
    "log1p": lambda a, n: f"_log1p({a[0]})",
    "expm1": lambda a, n: f"_expm1({a[0]})",
    "sqrt": lambda a, n: f"tl.sqrt({a[0]})",
    "rsqrt": lambda a, n: f"tl.rsqrt({a[0]})",
    "reciprocal": lambda a, n: f"(1.0 / {a[0]})",
    "sigmoid": lambda a, n: f"tl.sigmoid({a[0]})",
    "tanh": lambda a, n: f"_tanh({a[0]})",
    "erf": lambda a, n: f"_erf({a[0]})",
    "erfc": lambda a, n: f"(1.0 - _erf({a[0]}))",
    "sin": lambda a, n: f"tl.sin({a[0]})",
    "cos": lambda a, n: f"tl.cos({a[0]})",
    "tan": lambda a, n: f"(tl.sin({a[0]}) / tl.cos({a[0]}))",
    "sinh": lambda a, n: f"((tl.exp({a[0]}) - tl.exp(-{a[0]})) * 0.5)",
    "cosh": lambda a, n: f"((tl.exp({a[0]}) + tl.exp(-{a[0]})) * 0.5)",
    "relu": lambda a, n: f"tl.maximum({a[0]}, 0.0)",
    "floor": lambda a, n: f"tl.floor({a[0]})",
    "ceil": lambda a, n: f"tl.ceil({a[0]})",
    "trunc": lambda a, n: f"_trunc({a[0]})",
    "round": lambda a, n: _round(a[0]),
    "sign": lambda a, n: f"tl.where({a[0]} > 0, 1.0, tl.where({a[0]} < 0, -1.0, 0.0))",
    "sgn": lambda a, n: f"tl.where({a[0]} > 0, 1.0, tl.where({a[0]} < 0, -1.0, 0.0))",
    "maximum": lambda a, n: f"tl.maximum({a[0]}, {a[1]})",
    "minimum": lambda a, n: f"tl.minimum({a[0]}, {a[1]})",
    "fmax": lambda a, n: f"tl.maximum({a[0]}, {a[1]})",
    "fmin": lambda a, n: f"tl.minimum({a[0]}, {a[1]})",
    "clamp_min": lambda a, n: f"tl.maximum({a[0]}, {a[1]})",
    "clamp_max": lambda a, n: f"tl.minimum({a[0]}, {a[1]})",
    "fmod": lambda a, n: f"({a[0]} - {a[1]} * _trunc({a[0]} / {a[1]}))",
    "remainder": lambda a, n: f"({a[0]} - {a[1]} * tl.floor({a[0]} / {a[1]}))",
    "hypot": lambda a, n: f"tl.sqrt({a[0]} * {a[0]} + {a[1]} * {a[1]})",
    "square": lambda a, n: f"({a[0]} * {a[0]})",
    "where": lambda a, n: f"tl.where({a[0]}, {a[1]}, {a[2]})",
}
BOOL_OPS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
LOGIC_OPS = {"logical_and": "&", "logical_or": "|", "logical_xor": "^", "bitwise_and": "&",
             "bitwise_or": "|", "bitwise_xor": "^"}
INT_OPS = {"add", "sub", "mul", "neg", "abs", "maximum", "minimum", "where", "clamp_min", "clamp_max",
           "remainder", "floor_divide"}

HELPERS = {
    "_tanh": '''@triton.jit
def _tanh(x):
    # from e^(-2|x|), which never overflows; saturates to +-1
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)
''',
    "_log1p": '''@triton.jit
def _log1p(x):
    # log(u) * x / (u - 1) with u = 1 + x keeps log1p's accuracy near zero
    u = 1.0 + x
    d = tl.where(u == 1.0, 1.0, u - 1.0)
    return tl.where(u == 1.0, x, tl.where(u == float("inf"), u, tl.log(u) * (x / d)))
''',
    "_expm1": '''@triton.jit
def _expm1(x):
    return tl.where(tl.abs(x) < 1e-5, x + 0.5 * x * x, tl.exp(x) - 1.0)
''',
    "_trunc": '''@triton.jit
def _trunc(x):
    return tl.where(x < 0, tl.ceil(x), tl.floor(x))
''',
    "_erf": '''@triton.jit
def _erf(x):
    return tl.erf(x)
''',
}

# erf from one exponential, one reciprocal and a degree-5 polynomial (Abramowitz and Stegun
# 7.1.26, |error| < 1.5e-7, about fp32's own rounding): fewer instructions than the math
# library's erf, for kernels whose arithmetic, not their bytes, holds them back. The `erf` knob.
POLY_ERF = '''@triton.jit
def _erf(x):
    a = tl.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    p = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    e = 1.0 - p * tl.exp(-a * a)
    return tl.where(x < 0, -e, e)
'''


# Where the vendor's math library is faster: clamp_log1p's kernel ran 2% faster on an H200 with
# libdevice's log1p (bench/pointwise_probe.py). Triton's interpreter has no libdevice, so the
# portable formulas above stay for it.
LIBDEVICE_HELPERS = {
    "_log1p": '''@triton.jit
def _log1p(x):
    return libdevice.log1p(x)
''',
}
LIBDEVICE_IMPORT = "from triton.language.extra import libdevice"


def helpers_source(lines: list[str], libdevice: bool = False, erf: str = "library") -> str:
    """The @triton.jit helpers that the given kernel lines call; with `libdevice`, those the
    vendor's library does faster call it; with erf="poly", erf is the polynomial above."""
    text = "\n".join(lines)
    used = [name for name in HELPERS if f"{name}(" in text]
    vendor = [name for name in used if libdevice and name in LIBDEVICE_HELPERS]
    chosen = dict(HELPERS, **{name: LIBDEVICE_HELPERS[name] for name in vendor})
    if erf == "poly":
        chosen["_erf"] = POLY_ERF
    sources = [chosen[name] for name in used]
    return "\n\n".join(([LIBDEVICE_IMPORT] if vendor else []) + sources)


def base_op(op: str) -> str:
    return op.removeprefix("prims.")


class Emitter:
    """Writes the lines that compute graph nodes over a frame tile.

    `load(node, emb)` returns the Val of an input (a placeholder) at that embedding, writing
    the load; `special(node, emb)` may claim a node (a reduction's result) before the generic
    rules; `scalar(node)` names a kernel argument for a size the reference computed with.
    """

    def __init__(self, graph: Graph, load: Callable[[Node, Emb], Val],
                 special: Callable[[Node, Emb], Val | None] | None = None, prefix: str = "v"):
        self.graph = graph
        self.load = load
        self.special = special
        self.prefix = prefix
        self.lines: list[str] = []
        self.memo: dict[tuple[str, Emb], Val] = {}
        self.scalars: dict[str, str] = {}  # size node name -> kernel argument

    def emit(self, expr: str, kind: str, hint: str = "") -> Val:
        name = f"{self.prefix}{len(self.lines)}"
        self.lines.append(f"{name} = {expr}" + (f"  # {hint}" if hint else ""))
        return Val(name, kind)

    def arg(self, a, node: Node, emb: Emb) -> Val:
        """An argument of `node`: a constant, a size, or another node at its aligned embedding."""
        if isinstance(a, Ref):
            src = self.graph.node(a.name)
            if not src.is_tensor:
                if src.op not in SIZE_OPS:
                    raise Unsupported(f"a non-tensor value from {src.op}")
                self.scalars[src.name] = f"sz_{src.name}"
                return Val(f"sz_{src.name}", "f" if isinstance(src.scalar, float) else "i")
            return self.gen(src.name, align(src, node, emb))
        if a is None:
            raise Unsupported(f"{node.op} with a missing argument")
        if isinstance(a, (list, tuple)):
            raise Unsupported(f"{node.op} with a list argument")
        kind = "f" if isinstance(a, float) else ("b" if isinstance(a, bool) else "i")
        return Val(literal(a), kind)

    def gen(self, name: str, emb: Emb) -> Val:
        key = (name, tuple(emb))
        if key not in self.memo:
            self.memo[key] = self._gen(self.graph.node(name), tuple(emb))
        return self.memo[key]

    def _gen(self, node: Node, emb: Emb) -> Val:
        if self.special is not None:
            claimed = self.special(node, emb)
            if claimed is not None:
                return claimed
        if node.op == "input":
            return self.load(node, emb)
        if node.op in VIEW_OPS:
            src = self.graph.node(node.args[0].name)
            return self.gen(src.name, view_input_embedding(node, src, emb, self.graph))
        if node.op in CAST_OPS:
            v = self.arg(node.args[0], node, emb)
            target = kind_of(node.dtype)
            if target == v.kind:
                return v
            if target == "f":
                return self.emit(_f(v), "f")
            if target == "b":
                return self.emit(f"({v.expr} != 0)", "b")
            return self.emit(f"{v.expr}.to({TL_DTYPES.get(node.dtype, 'tl.int64')})", "i")
        if node.op in ("scalar_tensor", "prims.scalar_tensor"):
            return Val(literal(node.args[0]), kind_of(node.dtype))
        if node.op in ("full", "full_like", "zeros_like", "ones_like", "zeros", "ones"):
            value = {"zeros_like": 0, "zeros": 0, "ones_like": 1, "ones": 1}.get(node.op)
            if value is None:
                value = node.args[1]
            if kind_of(node.dtype) == "f":
                value = float(value)
            return Val(literal(value), kind_of(node.dtype))
        op = base_op(node.op)
        kind = kind_of(node.dtype)
        if op == "clamp":  # clamp(x, min=None, max=None)
            bounds = list(node.args[1:3]) + [None] * (3 - len(node.args))
            bounds = [bounds[0] if bounds[0] is not None else node.kwargs.get("min"),
                      bounds[1] if bounds[1] is not None else node.kwargs.get("max")]
            x = self.arg(node.args[0], node, emb)
            expr = _f(x) if kind == "f" else x.expr
            for fn, bound in zip(("tl.maximum", "tl.minimum"), bounds):
                if bound is not None:
                    b = self.arg(bound, node, emb)
                    expr = f"{fn}({expr}, {_f(b) if kind == 'f' else b.expr})"
            return self.emit(expr, kind)
        args = [self.arg(a, node, emb) for a in node.args]
        if op == "pow":
            base, expo = node.args[0], node.args[1]
            if isinstance(expo, (int, float)) and not isinstance(base, (int, float)):
                return self.emit(_pow(_f(args[0]), expo), "f")
            if isinstance(base, (int, float)):
                return self.emit(f"tl.exp2({_f(args[1])} * {math.log2(base)!r})" if base > 0 else
                                 f"tl.exp2({_f(args[1])} * tl.log2({float(base)!r}))", "f")
            return self.emit(f"tl.exp2({_f(args[1])} * tl.log2({_f(args[0])}))", "f")
        if op in BOOL_OPS:
            a, b = (x.expr if x.kind != "b" else f"{x.expr}.to(tl.int32)" for x in args[:2])
            return self.emit(f"({a} {BOOL_OPS[op]} {b})", "b")
        if op in LOGIC_OPS:
            a, b = (x.expr if x.kind == "b" else f"({x.expr} != 0)" for x in args[:2])
            return self.emit(f"({a} {LOGIC_OPS[op]} {b})", "b")
        if op in ("logical_not", "bitwise_not") and args[0].kind == "b":
            return self.emit(f"({args[0].expr} == 0)", "b")
        if op == "isnan":
            return self.emit(f"({args[0].expr} != {args[0].expr})", "b")
        if op == "isinf":
            return self.emit(f"(tl.abs({_f(args[0])}) == float(\"inf\"))", "b")
        if op == "where":
            c = args[0].expr if args[0].kind == "b" else f"({args[0].expr} != 0)"
            if kind == "f":
                return self.emit(f"tl.where({c}, {_f(args[1])}, {_f(args[2])})", "f")
            return self.emit(f"tl.where({c}, {args[1].expr}, {args[2].expr})", kind)
        if kind == "i" and op in INT_OPS | {"div"} and all(a.kind != "f" for a in args):
            ints = [a.expr if a.kind == "i" else f"{a.expr}.to(tl.int32)" for a in args]
            if op == "floor_divide" or (op == "div" and node.kwargs.get("rounding_mode") == "floor"):
                return self.emit(f"_floordiv_int({ints[0]}, {ints[1]})", "i")
            if op == "div":  # prims.div on integers truncates
                return self.emit(f"({ints[0]} // {ints[1]})", "i")
            if op == "remainder":
                return self.emit(f"_remainder_int({ints[0]}, {ints[1]})", "i")
            return self.emit(FLOAT_OPS[op](ints, node), "i")
        if op not in FLOAT_OPS:
            raise Unsupported(f"the elementwise op {node.op}")
        if kind != "f":
            raise Unsupported(f"{node.op} producing {node.dtype}")
        return self.emit(FLOAT_OPS[op]([_f(a) for a in args], node), "f")


HELPERS["_remainder_int"] = '''@triton.jit
def _remainder_int(a, b):
    r = a % b
    return tl.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)
'''
HELPERS["_floordiv_int"] = '''@triton.jit
def _floordiv_int(a, b):
    q = a // b
    return tl.where((a % b != 0) & ((a < 0) != (b < 0)), q - 1, q)
'''


def align(src: Node, dst: Node, emb: Emb) -> Emb:
    """Embedding of an elementwise op's operand `src` from the op's own (`dst`): dims align
    from the right, and a size-1 dim against a larger one broadcasts."""
    k, r = len(dst.shape), len(src.shape)
    if r > k:
        raise Unsupported(f"{dst.op} of a higher-rank operand")
    out = []
    for i in range(r):
        j = k - r + i
        out.append(None if (src.shape[i] == "1" and dst.shape[j] != "1") else emb[j])
    return tuple(out)


def _norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def view_input_embedding(node: Node, src: Node, emb: Emb, graph: Graph) -> Emb:
    """Embedding of a view op's input from the view's own."""
    op = node.op
    r, k = len(src.shape), len(node.shape)
    if op in ("alias", "clone", "detach", "lift_fresh_copy", "contiguous", "prims.view_of"):
        return emb
    if op == "unsqueeze":
        d = _norm_dim(node.args[1], k)
        return emb[:d] + emb[d + 1:]
    if op == "squeeze":
        dims = node.args[1] if len(node.args) > 1 else [i for i in range(r) if src.shape[i] == "1"]
        dims = {_norm_dim(d, r) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
        dims = {d for d in dims if src.shape[d] == "1"}
        out, j = [], 0
        for i in range(r):
            if i in dims:
                out.append(None)
            else:
                out.append(emb[j])
                j += 1
        return tuple(out)
    if op in ("expand", "expand_copy"):
        return align(src, node, emb)
    if op == "prims.broadcast_in_dim":
        bdims = node.args[2]
        return tuple(None if src.shape[i] == "1" and node.shape[bdims[i]] != "1" else emb[bdims[i]]
                     for i in range(r))
    if op in ("permute", "permute_copy"):
        dims = [_norm_dim(d, r) for d in node.args[1]]
        out = [None] * r
        for i, d in enumerate(dims):
            out[d] = emb[i]
        return tuple(out)
    if op in ("transpose", "t"):
        if op == "t" and r < 2:
            return emb
        a, b = (0, 1) if op == "t" else (_norm_dim(node.args[1], r), _norm_dim(node.args[2], r))
        out = list(emb)
        out[a], out[b] = out[b], out[a]
        return tuple(out)
    if op in ("view", "_unsafe_view", "reshape", "view_copy"):
        # Only reshapes that add or drop size-1 dims keep an elementwise index map.
        src_dims = [i for i in range(r) if src.shape[i] != "1"]
        dst_dims = [j for j in range(k) if node.shape[j] != "1"]
        if [src.shape[i] for i in src_dims] != [node.shape[j] for j in dst_dims]:
            raise Unsupported(f"a reshape from {list(src.shape)} to {list(node.shape)}")
        out = [None] * r
        for i, j in zip(src_dims, dst_dims):
            out[i] = emb[j]
        return tuple(out)
    raise Unsupported(f"the view {op}")


def size_expr(graph: Graph, name: str, var_of: Callable[[str], str]) -> str:
    """A size node as a Python expression over the wrapper's tensors (`x.shape[1]`)."""
    node = graph.node(name)

    def sub(a) -> str:
        if isinstance(a, Ref):
            src = graph.node(a.name)
            if src.op == "input":
                return var_of(src.name)
            if src.is_tensor:
                raise Unsupported(f"a size taken from the computed tensor {src.name}")
            return size_expr(graph, a.name, var_of)
        return repr(a)

    a = [sub(x) for x in node.args]
    table = {
        "sym_size": lambda: f"{a[0]}.shape[{a[1]}]",
        "sym_numel": lambda: f"{a[0]}.numel()",
        "sym_stride": lambda: f"{a[0]}.stride()[{a[1]}]",
        "sym_float": lambda: f"float({a[0]})",
        "sym_int": lambda: f"int({a[0]})",
        "add_": lambda: f"({a[0]} + {a[1]})",
        "sub_": lambda: f"({a[0]} - {a[1]})",
        "mul_": lambda: f"({a[0]} * {a[1]})",
        "floordiv": lambda: f"({a[0]} // {a[1]})",
        "truediv": lambda: f"({a[0]} / {a[1]})",
        "neg_": lambda: f"(-{a[0]})",
        "sym_max": lambda: f"max({a[0]}, {a[1]})",
        "sym_min": lambda: f"min({a[0]}, {a[1]})",
    }
    if node.op not in table:
        raise Unsupported(f"the size computation {node.op}")
    return table[node.op]()
