"""A client for any OpenAI-compatible chat endpoint (vLLM's by default).

The `openai` package does the protocol and retries connection errors, 408, 429 and 5xx with
exponential backoff; this adds parallel requests, a per-run token meter, and one-line errors
that say what to do. An endpoint that stays unreachable or failing raises LLMUnavailable, which
stops the run with everything evaluated so far saved; a reply that is merely malformed comes back
as a reply with an error, and the search goes on.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from kevolve.errors import KevolveError, LLMUnavailable

DEFAULT_LLM_URL = "http://127.0.0.1:8000/v1"  # where `vllm serve` listens


def default_llm_url() -> str:
    """The endpoint used when none is named: $KEVOLVE_LLM_URL, else vLLM's default."""
    return os.environ.get("KEVOLVE_LLM_URL") or DEFAULT_LLM_URL

Messages = Sequence[dict[str, str]]


@dataclass(frozen=True)
class Usage:
    requests: int = 0
    failures: int = 0  # replies that could not be read, or requests refused
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.requests + other.requests, self.failures + other.failures,
                     self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)


@dataclass(frozen=True)
class ChatReply:
    text: str
    model: str
    finish_reason: str | None = None  # "length": cut off at max_tokens
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""  # the reply could not be read, or the request was refused


class UsageMeter:
    """Requests and tokens, summed across threads; `take` hands over what came since the last take."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pending = Usage()
        self.total = Usage()

    def add(self, reply: ChatReply) -> None:
        delta = Usage(1, 1 if reply.error else 0, reply.prompt_tokens, reply.completion_tokens)
        with self._lock:
            self._pending = self._pending + delta
            self.total = self.total + delta

    def take(self) -> Usage:
        with self._lock:
            out, self._pending = self._pending, Usage()
            return out


def unreachable_message(url: str, reason: str) -> str:
    return (f"cannot reach LLM at {url}: {reason}; start one with `kevolve llm serve MODEL` "
            f"or run with --offline")


class LLMClient:
    def __init__(self, base_url: str = DEFAULT_LLM_URL, model: str | None = None, *, timeout_s: float = 300.0,
                 retries: int = 2, parallel: int = 4, api_key: str | None = None):
        try:
            import openai
        except ModuleNotFoundError:
            raise KevolveError("the LLM synthesizer needs the openai package: pip install 'openai>=1.40' "
                               "(or run with --offline)") from None
        self._openai = openai
        self.base_url = base_url.rstrip("/")
        self.parallel = max(1, parallel)
        self.retries = retries
        self.meter = UsageMeter()
        self._model = model
        self._client = openai.OpenAI(base_url=self.base_url, max_retries=retries, timeout=timeout_s,
                                     api_key=api_key or os.environ.get("KEVOLVE_LLM_API_KEY") or "EMPTY")

    # Endpoint ---------------------------------------------------------------------------------
    def models(self) -> list[str]:
        page = self._call(lambda: self._client.models.list())
        return [m.id for m in page.data]

    @property
    def model(self) -> str:
        """The configured model, else the first the endpoint serves."""
        if self._model is None:
            served = self.models()
            if not served:
                raise LLMUnavailable(f"the LLM at {self.base_url} serves no model; start one with "
                                     f"`kevolve llm serve MODEL`")
            self._model = served[0]
        return self._model

    # Chat -------------------------------------------------------------------------------------
    def chat(self, messages: Messages, *, temperature: float = 0.7, max_tokens: int | None = None) -> ChatReply:
        model = self.model

        def request():
            return self._client.chat.completions.create(model=model, messages=list(messages),
                                                        temperature=temperature, max_tokens=max_tokens)

        try:
            response = self._call(request)
        except _Refused as refused:
            reply = ChatReply("", model, error=str(refused))
        else:
            reply = _read(response, model)
        self.meter.add(reply)
        return reply

    def chat_many(self, conversations: Sequence[Messages], **options: Any) -> list[ChatReply]:
        """Several chats in parallel, answers in order. Raises LLMUnavailable once all have
        ended if the endpoint failed any of them (the tokens of the others are still counted)."""
        if not conversations:
            return []
        self.model  # resolve once, before the threads start
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(conversations))) as pool:
            futures = [pool.submit(self.chat, c, **options) for c in conversations]
        failures = [f.exception() for f in futures if f.exception() is not None]
        if failures:
            raise failures[0]
        return [f.result() for f in futures]

    def _call(self, fn):
        openai = self._openai
        try:
            return fn()
        except openai.APIConnectionError as exc:  # refused, reset, DNS, and timeouts
            raise LLMUnavailable(unreachable_message(self.base_url, _reason(exc))) from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            if status in (400, 413, 422):  # this request only (e.g. a prompt too long): not the endpoint
                raise _Refused(f"HTTP {status}: {_reason(exc)}") from None
            if status == 404:
                raise LLMUnavailable(f"the LLM at {self.base_url} answered 404 ({_reason(exc)}); "
                                     f"`kevolve llm check --llm {self.base_url}` lists its models") from None
            raise LLMUnavailable(f"the LLM at {self.base_url} keeps failing: HTTP {status} after "
                                 f"{self.retries} retries ({_reason(exc)}); check the server, then resume "
                                 f"the run (or run with --offline)") from None
        except (openai.APIResponseValidationError, ValueError) as exc:
            raise _Refused(f"malformed reply: {_reason(exc)}") from None


class _Refused(Exception):
    """The endpoint answered, but not with a usable completion."""


def _read(response: Any, model: str) -> ChatReply:
    try:
        choice = response.choices[0]
        text = choice.message.content
        if not isinstance(text, str):
            raise TypeError("no message content")
        usage = getattr(response, "usage", None)
        return ChatReply(text, getattr(response, "model", None) or model, choice.finish_reason,
                         int(getattr(usage, "prompt_tokens", 0) or 0),
                         int(getattr(usage, "completion_tokens", 0) or 0))
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        return ChatReply("", model, error=f"malformed reply: {type(exc).__name__}: {exc}")


def _reason(exc: BaseException) -> str:
    body = getattr(exc, "body", None)  # the server's own error message, where it sent one
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return " ".join(body["message"].split())[:300]
    text = str(getattr(exc, "message", "") or exc or type(exc).__name__)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and "connection" in text.lower():
        text = f"{text} ({type(cause).__name__}: {cause})"
    return " ".join(text.split())[:300]

