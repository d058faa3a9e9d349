"""Skills from one run change what a second run on a related spec tries first: a short offline
search on softmax distils skills, and the first children proposed for log_softmax apply them;
without the knowledge base the same second run tries other things first.

Kernels are real and checked under Triton's interpreter. The interpreter has no kernel speed, and
the search (rightly) learns nothing from wall clocks, so the evaluator here reports a modelled
device: each kernel config has a fixed time, derived from the config alone. What is tested is
the learning loop, not a speed."""

import dataclasses
import hashlib
import json

import pytest

pytest.importorskip("flows.tune_operator", reason="needs the search loop")
pytest.importorskip("kevolve.synth.offline", reason="needs the offline synthesizer")
pytest.importorskip("searchkit", reason="needs the search loop's test kit")

from flows.tune_operator import tune  # noqa: E402
from kevolve.evaluate.result import Baselines, Timing  # noqa: E402
from kevolve.hardware import detect_target  # noqa: E402
from kevolve.knowledge import KnowledgeBase  # noqa: E402
from kevolve.search.launch import plan_run  # noqa: E402
from kevolve.search.store import SearchStore  # noqa: E402
from kevolve.specs import resolve_spec  # noqa: E402
from searchkit import InterpreterEvaluator  # noqa: E402

pytestmark = pytest.mark.slow
SEARCH = {"budget": 10, "seeds": 2, "children_per_expansion": 2, "policy": "mcts"}


class ModelledDevice(InterpreterEvaluator):
    """Correctness from the interpreter; time from the kernel's config (a fixed figure per
    config, 1.0 to 2.0 ms), against an eager baseline of 2 ms."""

    def _run(self, candidate):
        evaluation = super()._run(candidate)
        if not evaluation.correct:
            return evaluation
        key = json.dumps(dict(candidate.origin.config), sort_keys=True, default=str)
        ms = 1.0 + int(hashlib.sha256(key.encode()).hexdigest()[:6], 16) / 0xFFFFFF
        timing = Timing(ms, ms, ms, ms, 10, "modelled device (test)", interpreter=False)
        return dataclasses.replace(evaluation, timing=timing, baselines=self.baselines())

    def baselines(self):
        eager = Timing(2.0, 2.0, 2.0, 2.0, 10, "modelled device (test)", interpreter=False)
        return Baselines(eager=eager)


def first_children(run_id: str, n: int = 2):
    """The origins of the first n children the run made by transforming a parent (seeds, and
    restarts from seeds, change nothing), in the order they were proposed."""
    with SearchStore() as store:
        nodes = store.nodes(run_id)
    made = [node.candidate.origin for node in nodes if node.parent_id is not None and node.candidate.origin.transforms]
    return made[:n]


def test_skills_from_softmax_lead_the_first_children_for_log_softmax(monkeypatch):
    monkeypatch.setenv("KEVOLVE_EMBEDDING", "hashing")
    first = tune(plan_run("softmax", offline=True, search=SEARCH), evaluator=ModelledDevice(resolve_spec("softmax")))
    with KnowledgeBase.open() as kb:
        skills = kb.skills_for(resolve_spec("log_softmax"), detect_target())
    assert skills, f"the softmax run distilled no skill ({first.evaluations} evaluations)"
    learnt = {tuple(map(str, s.transforms)) for s in skills}

    with_skills = tune(plan_run("log_softmax", offline=True, search=SEARCH),
                       evaluator=ModelledDevice(resolve_spec("log_softmax")))
    tried = first_children(with_skills.run_id)
    assert tuple(map(str, tried[0].transforms)) in learnt and tried[0].note.startswith("skill ")
    # The child made from the skill was credited to it, paid or not.
    assert tried[0].skill_id in {s.id for s in skills}
    with KnowledgeBase.open() as kb:
        used = {s.id: s for s in kb.skills()}[tried[0].skill_id]
    before = {s.id: s for s in skills}[tried[0].skill_id]
    assert used.successes + used.failures > before.successes + before.failures

    without = tune(plan_run("log_softmax", offline=True, knowledge=False, search=SEARCH),
                   evaluator=ModelledDevice(resolve_spec("log_softmax")))
    assert [o.transforms for o in first_children(without.run_id)] != [o.transforms for o in tried]
    assert not any(o.note.startswith("skill ") for o in first_children(without.run_id, n=100))
