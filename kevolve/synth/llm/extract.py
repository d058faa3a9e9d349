"""The kernel module in a model's reply: replies mix prose with code, hold several blocks (a
sketch, then the final version), and get cut off at the token limit.

Rule, in order: the last complete Python block that parses and defines the entry point; else
the longest complete Python block that parses; else a final block left open by truncation, if
what arrived (or its complete top-level statements) parses and defines the entry point; else the
whole reply if it is a module that defines it (some models answer bare code). Otherwise a clear
error, which becomes the feedback of the child that the reply was meant to be.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from kevolve.errors import KevolveError
from kevolve.syntax import parse_source

_FENCE = re.compile(r"^[ \t]*(```+|~~~+)[ \t]*([\w+-]*)[^\n]*$", re.MULTILINE)
_PYTHON_TAGS = {"", "python", "py", "python3", "triton"}


class ExtractionError(KevolveError):
    """The reply holds no usable kernel module. `attempt` is what comes closest (the last Python
    block, else the reply), so the evaluator can say what is wrong with it."""

    def __init__(self, message: str, attempt: str = ""):
        super().__init__(message)
        self.attempt = attempt


@dataclass(frozen=True)
class Block:
    code: str
    language: str
    closed: bool
    start: int  # offset of the opening fence in the reply


def code_blocks(text: str) -> list[Block]:
    """Fenced blocks in order; the last may be unterminated (closed=False)."""
    blocks: list[Block] = []
    fences = list(_FENCE.finditer(text))
    i = 0
    while i < len(fences):
        opening = fences[i]
        fence, language = opening.group(1), opening.group(2).lower()
        closing = next((f for f in fences[i + 1:] if f.group(1)[0] == fence[0] and len(f.group(1)) >= len(fence)
                        and not f.group(2)), None)
        body_start = opening.end() + 1
        if closing is None:
            blocks.append(Block(text[body_start:], language, False, opening.start()))
            break
        blocks.append(Block(text[body_start:closing.start()], language, True, opening.start()))
        i = fences.index(closing) + 1
    return blocks


def defines(code: str, entry_point: str) -> bool:
    tree = _parse(code)
    return tree is not None and any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == entry_point
        or isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == entry_point for t in n.targets)
        for n in tree.body)


def extract_code(text: str, entry_point: str) -> str:
    blocks = [b for b in code_blocks(text or "") if b.language in _PYTHON_TAGS]
    closed = [b for b in blocks if b.closed]
    for block in reversed(closed):
        if defines(block.code, entry_point):
            return _tidy(block.code)
    parsing = [b for b in closed if _parse(b.code) is not None and b.code.strip()]
    if parsing:
        return _tidy(max(parsing, key=lambda b: len(b.code)).code)
    open_blocks = [b for b in blocks if not b.closed]
    if open_blocks:
        salvaged = _complete_prefix(open_blocks[-1].code, entry_point)
        if salvaged is not None:
            return _tidy(salvaged)
    if not blocks and defines(text or "", entry_point):
        return _tidy(text)
    attempt = blocks[-1].code if blocks else (text or "")
    raise ExtractionError(_why_not(text or "", blocks, entry_point), attempt)


def _complete_prefix(code: str, entry_point: str) -> str | None:
    """A block cut off by the token limit: the whole of it if it parses, else its longest run of
    complete top-level statements, as long as that defines the entry point."""
    lines = code.splitlines(keepends=True)
    top_level = [i for i in range(len(lines) - 1, 0, -1) if lines[i][:1] not in ("", " ", "\t", "\n", ")", "]", "}")]
    cuts = [len(lines), *top_level]
    for cut in cuts:
        prefix = "".join(lines[:cut])
        if defines(prefix, entry_point):
            return prefix
    return None


def _why_not(text: str, blocks: list[Block], entry_point: str) -> str:
    if not text.strip():
        return "the reply was empty"
    if not blocks:
        return f"the reply has no ```python code block defining `{entry_point}`"
    if not any(b.closed for b in blocks):
        return ("the reply was cut off inside its code block and what arrived does not parse; "
                "keep the module shorter")
    return f"no code block in the reply parses as Python and defines `{entry_point}`"


def _parse(code: str) -> ast.Module | None:
    try:
        return parse_source(code)
    except (SyntaxError, ValueError):
        return None


def _tidy(code: str) -> str:
    return code.strip("\n") + "\n"
