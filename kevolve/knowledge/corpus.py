"""The corpus: markdown files with front-matter, cut into chunks that keep their headings.

A corpus file starts with YAML front-matter:

    ---
    title: NVIDIA Hopper (H100, H200)
    kind: manual            # manual | pattern | constraint | operator | performance | sample
    target: [h100-sxm, h200] # hardware/ names, or any
    family: any             # operator families, or any
    ---

Each chunk is one section (up to `###`) with the path of headings above it, so "Shared memory"
under "Memory hierarchy" of the Hopper manual reads as such when it is retrieved alone. Long
sections are cut at paragraph breaks, never inside a code block.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from kevolve.knowledge.types import KnowledgeError

KINDS = ("manual", "pattern", "constraint", "operator", "performance", "sample")
FAMILIES = ("pointwise", "reduction", "normalization", "softmax", "cross_entropy", "rotary", "matmul",
            "jagged", "bucketize")
ANY = "any"
# Bumped when chunking changes, so that re-ingestion re-embeds every file.
CHUNKER_VERSION = "2"
# all-MiniLM-L6-v2 reads 256 word pieces; a chunk a little under that in words is read whole.
MAX_CHUNK_WORDS = 170
SPLIT_LEVEL = 3  # headings up to ### start a new chunk; deeper ones stay inside theirs

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Document:
    path: str  # relative to the corpus folder, with forward slashes
    title: str
    kind: str
    targets: tuple[str, ...]
    families: tuple[str, ...]
    body: str
    sha: str  # of the file's bytes and the chunker's version


@dataclass(frozen=True)
class Chunk:
    id: str  # "<path>#<n>"
    source: str  # "<path>#<heading path>"
    title: str
    text: str  # the title and heading path, then the section's text: what is embedded and returned
    metadata: dict[str, Any]


def load_corpus(corpus_dir: Path, known_targets: Iterable[str]) -> list[Document]:
    """Every markdown file under the folder except README.md, in a stable order."""
    if not corpus_dir.is_dir():
        raise KnowledgeError(f"corpus folder {corpus_dir} not found; pass --corpus DIR or set "
                             f"KEVOLVE_KNOWLEDGE_DIR")
    targets = set(known_targets) | {ANY}
    return [read_document(corpus_dir, path, targets)
            for path in sorted(corpus_dir.rglob("*.md")) if path.name != "README.md"]


def read_document(corpus_dir: Path, path: Path, known_targets: set[str]) -> Document:
    rel = path.relative_to(corpus_dir).as_posix()
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    meta, body = split_front_matter(text, rel)

    def fail(problem: str) -> KnowledgeError:
        return KnowledgeError(f"{rel}: {problem}; see knowledge/README.md for the front-matter fields")

    title = str(meta.get("title") or "").strip()
    if not title:
        raise fail("front-matter has no title")
    kind = str(meta.get("kind") or "")
    if kind not in KINDS:
        raise fail(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    target_list = _as_tuple(meta.get("target", ANY))
    unknown = [t for t in target_list if t not in known_targets]
    if unknown:
        raise fail(f"target {unknown[0]!r} is not a hardware/ target or 'any'")
    family_list = _as_tuple(meta.get("family", ANY))
    unknown = [f for f in family_list if f not in FAMILIES and f != ANY]
    if unknown:
        raise fail(f"family {unknown[0]!r} is not one of {', '.join(FAMILIES)} or 'any'")
    sha = hashlib.sha256(CHUNKER_VERSION.encode() + raw).hexdigest()[:20]
    return Document(rel, title, kind, target_list, family_list, body, sha)


def split_front_matter(text: str, name: str) -> tuple[dict[str, Any], str]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise KnowledgeError(f"{name}: no front-matter; start the file with a '---' block "
                             f"(title, kind, target, family)")
    for end in range(1, len(lines)):
        if lines[end].strip() == "---":
            break
    else:
        raise KnowledgeError(f"{name}: front-matter is not closed by a '---' line")
    try:
        meta = yaml.safe_load("\n".join(lines[1:end])) or {}
    except yaml.YAMLError as exc:
        raise KnowledgeError(f"{name}: front-matter is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise KnowledgeError(f"{name}: front-matter must be a mapping of fields")
    return meta, "\n".join(lines[end + 1:])


def chunk_document(doc: Document) -> list[Chunk]:
    chunks: list[Chunk] = []
    for headings, body in _sections(doc.body):
        path = " > ".join(headings) if headings else doc.title
        for piece in _split_long(body):
            n = len(chunks)
            chunks.append(Chunk(
                id=f"{doc.path}#{n}",
                source=f"{doc.path}#{path}",
                title=doc.title,
                text=f"{doc.title} | {path}\n\n{piece}",
                metadata={
                    "path": doc.path, "title": doc.title, "heading": path, "kind": doc.kind,
                    "target": list(doc.targets), "family": list(doc.families), "sha": doc.sha,
                    "chunk": n,
                },
            ))
    return chunks


def _sections(body: str) -> list[tuple[list[str], str]]:
    """(heading path, text) for each section with text, in order. A level-1 heading is the
    document's own title and starts the path afresh."""
    sections: list[tuple[list[str], str]] = []
    stack: list[tuple[int, str]] = []
    current: list[str] = []
    in_fence = False

    def flush() -> None:
        text = "\n".join(current).strip()
        if text:
            sections.append(([h for level, h in stack if level > 1], text))
        current.clear()

    for line in body.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match and len(match.group(1)) <= SPLIT_LEVEL:
            flush()
            level = len(match.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, match.group(2)))
        else:
            current.append(line)
    flush()
    return sections


def _split_long(text: str) -> list[str]:
    """Cut at blank lines outside code blocks into pieces of at most MAX_CHUNK_WORDS words
    (a code block longer than that stays whole)."""
    blocks: list[str] = []
    block: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        if not line.strip() and not in_fence:
            if block:
                blocks.append("\n".join(block))
                block = []
        else:
            block.append(line)
    if block:
        blocks.append("\n".join(block))

    pieces: list[str] = []
    words = 0
    for b in blocks:
        n = len(b.split())
        if pieces and words + n <= MAX_CHUNK_WORDS:
            pieces[-1] += "\n\n" + b
            words += n
        else:
            pieces.append(b)
            words = n
    return pieces


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return (ANY,)
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value) or (ANY,)
