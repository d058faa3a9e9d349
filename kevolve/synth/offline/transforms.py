"""Transformations as data: single-knob moves over a template's config, ordered by what the
parent's diagnosis says limits it.

A transform is `Transform(knob, new_value)`; applying a sequence of them to a config is a
dict update, so a result replays from its seed config and the transforms on its path. The
tables below say, for each kind of bottleneck, which moves to try first and why; the why
becomes the candidate's note.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from kevolve.candidate import Transform
from kevolve.evaluate.result import Diagnosis
from kevolve.hardware.target import HardwareTarget
from kevolve.synth.offline.template import Knob, Template, check_common

Move = tuple[str, Any]  # (knob, "up" | "down" | a value)

# For each bound: moves in the order worth trying, with the reason a note gives.
PREFERENCES: dict[str, tuple[tuple[str, Any, str], ...]] = {
    "memory": (
        ("vec", "up", "wider vector loads"),
        ("aligned", True, "chunks on 16-byte boundaries: vector loads on rows of odd length"),
        ("lse", "one_exp", "one exponential per element: the exponentials' unit stops limiting"),
        ("unmasked", True, "no bounds masks where the tiles divide the shape: fewer instructions per load"),
        ("erf", "poly", "erf from one exponential and a polynomial: fewer instructions per element"),
        ("static_n", True, "the row length compiled in: index math and loop bounds fold"),
        ("UNROLL", "up", "more gathered rows in flight"),
        ("BLOCK_L", "up", "more segment rows in flight"),
        ("BLOCK", "up", "more bytes in flight per program"),
        ("BLOCK_M", "up", "more rows in flight per program"),
        ("BLOCK_N", "up", "longer row chunks in flight"),
        ("variant", "whole_row", "read each row once"),
        ("online", True, "one pass for max and sum"),
        ("num_warps", "down", "fewer warps over the same tile: more bytes in flight per thread"),
        ("evict", "stream", "streamed data evicted first, reused data kept"),
        ("persistent", True, "a persistent grid keeps every SM streaming"),
        ("num_stages", "up", "deeper pipelining of loads"),
        ("BLOCK_D", "up", "wider feature slices"),
        ("programs_per_sm", "up", "more resident programs"),
        ("num_warps", "up", "more warps over the same tile: more threads issuing loads"),
    ),
    "occupancy": (
        ("num_warps", "down", "fewer warps per program: more programs resident"),
        ("BLOCK", "down", "smaller tiles: fewer registers"),
        ("BLOCK_N", "down", "smaller tiles: fewer registers"),
        ("BLOCK_M", "down", "fewer rows per program: fewer registers"),
        ("num_stages", "down", "fewer stages: less shared memory"),
        ("BLOCK_K", "down", "shallower tiles: less shared memory"),
        ("UNROLL", "down", "fewer gathered rows: fewer registers"),
        ("BLOCK_L", "down", "fewer segment rows: fewer registers"),
        ("BLOCK_D", "down", "narrower feature slices"),
    ),
    "launch": (
        ("persistent", True, "a persistent grid instead of many short programs"),
        ("BLOCK", "up", "fewer, larger programs"),
        ("BLOCK_M", "up", "fewer, larger programs"),
        ("BLOCK_D", "up", "fewer programs per row"),
        ("programs_per_sm", "down", "fewer persistent programs"),
        ("SPLIT_K", "down", "one kernel instead of two"),
    ),
    "compute": (
        ("tma", True, "operand tiles fetched by TMA: no address math or registers spent on loads"),
        ("erf", "poly", "erf from one exponential and a polynomial: fewer instructions per element"),
        ("BLOCK_N", "up", "larger output tiles: more reuse per load"),
        ("BLOCK_M", "up", "larger output tiles: more reuse per load"),
        ("num_stages", "up", "deeper software pipelining"),
        ("GROUP_M", "up", "grouped tile order for L2 reuse"),
        ("BLOCK_K", "up", "deeper tiles per step"),
        ("SPLIT_K", "up", "split-K for more parallel tiles"),
        ("num_warps", "up", "more warps to issue math"),
        ("dot_precision", "tf32x3", "three tf32 passes instead of exact fp32 math"),
        ("search", "binary", "log-time search instead of a linear count"),
        ("persistent", True, "a persistent grid"),
    ),
    "latency": (
        ("num_warps", "up", "more warps to hide latency"),
        ("num_stages", "up", "more loads in flight"),
        ("UNROLL", "up", "more gathered rows in flight"),
        ("BLOCK_L", "up", "more segment rows in flight"),
        ("search", "linear", "independent compares instead of dependent gathers"),
        ("BLOCK_M", "down", "more programs for more parallelism"),
        ("SPLIT_K", "up", "split-K for more parallel tiles"),
        ("persistent", True, "a persistent grid"),
    ),
}

# Phrases in a diagnosis' suggestions and the move each asks for; within one suggestion the first
# phrase that names a knob wins ("fewer num_stages" before "stages").
SUGGESTION_WORDS: tuple[tuple[str, str, Any], ...] = (
    ("spill", "BLOCK", "down"), ("spill", "BLOCK_N", "down"), ("spill", "BLOCK_M", "down"),
    ("fewer num_stages", "num_stages", "down"), ("less shared memory", "BLOCK_K", "down"),
    ("register pressure", "BLOCK", "down"), ("fewer elements per thread", "num_warps", "up"),
    ("smaller programs", "BLOCK", "down"), ("smaller programs", "BLOCK_M", "down"),
    ("several rows per program", "BLOCK_M", "up"), ("second pass", "variant", "whole_row"),
    ("persistent", "persistent", True), ("fewer warps", "num_warps", "down"), ("more warps", "num_warps", "up"),
    ("wider", "vec", "up"), ("wider", "BLOCK", "up"), ("vector", "vec", "up"), ("evict", "evict", "stream"),
    ("split-k", "SPLIT_K", "up"), ("split k", "SPLIT_K", "up"), ("or k)", "SPLIT_K", "up"),
    ("stages", "num_stages", "up"), ("pipelin", "num_stages", "up"), ("group", "GROUP_M", "up"),
    ("larger tiles", "BLOCK_M", "up"), ("larger tiles", "BLOCK_N", "up"), ("smaller tiles", "BLOCK_M", "down"),
    ("bytes in flight", "BLOCK", "up"), ("unroll", "UNROLL", "up"), ("online", "online", True),
)


def apply(config: Mapping[str, Any], transforms: Iterable[Transform]) -> dict[str, Any]:
    out = dict(config)
    for t in transforms:
        out[t.name] = t.value
    return out


def moves_for(knob: Knob, value: Any) -> list[tuple[Any, str]]:
    """(new value, direction) for one step of a knob: neighbours of a numeric knob, every other
    value of a categorical one."""
    if value not in knob.values:
        return [(v, "set") for v in knob.values[:1]]
    i = knob.values.index(value)
    if knob.numeric:
        out = []
        if i + 1 < len(knob.values):
            out.append((knob.values[i + 1], "up"))
        if i > 0:
            out.append((knob.values[i - 1], "down"))
        return out
    return [(v, "set") for v in knob.values if v != value]


def _wanted(diagnosis: Diagnosis | None) -> list[tuple[str, Any, str]]:
    wanted: list[tuple[str, Any, str]] = []
    if diagnosis is None:
        return wanted
    for suggestion in diagnosis.suggestions:
        text, named = suggestion.lower(), set()
        for word, knob, direction in SUGGESTION_WORDS:
            if word in text and knob not in named:
                named.add(knob)
                wanted.append((knob, direction, f"the diagnosis suggests: {suggestion}"))
    bound = diagnosis.bound
    for knob, direction, why in PREFERENCES.get(bound, ()):
        wanted.append((knob, direction, f"{bound}-bound: {why}"))
    return wanted


def ranked_moves(template: Template, config: Mapping[str, Any], diagnosis: Diagnosis | None,
                 target: HardwareTarget) -> list[tuple[Transform, str]]:
    """Every single-knob move of a config with the reason to try it, best first: what the
    diagnosis asks for in its order, then the rest in the template's knob order."""
    inert = template.inert(config)
    moves: list[tuple[Transform, str, str]] = []  # transform, direction, knob
    for knob in template.knobs:
        if knob.name not in config or knob.name in inert:
            continue
        for value, direction in moves_for(knob, config[knob.name]):
            moved = dict(config, **{knob.name: value})
            if check_common(moved, target) is None:
                moves.append((Transform(knob.name, value), direction, knob.name))
    ranked: list[tuple[Transform, str]] = []
    for knob, direction, why in _wanted(diagnosis):
        for t, d, name in moves:
            fits = name == knob and (d == direction or (d == "set" and t.value == direction))
            if fits and all(t != r for r, _ in ranked):
                ranked.append((t, why))
    for t, d, name in moves:
        if all(t != r for r, _ in ranked):
            ranked.append((t, f"explore {name} {d if d != 'set' else ''}".rstrip()))
    return ranked


def transforms_for(family: str, config: Mapping[str, Any], diagnosis: Diagnosis | None,
                   target: HardwareTarget) -> list[Transform]:
    """The transforms worth trying on a config of `family`, best first for the diagnosis."""
    from kevolve.synth.offline.families import template_for

    return [t for t, _ in ranked_moves(template_for(family), config, diagnosis, target)]
