"""The LLM synthesizer: any OpenAI-compatible chat endpoint (vLLM's by default), prompts built
from package templates, kernels extracted from the replies."""

from kevolve.synth.llm.client import DEFAULT_LLM_URL, ChatReply, LLMClient, Usage
from kevolve.synth.llm.extract import ExtractionError, extract_code
from kevolve.synth.llm.prompt import build_messages
from kevolve.synth.llm.synthesizer import LLMSynthesizer

__all__ = ["DEFAULT_LLM_URL", "ChatReply", "ExtractionError", "LLMClient", "LLMSynthesizer", "Usage",
           "build_messages", "extract_code"]
