"""The reference as a graph of aten operations, traced at the spec's interpreter shape.

`make_fx` records the aten calls the reference makes; composite operators that the templates
do not need whole (softmax, layer norm, the activations) are decomposed into elementwise ops
and reductions, so one code generator covers them all. Tracing is symbolic: sizes are symbols,
and any size the reference computes with (a mean's divisor, rotary's half width) appears as a
node the generated wrapper recomputes from its own inputs. A reference that only traces with
fixed sizes would bake those sizes into the kernel, so it is refused.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import operator
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from kevolve.specs.model import OperatorSpec
from kevolve.specs.runtime import OperatorRuntime
from kevolve.synth.base import SynthesisError

# Composite ops decomposed before matching (each into elementwise ops and reductions).
_DECOMPOSE = (
    "_softmax", "_log_softmax", "native_layer_norm", "_fused_rms_norm", "var_mean", "var", "std",
    "std_mean", "mean", "logsumexp", "linalg_vector_norm", "gelu", "silu", "mish", "elu", "celu",
    "selu", "leaky_relu", "hardswish", "hardsigmoid", "hardtanh", "relu6", "softplus", "threshold",
    "log_sigmoid_forward", "softshrink", "hardshrink", "addcmul", "addcdiv", "lerp", "rsub", "xlogy",
    "masked_fill", "_native_batch_norm_legit_no_training", "_prelu_kernel", "logit",
)


@dataclass(frozen=True)
class Ref:
    """An argument that is another node's value."""

    name: str


@dataclass(frozen=True)
class Node:
    name: str
    op: str  # aten op name ("add", "amax"), "prims.<name>", "getitem", a Python operator
             # ("floordiv"), "sym_float", or "input" for a placeholder
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    shape: tuple[str, ...] | None = None  # symbolic sizes as text ("s12", "s12 - 1", "4")
    hint: tuple[int, ...] | None = None  # the same sizes at the traced shape
    dtype: str | None = None  # torch dtype name; None for scalars and tuples
    scalar: Any = None  # for a size node: its value at the traced shape

    @property
    def refs(self) -> list[str]:
        return [a.name for a in _flat(self.args) + _flat(tuple(self.kwargs.values())) if isinstance(a, Ref)]

    @property
    def is_tensor(self) -> bool:
        return self.shape is not None


@dataclass(frozen=True)
class GraphInput:
    node: str  # the placeholder's node name
    name: str  # the argument name in the entry point, or the parameter's path ("linear.weight")
    kind: str  # "input" | "param"


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]  # topological order, only what the outputs need
    inputs: tuple[GraphInput, ...]  # entry-point arguments first, then parameters (KernelBench)
    outputs: tuple[str, ...]

    @functools.cached_property
    def by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def node(self, name: str) -> Node:
        return self.by_name[name]

    def input_named(self, node_name: str) -> GraphInput | None:
        return next((i for i in self.inputs if i.node == node_name), None)

    def ops(self) -> list[str]:
        return [n.op for n in self.nodes if n.op != "input"]

    def describe(self) -> str:
        return ", ".join(sorted(set(self.ops()))) or "no operations"


@dataclass(frozen=True)
class EntrySignature:
    """What a candidate's entry point takes: positional inputs, then keyword params (yaml), or
    a KernelBench Model's forward arguments and its __init__ source."""

    inputs: tuple[str, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    init_source: str = ""  # KernelBench: Model.__init__, to be repeated in ModelNew


def _flat(args: tuple) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flat(tuple(a)))
        else:
            out.append(a)
    return out


def spec_key(spec: OperatorSpec) -> str:
    """Identifies what a trace depends on: the reference's source, its name, params and shape."""
    text = "|".join([str(spec.reference_path), spec.reference_name, spec.reference_source(),
                     repr(sorted(spec.params.items())), repr(spec.interpreter_dims[0]), spec.format])
    return hashlib.sha256(text.encode()).hexdigest()


_TRACES: dict[str, Graph] = {}
_SIGNATURES: dict[str, "EntrySignature"] = {}
# make_fx keeps global state, and ast.parse is not thread-safe in CPython 3.11: one at a time
_TRACE_LOCK = threading.RLock()


def trace(spec: OperatorSpec) -> Graph:
    """The reference's graph (cached: render() traces again for every candidate)."""
    key = spec_key(spec)
    with _TRACE_LOCK:
        if key not in _TRACES:
            _TRACES[key] = _trace(spec)
        return _TRACES[key]


def _trace(spec: OperatorSpec) -> Graph:
    fn, args, inputs = _traceable(spec)
    table = _decompositions()
    try:
        # distinct symbols even for equal sizes, so that broadcasting is read off the graph
        with torch.fx.experimental._config.patch(use_duck_shape=False):
            gm = torch.fx.experimental.proxy_tensor.make_fx(fn, decomposition_table=table,
                                                             tracing_mode="symbolic")(*args)
    except Exception as exc:  # data-dependent shapes or control flow: nothing a template can hold
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise SynthesisError(f"{spec.name}: the reference does not trace with symbolic sizes "
                             f"({type(exc).__name__}: {first[:200]}); the offline synthesizer cannot "
                             "seed it, it needs an LLM synthesizer") from None
    return _to_graph(gm, inputs)


@functools.lru_cache(maxsize=1)
def _decompositions() -> dict:
    from torch._decomp import get_decompositions

    aten = torch.ops.aten
    return get_decompositions([getattr(aten, n) for n in _DECOMPOSE if hasattr(aten, n)])


def signature(spec: OperatorSpec) -> EntrySignature:
    """The entry point's arguments, read from the reference (cached like the trace)."""
    key = spec_key(spec)
    with _TRACE_LOCK:
        if key not in _SIGNATURES:
            _SIGNATURES[key] = _signature(spec)
        return _SIGNATURES[key]


def _signature(spec: OperatorSpec) -> EntrySignature:
    if spec.format == "yaml":
        return EntrySignature(inputs=tuple(i.name for i in spec.inputs), params=dict(spec.params))
    model_cls = OperatorRuntime(spec).module.Model
    params = list(inspect.signature(model_cls.forward).parameters.values())[1:]
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise SynthesisError(f"{spec.name}: Model.forward takes *args or **kwargs; the offline "
                             "synthesizer needs named inputs, or an LLM synthesizer")
    return EntrySignature(inputs=tuple(p.name for p in params), init_source=_init_source(spec))


def _init_source(spec: OperatorSpec) -> str:
    import ast
    import textwrap

    tree = ast.parse(spec.reference_source())
    model = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Model")
    init = next((n for n in model.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        return "def __init__(self):\n    super().__init__()\n"
    for node in ast.walk(init):  # super(Model, self) -> super(ModelNew, self)
        if isinstance(node, ast.Name) and node.id == "Model":
            node.id = "ModelNew"
    return textwrap.dedent(ast.unparse(init)) + "\n"


def _traceable(spec: OperatorSpec) -> tuple[Callable, list[torch.Tensor], list[tuple[str, str]]]:
    runtime = OperatorRuntime(spec)
    dims = spec.interpreter_dims[0]
    xs = runtime.inputs(dims, seed=0)
    sig = signature(spec)
    if spec.format == "yaml":
        ref = runtime.reference(dims)
        return (lambda *a: ref(*a)), xs, [(n, "input") for n in sig.inputs]
    model = runtime.reference(dims)
    named = [(n, p.detach()) for n, p in model.named_parameters()]
    buffers = list(model.named_buffers())
    if buffers:
        raise SynthesisError(f"{spec.name}: Model has buffers ({buffers[0][0]}); the offline "
                             "synthesizer handles parameters only, it needs an LLM synthesizer")
    names = [n for n, _ in named]

    def call(*a):
        return torch.func.functional_call(model, dict(zip(names, a[len(xs):])), tuple(a[:len(xs)]))

    return call, [*xs, *(p for _, p in named)], [(n, "input") for n in sig.inputs] + [(n, "param") for n in names]


_PY_OPS = {operator.add: "add_", operator.sub: "sub_", operator.mul: "mul_", operator.floordiv: "floordiv",
           operator.truediv: "truediv", operator.neg: "neg_", operator.getitem: "getitem"}


def _op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        ns = target.namespace
        return target._opname if ns == "aten" else f"{ns}.{target._opname}"
    if target in _PY_OPS:
        return _PY_OPS[target]
    name = getattr(target, "__name__", str(target))
    return name  # sym_float, sym_int, ...


def _size_hint(s: Any) -> int:
    if isinstance(s, torch.SymInt):
        return int(s.node.hint) if s.node.hint is not None else -1
    return int(s)


def _convert(value: Any) -> Any:
    if isinstance(value, torch.fx.Node):
        return Ref(value.name)
    if isinstance(value, (list, tuple)):
        return tuple(_convert(v) for v in value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, (torch.device, torch.layout, torch.memory_format)):
        return str(value)
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return value.node.hint
    return value


def _to_graph(gm: torch.fx.GraphModule, inputs: list[tuple[str, str]]) -> Graph:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    output = next(n for n in gm.graph.nodes if n.op == "output")
    out_args = output.args[0]
    out_nodes = list(out_args) if isinstance(out_args, (list, tuple)) else [out_args]
    if any(not isinstance(o, torch.fx.Node) for o in out_nodes):
        raise SynthesisError("the reference returns something that is not a tensor computed from its inputs")
    needed: set[str] = set()
    stack = list(out_nodes)
    while stack:  # keep only what the outputs need (a layer norm's mean and rstd are dropped)
        n = stack.pop()
        if n.name in needed:
            continue
        needed.add(n.name)
        stack.extend(n.all_input_nodes)
    nodes: list[Node] = []
    graph_inputs: list[GraphInput] = []
    for ph, (name, kind) in zip(placeholders, inputs):
        graph_inputs.append(GraphInput(node=ph.name, name=name, kind=kind))
    for n in gm.graph.nodes:
        if n.op == "output" or (n.name not in needed and n.op != "placeholder"):
            continue
        val = n.meta.get("val")
        shape = hint = dtype = scalar = None
        if isinstance(val, torch.Tensor):
            shape = tuple(str(s) for s in val.shape)
            hint = tuple(_size_hint(s) for s in val.shape)
            dtype = str(val.dtype).removeprefix("torch.")
        elif isinstance(val, (torch.SymInt, torch.SymFloat)):
            scalar = val.node.hint
        elif isinstance(val, (int, float)):
            scalar = val
        if n.op == "placeholder":
            nodes.append(Node(n.name, "input", shape=shape, hint=hint, dtype=dtype))
            continue
        if n.op != "call_function":
            raise SynthesisError(f"the traced reference has a {n.op} node ({n.target}) the templates cannot read")
        args = tuple(_convert(a) for a in n.args)
        kwargs = {k: _convert(v) for k, v in n.kwargs.items()}
        nodes.append(Node(n.name, _op_name(n.target), args, kwargs, shape, hint, dtype, scalar))
    return Graph(nodes=tuple(nodes), inputs=tuple(graph_inputs), outputs=tuple(o.name for o in out_nodes))


def input_shapes_at(spec: OperatorSpec, dims: Mapping[str, int]) -> list[tuple[int, ...]]:
    """Shapes of the graph's inputs (entry-point inputs, then parameters) at other sizes,
    worked out on the meta device so that large tuned shapes cost nothing."""
    runtime = OperatorRuntime(spec)
    if spec.format == "yaml":
        return [i.concrete_shape(dims) for i in spec.inputs]
    from kevolve.specs import kernelbench_format

    inputs, model = kernelbench_format.on_meta(runtime.module, dims)
    shapes = [tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor)]
    return shapes + [tuple(p.shape) for _, p in model.named_parameters()]


def symbol_sizes(graph: Graph, spec: OperatorSpec, dims: Mapping[str, int]) -> dict[str, int]:
    """Each size symbol of the trace ("s75") at other sizes (the tuned shape, say)."""
    out: dict[str, int] = {}
    for gi, shape in zip(graph.inputs, input_shapes_at(spec, dims)):
        node = graph.node(gi.node)
        for sym, size in zip(node.shape or (), shape):
            if sym.isidentifier():
                out[sym] = int(size)
    return out


def eval_size(expr: str, symbols: Mapping[str, int]) -> int:
    """A symbolic size ("s86 - 1", "(s92//2)") at the sizes `symbols` gives."""
    import ast

    tree = ast.parse(expr, mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Constant, ast.Load,
                                 ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.USub, ast.Pow)):
            raise ValueError(f"cannot evaluate size {expr!r}")
        if isinstance(node, ast.Name) and node.id not in symbols:
            raise ValueError(f"size {expr!r} names {node.id}, not an input's size")
    return int(eval(compile(tree, "<size>", "eval"), {"__builtins__": {}}, dict(symbols)))
