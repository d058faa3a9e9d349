"""Put library kernels into a model: recognised submodules get a library-backed forward.

Whether a submodule computes what a library kernel computes is decided by tracing it on fake
tensors with the same recogniser `kevolve model ops` uses: the kernel's spec and the module's
trace then carry the same semantics key. Norms (RMSNorm, LayerNorm), linear layers (with the
activation that follows them in a Sequential), gated MLPs (act(gate) * up), embedding bags
and embeddings are handled, where a library kernel was validated at the sizes the module's
weights fix. The patched forward reshapes the module's arguments to the spec's inputs and
calls a torch custom op, which runs the kernel whose validated shapes cover the call and
otherwise falls back to the PyTorch reference (counted). Being custom ops, the kernels stay
inside torch.compile's graph: no graph breaks. `PatchReport.undo()` restores the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from kevolve.library.runtime import (
    LibraryKernel, current_target, install, install_choice, installed, same_computation,
)
from kevolve.models.ops import semantics_key
from kevolve.models.patterns import Match, find_matches
from kevolve.models.references import PATTERNS, display_name
from kevolve.models.trace import ModelCase, trace_model

_ACTIVATION_MODULES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh)


@dataclass
class PatchReport:
    patched: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)  # path, what, operators
    skipped: list[tuple[str, str]] = field(default_factory=list)  # path, why
    _restore: list[nn.Module] = field(default_factory=list, repr=False)

    def undo(self) -> None:
        """Give every patched module its own forward back."""
        for module in self._restore:
            module.__dict__.pop("forward", None)
        self._restore.clear()

    def summary(self) -> str:
        lines = [f"patched {path}: {what} -> {', '.join(ops)}" for path, what, ops in self.patched]
        lines += [f"kept    {path}: {why}" for path, why in self.skipped]
        return "\n".join(lines)


class _Gated(nn.Module):
    """The gated MLP's middle, act(a) * b, traced alone to learn its semantics."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act

    def forward(self, a, b):
        return self.act(a) * b


def _probe(module: nn.Module, *shapes_dtypes: tuple[tuple[int, ...], torch.dtype, str]) -> Match | None:
    """The one recognised operator that `module` computes on inputs of these shapes, if it is
    exactly one (every data-moving call covered)."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))

    def build():
        args = []
        for shape, dtype, kind in shapes_dtypes:
            if kind == "index":
                args.append(torch.zeros(shape, dtype=dtype, device=device))
            else:
                args.append(torch.empty(shape, dtype=dtype, device=device))
        return module, tuple(args), {}

    try:
        trace = trace_model(ModelCase(name=type(module).__name__, build=build))
    except Exception:
        return None
    matches = find_matches(trace)
    moving = {c.index for c in trace.calls if not c.is_view and c.bytes}
    if len(matches) != 1 or not moving <= matches[0].calls:
        return None
    return matches[0]


def _ops_for(match: Match, target: str) -> tuple[list[LibraryKernel], str]:
    """The library kernels that compute what `match` computes and were validated at the sizes
    the module fixes (its weights' dimensions; batch sizes and jagged totals change from call to
    call and are checked at each). Without any, why not."""
    specs = PATTERNS[match.pattern]
    fixed = {k: v for k, v in match.dims_dict.items() if k not in specs.batch_dims and k not in specs.ragged}
    found = same_computation(semantics_key(match), target)
    fitting = [e for e in found if all(e.shape_min.get(k, v) <= v <= e.shape_max.get(k, v) for k, v in fixed.items())]
    if found and not fitting:
        sizes = ", ".join(f"{k}={v}" for k, v in fixed.items())
        return [], f"no library kernel for this {display_name(match.pattern, match.variant_dict)} " \
                   f"was validated at its sizes ({sizes})"
    kernels = []
    for entry in fitting:
        install(entry.operator, target)
        kernels.append(installed(entry.operator))
    return kernels, ""


def _op(kernels: list[LibraryKernel]) -> Callable:
    """The custom op for these kernels: the kernel's own for one, else one that chooses among
    them by shape inside the op. Either way torch.compile keeps the call in its graph."""
    return install_choice([k.operator for k in kernels])


def _rows_forward(module: nn.Module, op, names: tuple[str, ...]) -> Callable:
    def forward(x):
        flat = x.reshape(-1, x.shape[-1])
        out = op(flat, *[getattr(module, n) for n in names[1:]])
        return out.reshape(*x.shape[:-1], out.shape[-1])
    return forward


def _linear_forward(module: nn.Linear, op, has_bias: bool) -> Callable:
    def forward(x):
        flat = x.reshape(-1, x.shape[-1])
        args = [flat, module.weight] + ([module.bias] if has_bias else [])
        out = op(*args)
        return out.reshape(*x.shape[:-1], out.shape[-1])
    return forward


def _mlp_forward(module: nn.Module, op) -> Callable:
    def forward(x):
        gate, up = module.gate_proj(x), module.up_proj(x)
        mid = op(gate.reshape(-1, gate.shape[-1]), up.reshape(-1, up.shape[-1]))
        return module.down_proj(mid.reshape(gate.shape))
    return forward


def _bag_forward(module: nn.EmbeddingBag, op, original: Callable) -> Callable:
    def forward(input, offsets=None, per_sample_weights=None):
        if input.dim() != 1 or offsets is None or per_sample_weights is not None:
            return original(input, offsets, per_sample_weights)
        if not module.include_last_offset:
            offsets = torch.cat([offsets, offsets.new_full((1,), input.numel())])
        return op(module.weight, input, offsets)
    return forward


def _embedding_forward(module: nn.Embedding, op) -> Callable:
    def forward(ids):
        out = op(module.weight, ids.reshape(-1))
        return out.reshape(*ids.shape, out.shape[-1])
    return forward


@dataclass(frozen=True)
class _Plan:
    match: Match
    kernels: list[LibraryKernel]
    forward: Callable | None  # None where no library kernel computes it
    why_not: str = ""  # with no forward: why none of the library's kernels fits
    silence: tuple[nn.Module, ...] = ()  # modules whose work the new forward already does


def _plan(module: nn.Module, parent: nn.Module | None, target: str, uses: dict[int, int]) -> _Plan | str | None:
    """How to patch a module; a reason where it looks patchable but is not; None otherwise."""
    weight = getattr(module, "weight", None)
    if {"gate_proj", "up_proj", "down_proj", "act_fn"} <= set(dir(module)) and isinstance(module.up_proj, nn.Linear):
        width, dtype = module.up_proj.out_features, module.up_proj.weight.dtype
        match = _probe(_Gated(module.act_fn), ((3, width), dtype, "x"), ((3, width), dtype, "x"))
        if match is None or match.pattern != "glu":
            return "its gate is not a recognised gated activation"
        kernels, why = _ops_for(match, target)
        return _Plan(match, kernels, _mlp_forward(module, _op(kernels)) if kernels else None, why)
    if isinstance(module, nn.EmbeddingBag):
        offsets = 3 if module.include_last_offset else 2
        match = _probe(module, ((5,), torch.int64, "index"), ((offsets,), torch.int64, "index"))
        if match is None:
            return "not a recognised embedding bag (mode max, or per-sample weights)"
        kernels, why = _ops_for(match, target)
        return _Plan(match, kernels, _bag_forward(module, _op(kernels), module.forward) if kernels else None, why)
    if isinstance(module, nn.Embedding):
        match = _probe(module, ((5,), torch.int64, "index"))
        if match is None:
            return "not a recognised embedding lookup"
        kernels, why = _ops_for(match, target)
        return _Plan(match, kernels, _embedding_forward(module, _op(kernels)) if kernels else None, why)
    if isinstance(module, nn.Linear):
        act = _following_activation(module, parent)
        if act is not None and uses.get(id(act), 0) != 1:
            act = None  # a shared activation module cannot be silenced for this layer alone
        match = _probe(nn.Sequential(module, act) if act is not None else module,
                       ((3, module.in_features), module.weight.dtype, "x"))
        if match is None or match.pattern != "linear":
            return "not recognised as a linear layer"
        kernels, why = _ops_for(match, target)
        silence = (act,) if act is not None and match.variant_dict["act"] != "none" else ()
        forward = _linear_forward(module, _op(kernels), module.bias is not None) if kernels else None
        return _Plan(match, kernels, forward, why, silence)
    if "norm" in type(module).__name__.lower() and isinstance(weight, torch.Tensor) and weight.dim() == 1:
        match = _probe(module, ((3, weight.numel()), weight.dtype, "x"))
        if match is None or match.pattern not in ("rmsnorm", "layernorm"):
            return "not a recognised norm"
        kernels, why = _ops_for(match, target)
        names = tuple(i.name for i in match.inputs)
        return _Plan(match, kernels, _rows_forward(module, _op(kernels), names) if kernels else None, why)
    return None


def _following_activation(linear: nn.Linear, parent: nn.Module | None) -> nn.Module | None:
    if not isinstance(parent, nn.Sequential):
        return None
    children = list(parent)
    for i, child in enumerate(children[:-1]):
        if child is linear and isinstance(children[i + 1], _ACTIVATION_MODULES):
            return children[i + 1]
    return None


def patch_model(model: nn.Module, target: str | None = None) -> PatchReport:
    """Give recognised submodules a forward backed by library kernels (see the module doc)."""
    from kevolve.library.store import entries

    target = current_target(target)
    report = PatchReport()
    if not entries(target=target):
        return report  # nothing to put in: no need to probe every module
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    uses: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        uses[id(module)] = uses.get(id(module), 0) + 1
    for path, module in list(model.named_modules()):
        plan = _plan(module, parents.get(id(module)), target, uses)
        if plan is None:
            continue
        path = path or type(model).__name__
        if isinstance(plan, str):
            report.skipped.append((path, plan))
            continue
        what = display_name(plan.match.pattern, plan.match.variant_dict)
        if not plan.forward:
            report.skipped.append((path, plan.why_not or f"no library kernel computes this {what} on {target}"))
            continue
        module.forward = plan.forward
        report._restore.append(module)
        for extra in plan.silence:
            extra.forward = _identity
            report._restore.append(extra)
        report.patched.append((path, what, tuple(k.operator for k in plan.kernels)))
    return report


def _identity(x):
    return x
