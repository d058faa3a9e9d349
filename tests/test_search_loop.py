"""Real searches on the CPU under Triton's interpreter: every policy, the LLM synthesizer talking
to a local OpenAI-compatible server with prepared kernels, broken code and errors; resuming a
stopped run; an endpoint going down mid-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.tune_operator import tune
from kevolve.errors import LLMUnavailable
from kevolve.search.launch import plan_run
from kevolve.search.store import SearchStore
from kevolve.specs import resolve_spec
from searchkit import (FakeOpenAI, InterpreterEvaluator, Reply, Status, broken_softmax, fenced, softmax_kernel,
                       unnormalised_softmax)

pytestmark = pytest.mark.slow

FAST_VARIANTS = [softmax_kernel(rows, warps) for rows in (1, 2, 4) for warps in (1, 2, 4, 8)]


def kernel_script(wrong_every: int = 5, broken_every: int = 7, duplicate_at: int = 4):
    """Mostly honest kernels, each new; now and then a wrong one, a broken one, or a kernel
    answered before (a duplicate)."""

    def answer(body, i):
        if i and i % broken_every == 0:
            return Reply(fenced(broken_softmax(), "Fused the loops."))
        if i and i % wrong_every == 0:
            return Reply(fenced(unnormalised_softmax(), "Skipped a reduction."))
        if i == duplicate_at:
            return Reply(fenced(FAST_VARIANTS[0], "The same again, with other words."))
        return Reply(f"Variant {i}.\n```python\n# sketch\nBLOCK = 64\n```\nThe kernel:\n"
                     + fenced(FAST_VARIANTS[i % len(FAST_VARIANTS)], ""))

    return answer


def run_search(url: str, *, evaluator, run_name: str | None = None, options=None, **search):
    plan = plan_run("softmax", llm=url, run_name=run_name, knowledge=False, options=options,
                    search={"budget": 6, "seeds": 2, "children_per_expansion": 2, **search})
    return tune(plan, evaluator=evaluator)


def stored(run_id: str):
    with SearchStore() as store:
        return store.run(run_id), store.nodes(run_id), store.evaluations(run_id), store.expansions(run_id)


@pytest.fixture(scope="module")
def spec():
    return resolve_spec("softmax")


@pytest.mark.parametrize("policy", ["mcts", "evolutionary", "beam", "greedy"])
def test_every_policy_runs_a_real_search(policy, spec):
    evaluator = InterpreterEvaluator(spec)
    with FakeOpenAI(kernel_script()) as server:
        summary = run_search(server.url, evaluator=evaluator, policy=policy)
        prompts = server.user_prompts()
    run, nodes, evaluations, expansions = stored(summary.run_id)
    assert summary.policy == policy and summary.synthesizer == "llm"
    assert summary.evaluations == len(nodes) == 6 and "budget spent" in summary.reason
    # every candidate evaluated exactly once, the duplicate never
    hashes = [n.candidate.code_hash for n in nodes]
    assert sorted(evaluator.evaluated) == sorted(hashes) and len(set(hashes)) == len(hashes)
    assert sum(e.proposed for e in expansions) > sum(e.added for e in expansions)
    assert {e.node_id for e in evaluations if e.kind == "first"} == {n.id for n in nodes}
    # failed candidates stay, with their errors; correct ones pass; the best is the first correct
    outcomes = {e.node_id: e.evaluation.outcome.value for e in evaluations if e.kind == "first"}
    assert "compile_error" in outcomes.values() or "wrong" in outcomes.values()
    first_correct = min(i for i, o in outcomes.items() if o == "correct")
    assert summary.best_node == first_correct and summary.best_speedup is None
    assert evaluator.remeasured == [next(n.candidate.code_hash for n in nodes if n.id == first_correct)]
    # tokens are counted per run
    assert summary.llm.requests == len(prompts) and summary.llm.prompt_tokens == 100 * len(prompts)
    # outputs
    out = Path(summary.outputs)
    best_code = next(n.candidate.code for n in nodes if n.id == first_correct)
    assert (out / "best_kernel.py").read_text().endswith(best_code)
    assert json.loads((out / "best_evaluation.json").read_text())["outcome"] == "correct"
    tree = json.loads((out / "tree.json").read_text())
    assert [n["id"] for n in tree["nodes"]] == [n.id for n in nodes]
    assert f"node #{first_correct}" in (out / "path.md").read_text()
    assert "fitness is correctness only" in (out / "summary.md").read_text()
    assert run.status == "finished"
    if policy == "evolutionary":
        assert {n.group for n in nodes} == {0, 1}


def test_feedback_and_memory_modes_reach_the_prompts(spec):
    evaluator = InterpreterEvaluator(spec)
    # everything after the first seed fails: its children see the failures, siblings get compared,
    # and the stall triggers a restart
    def answer(body, i):
        if i == 0:
            return Reply(fenced(FAST_VARIANTS[0]))
        return Reply(fenced(broken_softmax().replace("block =", f"block = {i} * 0 +")))

    with FakeOpenAI(answer) as server:
        summary = run_search(server.url, evaluator=evaluator, policy="greedy", budget=8, seeds=1,
                             children_per_expansion=1, restart_patience=3)
        prompts = server.user_prompts()
    assert summary.correct == 1
    _, nodes, _, _ = stored(summary.run_id)
    modes = [n.memory_mode for n in nodes]
    assert modes[0] == "inherit" and "siblings" in modes and "restart" in modes
    assert any("Other attempts from the same kernel" in p and "COMPILE ERROR" in p for p in prompts)
    assert any("Start afresh" in p for p in prompts)
    restarted = [n for n in nodes if n.memory_mode == "restart"]
    assert all(n.parent_id is None for n in restarted)  # a new subtree from the root


class Interrupting(InterpreterEvaluator):
    """Stops the process (as Ctrl-C would) when asked for the n-th evaluation."""

    def __init__(self, spec, stop_at: int):
        super().__init__(spec)
        self.stop_at = stop_at

    def evaluate(self, candidates):
        if len(self.evaluated) + 1 >= self.stop_at:
            raise KeyboardInterrupt
        return super().evaluate(candidates)


def test_a_stopped_run_resumes_without_losing_or_repeating_evaluations(spec):
    with FakeOpenAI(kernel_script(wrong_every=100, broken_every=100, duplicate_at=-1)) as server:
        first = Interrupting(spec, stop_at=5)
        with pytest.raises(KeyboardInterrupt):
            run_search(server.url, evaluator=first, run_name="resumable", budget=8, expansions_per_round=2)
        run, nodes, evaluations, _ = stored("resumable")
        assert run.status == "stopped" and run.sessions == 1
        done_before = {e.node_id: e.evaluation for e in evaluations if e.kind == "first"}
        in_flight = [n.id for n in nodes if n.id not in done_before]
        assert len(done_before) == 4 and in_flight  # a round was cut short
        second = InterpreterEvaluator(spec)
        summary = tune(plan_run(None, resume="resumable"), evaluator=second)
    run, nodes, evaluations, _ = stored("resumable")
    assert run.status == "finished" and run.sessions == 2 and summary.evaluations == 8
    firsts = [e for e in evaluations if e.kind == "first"]
    assert sorted(e.node_id for e in firsts) == [n.id for n in nodes]  # each once
    for e in firsts:  # nothing evaluated before was lost or done again
        if e.node_id in done_before:
            assert e.evaluation == done_before[e.node_id] and e.session == 1
        else:
            assert e.session == 2
    by_hash = {n.id: n.candidate.code_hash for n in nodes}
    assert set(second.evaluated).isdisjoint(by_hash[i] for i in done_before)
    assert {by_hash[i] for i in in_flight} <= set(second.evaluated)
    assert all(n.eval_attempts == (2 if n.id in in_flight else 1) for n in nodes)


def test_an_endpoint_that_goes_down_leaves_the_run_resumable(spec):
    state = {"down": False}
    good = kernel_script(wrong_every=100, broken_every=100, duplicate_at=-1)

    def answer(body, i):
        return Status(500, "engine dead") if state["down"] else good(body, i)

    with FakeOpenAI(answer) as server:
        evaluator = InterpreterEvaluator(spec)
        original, calls = evaluator.evaluate, []

        def evaluate_then_fail(candidates):  # the endpoint dies during the first round's evaluations
            calls.append(1)
            state["down"] = len(calls) >= 3
            return original(candidates)

        evaluator.evaluate = evaluate_then_fail
        with pytest.raises(LLMUnavailable, match="keeps failing: HTTP 500") as err:
            run_search(server.url, evaluator=evaluator, run_name="outage", budget=6, options={"llm_retries": 0})
        assert "\n" not in err.value.message
        run, nodes, evaluations, _ = stored("outage")
        assert run.status == "stopped" and "keeps failing" in run.finished_reason
        assert len(evaluations) >= 4 and all(n.id in {e.node_id for e in evaluations} for n in nodes)
        state["down"] = False
        summary = tune(plan_run(None, resume="outage"), evaluator=InterpreterEvaluator(spec))
    assert summary.evaluations == 6 and summary.reason.startswith("evaluation budget spent")
    assert summary.llm.requests >= 6


def test_kernelbench_spec_gets_a_modelnew_file(tmp_path):
    from conftest import FIXTURES

    problem = FIXTURES / "kernelbench" / "relu_problem.py"
    spec = resolve_spec(str(problem))
    model_new = RELU_MODELNEW
    with FakeOpenAI(lambda body, i: Reply(fenced(model_new.replace("BLOCK = 1024", f"BLOCK = {256 * (i + 1)}")))) \
            as server:
        plan = plan_run(str(problem), llm=server.url, knowledge=False, search={"budget": 2, "seeds": 2})
        summary = tune(plan, evaluator=InterpreterEvaluator(spec))
        system, user = server.chats[0]["messages"]
    assert "`class ModelNew(torch.nn.Module)`" in system["content"]  # the prompt asks for KernelBench's form
    assert "class Model(nn.Module)" in user["content"]
    out = Path(summary.outputs)
    assert summary.correct == 2 and (out / "ModelNew.py").is_file()
    # KernelBench's own way: import the problem and the solution, compare Model and ModelNew
    import importlib.util

    import torch

    def load(path, name):
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module

    problem_mod, solution = load(problem, "kb_problem"), load(out / "ModelNew.py", "kb_solution")
    problem_mod.batch_size, problem_mod.dim = 3, 333
    x = problem_mod.get_inputs()
    expected = problem_mod.Model(*problem_mod.get_init_inputs())(*x)
    assert torch.equal(solution.ModelNew(*problem_mod.get_init_inputs())(*x), expected)


RELU_MODELNEW = '''
import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _relu(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    tl.store(y_ptr + offs, tl.maximum(x, 0.0), mask=mask)


class ModelNew(torch.nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        x = x.contiguous()
        y = torch.empty_like(x)
        n = x.numel()
        _relu[(triton.cdiv(n, BLOCK),)](x, y, n, BLOCK=BLOCK)
        return y
'''


def test_retrieved_notes_reach_the_prompts_and_the_report(spec, monkeypatch):
    monkeypatch.setenv("KEVOLVE_EMBEDDING", "hashing")  # the light embedding: no model weights
    with FakeOpenAI(kernel_script(duplicate_at=-1)) as server:
        plan = plan_run("softmax", llm=server.url, search={"budget": 2, "seeds": 2})
        summary = tune(plan, evaluator=InterpreterEvaluator(spec))
        prompts = server.user_prompts()
    assert summary.retrieved and all(count == 2 for _, count in summary.retrieved)  # both seeds' prompts
    sources = [source for source, _ in summary.retrieved]
    assert all(f"({source})" in prompts[0] for source in sources)
    report = (Path(summary.outputs) / "summary.md").read_text()
    assert "Retrieved for the prompts" in report and f"- {sources[0]} (2)" in report


def test_a_synthesizer_that_only_repeats_itself_ends_the_run(spec):
    # Every answer is the same kernel: after the first, each proposal is a duplicate, which is
    # never evaluated again; the run must end rather than ask forever.
    evaluator = InterpreterEvaluator(spec)
    with FakeOpenAI(lambda body, i: Reply(fenced(FAST_VARIANTS[0], "Same as before."))) as server:
        summary = run_search(server.url, evaluator=evaluator, policy="greedy", budget=20)
    assert summary.evaluations == 1 and "nothing" in summary.reason
    assert len(evaluator.evaluated) == 1
