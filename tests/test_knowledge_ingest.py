"""Ingestion: front-matter, chunks that keep their headings, idempotent re-ingestion, rebuild,
embedding registration across processes, and the Chroma server mode. Uses the light (hashing)
embedding: what is tested here does not depend on the model."""

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from chromadb.api.client import SharedSystemClient

from conftest import REPO, run_cli
from kevolve.knowledge import KnowledgeBase, KnowledgeError
from kevolve.knowledge.corpus import MAX_CHUNK_WORDS, chunk_document, load_corpus, read_document
from kevolve.knowledge.config import embedding_name
from kevolve.knowledge.embedding import HashingEmbedding

TARGETS = {"h100-sxm", "h200", "a100", "mi300x", "mtia-v2", "cpu-interpreter", "any"}
QUESTIONS = ["shared memory per SM on the H100", "warp size on the MI300X", "online softmax for long rows",
             "fuse bias and relu into the matmul epilogue", "flush L2 between timing trials"]


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A copy of the real corpus that a test may edit."""
    dest = tmp_path / "corpus"
    shutil.copytree(REPO / "knowledge", dest)
    return dest


def open_kb(state: Path) -> KnowledgeBase:
    return KnowledgeBase.open(state=state, embedding="hashing")


def collection_state(kb: KnowledgeBase) -> dict[str, str]:
    got = kb.index.corpus.get(include=["metadatas"])
    return {cid: meta["sha"] for cid, meta in zip(got["ids"], got["metadatas"])}


def write_doc(path: Path, body: str, **meta) -> None:
    front = {"title": "A test document", "kind": "pattern", "target": "any", "family": "any", **meta}
    lines = ["---", *(f"{k}: {json.dumps(v)}" for k, v in front.items()), "---", body]
    path.write_text("\n".join(lines))


def test_every_corpus_file_parses_and_chunks_keep_their_headings():
    docs = load_corpus(REPO / "knowledge", TARGETS - {"any"})
    assert len(docs) >= 30
    kinds = {d.kind for d in docs}
    assert {"manual", "pattern", "constraint", "operator", "sample"} <= kinds
    # a manual per target, the interpreter included
    covered = {t for d in docs if d.kind == "manual" for t in d.targets}
    assert TARGETS - {"any"} <= covered
    hopper = next(d for d in docs if d.path == "targets/nvidia-hopper.md")
    sources = [c.source for c in chunk_document(hopper)]
    assert "targets/nvidia-hopper.md#Memory hierarchy > Shared memory and L1" in sources
    chunk = next(c for c in chunk_document(hopper) if c.source.endswith("Shared memory and L1"))
    assert chunk.text.startswith("NVIDIA Hopper manual (H100 SXM, H200) | Memory hierarchy > Shared memory and L1")
    assert chunk.metadata["target"] == ["h100-sxm", "h200"] and chunk.metadata["kind"] == "manual"


def test_chunking_ignores_hashes_in_code_and_splits_long_sections(tmp_path):
    paragraphs = "\n\n".join(f"Paragraph {i} " + "word " * 60 for i in range(6))
    write_doc(tmp_path / "doc.md", "# Title\n\n## Code\n\n```python\n# not a heading\nx = 1\n```\n\n"
              f"## Long\n\n{paragraphs}\n\n### Deeper\n\nshort text\n\n#### Deepest\n\nstays in Deeper\n")
    doc = read_document(tmp_path, tmp_path / "doc.md", TARGETS)
    chunks = chunk_document(doc)
    sources = [c.source for c in chunks]
    assert sources[0] == "doc.md#Code" and "# not a heading" in chunks[0].text
    long_parts = [c for c in chunks if c.source == "doc.md#Long"]
    assert len(long_parts) == 3  # 6 paragraphs of ~62 words, at most MAX_CHUNK_WORDS per chunk
    assert all(len(c.text.split("\n\n", 1)[1].split()) <= MAX_CHUNK_WORDS for c in long_parts)
    deeper = next(c for c in chunks if c.source == "doc.md#Long > Deeper")
    assert "#### Deepest" in deeper.text and "stays in Deeper" in deeper.text
    assert [c.id for c in chunks] == [f"doc.md#{i}" for i in range(len(chunks))]


@pytest.mark.parametrize("front, words", [
    ("", "no front-matter"),
    ("---\ntitle: x\nkind: manual\ntarget: h900\n---\n", "target 'h900'"),
    ("---\ntitle: x\nkind: essay\n---\n", "kind 'essay'"),
    ("---\ntitle: x\nkind: manual\nfamily: convolution\n---\n", "family 'convolution'"),
    ("---\nkind: manual\n---\n", "no title"),
    ("---\ntitle: [unclosed\n---\n", "not valid YAML"),
])
def test_bad_front_matter_is_one_clear_error(tmp_path, front, words):
    (tmp_path / "bad.md").write_text(front + "# Body\n\ntext\n")
    with pytest.raises(KnowledgeError, match="bad.md") as err:
        load_corpus(tmp_path, TARGETS)
    assert words in err.value.message and "\n" not in err.value.message


def unreachable(collection) -> list[str]:
    """Ids a query with the record's own stored vector does not find among its nearest three."""
    got = collection.get(include=["embeddings"])
    found = collection.query(query_embeddings=list(got["embeddings"]), n_results=3, include=[])
    return [cid for cid, near in zip(got["ids"], found["ids"]) if cid not in near]


def inexact(collection, texts: list[str]) -> list[str]:
    """The texts whose top match from Chroma is not the exact nearest record by cosine similarity."""
    got = collection.get(include=["embeddings"])
    vectors = np.asarray(HashingEmbedding()(texts))
    exact = np.argmax(vectors @ np.asarray(got["embeddings"]).T, axis=1)
    found = collection.query(query_embeddings=list(vectors), n_results=1, include=[])["ids"]
    return [t for t, top, best in zip(texts, found, exact) if top[0] != got["ids"][best]]


def phrases(collection, per_record: int = 5) -> list[str]:
    """Three-word phrases taken from the records' own text, a few from each."""
    rng = random.Random(0)
    out = []
    for doc in collection.get(include=["documents"])["documents"]:
        words = re.findall(r"[A-Za-z]{4,}", doc)
        for _ in range(per_record):
            start = rng.randrange(max(1, len(words) - 2))
            out.append(" ".join(words[start:start + 3]))
    return out


def test_reingest_is_idempotent_and_edits_reembed_only_the_changed_file(tmp_path, corpus, embedded):
    kb = open_kb(tmp_path / "state")
    first = kb.ingest(corpus)
    assert len(first.added) >= 30 and not first.updated and not first.removed
    before = collection_state(kb)
    assert len(before) == first.chunks_written

    again = kb.ingest(corpus)
    assert not again.changed and again.chunks_written == 0 and again.chunks_deleted == 0
    assert collection_state(kb) == before

    reader = open_kb(tmp_path / "state")  # another client, with the collection open before the edit
    assert reader.query("bucketize boundaries", k=1)
    edited = corpus / "families" / "bucketize.md"
    edited.write_text(edited.read_text() + "\n## Zebra striping\n\nA zebra-striped quokka layout for buckets.\n")
    embedded.clear()
    report = kb.ingest(corpus)
    assert len(embedded) == report.chunks_written  # the other files' vectors are kept, not recomputed
    assert report.updated == ("families/bucketize.md",) and not report.added and not report.removed
    after = collection_state(kb)
    changed = {cid for cid in after if before.get(cid) != after[cid]} | (set(before) - set(after))
    assert changed and all(cid.startswith("families/bucketize.md#") for cid in changed)
    assert report.chunks_written == sum(1 for cid in after if cid.startswith("families/bucketize.md#"))
    top = kb.query("zebra-striped quokka layout", k=1)[0]
    assert top.source == "families/bucketize.md#Zebra striping"
    assert not unreachable(kb.index.corpus)
    assert not inexact(kb.index.corpus, phrases(kb.index.corpus))
    assert reader.query("zebra-striped quokka layout", k=1)[0].source == top.source

    (corpus / "families" / "rotary.md").unlink()
    report = kb.ingest(corpus)
    assert report.removed == ("families/rotary.md",) and report.chunks_written == 0
    assert not [cid for cid in collection_state(kb) if cid.startswith("families/rotary.md#")]
    assert all(d.metadata["path"] != "families/rotary.md"
               for d in kb.query("rotary position embedding rotate half", k=10))
    assert not unreachable(kb.index.corpus)


def test_searches_are_exhaustive_even_in_a_store_made_with_chromas_default(tmp_path):
    from kevolve.knowledge.index import EF_SEARCH, connect

    connect(tmp_path, None).get_or_create_collection("kevolve-corpus-hashing", embedding_function=HashingEmbedding(),
                                                     configuration={"hnsw": {"space": "cosine"}})
    SharedSystemClient.clear_system_cache()
    kb = open_kb(tmp_path)
    assert kb.index.corpus.configuration["hnsw"]["ef_search"] == EF_SEARCH
    kb.ingest(REPO / "knowledge")
    assert kb.index.corpus.count() < EF_SEARCH  # the search visits every record


def test_rebuild_from_an_empty_chroma_folder_gives_the_same_retrieval(tmp_path, corpus):
    state = tmp_path / "state"
    kb = open_kb(state)
    kb.ingest(corpus)
    before = [[(d.source, d.score) for d in kb.query(q, k=3)] for q in QUESTIONS]
    kb.close()
    shutil.rmtree(state / "chroma")
    SharedSystemClient.clear_system_cache()  # Chroma keeps one client per path per process

    fresh = open_kb(state)
    assert fresh.index.corpus_size() == 0
    fresh.rebuild(corpus)
    after = [[(d.source, d.score) for d in fresh.query(q, k=3)] for q in QUESTIONS]
    assert after == before


def test_a_new_process_reopens_the_collection_and_embeds_the_same(tmp_path, corpus):
    state = tmp_path / "state"
    open_kb(state).ingest(corpus)
    text = "row softmax in bf16 on an H100, memory-bound"
    # No embedding function passed: Chroma rebuilds it from the config stored in the collection,
    # which works only because importing kevolve.knowledge.embedding registers it. The hashing
    # embedding must not depend on Python's per-process string hashing.
    script = (
        "import chromadb, json, sys\n"
        "from kevolve.knowledge.embedding import HashingEmbedding\n"
        "col = chromadb.PersistentClient(path=sys.argv[1]).get_collection('kevolve-corpus-hashing')\n"
        "got = col.query(query_texts=['warp size on the MI300X'], n_results=1)\n"
        "v = HashingEmbedding()([sys.argv[2]])[0]\n"
        "print(json.dumps([got['metadatas'][0][0]['path'], [int(i) for i in v.nonzero()[0]], float(v.sum())]))\n")
    out = subprocess.run([sys.executable, "-c", script, str(state / "chroma"), text], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    path, nonzero, total = json.loads(out.stdout)
    assert path == "targets/amd-mi300x.md"
    here = HashingEmbedding()([text])[0]
    assert nonzero == [int(i) for i in here.nonzero()[0]] and total == pytest.approx(float(here.sum()), rel=1e-6)
    assert abs(float((here * here).sum()) - 1.0) < 1e-5
    rebuilt = HashingEmbedding.build_from_config(HashingEmbedding().get_config())
    assert (rebuilt([text])[0] == here).all()


def test_embedding_choice(monkeypatch):
    monkeypatch.delenv("KEVOLVE_EMBEDDING", raising=False)
    assert embedding_name() == "minilm"
    monkeypatch.setenv("KEVOLVE_EMBEDDING", "hashing")
    assert embedding_name() == "hashing"
    assert embedding_name("minilm") == "minilm"
    with pytest.raises(KnowledgeError, match="unknown embedding 'bert'.*KEVOLVE_EMBEDDING"):
        embedding_name("bert")


def test_an_unreachable_chroma_server_is_one_clear_error(tmp_path):
    kb = KnowledgeBase.open(state=tmp_path, embedding="hashing", chroma_url=f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(KnowledgeError, match="cannot reach a Chroma server.*chroma run"):
        kb.query("anything")
    # skills and best kernels live in the database and do not need Chroma
    assert kb.skills() == []


@pytest.mark.slow
def test_server_mode_against_chroma_run(tmp_path, corpus):
    port = _free_port()
    chroma = Path(sys.executable).parent / "chroma"
    server = subprocess.Popen([str(chroma), "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, timeout_s=60)
        state = tmp_path / "state"
        kb = KnowledgeBase.open(state=state, embedding="hashing", chroma_url=f"http://127.0.0.1:{port}")
        assert len(kb.ingest(corpus).added) >= 30
        assert not kb.ingest(corpus).changed
        assert kb.query("warp size on the MI300X", k=1)[0].metadata["path"] == "targets/amd-mi300x.md"
        assert not (state / "chroma").exists()  # nothing embedded locally
        assert (tmp_path / "server").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_cli_ingest_query_rebuild(tmp_path, corpus):
    env_home = os.environ["KEVOLVE_HOME"]
    first = run_cli("kb", "ingest", "--embedding", "hashing", "--corpus", str(corpus))
    assert first.returncode == 0, first.stderr
    assert "added    targets/nvidia-hopper.md" in first.stdout
    query = run_cli("kb", "query", "warp size", "--target", "mi300x", "-k", "2", "--embedding", "hashing", "--json")
    docs = json.loads(query.stdout)
    assert len(docs) == 2 and docs[0]["source"].startswith("targets/amd-mi300x.md#")
    assert all(set(d["metadata"]["target"]) & {"mi300x", "any"} for d in docs)
    rebuilt = run_cli("kb", "rebuild", "--embedding", "hashing", "--corpus", str(corpus))
    embedded = re.search(r"(\d+) chunks embedded", first.stdout).group(1)
    assert rebuilt.returncode == 0 and f"{embedded} corpus chunks, 0 skills" in rebuilt.stdout
    bad = run_cli("kb", "ingest", "--embedding", "hashing", "--corpus", str(tmp_path / "missing"))
    assert bad.returncode == 2 and bad.stderr.startswith("kevolve: error: corpus folder") and "Traceback" not in bad.stderr
    assert Path(env_home, "chroma").is_dir()  # the state folder, not the source tree


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"chroma run did not listen on port {port} within {timeout_s} s")
