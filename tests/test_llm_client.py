"""The LLM client and synthesizer against a local server speaking the OpenAI chat protocol."""

from __future__ import annotations

import threading
import time

import pytest

from kevolve.errors import LLMUnavailable
from kevolve.hardware import load_ceilings, load_target
from kevolve.knowledge.types import RetrievedDoc, Skill
from kevolve.candidate import Origin, Transform
from kevolve.evaluate.result import Diagnosis, KernelStats
from kevolve.specs import resolve_spec
from kevolve.synth.base import Attempt, SynthesisRequest
from kevolve.synth.llm import LLMClient, LLMSynthesizer, Usage, build_messages
from kevolve.synth.llm.synthesizer import UNUSABLE
from searchkit import Drop, FakeOpenAI, Raw, Reply, Status, answer_in_turn, broken_softmax, fenced, free_url, \
    softmax_kernel


def test_models_chat_and_token_counts():
    with FakeOpenAI(answer_in_turn(Reply("ready", prompt_tokens=11, completion_tokens=2)),
                    models=("coder-a", "coder-b")) as server:
        client = LLMClient(server.url, retries=0)
        assert client.models() == ["coder-a", "coder-b"]
        assert client.model == "coder-a"  # the first served, when none is named
        reply = client.chat([{"role": "user", "content": "hi"}], temperature=0.0, max_tokens=4)
        assert (reply.text, reply.prompt_tokens, reply.completion_tokens, reply.error) == ("ready", 11, 2, "")
        assert server.chats[0]["model"] == "coder-a" and server.chats[0]["max_tokens"] == 4
        assert client.meter.take() == Usage(1, 0, 11, 2)
        assert client.meter.take() == Usage()  # taken once


def test_requests_run_in_parallel_and_answers_keep_their_order():
    active, peak, lock = [0], [0], threading.Lock()

    def slow_echo(body, index):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        with lock:
            active[0] -= 1
        return Reply(body["messages"][-1]["content"].upper())

    with FakeOpenAI(slow_echo) as server:
        client = LLMClient(server.url, retries=0, parallel=4)
        start = time.perf_counter()
        replies = client.chat_many([[{"role": "user", "content": f"k{i}"}] for i in range(4)])
        elapsed = time.perf_counter() - start
    assert [r.text for r in replies] == ["K0", "K1", "K2", "K3"]
    assert peak[0] == 4 and elapsed < 1.0  # four at once, not one after another (1.2 s)


def test_5xx_and_dropped_connections_are_retried_with_backoff():
    with FakeOpenAI(answer_in_turn(Status(503, "loading"), Drop(), Reply("ok"))) as server:
        client = LLMClient(server.url, retries=2)
        assert client.chat([{"role": "user", "content": "x"}]).text == "ok"
        assert len(server.chats) == 3


def test_an_endpoint_that_keeps_failing_or_is_unreachable_says_what_to_do():
    with FakeOpenAI(answer_in_turn(Status(500, "CUDA out of memory"))) as server:
        client = LLMClient(server.url, retries=1)
        with pytest.raises(LLMUnavailable, match=r"keeps failing: HTTP 500 after 1 retries \(CUDA out of memory\)"):
            client.chat_many([[{"role": "user", "content": "x"}]] * 2)
        assert len(server.chats) == 4  # each of the two requests tried twice
    url = free_url()
    with pytest.raises(LLMUnavailable) as err:
        LLMClient(url, retries=0).models()
    assert err.value.message.startswith(f"cannot reach LLM at {url}: ")
    assert "start one with `kevolve llm serve MODEL` or run with --offline" in err.value.message
    assert "\n" not in err.value.message


def test_malformed_and_refused_replies_are_replies_with_errors():
    answers = answer_in_turn(Raw("this is not json"), Raw('{"id": "x", "object": "chat.completion"}'),
                             Status(400, "prompt too long"), Reply("fine"))
    with FakeOpenAI(answers) as server:
        client = LLMClient(server.url, retries=0, parallel=1)
        replies = [client.chat([{"role": "user", "content": str(i)}]) for i in range(4)]
    assert "malformed reply" in replies[0].error
    assert "malformed reply" in replies[1].error
    assert "HTTP 400" in replies[2].error and "prompt too long" in replies[2].error
    assert replies[3].text == "fine" and not replies[3].error
    assert client.meter.take() == Usage(4, 3, 100, 50)


# The prompt and the synthesizer -------------------------------------------------------------
def request(**overrides) -> SynthesisRequest:
    spec = resolve_spec("softmax")
    target = load_target("h100-sxm")
    parent = Attempt(code=softmax_kernel(rows=2), origin=Origin("llm", note="two rows per program"),
                     outcome="correct", speedup=0.8, time_ms=0.31,
                     diagnosis=Diagnosis("memory", "Achieves 61% of DRAM bandwidth.", ("more rows per program",),
                                         fraction_of_floor=0.61, floor_ms=0.19,
                                         kernels=(KernelStats("_softmax_rows", 40, 0, 0, 4, 1),)))
    fields = dict(spec=spec, target=target, ceilings=load_ceilings(target), parent=parent, n=1,
                  history=(Attempt(code="...", origin=Origin("llm", note="the first kernel"), outcome="correct",
                                   speedup=0.5, time_ms=0.5),),
                  siblings=(Attempt(code="...", origin=Origin("offline", family="softmax",
                                                              transforms=(Transform("num_warps", 16),)),
                                    outcome="compile_error", error="triton.CompilationError: out of resources\nmore"),),
                  knowledge=(RetrievedDoc("targets/h100.md#Memory", "H100 memory", "HBM3 at 3.35 TB/s.", 0.9),),
                  skills=(Skill("s1", "softmax", "softmax", "h100-sxm", "rows=8192", "4 rows per program",
                                (Transform("ROWS", 4),), "memory-bound, short rows", 0.4, 0.3, 3, 1),))
    fields.update(overrides)
    return SynthesisRequest(**fields)


def test_the_prompt_carries_spec_target_knowledge_parent_and_memory():
    system, user = build_messages(request(memory_mode="inherit"))
    assert system["role"] == "system" and "`def softmax(x)`" in system["content"]
    assert "No `@triton.autotune` with several configurations" in system["content"]
    text = user["content"]
    assert "return torch.softmax(x, dim=-1)" in text  # the reference code
    assert "Tuned shape: M=8192,N=8192" in text and "M=1000,N=3001" in text
    assert "SMs: 132; warp size: 32" in text and "228 KiB shared memory" in text
    assert "HBM3 at 3.35 TB/s." in text and "(targets/h100.md#Memory)" in text
    assert "4 rows per program" in text and "0.4 ms -> 0.3 ms" in text
    assert softmax_kernel(rows=2).strip() in text  # the parent kernel
    assert "0.31 ms, 0.80x the baseline" in text and "memory-bound. Achieves 61%" in text
    assert "61% of the roofline floor" in text and "40 registers, 0 spills" in text
    assert "the first kernel: correct" in text  # inherit: the line of ancestors
    assert "out of resources" not in text  # siblings are not shown in inherit mode

    _, siblings = build_messages(request(memory_mode="siblings"))
    assert "Other attempts from the same kernel" in siblings["content"]
    assert "offline template softmax after num_warps=16: COMPILE ERROR; triton.CompilationError" in \
        siblings["content"]

    _, restart = build_messages(request(memory_mode="restart"))
    assert "Start afresh" in restart["content"] and "substantially different design" in restart["content"]
    assert "Write a first kernel" in restart["content"]

    _, seed = build_messages(request(parent=None, history=(), siblings=()))
    assert "Write a first kernel" in seed["content"] and "The kernel to improve" not in seed["content"]

    broken = Attempt(code="def softmax(x:", origin=Origin("llm"), outcome="compile_error",
                     error="SyntaxError: '(' was never closed")
    _, failed = build_messages(request(parent=broken))
    assert "COMPILE ERROR" in failed["content"] and "SyntaxError: '(' was never closed" in failed["content"]


def test_synthesizer_turns_each_reply_into_a_candidate():
    answers = answer_in_turn(
        Reply(fenced(softmax_kernel(rows=4), prose="Four rows per program to cut launches.")),
        Reply("I would rather not."),
        Reply(fenced(broken_softmax())),
        Reply("```python\n" + softmax_kernel() + "\n# trailing helper\ndef _unused(y):\n    return (y",
              finish_reason="length"))
    with FakeOpenAI(answers) as server:
        synth = LLMSynthesizer(LLMClient(server.url, retries=0, parallel=1))
        (candidates,) = synth.propose_many([request(n=4)])
        assert len(server.chats) == 4
        prompts = server.user_prompts()
    good, prose, broken, truncated = candidates
    assert good.code.strip() == softmax_kernel(rows=4).strip()
    assert good.origin.synthesizer == "llm" and good.origin.model == "fake-coder-7b"
    assert good.origin.note == "Four rows per program to cut launches." and good.origin.memory_mode == "inherit"
    assert good.origin.prompt_hash and good.spec_name == "softmax"
    assert prose.origin.note.startswith(f"{UNUSABLE}: the reply has no ```python code block")
    assert broken.origin.note.startswith(UNUSABLE) and "def softmax(x:" in broken.code  # the evaluator says why
    assert truncated.code.startswith(softmax_kernel().strip()) and "_unused" not in truncated.code
    assert "cut off at the token limit" in truncated.origin.note
    # the four requests differ (variants), so the answers are not all the same prompt
    assert len(set(prompts)) == 4 and "request 3 of 4" in prompts[2]


def test_synthesizer_raises_when_the_endpoint_is_down():
    synth = LLMSynthesizer(LLMClient(free_url(), model="m", retries=0))
    with pytest.raises(LLMUnavailable, match="cannot reach LLM"):
        synth.propose(request())
