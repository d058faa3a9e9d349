"""The LLM synthesizer: a prompt per requested candidate, sent in parallel, code extracted.

A reply with no usable code still becomes a candidate, holding what came closest (its last code
block, else the reply) and a note that says why it is unusable; the evaluator rejects it with the
precise error, and its children's prompts carry both, so the model sees what went wrong. An
endpoint that is down raises LLMUnavailable (the run stops and can be resumed); nothing is
invented in its place.
"""

from __future__ import annotations

from typing import Sequence

from kevolve.candidate import Candidate, Origin
from kevolve.synth.base import SynthesisRequest
from kevolve.synth.llm.client import ChatReply, LLMClient
from kevolve.synth.llm.extract import ExtractionError, extract_code
from kevolve.synth.llm.prompt import build_messages, prompt_hash

UNUSABLE = "reply unusable"
MAX_NOTE_CHARS = 160


class LLMSynthesizer:
    name = "llm"

    def __init__(self, client: LLMClient, *, temperature: float = 0.7, max_tokens: int | None = 4096):
        self.client = client
        self.temperature = temperature
        self.max_tokens = max_tokens

    def propose(self, request: SynthesisRequest) -> list[Candidate]:
        return self.propose_many([request])[0]

    def propose_many(self, requests: Sequence[SynthesisRequest]) -> list[list[Candidate]]:
        """All candidates of a round's requests, their prompts sent in parallel."""
        jobs = [(r, build_messages(request, variant)) for r, request in enumerate(requests)
                for variant in range(request.n)]
        replies = self.client.chat_many([messages for _, messages in jobs], temperature=self.temperature,
                                        max_tokens=self.max_tokens)
        out: list[list[Candidate]] = [[] for _ in requests]
        for (r, messages), reply in zip(jobs, replies):
            out[r].append(self._candidate(requests[r], messages, reply))
        return out

    def _candidate(self, request: SynthesisRequest, messages: list[dict[str, str]], reply: ChatReply) -> Candidate:
        spec = request.spec
        try:
            if reply.error:
                raise ExtractionError(reply.error)
            code = extract_code(reply.text, spec.entry_point)
            note = explanation(reply.text) or ("a first kernel" if request.parent is None else "a revision")
            if reply.finish_reason == "length":
                note = f"{note} (reply cut off at the token limit; its complete part kept)"
        except ExtractionError as exc:
            code = exc.attempt or reply.text
            note = f"{UNUSABLE}: {exc.message}" + (" (cut off at the token limit)"
                                                    if reply.finish_reason == "length" else "")
        origin = Origin(synthesizer="llm", prompt_hash=prompt_hash(messages), model=reply.model,
                        memory_mode=request.memory_mode, note=note[:MAX_NOTE_CHARS])
        return Candidate(code=code, spec_name=spec.name, origin=origin, language="triton")


def explanation(text: str) -> str:
    """The model's one-line account of its change: the prose before the first code block."""
    before = text.split("```", 1)[0]
    for line in before.splitlines():
        line = line.strip(" #*-\t")
        if line:
            return line
    return ""
