"""Knowledge base: the corpus in Chroma, retrieval, and skills learnt from runs.

`KnowledgeBase` (kevolve.knowledge.base) is imported lazily: the synthesizer contract imports the
record types from here, and the knowledge base itself imports that contract.
"""

from kevolve.knowledge.types import IngestReport, KnowledgeError, PriorKernel, RetrievedDoc, Skill

__all__ = ["IngestReport", "KnowledgeBase", "KnowledgeError", "PriorKernel", "RetrievedDoc", "Skill"]


def __getattr__(name: str):
    if name == "KnowledgeBase":
        from kevolve.knowledge.base import KnowledgeBase

        return KnowledgeBase
    raise AttributeError(name)
