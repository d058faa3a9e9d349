"""Writing a candidate module: imports, kernels, helpers, and the entry point with the
reference's signature (a function for YAML specs, `class ModelNew` for KernelBench)."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from typing import Any, Mapping

from kevolve.specs.model import OperatorSpec
from kevolve.synth.offline.expr import Unsupported, size_expr
from kevolve.synth.offline.trace import EntrySignature, Graph, signature


@dataclass(frozen=True)
class Entry:
    """Names the wrapper uses for the graph's inputs."""

    spec: OperatorSpec
    graph: Graph
    sig: EntrySignature

    @staticmethod
    def of(spec: OperatorSpec, graph: Graph) -> "Entry":
        return Entry(spec, graph, signature(spec))

    def var(self, node_name: str) -> str:
        gi = self.graph.input_named(node_name)
        if gi is None:
            raise Unsupported(f"{node_name} is not an input")
        return gi.name if gi.kind == "input" else "p_" + gi.name.replace(".", "_")

    def size(self, node_name: str) -> str:
        """A size node as a Python expression in the wrapper."""
        return size_expr(self.graph, node_name, self.var)


def torch_dtype(name: str) -> str:
    return f"torch.{name}"


# Grid arithmetic for the wrappers in plain Python: where Triton's cdiv and next_power_of_2 are
# constexpr functions, each call costs microseconds of host time on every launch.
HOST_HELPERS = {
    "_cdiv(": "def _cdiv(a, b):\n    return (a + b - 1) // b",
    "_pow2(": "def _pow2(n):\n    return 1 << (n - 1).bit_length() if n > 0 else 0",
}


def module_source(spec: OperatorSpec, entry: Entry, family: str, config: Mapping[str, Any],
                  kernels: list[str], body: list[str], helpers: list[str] = (),
                  note: str = "") -> str:
    """The whole candidate: docstring with the config (so the code says how to rebuild it),
    imports, Triton kernels, Python helpers, then the entry point running `body`."""
    kb = spec.format == "kernelbench"
    doc = (f'"""{spec.name}: the offline synthesizer\'s {family} template.\n\n'
           f"config: {json.dumps(dict(config), sort_keys=True)}\n"
           + (f"{note}\n" if note else "") + '"""\n')
    imports = ["import torch"] + (["import torch.nn as nn"] if kb else []) + ["import triton",
                                                                             "import triton.language as tl"]
    parts = [doc + "\n".join(imports)]
    parts += [k.strip("\n") for k in kernels if k.strip()]
    parts += [h.strip("\n") for h in helpers if h.strip()]
    parts += [source for use, source in HOST_HELPERS.items() if any(use in line for line in body)]
    parts.append(_entry(spec, entry, body))
    return "\n\n\n".join(parts) + "\n"


def _entry(spec: OperatorSpec, entry: Entry, body: list[str]) -> str:
    sig = entry.sig
    if spec.format == "kernelbench":
        bind = [f"{entry.var(gi.node)} = self.{gi.name}" for gi in entry.graph.inputs if gi.kind == "param"]
        init = textwrap.indent(sig.init_source.strip("\n"), "    ")
        flat = [part for line in bind + body for part in line.split("\n")]
        forward = "\n".join("        " + line if line else "" for line in flat)
        return (f"class ModelNew(nn.Module):\n{init}\n\n"
                f"    def forward(self, {', '.join(sig.inputs)}):\n{forward}")
    params = [f"{k}={v!r}" for k, v in sig.params.items()]
    guards = [f"if {k} != {v!r}:\n    raise ValueError('this kernel was generated for {k}={v!r}; "
              f"generate it again for another value')" for k, v in sig.params.items()]
    lines = "\n".join(guards + body)
    return (f"def {spec.entry_point}({', '.join(list(sig.inputs) + params)}):\n"
            + textwrap.indent(lines, "    "))


def launch(kernel: str, grid: str, args: list[str], constexprs: Mapping[str, Any],
           num_warps: int, num_stages: int) -> list[str]:
    """Lines that launch a kernel, one argument group per line."""
    consts = [f"{k}={v}" for k, v in constexprs.items()]
    all_args = args + consts + [f"num_warps={num_warps}", f"num_stages={num_stages}"]
    return [f"{kernel}[{grid}](", *[f"    {a}," for a in all_args], ")"]
