"""The knowledge base the search talks to: retrieval over the corpus, skills, best prior kernels.

Sources of truth: the corpus in knowledge/ and the skills and best kernels in the project's
database (state_dir()/kevolve.db). Chroma only indexes them; `rebuild` recreates it from both.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from kevolve.evaluate.result import Diagnosis, Outcome
from kevolve.hardware.target import HardwareTarget, available_targets
from kevolve.knowledge.config import RELATED_SIMILARITY, ChromaMissing, embedding_name, server_url
from kevolve.knowledge.corpus import load_corpus
from kevolve.knowledge.skills import SkillStore, distill
from kevolve.knowledge.types import IngestReport, PriorKernel, RetrievedDoc, Skill
from kevolve.paths import knowledge_dir, state_dir
from kevolve.specs.model import OperatorSpec
from kevolve.synth.base import Attempt

if TYPE_CHECKING:
    from kevolve.knowledge.index import ChromaIndex

log = logging.getLogger(__name__)

# A run's retrieval wants the operator, the hardware and the diagnosis covered, not five sections
# of one manual.
MAX_CHUNKS_PER_DOCUMENT = 2
TARGET_SLOTS = 2  # of a run's k chunks, this many at least are written for its target, where any are


class KnowledgeBase:
    def __init__(self, state: Path, embedding: str, chroma_url: str | None):
        self.state = state
        self.embedding = embedding
        self.chroma_url = chroma_url
        self.store = SkillStore(state / "kevolve.db")
        self._index: ChromaIndex | None = None
        self._warned_no_chroma = False

    @classmethod
    def open(cls, *, state: Path | None = None, embedding: str | None = None,
             chroma_url: str | None = None) -> "KnowledgeBase":
        """The knowledge base under `state` (default: state_dir()), with the embedding named (default:
        $KEVOLVE_EMBEDDING, else minilm) and Chroma at `chroma_url` (default: $KEVOLVE_CHROMA_URL,
        else embedded under state/chroma)."""
        state = Path(state) if state else state_dir()
        state.mkdir(parents=True, exist_ok=True)
        return cls(state, embedding_name(embedding), server_url(chroma_url))

    @property
    def index(self) -> ChromaIndex:
        """Chroma, connected on first use: skills and best kernels alone never need it (nor chromadb)."""
        if self._index is None:
            try:
                from kevolve.knowledge.index import ChromaIndex, connect
            except ImportError:
                raise ChromaMissing() from None
            self._index = ChromaIndex(connect(self.state, self.chroma_url), self.embedding)
        return self._index

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "KnowledgeBase":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the corpus -----------------------------------------------------------------------------

    def ingest(self, corpus_dir: Path | None = None) -> IngestReport:
        """Bring the index up to date with the corpus folder (default: knowledge/). Idempotent:
        unchanged files are not re-embedded."""
        corpus_dir = Path(corpus_dir) if corpus_dir else knowledge_dir()
        docs = load_corpus(corpus_dir, available_targets())  # a bad file fails before Chroma is touched
        return self.index.sync_corpus(corpus_dir, docs)

    def retrieve(self, spec: OperatorSpec, target: HardwareTarget, diagnosis: Diagnosis | None = None,
                 k: int = 5) -> list[RetrievedDoc]:
        """The chunks most relevant to tuning this spec on this target now, written for the target
        (or any) and the spec's family (or any)."""
        try:
            self._ensure_corpus()
        except ChromaMissing as exc:  # a GPU machine without chromadb still tunes, with skills
            if not self._warned_no_chroma:
                log.warning("no retrieval: %s", exc.message)
                self._warned_no_chroma = True
            return []
        text = retrieval_query(spec, target, diagnosis)
        families = [spec.family] if spec.family else []
        found = self.index.search_corpus(text, targets=[target.name], families=families, k=4 * k)
        picked = at_most_per_document(found, MAX_CHUNKS_PER_DOCUMENT)[:k]
        # Keep room for the target's own documentation: general patterns match an operator's text
        # better, but the target manual is what a model may never have seen.
        own = [d for d in self.index.search_corpus(text, targets=[target.name], families=families,
                                                   k=TARGET_SLOTS, or_any_target=False)
               if d.source not in {p.source for p in picked}]
        missing = min(len(own), TARGET_SLOTS - sum(1 for d in picked if _for_target(d, target.name)), k)
        if missing > 0:
            picked = picked[:k - missing] + own[:missing]
        return sorted(picked, key=lambda d: -d.score)

    def query(self, text: str, *, target: str | None = None, family: str | None = None,
              k: int = 5) -> list[RetrievedDoc]:
        self._ensure_corpus()
        return self.index.search_corpus(text, targets=[target] if target else [],
                                        families=[family] if family else [], k=k)

    def _ensure_corpus(self) -> None:
        if self.index.corpus_size() == 0:
            log.info("knowledge index is empty: ingesting %s", knowledge_dir())
            self.ingest()

    # -- skills ---------------------------------------------------------------------------------

    def skills_for(self, spec: OperatorSpec, target: HardwareTarget, k: int = 5) -> list[Skill]:
        """The target's skills for this operator (first), then for its family; nearest shape and
        most useful first. A spec with no family gets the skills whose text is closest to it."""
        dims = spec.shapes_for(target.interpreter)[0]
        ranked = self.store.ranked_for(spec.name, spec.family or "", target.name, dims)
        if not spec.family and len(ranked) < k:
            have = {s.id for s in ranked}
            text = f"{spec.name.replace('_', ' ')}: {spec.description}"
            for skill_id, score in self._skill_neighbours(text, target.name, k + len(have)):
                skill = self.store.get(skill_id)
                if skill and skill_id not in have and score >= RELATED_SIMILARITY[self.embedding]:
                    ranked.append(skill)
                    have.add(skill_id)
        return ranked[:k]

    def _skill_neighbours(self, text: str, target: str, k: int) -> list[tuple[str, float]]:
        if not self.store.all(target=target):
            return []
        try:
            return self.index.search_skills(text, target=target, k=k)
        except ChromaMissing:
            return []

    def skills(self, *, target: str | None = None, family: str | None = None) -> list[Skill]:
        """Every stored skill, most useful first."""
        return self.store.all(target=target, family=family)

    def record_improvement(self, spec: OperatorSpec, target: HardwareTarget, dims: Mapping[str, int],
                           parent: Attempt, child: Attempt, margin: float = 1.05) -> Skill | None:
        """Distil a skill when the child is correct and at least `margin` times faster than its
        correct parent; a near-duplicate of a stored skill merges into it. Returns the stored skill."""
        if parent.outcome != Outcome.CORRECT.value or child.outcome != Outcome.CORRECT.value:
            return None
        skill = distill(spec.name, spec.family or "", target.name, dims, parent.time_ms, child.time_ms,
                        parent.origin, child.origin, diagnosis_line(parent.diagnosis), margin)
        if skill is None:
            return None
        stored = self.store.merge(skill, dims)
        try:
            self.index.put_skills([stored])
        except ChromaMissing:
            pass  # the database has it; `kevolve kb rebuild` indexes it where chromadb is installed
        except Exception as exc:  # the database has it; `kevolve kb rebuild` re-indexes
            log.warning("skill %s saved but not indexed (%s); run `kevolve kb rebuild`", stored.id, exc)
        return stored

    def record_reuse(self, skill_id: str, success: bool) -> None:
        """Count one more use of a skill that paid (success) or did not."""
        self.store.record_reuse(skill_id, success)

    # -- best kernels ---------------------------------------------------------------------------

    def record_best_kernel(self, spec: OperatorSpec, target: HardwareTarget, dims: Mapping[str, int], code: str,
                           config: Mapping[str, Any], speedup: float, evaluation_json: str) -> None:
        self.store.put_best_kernel(spec.name, spec.family or "", target.name, dims, code, config, speedup,
                                   evaluation_json)

    def best_prior_kernel(self, spec: OperatorSpec, target: HardwareTarget,
                          dims: Mapping[str, int]) -> PriorKernel | None:
        return self.store.best_prior_kernel(spec.name, spec.family or "", target.name, dims)

    # -- the index ------------------------------------------------------------------------------

    def rebuild(self, corpus_dir: Path | None = None) -> None:
        """Drop the Chroma collections of this embedding and recreate them from the corpus and
        the skills table."""
        self.index.reset()
        self.ingest(corpus_dir)
        self.index.put_skills(self.store.all())


def retrieval_query(spec: OperatorSpec, target: HardwareTarget, diagnosis: Diagnosis | None = None) -> str:
    """What to search for: the operator, the hardware, and what the last diagnosis found."""
    parts = [f"{spec.name.replace('_', ' ')} kernel in Triton"]
    if spec.family:
        parts.append(f"({spec.family.replace('_', ' ')} family)")
    if spec.description:
        parts.append(spec.description.rstrip(".") + ".")
    parts.append(f"Target: {target.display_name} ({target.vendor} {target.architecture}{target_features(target)}).")
    if diagnosis is not None:
        parts.append(f"Diagnosis: {diagnosis.bound}-bound. {diagnosis.summary}")
        parts.extend(diagnosis.suggestions[:2])
    return " ".join(parts)


def target_features(target: HardwareTarget) -> str:
    """What sets the target apart: its hardware features, and a warp that is not 32 wide."""
    flags = [name.upper() for name, value in target.extra.items() if value is True]
    if target.warp_size_threads not in (1, 32):
        flags.append(f"warp size {target.warp_size_threads}")
    if target.interpreter:
        flags.append("Triton interpreter on the CPU")
    return (", " + ", ".join(flags)) if flags else ""


def at_most_per_document(docs: Sequence[RetrievedDoc], limit: int) -> list[RetrievedDoc]:
    """The docs in order, keeping at most `limit` chunks of each source file."""
    seen: dict[str, int] = {}
    kept = []
    for doc in docs:
        path = doc.metadata.get("path", doc.source)
        seen[path] = seen.get(path, 0) + 1
        if seen[path] <= limit:
            kept.append(doc)
    return kept


def _for_target(doc: RetrievedDoc, target: str) -> bool:
    return target in doc.metadata.get("target", ())


def diagnosis_line(diagnosis: Diagnosis | None) -> str:
    if diagnosis is None:
        return ""
    return f"{diagnosis.bound}-bound: {diagnosis.summary}".strip()


def sources_markdown(docs: Sequence[RetrievedDoc]) -> str:
    """The retrieved chunks as a markdown table for a run's report."""
    lines = ["| # | source | kind | score |", "|---|---|---|---|"]
    for n, doc in enumerate(docs, 1):
        lines.append(f"| {n} | `{doc.source}` | {doc.metadata.get('kind', '')} | {doc.score:.3f} |")
    return "\n".join(lines)
