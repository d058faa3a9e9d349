"""Synthesizers: an offline one from templates and transformations, and an LLM one."""

from kevolve.synth.base import MEMORY_MODES, Attempt, SynthesisError, SynthesisRequest, Synthesizer

__all__ = ["MEMORY_MODES", "Attempt", "SynthesisError", "SynthesisRequest", "Synthesizer"]
