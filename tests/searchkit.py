"""Test helpers for the search and the LLM synthesizer: a local server that speaks the OpenAI
chat-completions protocol and answers from a script, and honest Triton kernels to answer with."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

# Answers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A chat completion: `text` as the assistant's message."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 100
    completion_tokens: int = 50


@dataclass(frozen=True)
class Status:
    """An HTTP error status with a JSON error body."""

    code: int
    message: str = "server error"


@dataclass(frozen=True)
class Drop:
    """Close the connection without an answer."""


@dataclass(frozen=True)
class Raw:
    """A 200 answer with this body as it is (malformed on purpose)."""

    body: str
    content_type: str = "application/json"


Answer = Reply | Status | Drop | Raw
Script = Callable[[dict[str, Any], int], Answer]  # (request body, index of the chat request) -> answer


@dataclass
class FakeOpenAI:
    """An OpenAI-compatible endpoint on 127.0.0.1, in a thread: /v1/models and
    /v1/chat/completions, answered by `script`."""

    script: Script
    models: tuple[str, ...] = ("fake-coder-7b",)
    chats: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> "FakeOpenAI":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in fake.models]})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with fake._lock:
                    index = len(fake.chats)
                    fake.chats.append(body)
                answer = fake.script(body, index)
                if isinstance(answer, Drop):
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if isinstance(answer, Status):
                    self._json(answer.code, {"error": {"message": answer.message, "type": "server_error"}})
                    return
                if isinstance(answer, Raw):
                    data = answer.body.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", answer.content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self._json(200, {
                    "id": f"chatcmpl-{index}", "object": "chat.completion", "created": 0, "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": answer.finish_reason,
                                 "message": {"role": "assistant", "content": answer.text}}],
                    "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                              "total_tokens": answer.prompt_tokens + answer.completion_tokens}})

            def _json(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def user_prompts(self) -> list[str]:
        return [next(m["content"] for m in c["messages"] if m["role"] == "user") for c in self.chats]


def free_url() -> str:
    """An address where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def answer_in_turn(*answers: Answer) -> Script:
    """The n-th chat request gets the n-th answer, the last one repeated after that."""
    return lambda body, index: answers[min(index, len(answers) - 1)]


def fenced(code: str, prose: str = "Here is the kernel.") -> str:
    return f"{prose}\n\n```python\n{code.strip()}\n```\n"


# Kernels ------------------------------------------------------------------------------------

_SOFTMAX_ONE_PASS = '''
import torch
import triton
import triton.language as tl


@triton.jit
def _softmax_rows(x_ptr, y_ptr, n_rows, n_cols, stride_x, stride_y,
                  BLOCK: tl.constexpr, ROWS: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    for r in tl.static_range(ROWS):
        row = tl.program_id(0) * ROWS + r
        mask = (cols < n_cols) & (row + cols * 0 < n_rows)
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=-float("inf")).to(tl.float32)
        x = x - tl.max(x, axis=0)
        e = tl.exp(x)
        y = e / tl.sum(e, axis=0)
        tl.store(y_ptr + row * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def softmax(x):
    x = x.contiguous()
    n_rows, n_cols = x.shape
    y = torch.empty_like(x)
    block = triton.next_power_of_2(n_cols)
    grid = (triton.cdiv(n_rows, {rows}),)
    _softmax_rows[grid](x, y, n_rows, n_cols, x.stride(0), y.stride(0), BLOCK=block, ROWS={rows},
                        num_warps={warps})
    return y
'''

_SOFTMAX_LOOPED = '''
import torch
import triton
import triton.language as tl


@triton.jit
def _softmax_looped(x_ptr, y_ptr, n_cols, stride_x, stride_y, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = x_ptr + row * stride_x
    m = -float("inf")
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < n_cols, other=-float("inf")).to(tl.float32)
        m = tl.maximum(m, tl.max(x, axis=0))
    s = 0.0
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < n_cols, other=-float("inf")).to(tl.float32)
        s += tl.sum(tl.exp(x - m), axis=0)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < n_cols, other=-float("inf")).to(tl.float32)
        y = tl.exp(x - m) / s
        tl.store(y_ptr + row * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=cols < n_cols)


def softmax(x):
    x = x.contiguous()
    n_rows, n_cols = x.shape
    y = torch.empty_like(x)
    _softmax_looped[(n_rows,)](x, y, n_cols, x.stride(0), y.stride(0), BLOCK={block}, num_warps={warps})
    return y
'''


def softmax_kernel(rows: int = 1, warps: int = 4, block: int | None = None) -> str:
    """An honest row softmax: one pass over a whole row (`rows` rows per program), or with
    `block`, three passes over blocks of the row (rows of any length)."""
    if block is None:
        return _SOFTMAX_ONE_PASS.replace("{rows}", str(rows)).replace("{warps}", str(warps)).lstrip()
    return _SOFTMAX_LOOPED.replace("{block}", str(block)).replace("{warps}", str(warps)).lstrip()


def unnormalised_softmax() -> str:
    """Runs, but forgets to divide by the sum: wrong."""
    return re.sub(r"y = e / tl.sum\(e, axis=0\)", "y = e", softmax_kernel())


def broken_softmax() -> str:
    """Does not parse."""
    return softmax_kernel().replace("def softmax(x):", "def softmax(x:")


SOFTMAX_VARIANTS = [softmax_kernel(rows, warps) for rows in (1, 2, 4) for warps in (1, 2, 4, 8)] + \
                   [softmax_kernel(block=b, warps=w) for b in (32, 64, 128) for w in (2, 4)]


# A small evaluator for the tests of the loop ---------------------------------------------------


class InterpreterEvaluator:
    """Runs candidates in this process under Triton's interpreter against the float64 reference
    at every interpreter shape of the spec: a real check of real kernels, without the harness's
    isolation and adversarial checks (the test kernels are trusted), so that tests of the loop stay
    fast. Counts what it evaluated."""

    def __init__(self, spec, seeds=(1,)):
        from kevolve.specs.runtime import OperatorRuntime

        self.spec = spec
        self.runtime = OperatorRuntime(spec)
        self.seeds = seeds
        self.evaluated: list[str] = []  # code hashes, in order
        self.remeasured: list[str] = []
        self._lock = threading.Lock()

    def evaluate(self, candidates):
        out = []
        for c in candidates:
            with self._lock:  # the interpreter is not thread-safe: one candidate at a time
                self.evaluated.append(c.code_hash)
                out.append(self._run(c))
        return out

    def remeasure(self, candidate):
        with self._lock:
            self.remeasured.append(candidate.code_hash)
            return self._run(candidate)

    def baselines(self):
        from kevolve.evaluate.result import Baselines

        return Baselines(errors={"eager": "interpreter: not timed"})

    def close(self):
        pass

    def _run(self, candidate):
        import ast
        import importlib.util
        import tempfile
        import time
        from pathlib import Path

        from kevolve.evaluate.result import Check, Evaluation, Outcome, Timing
        from kevolve.specs.compare import compare
        from kevolve.specs.runtime import as_outputs
        from kevolve.specs.validate import tolerance_for

        def result(outcome, error="", checks=(), timing=None):
            return Evaluation(candidate.code_hash, self.spec.name, "cpu-interpreter", "cpu",
                              dict(self.spec.interpreter_dims[0]), outcome, tuple(checks), error, timing)

        try:
            ast.parse(candidate.code)
        except SyntaxError as exc:
            return result(Outcome.COMPILE_ERROR, f"SyntaxError: {exc}")
        path = Path(tempfile.mkdtemp()) / f"candidate_{candidate.code_hash}.py"
        path.write_text(candidate.code)
        try:
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            getattr(module, self.spec.entry_point)
        except Exception as exc:
            return result(Outcome.COMPILE_ERROR, f"{type(exc).__name__}: {exc}")
        checks, start = [], time.perf_counter()
        for dims in self.spec.interpreter_dims:
            for seed in self.seeds:
                xs = self.runtime.inputs(dims, seed)
                ref = as_outputs(self.runtime.reference(dims, float64=True)(*xs))[0]
                try:
                    out = as_outputs(self.runtime.candidate(module, dims)(*xs))[0]
                except Exception as exc:
                    return result(Outcome.CRASHED, f"{type(exc).__name__}: {exc}", checks)
                cmp = compare(out, ref, tolerance_for(self.spec, out))
                checks.append(Check(f"trial[seed={seed} {dims}]", cmp.ok, cmp.reason))
        wall_ms = (time.perf_counter() - start) * 1e3
        timing = Timing(wall_ms, wall_ms, wall_ms, wall_ms, 1, "wall clock, interpreter", interpreter=True)
        if not all(c.passed for c in checks):
            return result(Outcome.WRONG, "", checks, timing)
        return result(Outcome.CORRECT, "", checks, timing)
