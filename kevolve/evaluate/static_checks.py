"""Checks on a candidate's syntax tree, run in the parent before any worker or GPU time is spent.

A Triton candidate may use from torch only allocation, metadata and views, from triton only the
kernel language and its launch helpers, plus math, functools and typing. It must define the spec's
entry point and launch a `@triton.jit` kernel that stores something. It may not reach files,
sockets, processes, threads, streams or timers, patch a module, introspect frames or the garbage
collector, or catch errors (a `try` could fall back to the reference when the kernel fails).

The worker backs this up at run time (sandbox.py: audit hook, patched-attribute snapshot; guards.py:
the aten ops the candidate runs), since a syntax tree cannot see every trick.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

import torch

from kevolve.evaluate.result import Check
from kevolve.syntax import parse_source

SUPPORTED_LANGUAGES = ("triton",)
MAX_SOURCE_CHARS = 200_000

ALLOWED_IMPORTS = frozenset({
    "torch", "torch.nn", "triton", "triton.language", "triton.language.extra",
    "triton.language.extra.libdevice", "triton.language.extra.cuda",
    "triton.language.extra.cuda.libdevice", "triton.tools.tensor_descriptor", "math", "functools", "typing",
    "__future__",
})
FREE_MODULES = ("math", "functools", "typing", "__future__", "triton.language",
                "triton.tools.tensor_descriptor")  # TMA descriptors, made on the host

_DTYPES = {"float32", "float16", "bfloat16", "float64", "float", "half", "double", "int64", "int32",
           "int16", "int8", "uint8", "bool", "long", "int", "short", "float8_e4m3fn", "float8_e5m2"}
TORCH_ALLOWED = frozenset({
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "full", "full_like", "ones",
    "ones_like", "Tensor", "Size", "device", "dtype", "finfo", "iinfo", "no_grad", "inference_mode",
    "randn", "rand",  # parameter initialisation in a ModelNew.__init__, mirroring the problem's
    "nn", "cuda", *_DTYPES,
})
# Layers may be built in a KernelBench ModelNew.__init__ to hold parameters; calling one runs
# torch's computation, which the aten-op record catches at run time.
TORCH_NN_ALLOWED = frozenset({
    "Module", "Parameter", "ModuleList", "ParameterList", "Linear", "Bilinear", "Conv1d", "Conv2d",
    "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Embedding", "EmbeddingBag",
    "LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "PReLU",
})
TORCH_CUDA_ALLOWED = frozenset({"get_device_properties", "current_device", "get_device_capability",
                                "is_available", "device_count"})
TRITON_ALLOWED = frozenset({"jit", "cdiv", "next_power_of_2", "Config", "autotune", "heuristics",
                            "language", "constexpr"})

ALLOWED_TENSOR_METHODS = frozenset({
    "size", "stride", "numel", "dim", "ndimension", "nelement", "is_contiguous", "contiguous",
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "unsqueeze", "squeeze",
    "expand", "expand_as", "t", "transpose", "permute", "data_ptr", "element_size", "new_empty",
    "new_empty_strided", "new_zeros", "new_ones", "new_full", "to", "type", "float", "half",
    "bfloat16", "double", "int", "long", "short", "bool", "byte", "char", "cuda", "cpu", "clone",
    "copy_", "fill_", "zero_", "storage_offset", "is_floating_point", "get_device", "item",
    "tolist", "chunk", "split", "unbind", "narrow", "select", "detach", "requires_grad_",
})
# Method names of containers and strings that a tensor also has (the aten-op record catches a
# tensor reached through one of these).
_CONTAINER_METHODS = frozenset({"values", "keys", "items", "get", "append", "extend", "pop",
                                "update", "insert", "setdefault", "format", "join", "add", "remove",
                                "discard", "clear"})
TENSOR_COMPUTE_METHODS = frozenset(
    name for name in dir(torch.Tensor)
    if not name.startswith("_") and name not in ALLOWED_TENSOR_METHODS and name not in _CONTAINER_METHODS
)

BANNED_BUILTINS = frozenset({
    "open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars", "getattr",
    "setattr", "delattr", "input", "breakpoint", "exit", "quit", "help", "id", "memoryview",
})
ALLOWED_DUNDERS = frozenset({"__init__", "__name__", "__doc__"})
FRAME_ATTRIBUTES = frozenset({"f_back", "f_globals", "f_locals", "f_builtins", "f_code", "gi_frame",
                              "gi_code", "cr_frame", "tb_frame", "tb_next", "co_code"})
STORE_OPS = frozenset({"store", "atomic_add", "atomic_max", "atomic_min", "atomic_xchg", "atomic_cas",
                       "atomic_and", "atomic_or", "atomic_xor"})

# Check names, in the order reported.
CATEGORIES = ("static.syntax", "static.language", "static.imports", "static.entry_point",
              "static.kernel", "static.torch", "static.builtins", "static.introspection",
              "static.patching", "static.fallback")


@dataclass
class _Findings:
    problems: dict[str, list[str]] = field(default_factory=dict)

    def add(self, category: str, line: int, text: str) -> None:
        self.problems.setdefault(category, []).append(f"line {line}: {text}")


def static_checks(code: str, entry_point: str, language: str = "triton") -> tuple[Check, ...]:
    """One Check per category; a candidate is rejected when any fails."""
    if language not in SUPPORTED_LANGUAGES:
        return (Check("static.language", False, f"no checker for {language!r} candidates; "
                      f"supported: {', '.join(SUPPORTED_LANGUAGES)}"),)
    if len(code) > MAX_SOURCE_CHARS:
        return (Check("static.syntax", False, f"{len(code)} characters; at most {MAX_SOURCE_CHARS}"),)
    try:
        tree = parse_source(code)  # one parse at a time across threads: see kevolve/syntax.py
    except SyntaxError as exc:
        return (Check("static.syntax", False, f"line {exc.lineno}: {exc.msg}"),)
    visitor = _Visitor()
    visitor.visit(tree)
    found = visitor.findings
    if not _defines(tree, entry_point):
        found.add("static.entry_point", 1, f"defines no module-level {entry_point!r}")
    if not visitor.jit_functions:
        found.add("static.kernel", 1, "defines no @triton.jit kernel")
    elif not visitor.storing_kernels:
        found.add("static.kernel", 1, "no kernel stores anything (tl.store or an atomic)")
    elif not visitor.launched & visitor.jit_functions:
        found.add("static.kernel", 1, "never launches its kernel (kernel[grid](...))")
    checks = []
    for category in CATEGORIES:
        problems = found.problems.get(category, [])
        checks.append(Check(category, not problems, "; ".join(problems[:3])))
    return tuple(checks)


def rejection_reason(checks: tuple[Check, ...]) -> str:
    failed = [c for c in checks if not c.passed]
    return f"{failed[0].name}: {failed[0].detail}" if failed else ""


def _defines(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return True
    return False


def _chain(node: ast.AST) -> list[str] | None:
    """`a.b.c` as ["a", "b", "c"], or None where the root is not a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def allowed_path(path: str) -> bool:
    """May a candidate use this dotted name of an allowed module?"""
    parts = path.split(".")
    if any(path == m or path.startswith(m + ".") for m in FREE_MODULES):
        return True
    if parts[0] == "triton":
        return len(parts) == 1 or parts[1] in TRITON_ALLOWED
    if parts[0] != "torch":
        return False
    if len(parts) == 1:
        return True
    if parts[1] not in TORCH_ALLOWED:
        return False
    if parts[1] == "nn" and len(parts) > 2:
        return parts[2] in TORCH_NN_ALLOWED
    if parts[1] == "cuda" and len(parts) > 2:
        return parts[2] in TORCH_CUDA_ALLOWED
    return True


class _Visitor(ast.NodeVisitor):
    def __init__(self):
        self.findings = _Findings()
        self.aliases: dict[str, str] = {}  # local name -> dotted module path
        self.jit_functions: set[str] = set()
        self.storing_kernels: set[str] = set()
        self.launched: set[str] = set()
        self._in_jit: str | None = None

    def resolve(self, node: ast.AST) -> str | None:
        parts = _chain(node)
        if parts is None or parts[0] not in self.aliases:
            return None
        return ".".join([self.aliases[parts[0]], *parts[1:]])

    # Imports ---------------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name not in ALLOWED_IMPORTS:
                self.findings.add("static.imports", node.lineno, f"imports {alias.name}; allowed: "
                                  "torch, torch.nn, triton, triton.language, math, functools, typing")
                continue
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                root = alias.name.split(".")[0]
                self.aliases[root] = root

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level or module not in ALLOWED_IMPORTS:
            self.findings.add("static.imports", node.lineno, f"imports from {'.' * node.level}{module}")
            return
        for alias in node.names:
            if alias.name == "*":
                self.findings.add("static.imports", node.lineno, f"from {module} import *")
                continue
            full = f"{module}.{alias.name}"
            if not allowed_path(full):
                self.findings.add("static.torch", node.lineno, _torch_reason(full))
                continue
            self.aliases[alias.asname or alias.name] = full

    # Kernels ---------------------------------------------------------------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        decorators = [self.resolve(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list]
        for d in node.decorator_list:
            self.visit(d)
        is_jit = "triton.jit" in decorators
        if is_jit:
            self.jit_functions.add(node.name)
        outer, self._in_jit = self._in_jit, (node.name if is_jit else self._in_jit)
        for child in (*node.body, node.args):
            self.visit(child)
        if node.returns:
            self.visit(node.returns)
        self._in_jit = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Subscript) and isinstance(func.value, ast.Name) and not self._in_jit:
            self.launched.add(func.value.id)
        resolved = self.resolve(func)
        if self._in_jit and resolved and resolved.startswith("triton.language.") \
                and resolved.rsplit(".", 1)[1] in STORE_OPS:
            self.storing_kernels.add(self._in_jit)
        if (isinstance(func, ast.Attribute) and resolved is None and not self._in_jit
                and func.attr in TENSOR_COMPUTE_METHODS):
            self.findings.add("static.torch", node.lineno, f"calls .{func.attr}(), torch computation that "
                              "the kernel must do itself")
        self.generic_visit(node)

    # Names and attributes ----------------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if node.id in BANNED_BUILTINS:
            self.findings.add("static.builtins", node.lineno, f"uses {node.id}()")
        elif node.id.startswith("__") and node.id.endswith("__") and node.id not in ALLOWED_DUNDERS:
            self.findings.add("static.introspection", node.lineno, f"uses {node.id}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            resolved = self.resolve(node)
            if resolved:
                self.findings.add("static.patching", node.lineno, f"assigns {resolved}: patches a module")
        attr = node.attr
        if (attr.startswith("__") and attr.endswith("__") and attr not in ALLOWED_DUNDERS) \
                or attr in FRAME_ATTRIBUTES:
            self.findings.add("static.introspection", node.lineno, f"reads .{attr}")
        resolved = self.resolve(node)
        if resolved is not None:
            if not allowed_path(resolved):
                self.findings.add("static.torch", node.lineno, _torch_reason(resolved))
            return  # the rest of the chain is the module path just checked
        self.generic_visit(node)

    # Statements --------------------------------------------------------------------------------
    def visit_Try(self, node: ast.AST) -> None:
        self.findings.add("static.fallback", node.lineno, "try/except: a failing kernel must fail, "
                          "not fall back")
        self.generic_visit(node)

    visit_TryStar = visit_Try


def _torch_reason(path: str) -> str:
    if path.startswith("torch"):
        return (f"uses {path}: a candidate may use from torch only allocation, views and metadata "
                "(the computation is the kernel's job; streams, timers and the rest are the judge's)")
    if path.startswith("triton"):
        return f"uses {path}: only triton.jit, cdiv, next_power_of_2, Config, autotune, heuristics and tl.*"
    return f"uses {path}"
