"""What every template family provides, and the knobs they share.

A template matches a traced graph (or not), proposes seed configs sized for a target, says
whether a config is valid, and renders a config to a module. Knobs are data: a name and the
values it may take, in order, so the search can step along them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from kevolve.hardware.target import HardwareTarget
from kevolve.specs.model import OperatorSpec
from kevolve.synth.offline.trace import Graph, eval_size, symbol_sizes

Config = Mapping[str, Any]


def pow2(lo: int, hi: int) -> tuple[int, ...]:
    out, v = [], lo
    while v <= hi:
        out.append(v)
        v *= 2
    return tuple(out)


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


@dataclass(frozen=True)
class Knob:
    name: str
    values: tuple  # allowed values in order; numeric knobs ascending
    doc: str

    @property
    def numeric(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in self.values)


# Knobs several families share. A family's space is a selection of these plus its own.
BLOCK = Knob("BLOCK", pow2(64, 16384), "elements one program handles per tile")
BLOCK_M = Knob("BLOCK_M", pow2(1, 256), "rows one program handles per tile")
BLOCK_N = Knob("BLOCK_N", pow2(16, 65536), "columns per tile (the row chunk in a looped variant)")
NUM_WARPS = Knob("num_warps", (1, 2, 4, 8, 16), "warps per program")
NUM_STAGES = Knob("num_stages", (1, 2, 3, 4, 5), "software-pipelining depth of loops")
PERSISTENT = Knob("persistent", (False, True), "launch programs_per_sm x SMs programs that loop over tiles")
PROGRAMS_PER_SM = Knob("programs_per_sm", (1, 2, 4, 8, 16), "resident programs per SM when persistent")
EVICT = Knob("evict", ("none", "stream"), "streamed loads evict_first, reused loads evict_last")
UNMASKED = Knob("unmasked", (False, True), "no bounds masks when the tiles divide the shape exactly (as a "
                "static-shape compiler drops them); other shapes keep the masks")
VEC = Knob("vec", (1, 2, 4, 8), "alignment promised to the compiler for gathered rows (vector width)")


@dataclass(frozen=True)
class Match:
    family: str
    reason: str  # one line: what in the graph made this family fit
    detail: Any  # the template's reading of the graph


class Template:
    families: tuple[str, ...] = ()
    knobs: tuple[Knob, ...] = ()

    def match(self, graph: Graph, spec: OperatorSpec) -> Match | None:
        """This family's reading of the graph, None when the graph is not of this family.
        Raises expr.Unsupported when it is of this family but uses something not covered."""
        raise NotImplementedError

    def seeds(self, match: Match, spec: OperatorSpec, target: HardwareTarget) -> list[dict]:
        """A few diverse configs, best guess first, sized for the target and the tuned shape."""
        raise NotImplementedError

    def check(self, config: Config, match: Match, target: HardwareTarget, spec: OperatorSpec) -> str | None:
        """Why a config cannot work on the target (None when it can)."""
        return check_common(config, target)

    def render(self, spec: OperatorSpec, match: Match, config: Config) -> str:
        raise NotImplementedError

    def inert(self, config: Config) -> set[str]:
        """Knobs that change nothing in this config (stepping them would only repeat it)."""
        return set() if config.get("persistent") else {"programs_per_sm"}

    def knob(self, name: str) -> Knob | None:
        return next((k for k in self.knobs if k.name == name), None)


def check_common(config: Config, target: HardwareTarget) -> str | None:
    warps = config.get("num_warps")
    if warps is not None:
        max_warps = max(1, target.max_threads_per_block // max(1, target.warp_size_threads))
        if warps > max_warps:
            return f"num_warps={warps} exceeds the {max_warps} warps a block may have on {target.name}"
    return None


def bounds_mask(ind: str, name: str, shape: str, bounds: str) -> list[str]:
    """Kernel lines setting the mask `name` to `bounds`, or to all true when the kernel's EVEN
    constexpr (the `unmasked` knob, on a shape its tiles divide) says no bound can be crossed."""
    return [f"{ind}if EVEN:  # the tiles divide the shape: no bounds to check",
            f"{ind}    {name} = tl.full({shape}, 1, tl.int1)", f"{ind}else:", f"{ind}    {name} = {bounds}"]


def even_flag(config: Config, condition: str) -> str:
    """The wrapper's value for a kernel's EVEN constexpr: the condition under which its tiles
    divide the shape, when the `unmasked` knob is on."""
    return condition if config.get("unmasked") else "False"


def vendor_math(target: HardwareTarget) -> dict[str, bool]:
    """The config entry that lets a kernel's math helpers call the vendor's libdevice (NVIDIA's,
    or AMD's through the same Triton module); not under the interpreter, which has none."""
    return {"libdevice": not target.interpreter and target.vendor in ("nvidia", "amd")}


def tuned_dims(spec: OperatorSpec, target: HardwareTarget) -> Mapping[str, int]:
    return spec.shapes_for(target.interpreter)[0]


def sizes_at(graph: Graph, spec: OperatorSpec, shape: tuple[str, ...], dims: Mapping[str, int]) -> tuple[int, ...]:
    """A traced symbolic shape evaluated at other dims (the tuned ones)."""
    symbols = symbol_sizes(graph, spec, dims)
    return tuple(eval_size(s, symbols) for s in shape)


def warps_for(elements: int, target: HardwareTarget, per_thread: int = 8, cap: int = 16) -> int:
    """Enough warps that each thread holds about `per_thread` elements of a tile."""
    max_warps = max(1, target.max_threads_per_block // max(1, target.warp_size_threads))
    want = max(1, elements // (target.warp_size_threads * per_thread))
    warps = 1
    while warps * 2 <= min(want, cap, max_warps):
        warps *= 2
    return warps
