"""A candidate kernel: a self-contained module's source, what language it launches, and how it
was made (so a result can be replayed and learned from)."""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

from kevolve.syntax import parse_source


@dataclass(frozen=True)
class Transform:
    """One search action, as data: set a knob (`num_warps` to 8) or apply a rewrite."""

    name: str
    value: Any = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}={self.value}"


@dataclass(frozen=True)
class Origin:
    """What made a candidate."""

    synthesizer: str  # "offline", "llm", "library", "manual"
    family: str | None = None  # the offline template family, when there is one
    config: Mapping[str, Any] = field(default_factory=dict)  # every knob of the template
    transforms: tuple[Transform, ...] = ()  # applied to the parent to get here
    prompt_hash: str | None = None  # LLM: the prompt that produced it
    model: str | None = None  # LLM: the model that answered
    memory_mode: str | None = None  # inherit | siblings | restart
    note: str = ""  # one line: what changed and why
    skill_id: str | None = None  # the learnt skill whose change this applies, if one led to it

    def made_by(self) -> str:
        """One line for reports: the synthesizer, its family, the transformations, the model and prompt."""
        made = self.synthesizer + (f" {self.family}" if self.family else "")
        if self.transforms:
            made += " after " + ", ".join(map(str, self.transforms))
        if self.model or self.prompt_hash:
            made += " (" + ", ".join(x for x in (self.model and f"model {self.model}",
                                                 self.prompt_hash and f"prompt {self.prompt_hash}") if x) + ")"
        return made


@dataclass(frozen=True)
class Candidate:
    code: str
    spec_name: str
    origin: Origin
    language: str = "triton"

    @cached_property  # kept in the instance's dict, not a field: never compared, not copied by replace()
    def code_hash(self) -> str:
        """Made once per candidate: normalising a kernel's source takes milliseconds (parse and
        unparse), holding the interpreter, and the loop, the store and every fanned-out evaluation
        task (its run name, its cache key) ask for it."""
        return code_hash(self.code)


def normalise_code(code: str) -> str:
    """Source with comments, docstrings-free formatting and spacing removed, so that two
    candidates that differ only there count as one."""
    try:
        tree = parse_source(code)
    except SyntaxError:
        return "\n".join(line.rstrip() for line in code.strip().splitlines())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(body[0].value.value, str)):
            body.pop(0)
            if not body:
                body.append(ast.Pass())
    return ast.unparse(tree)


def code_hash(code: str) -> str:
    return hashlib.sha256(normalise_code(code).encode()).hexdigest()[:16]
