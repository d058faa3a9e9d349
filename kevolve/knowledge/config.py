"""How the knowledge base is configured: which embedding, which Chroma. Kept apart from the modules
that import chromadb, so that skills and best kernels work on a machine without it."""

from __future__ import annotations

import os

from kevolve.knowledge.types import KnowledgeError

EMBEDDINGS = ("minilm", "hashing")
DEFAULT_EMBEDDING = "minilm"
EMBEDDING_ENV = "KEVOLVE_EMBEDDING"
CHROMA_URL_ENV = "KEVOLVE_CHROMA_URL"
# Cosine similarity above which two short texts (a request and a skill) are about the same thing.
# The scales differ: measured on skill texts, related pairs score 0.5-0.6 with MiniLM (unrelated up
# to 0.36) and 0.2-0.3 with hashing (unrelated under 0.07).
RELATED_SIMILARITY = {"minilm": 0.45, "hashing": 0.15}


def embedding_name(explicit: str | None = None) -> str:
    name = (explicit or os.environ.get(EMBEDDING_ENV) or DEFAULT_EMBEDDING).strip().lower()
    if name not in EMBEDDINGS:
        raise KnowledgeError(f"unknown embedding {name!r}; choose one of {', '.join(EMBEDDINGS)} "
                             f"(--embedding or {EMBEDDING_ENV})")
    return name


def server_url(explicit: str | None = None) -> str | None:
    """A Chroma server's URL, or None for the embedded store."""
    return explicit or os.environ.get(CHROMA_URL_ENV) or None


class ChromaMissing(KnowledgeError):
    """chromadb is not installed: skills and best kernels still work, retrieval does not."""

    def __init__(self) -> None:
        super().__init__("retrieval needs chromadb, which is not installed here; "
                         "pip install 'chromadb>=1.5,<1.6' (skills and best kernels work without it)")
