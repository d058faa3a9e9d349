"""The Chroma index: the corpus's chunks, and the skills as searchable text.

Nothing here is a source of truth: the corpus lives in knowledge/ and the skills in the project's
database, and `rebuild` recreates both collections from them. Collections are named after the
embedding, so switching embeddings never mixes vectors of two kinds.

Embedded Chroma (a folder under the state directory) by default; a `chroma run` server when a URL
is given (`KEVOLVE_CHROMA_URL`), with the embedding computed here either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlparse

from kevolve.knowledge.config import CHROMA_URL_ENV
from kevolve.knowledge.corpus import ANY, Document, chunk_document
from kevolve.knowledge.embedding import make_embedding
from kevolve.knowledge.types import IngestReport, KnowledgeError, RetrievedDoc, Skill

_BATCH = 64
# HNSW's search keeps its `ef_search` best candidates; while a collection holds fewer records than
# that, the search visits every record it can reach and returns the exact nearest. At Chroma's
# default of 100, three-word queries from the corpus's own text (about 170 chunks), after
# re-ingesting one edited file, missed the exact top match 4 times in 11,970 (and a test's query
# for the edit's words, about once in 14 runs); at this value, none in 11,970.
EF_SEARCH = 2048


def connect(state: Path, url: str | None):
    """A Chroma client: the server at `url`, else the embedded store under state/chroma."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if not url:
        return chromadb.PersistentClient(path=str(state / "chroma"), settings=settings)
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if not parsed.hostname:
        raise KnowledgeError(f"cannot read Chroma URL {url!r}; expected e.g. http://127.0.0.1:8123")
    try:
        return chromadb.HttpClient(host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                                   ssl=parsed.scheme == "https", settings=settings)
    except Exception as exc:  # chromadb raises ValueError, or httpx errors, when nobody answers
        raise KnowledgeError(f"cannot reach a Chroma server at {url} ({type(exc).__name__}); start one with "
                             f"`chroma run --path DIR --host {parsed.hostname} --port {parsed.port or 8000}` "
                             f"or unset {CHROMA_URL_ENV} to use the embedded store") from None


class ChromaIndex:
    def __init__(self, client, embedding: str):
        self.client = client
        self.embedding = embedding
        self.function = make_embedding(embedding)
        self._open: dict[str, Any] = {}

    def _collection(self, kind: str):
        if kind not in self._open:
            col = self.client.get_or_create_collection(
                name=f"kevolve-{kind}-{self.embedding}", embedding_function=self.function,
                configuration={"hnsw": {"space": "cosine", "ef_search": EF_SEARCH}})
            if (col.configuration.get("hnsw") or {}).get("ef_search", 0) < EF_SEARCH:  # made before it was set
                col.modify(configuration={"hnsw": {"ef_search": EF_SEARCH}})
            self._open[kind] = col
        return self._open[kind]

    @property
    def corpus(self):
        return self._collection("corpus")

    @property
    def skills(self):
        return self._collection("skills")

    def reset(self) -> None:
        """Drop both collections (of this embedding)."""
        self._open.clear()
        names = {c.name if hasattr(c, "name") else str(c) for c in self.client.list_collections()}
        for kind in ("corpus", "skills"):
            name = f"kevolve-{kind}-{self.embedding}"
            if name in names:
                self.client.delete_collection(name)

    # -- corpus ---------------------------------------------------------------------------------

    def corpus_size(self) -> int:
        return self.corpus.count()

    def sync_corpus(self, corpus_dir: Path, docs: Sequence[Document]) -> IngestReport:
        """Make the corpus collection hold exactly these documents: files whose bytes changed are
        re-embedded, files gone are deleted, the rest are left alone."""
        col = self.corpus
        stored: dict[str, tuple[str, list[str]]] = {}  # path -> (sha, chunk ids)
        existing = col.get(include=["metadatas"])
        for chunk_id, meta in zip(existing["ids"], existing["metadatas"] or []):
            sha, ids = stored.setdefault(meta["path"], (meta.get("sha", ""), []))
            ids.append(chunk_id)
        added, updated, unchanged = [], [], []
        written = deleted = 0
        for doc in docs:
            old = stored.get(doc.path)
            if old and old[0] == doc.sha:
                unchanged.append(doc.path)
                continue
            if old:
                col.delete(ids=old[1])
                deleted += len(old[1])
            chunks = chunk_document(doc)
            for start in range(0, len(chunks), _BATCH):
                part = chunks[start:start + _BATCH]
                # upsert: another process ingesting at the same time may have written these ids
                col.upsert(ids=[c.id for c in part], documents=[c.text for c in part],
                           metadatas=[c.metadata for c in part])
            written += len(chunks)
            (updated if old else added).append(doc.path)
        current = {d.path for d in docs}
        removed = sorted(p for p in stored if p not in current)
        for path in removed:
            col.delete(ids=stored[path][1])
            deleted += len(stored[path][1])
        return IngestReport(corpus_dir=str(corpus_dir), embedding=self.embedding, added=tuple(added),
                            updated=tuple(updated), removed=tuple(removed), unchanged=tuple(unchanged),
                            chunks_written=written, chunks_deleted=deleted)

    def search_corpus(self, text: str, *, targets: Iterable[str] = (), families: Iterable[str] = (),
                      k: int = 5, or_any_target: bool = True) -> list[RetrievedDoc]:
        """Top-k chunks for the text. With targets (families), only chunks written for one of them
        or for any; with `or_any_target=False`, only chunks written for one of the targets."""
        clauses = [_any_of("target", targets, or_any=or_any_target), _any_of("family", families)]
        clauses = [c for c in clauses if c]
        where = clauses[0] if len(clauses) == 1 else ({"$and": clauses} if clauses else None)
        found = self.corpus.query(query_texts=[text], n_results=k, where=where,
                                  include=["documents", "metadatas", "distances"])
        return [RetrievedDoc(source=f"{meta['path']}#{meta['heading']}", title=meta["title"], text=doc,
                             score=round(1.0 - float(dist), 4), metadata=_plain(meta))
                for doc, meta, dist in zip(found["documents"][0], found["metadatas"][0], found["distances"][0])]

    # -- skills ---------------------------------------------------------------------------------

    def put_skills(self, skills: Sequence[Skill]) -> None:
        """Index these skills; one whose text and metadata are already stored is not embedded again
        (a merge that only counts a success changes neither)."""
        records = {s.id: (skill_text(s), {"target": s.target, "family": s.family or "", "operator": s.operator})
                   for s in skills}
        if records:
            stored = self.skills.get(ids=list(records), include=["documents", "metadatas"])
            for sid, doc, meta in zip(stored["ids"], stored["documents"], stored["metadatas"]):
                if records[sid] == (doc, meta):
                    del records[sid]
        ids = list(records)
        for start in range(0, len(ids), _BATCH):
            part = ids[start:start + _BATCH]
            self.skills.upsert(ids=part, documents=[records[i][0] for i in part],
                               metadatas=[records[i][1] for i in part])

    def search_skills(self, text: str, *, target: str, k: int) -> list[tuple[str, float]]:
        """(skill id, similarity) of the target's skills closest to the text."""
        col = self.skills
        found = col.query(query_texts=[text], n_results=k, where={"target": target}, include=["distances"])
        return [(sid, 1.0 - float(d)) for sid, d in zip(found["ids"][0], found["distances"][0])]


def skill_text(skill: Skill) -> str:
    ops = ", ".join(skill.operators or (skill.operator,))
    return (f"{ops} ({skill.family or 'no family'}) on {skill.target}, shapes {skill.shape_class}: "
            f"{skill.change}. Motivation: {skill.motivation or 'none recorded'}")


def _any_of(key: str, values: Iterable[str], or_any: bool = True) -> dict[str, Any] | None:
    wanted = [v for v in dict.fromkeys(values) if v]
    if not wanted:
        return None
    if or_any:
        wanted.append(ANY)
    clauses = [{key: {"$contains": v}} for v in wanted]
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


def _plain(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in meta.items()}
