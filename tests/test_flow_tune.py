"""The loop as Prefect runs it: each stage a task, evaluations fanned out, retries for an
endpoint that is down (never for a kernel that fails); and `kevolve tune`, which runs the flow."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import run_cli
from kevolve.errors import LLMUnavailable
from kevolve.search.launch import plan_run
from kevolve.search.store import SearchStore
from kevolve.specs import resolve_spec
from searchkit import (FakeOpenAI, InterpreterEvaluator, Reply, Status, broken_softmax, fenced, free_url,
                       softmax_kernel)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect():
    """A Prefect API for the module, started once; `kevolve tune` in a subprocess uses it too."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def test_tune_operator_runs_every_stage_as_a_task(prefect):
    """The flow as deployed: parameters in, the real harness judging, a summary out."""
    from prefect.client.orchestration import get_client

    from flows.tune_operator import tune_operator

    answers = [softmax_kernel(rows=r, warps=w) for r, w in ((1, 4), (2, 4), (1, 8), (4, 2))]

    def answer(body, i):
        return Reply(fenced(broken_softmax())) if i == 1 else Reply(fenced(answers[i % len(answers)]))

    with FakeOpenAI(answer) as server:
        summary = tune_operator(spec="softmax", llm=server.url, knowledge=False,
                                search={"budget": 4, "seeds": 2, "children_per_expansion": 2})
    assert summary["evaluations"] == 4 and summary["correct"] == 3 and summary["synthesizer"] == "llm"

    async def task_names():
        async with get_client() as client:
            return sorted(r.name for r in await client.read_task_runs())

    names = asyncio.run(task_names())
    with SearchStore() as store:
        nodes = store.nodes(summary["run_id"])
        evaluations = store.evaluations(summary["run_id"])
    # one evaluate task per candidate, named by its hash; the other stages once per round or more
    assert {n.removeprefix("evaluate-") for n in names if n.startswith("evaluate-")} == \
        {n.candidate.code_hash for n in nodes}
    for stage in ("select", "retrieve", "synthesize", "remeasure"):
        assert any(n.startswith(stage) for n in names), stage
    rejected = [e for e in evaluations if e.evaluation.outcome.value == "rejected"]
    assert len(rejected) == 1 and "never closed" in rejected[0].evaluation.error


def test_an_endpoint_that_is_down_is_retried_by_the_task_then_stops_the_run(prefect):
    from prefect import flow

    from flows.tune_operator import tune
    from tasks import task_stages

    spec = resolve_spec("softmax")

    def answer(body, i):  # the first round is answered; then the endpoint fails for good
        return Reply(fenced(softmax_kernel(rows=1 + i % 4, warps=4))) if i < 2 else Status(503, "restarting")

    @flow
    def tune_in_a_flow(url: str) -> dict:
        plan = plan_run("softmax", llm=url, run_name="down", knowledge=False,
                        search={"budget": 6, "seeds": 2, "expansions_per_round": 1},
                        options={"llm_retries": 0, "llm_outage_retries": 2, "llm_outage_wait_s": 0.1})
        return tune(plan, task_stages, evaluator=InterpreterEvaluator(spec)).to_dict()

    with FakeOpenAI(answer) as server:
        with pytest.raises(LLMUnavailable, match="keeps failing: HTTP 503"):
            tune_in_a_flow(server.url)
        chats = len(server.chats)
    assert chats == 2 + 3 * 2  # the failing round: its task tried 3 times, 2 requests each
    with SearchStore() as store:
        run = store.run("down")
        assert run.status == "stopped" and len(store.evaluations("down")) >= 2


def test_kevolve_tune_without_an_llm_uses_the_offline_synthesizer_through_the_flow(prefect, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", prefect)
    monkeypatch.setenv("KEVOLVE_LLM_URL", free_url())  # no LLM answers at the default address
    result = run_cli("tune", "softmax", "--budget", "2", "--no-knowledge")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no LLM answering at http://127.0.0.1:" in result.stderr
    assert "using the offline synthesizer" in result.stderr and "Traceback" not in result.stderr
    assert "evaluated 2" in result.stdout
    outputs = Path(result.stdout.split("outputs: ")[1].split(" (")[0])
    assert (outputs / "summary.md").is_file() and (outputs / "tree.json").is_file()
    assert "synthesizer: offline" in (outputs / "summary.md").read_text()
    listing = run_cli("tune", "--list")
    assert outputs.name in listing.stdout and "finished" in listing.stdout


class Walked(dict):
    """Counts Prefect walking it (it walks a mapping through items(), looking for futures)."""

    walks = 0

    def items(self):
        Walked.walks += 1
        return super().items()


@dataclass
class WalkableEvaluator:
    """An evaluator Prefect would walk, as it walks any dataclass argument."""

    salt: str
    settings: Walked = field(default_factory=lambda: Walked(trials=100))
    evaluated: list = field(default_factory=list)

    def evaluate(self, candidates):
        from kevolve.evaluate.result import Evaluation, Outcome

        self.evaluated += [c.code_hash for c in candidates]
        return [Evaluation(c.code_hash, c.spec_name, "cpu-interpreter", "cpu", {}, Outcome.CORRECT)
                for c in candidates]

    def cache_key(self, candidate):
        return f"{self.salt}-{candidate.code_hash}"


def test_the_evaluation_fan_out_walks_no_argument_and_keeps_the_verdict_cache(prefect):
    """Prefect walks every task argument for futures unless it is quoted: neither the evaluator
    nor the candidates (their origin's config) are walked in each evaluate task, and the verdict
    key still sees the evaluator and the candidate themselves."""
    import uuid

    from prefect import flow
    from prefect.task_runners import ThreadPoolTaskRunner

    from kevolve.candidate import Candidate, Origin
    from kevolve.search.tree import Node
    from tasks.evaluation import evaluate_all

    evaluator = WalkableEvaluator(uuid.uuid4().hex)
    nodes = [Node(i, None, Candidate(f"VARIANT = {i}\n", "softmax", Origin("manual", config=Walked(n=i))),
                  "inherit", 0, 0) for i in range(3)]

    @flow(task_runner=ThreadPoolTaskRunner(), persist_result=False)
    def fan_out():
        return {node.id: evaluation.candidate_hash for node, evaluation in evaluate_all(evaluator, nodes)}

    hashes = {n.id: n.candidate.code_hash for n in nodes}
    assert fan_out() == hashes and sorted(evaluator.evaluated) == sorted(hashes.values())
    assert Walked.walks == 0
    assert fan_out() == hashes and len(evaluator.evaluated) == 3  # the second time, every verdict cached
