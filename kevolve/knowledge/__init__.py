"""Knowledge base: the corpus in Chroma, retrieval, and skills learnt from runs."""

from kevolve.knowledge.types import RetrievedDoc, Skill

__all__ = ["RetrievedDoc", "Skill"]
