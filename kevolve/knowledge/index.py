"""The Chroma index: the corpus's chunks, and the skills as searchable text.

Nothing here is a source of truth: the corpus lives in knowledge/ and the skills in the project's
database, and `rebuild` recreates both collections from them. Collections are named after the
embedding, so switching embeddings never mixes vectors of two kinds.

Embedded Chroma (a folder under the state directory) by default; a `chroma run` server when a URL
is given (`KEVOLVE_CHROMA_URL`), with the embedding computed here either way.

Records are only ever added. Chroma 1.5.9's HNSW can leave live records unreachable by `query()`
once others were deleted or updated in place (chroma-core/chroma#7758): an edited corpus file once
made its own new chunk unfindable. So a change that would delete or update rewrites the collection
instead: the stored vectors of what stays are copied, only what is new is embedded, and the copy
replaces the old collection under its name.
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

    def _name(self, kind: str) -> str:
        return f"kevolve-{kind}-{self.embedding}"

    def _create(self, name: str, *, exist_ok: bool = True):
        # a fresh configuration each time: Chroma writes the embedding function into the one it is given
        make = self.client.get_or_create_collection if exist_ok else self.client.create_collection
        return make(name=name, embedding_function=self.function, configuration={"hnsw": {"space": "cosine"}})

    def _collection(self, kind: str):
        if kind not in self._open:
            self._open[kind] = self._create(self._name(kind))
        return self._open[kind]

    def _call(self, kind: str, method: str, **kwargs: Any):
        """collection.method(**kwargs), reopened once if another client rewrote the collection since."""
        from chromadb.errors import NotFoundError

        try:
            return getattr(self._collection(kind), method)(**kwargs)
        except NotFoundError:
            self._open.pop(kind, None)
            return getattr(self._collection(kind), method)(**kwargs)

    def _write(self, kind: str, ids: Sequence[str], documents: Sequence[str],
               metadatas: Sequence[Mapping[str, Any]], stale: Iterable[str] = ()) -> None:
        """Store these records and drop the stale ids: added in place when nothing stored changes,
        else by rewriting the collection (see the module's note)."""
        stale = set(stale)
        if not stale and ids:
            stale = set(self._call(kind, "get", ids=list(ids), include=[])["ids"])
        if not stale:
            for start in range(0, len(ids), _BATCH):
                # upsert: another process ingesting at the same time may have written these ids
                self._call(kind, "upsert", ids=list(ids[start:start + _BATCH]),
                           documents=list(documents[start:start + _BATCH]),
                           metadatas=list(metadatas[start:start + _BATCH]))
            return
        self._rewrite(kind, stale | set(ids), ids, documents, metadatas)

    def _rewrite(self, kind: str, replaced: set[str], ids: Sequence[str], documents: Sequence[str],
                 metadatas: Sequence[Mapping[str, Any]]) -> None:
        kept = self._call(kind, "get", include=["embeddings", "documents", "metadatas"])
        keep = [n for n, cid in enumerate(kept["ids"]) if cid not in replaced]
        staging = f"{self._name(kind)}-next"
        if staging in self._collection_names():  # left by a rewrite that was interrupted
            self.client.delete_collection(staging)
        fresh = self._create(staging, exist_ok=False)
        for start in range(0, len(keep), _BATCH):
            part = keep[start:start + _BATCH]
            fresh.add(ids=[kept["ids"][n] for n in part], embeddings=[kept["embeddings"][n] for n in part],
                      documents=[kept["documents"][n] for n in part], metadatas=[kept["metadatas"][n] for n in part])
        for start in range(0, len(ids), _BATCH):
            fresh.add(ids=list(ids[start:start + _BATCH]), documents=list(documents[start:start + _BATCH]),
                      metadatas=list(metadatas[start:start + _BATCH]))
        self.client.delete_collection(self._name(kind))
        fresh.modify(name=self._name(kind))
        self._open[kind] = fresh

    def _collection_names(self) -> set[str]:
        return {c.name if hasattr(c, "name") else str(c) for c in self.client.list_collections()}

    @property
    def corpus(self):
        return self._collection("corpus")

    @property
    def skills(self):
        return self._collection("skills")

    def reset(self) -> None:
        """Drop both collections (of this embedding)."""
        self._open.clear()
        names = self._collection_names()
        for kind in ("corpus", "skills"):
            for name in (self._name(kind), f"{self._name(kind)}-next"):
                if name in names:
                    self.client.delete_collection(name)

    # -- corpus ---------------------------------------------------------------------------------

    def corpus_size(self) -> int:
        return self._call("corpus", "count")

    def sync_corpus(self, corpus_dir: Path, docs: Sequence[Document]) -> IngestReport:
        """Make the corpus collection hold exactly these documents: files whose bytes changed are
        re-embedded, files gone are deleted, the rest are left alone."""
        stored: dict[str, tuple[str, list[str]]] = {}  # path -> (sha, chunk ids)
        existing = self._call("corpus", "get", include=["metadatas"])
        for chunk_id, meta in zip(existing["ids"], existing["metadatas"] or []):
            sha, ids = stored.setdefault(meta["path"], (meta.get("sha", ""), []))
            ids.append(chunk_id)
        added, updated, unchanged, chunks, stale = [], [], [], [], []
        for doc in docs:
            old = stored.get(doc.path)
            if old and old[0] == doc.sha:
                unchanged.append(doc.path)
                continue
            if old:
                stale.extend(old[1])
            chunks.extend(chunk_document(doc))
            (updated if old else added).append(doc.path)
        current = {d.path for d in docs}
        removed = sorted(p for p in stored if p not in current)
        for path in removed:
            stale.extend(stored[path][1])
        if chunks or stale:
            self._write("corpus", [c.id for c in chunks], [c.text for c in chunks], [c.metadata for c in chunks],
                        stale=stale)
        written, deleted = len(chunks), len(stale)
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
        found = self._call("corpus", "query", query_texts=[text], n_results=k, where=where,
                            include=["documents", "metadatas", "distances"])
        return [RetrievedDoc(source=f"{meta['path']}#{meta['heading']}", title=meta["title"], text=doc,
                             score=round(1.0 - float(dist), 4), metadata=_plain(meta))
                for doc, meta, dist in zip(found["documents"][0], found["metadatas"][0], found["distances"][0])]

    # -- skills ---------------------------------------------------------------------------------

    def put_skills(self, skills: Sequence[Skill]) -> None:
        """Index these skills; one whose text and metadata are already stored is left alone (a merge
        that only counts a success changes neither)."""
        records = {s.id: (skill_text(s), {"target": s.target, "family": s.family or "", "operator": s.operator})
                   for s in skills}
        if not records:
            return
        stored = self._call("skills", "get", ids=list(records), include=["documents", "metadatas"])
        for sid, doc, meta in zip(stored["ids"], stored["documents"], stored["metadatas"]):
            if records[sid] == (doc, meta):
                del records[sid]
        self._write("skills", list(records), [r[0] for r in records.values()], [r[1] for r in records.values()])

    def search_skills(self, text: str, *, target: str, k: int) -> list[tuple[str, float]]:
        """(skill id, similarity) of the target's skills closest to the text."""
        found = self._call("skills", "query", query_texts=[text], n_results=k, where={"target": target},
                            include=["distances"])
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
