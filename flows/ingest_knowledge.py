"""The `ingest_knowledge` flow: bring the knowledge base's index up to date with the corpus
(only changed files are re-embedded), with a markdown artifact saying what changed."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE


@task(name="ingest-corpus", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30, timeout_seconds=3600)
def ingest_corpus(corpus: str | None, embedding: str | None, chroma_url: str | None) -> dict[str, Any]:
    """Retried: a Chroma server that is restarting is the infrastructure's failure; a bad
    corpus file fails the same way again and says which."""
    from dataclasses import asdict
    from pathlib import Path

    from kevolve.knowledge.base import KnowledgeBase

    with KnowledgeBase.open(embedding=embedding, chroma_url=chroma_url) as kb:
        report = kb.ingest(Path(corpus) if corpus else None)
    return {**asdict(report), "summary": report.summary()}


@flow(name="ingest-knowledge", persist_result=False)
def ingest_knowledge(corpus: str | None = None, embedding: str | None = None,
                     chroma_url: str | None = None) -> dict[str, Any]:
    """`kevolve kb ingest` as a flow: the corpus folder (default knowledge/), the embedding and
    the Chroma server (defaults: $KEVOLVE_EMBEDDING, $KEVOLVE_CHROMA_URL, else embedded)."""
    report = ingest_corpus(corpus, embedding, chroma_url)
    lines = [f"# Knowledge ingest: {report['summary']}", ""]
    for label in ("added", "updated", "removed"):
        lines += [f"- {label}: {path}" for path in report[label]]
    create_markdown_artifact(markdown="\n".join(lines) + "\n", key="knowledge-ingest",
                             description=f"corpus {report['corpus_dir']} ({report['embedding']})")
    return report
