"""Which template family a reference belongs to, read from its traced graph.

The spec's `family` field is only a hint: the graph decides. Templates are tried from the most
specific (a matmul, a jagged op) to the most general (pointwise), and the first that reads the
graph wins. An operator none covers gets a message that says so and points to an LLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from kevolve.specs.model import OperatorSpec
from kevolve.synth.base import SynthesisError
from kevolve.synth.offline.expr import Unsupported
from kevolve.synth.offline.template import Match, Template
from kevolve.synth.offline.trace import trace


@dataclass(frozen=True)
class FamilyMatch:
    """The family a spec's reference belongs to, and why."""

    family: str
    reason: str
    match: Match

    @property
    def detail(self) -> Any:
        return self.match.detail


def templates() -> tuple[Template, ...]:
    from kevolve.synth.offline.bucketize import BucketizeTemplate
    from kevolve.synth.offline.cross_entropy import CrossEntropyTemplate
    from kevolve.synth.offline.jagged import JaggedTemplate
    from kevolve.synth.offline.matmul import MatmulTemplate
    from kevolve.synth.offline.pointwise import PointwiseTemplate
    from kevolve.synth.offline.rowwise import RowwiseTemplate

    return (MatmulTemplate(), JaggedTemplate(), BucketizeTemplate(), CrossEntropyTemplate(), RowwiseTemplate(),
            PointwiseTemplate())


def template_for(family: str) -> Template:
    for t in templates():
        if family in t.families:
            return t
    known = sorted(f for t in templates() for f in t.families)
    raise SynthesisError(f"unknown template family {family!r}; known families: {', '.join(known)}")


def families() -> tuple[str, ...]:
    return tuple(f for t in templates() for f in t.families)


def match_family(spec: OperatorSpec) -> FamilyMatch:
    """The template family that covers the spec's reference; SynthesisError when none does."""
    graph = trace(spec)
    problems: list[str] = []
    for template in templates():
        try:
            match = template.match(graph, spec)
        except Unsupported as exc:
            problems.append(f"{'/'.join(template.families)}: {exc}")
            continue
        if match is not None:
            return FamilyMatch(match.family, match.reason, match)
    why = f" ({'; '.join(problems)})" if problems else ""
    raise SynthesisError(
        f"{spec.name}: no offline template covers this operator (it computes {graph.describe()}){why}; "
        "it needs an LLM synthesizer (run against a model endpoint, without --offline)")


def render(spec: OperatorSpec, family: str, config: Mapping[str, Any]) -> str:
    """The candidate module for a family and config: the same inputs give the same code."""
    template = template_for(family)
    found = match_family(spec)
    if found.family != family:
        raise SynthesisError(f"{spec.name} is of the {found.family} family, not {family}")
    try:
        return template.render(spec, found.match, dict(config))
    except KeyError as exc:
        raise SynthesisError(f"config for {family} lacks the knob {exc.args[0]}; "
                             "take a seed config and apply transforms to it") from None
