"""From a traced model to ranked operator groups: where the time goes.

A group is one tuning problem: the same recognised operator (pattern, variant, dtypes) at the
same shape class (its named dimensions, leading dimensions flattened), counted once however
often the model calls it. Calls no pattern covers are grouped by operator and argument shapes
and still ranked, so a user sees what is left for an LLM or a new pattern.

Time estimate per call: max(FLOPs / peak rate, bytes / bandwidth), from the target's measured
ceilings where calibrated, else its datasheet. A group's estimate sums its calls as eager
PyTorch runs them (unfused); `fused_floor_s` is the same bound for one fused kernel reading
the group's inputs once and writing its output once. What tuning can win is the difference:
a matmul whose estimate is its floor (cuBLAS at the roofline) ranks below a norm that makes
six passes where one would do, however long the matmul takes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Mapping

from kevolve.hardware import Ceilings, HardwareTarget, load_ceilings
from kevolve.models.patterns import Match, find_matches
from kevolve.models.references import PATTERNS, display_name
from kevolve.models.trace import ModelCase, ModelTrace, OpCall, TensorMeta, trace_model

# Calls whose FLOPs run on the matrix units.
MATMUL_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "convolution",
                        "_convolution", "_scaled_mm"})
NO_SPEC = "no spec: needs a pattern or an LLM"
# Below either, a group's gain over its fused floor is within the estimate's error, or too small
# to show in the model's time: not worth a search.
MIN_GAIN_FRACTION = 0.05  # of the group's own time
MIN_GAIN_OF_MODEL = 0.002  # of the whole model's estimated time
_SHORT_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}


@dataclass(frozen=True)
class OpGroup:
    name: str  # the spec name for a recognised operator, else "aten op [shapes]"
    pattern: str | None  # None: no spec pattern covers it
    count: int  # occurrences in one forward (and backward) pass
    dtype: str
    dims: Mapping[str, int]  # named dimensions (empty for unrecognised calls), the spec's shape class
    shape: str  # readable shape class
    ops: tuple[str, ...]  # the ATen operators it covers
    flops: float  # summed over occurrences
    bytes: float
    est_s: float  # roofline estimate of the calls as eager runs them, summed
    fused_floor_s: float  # one fused kernel at the roofline, summed
    share: float = 0.0  # est_s over the whole model's
    modules: tuple[str, ...] = ()  # where it runs (a few module paths)
    phases: tuple[str, ...] = ("forward",)
    match: Match | None = field(default=None, compare=False, repr=False)  # one occurrence
    seen_dims: Mapping[str, int] = field(default_factory=dict)  # the largest call's, before rounding

    @property
    def has_spec(self) -> bool:
        return self.pattern is not None

    def gain_s(self, eager_s: float | None = None) -> float:
        """What a fused kernel at the roofline could save: the eager time (estimated, or
        `eager_s` where measured) above the fused floor."""
        return max(0.0, (self.est_s if eager_s is None else eager_s) - self.fused_floor_s)

    def at_roofline(self, eager_s: float | None = None) -> str:
        """Why tuning this group cannot pay ("" when it might): its gain is negligible."""
        eager = self.est_s if eager_s is None else eager_s
        gain = self.gain_s(eager_s)
        model_s = self.est_s / self.share if self.share > 0 else self.est_s
        if gain > 0 and gain >= MIN_GAIN_FRACTION * eager and gain >= MIN_GAIN_OF_MODEL * model_s:
            return ""
        how = "estimated" if eager_s is None else "measured"
        return (f"skipped: at the roofline already ({how} {eager * 1e3:.3g} ms, fused floor "
                f"{self.fused_floor_s * 1e3:.3g} ms)")

    @property
    def note(self) -> str:
        return "" if self.has_spec else NO_SPEC


@dataclass(frozen=True)
class Extraction:
    model: str
    target: str
    ceilings_source: str  # measured | datasheet
    groups: tuple[OpGroup, ...]  # by estimated time, largest first
    total_s: float
    calls: int
    backward: bool

    def with_specs(self) -> list[OpGroup]:
        return [g for g in self.groups if g.has_spec]

    def by_gain(self, eager_s: Mapping[str, float] | None = None) -> list[OpGroup]:
        """Recognised groups by what tuning can win, largest first (`eager_s`: measured eager
        times by group name, where known, replace the estimates)."""
        eager_s = eager_s or {}
        return sorted(self.with_specs(), key=lambda g: (-g.gain_s(eager_s.get(g.name)), g.name))


def semantics_key(match: Match) -> str:
    """What a kernel for this match must compute, independent of shapes: equal keys are
    interchangeable kernels (the library dispatches among them by shape)."""
    doc = json.dumps([match.pattern, match.variant, [(i.name, i.dtype) for i in match.inputs]],
                     sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:6]


def shape_class(pattern: str, dims: Mapping[str, int]) -> dict[str, int]:
    """The dimensions a spec is tuned at: ragged ones (a jagged total, which changes from batch
    to batch) rounded up to a power of two, so the validated range covers their variation."""
    ragged = PATTERNS[pattern].ragged
    return {k: (1 << max(v - 1, 0).bit_length() if k in ragged else v) for k, v in dims.items()}


def spec_name(match: Match, dims: Mapping[str, int]) -> str:
    dtype = _SHORT_DTYPE.get(match.inputs[0].dtype, match.inputs[0].dtype)
    text = "_".join(f"{k.lower()}{v}" for k, v in dims.items())
    return f"{display_name(match.pattern, match.variant_dict)}_{dtype}_{text}_{semantics_key(match)}"


class CostModel:
    def __init__(self, target: HardwareTarget, ceilings: Ceilings):
        self.target = target
        self.ceilings = ceilings

    def seconds(self, flops: float, nbytes: float, dtype: str, matmul: bool) -> float:
        rate = self.ceilings.matmul_flops(dtype) if matmul else self.target.peak_flops(dtype)
        compute = flops / rate if flops and rate > 0 else 0.0
        memory = nbytes / self.ceilings.copy_bytes_per_s if self.ceilings.copy_bytes_per_s > 0 else 0.0
        return max(compute, memory)

    def call_seconds(self, call: OpCall) -> float:
        return self.seconds(call.flops, call.bytes, call_dtype(call), call.name in MATMUL_OPS)


def call_dtype(call: OpCall) -> str:
    metas = [t.meta for t in call.tensor_args] + [o.meta for o in call.outputs]
    floats = [m.dtype for m in metas if m.dtype.startswith(("float", "bfloat"))]
    return floats[0] if floats else (metas[0].dtype if metas else "float32")


def extract_ops(case: ModelCase, target: HardwareTarget, *, backward: bool = False,
                device: str | None = None) -> Extraction:
    """Trace the model, recognise its operators and rank the groups by estimated time."""
    trace = trace_model(case, backward=backward)
    return rank(trace, target, load_ceilings(target, device), backward=backward)


def rank(trace: ModelTrace, target: HardwareTarget, ceilings: Ceilings, *,
         backward: bool = False) -> Extraction:
    cost = CostModel(target, ceilings)
    calls = trace.calls
    groups: dict[str, dict] = {}

    def add(key: str, *, name, pattern, dtype, dims, shape, member_calls, floor_s, match):
        g = groups.setdefault(key, {"name": name, "pattern": pattern, "dtype": dtype, "dims": dims,
                                    "shape": shape, "count": 0, "ops": set(), "flops": 0.0,
                                    "bytes": 0.0, "est_s": 0.0, "floor_s": 0.0, "modules": [],
                                    "phases": set(), "match": match})
        g["count"] += 1
        g["dims"] = {k: max(v, dims[k]) for k, v in g["dims"].items()}  # ragged ones differ
        g["ops"].update(c.name for c in member_calls if not c.is_view)
        g["flops"] += sum(c.flops for c in member_calls)
        g["bytes"] += sum(c.bytes for c in member_calls)
        g["est_s"] += sum(cost.call_seconds(c) for c in member_calls)
        g["floor_s"] += floor_s
        g["phases"].update(c.phase for c in member_calls)
        module = member_calls[0].module if member_calls else ""
        if module and module not in g["modules"] and len(g["modules"]) < 3:
            g["modules"].append(module)

    claimed: set[int] = set()
    for m in find_matches(trace):
        members = [calls[i] for i in sorted(m.calls)]
        claimed |= m.calls
        flops = sum(c.flops for c in members)
        in_bytes = sum(_input_bytes(m, i) for i in m.inputs)
        floor = cost.seconds(flops, in_bytes + m.output.numel * m.output.itemsize, m.inputs[0].dtype,
                             any(c.name in MATMUL_OPS for c in members))
        ragged = PATTERNS[m.pattern].ragged
        key = f"{m.pattern}:{semantics_key(m)}:" + ",".join(f"{k}={v}" for k, v in m.dims if k not in ragged)
        add(key, name="", pattern=m.pattern, dtype=m.inputs[0].dtype, dims=m.dims_dict, shape="",
            member_calls=members, floor_s=floor, match=m)
    for call in calls:
        if call.index in claimed or call.is_view or call.bytes == 0 and call.flops == 0:
            continue
        shape = _shapes_text([t.meta for t in call.tensor_args])
        seconds = cost.call_seconds(call)
        add(f"{call.op} [{shape}]", name=f"{call.op} [{shape}]", pattern=None, dtype=call_dtype(call),
            dims={}, shape=shape, member_calls=[call], floor_s=seconds, match=None)

    for g in groups.values():  # a recognised group is named by its shape class
        g["seen_dims"] = dict(g["dims"])
        if g["match"] is not None:
            g["dims"] = shape_class(g["pattern"], g["dims"])
            g["name"] = spec_name(g["match"], g["dims"])
            g["shape"] = ",".join(f"{k}={v}" for k, v in g["dims"].items())
    total = sum(g["est_s"] for g in groups.values())
    ranked = sorted(groups.values(), key=lambda g: (-g["est_s"], g["name"]))
    out = tuple(OpGroup(name=g["name"], pattern=g["pattern"], count=g["count"], dtype=g["dtype"],
                        dims=g["dims"], shape=g["shape"], ops=tuple(sorted(g["ops"])), flops=g["flops"],
                        bytes=g["bytes"], est_s=g["est_s"], fused_floor_s=g["floor_s"],
                        share=g["est_s"] / total if total else 0.0, modules=tuple(g["modules"]),
                        phases=tuple(sorted(g["phases"])), match=g["match"],
                        seen_dims=g["seen_dims"])
                for g in ranked)
    return Extraction(model=trace.name, target=target.name, ceilings_source=ceilings.source, groups=out,
                      total_s=total, calls=len(calls), backward=backward)


def _input_bytes(match: Match, spec_input) -> int:
    dims = match.dims_dict
    nbytes = _numel(spec_input.shape, dims) * _itemsize(spec_input.dtype)
    if spec_input.name == "table":  # a lookup reads the rows it gathers
        lookups = dims.get("L", dims.get("M", 0))
        nbytes = min(nbytes, lookups * dims["D"] * _itemsize(spec_input.dtype))
    return nbytes


def _numel(shape: tuple[str, ...], dims: Mapping[str, int]) -> int:
    from kevolve.specs.model import eval_dim

    n = 1
    for s in shape:
        n *= eval_dim(s, dims)
    return n


def _itemsize(dtype: str) -> int:
    return TensorMeta((), dtype, True, 1).itemsize


def _shapes_text(metas: list[TensorMeta]) -> str:
    """`8x16 fp32, 8x6 fp32`; repeats folded: `16384x128 fp32 (x9)`."""
    texts = ["x".join(map(str, m.shape)) + " " + _SHORT_DTYPE.get(m.dtype, m.dtype) for m in metas]
    runs: list[list] = []
    for t in texts:
        if runs and runs[-1][0] == t:
            runs[-1][1] += 1
        else:
            runs.append([t, 1])
    return ", ".join(t if n == 1 else f"{t} (x{n})" for t, n in runs) or "-"
