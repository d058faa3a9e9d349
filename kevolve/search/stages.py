"""The stages of the loop as plain functions of the engine.

The `tune_operator` flow runs them as Prefect tasks (tasks/ wraps each one, adding retries and
fan-out, nothing else); `kevolve tune --no-prefect` and the GPU bench run them as they are. Both
go through the one loop in flows/tune_operator.py, handed a `Stages` bundle.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from kevolve.candidate import Candidate
from kevolve.evaluate.result import Evaluation
from kevolve.hardware.calibrate import Ceilings
from kevolve.hardware.target import HardwareTarget
from kevolve.errors import KevolveError
from kevolve.knowledge.types import Skill
from kevolve.search.policies import Expansion, Policy
from kevolve.search.progress import Event, emit
from kevolve.search.tree import Node, SearchTree
from kevolve.specs.model import Dims, OperatorSpec
from kevolve.synth.base import Attempt, SynthesisRequest, Synthesizer

RETRIEVED_DOCS = 4


@dataclass(frozen=True)
class RunContext:
    """What every stage may read about the run."""

    spec: OperatorSpec
    target: HardwareTarget
    ceilings: Ceilings
    dims: Dims  # the shape tuned for on this target
    knowledge: Any | None = None  # a kevolve.knowledge.base.KnowledgeBase, where one is available


# The stages ---------------------------------------------------------------------------------
def select(policy: Policy, tree: SearchTree, round: int) -> list[Expansion]:
    return policy.select(tree, round)


def retrieve(context: RunContext, tree: SearchTree, expansion: Expansion) -> SynthesisRequest:
    """A synthesis request: the parent with its line or its siblings, by memory mode, plus the
    documents and skills the knowledge base holds for this operator, target and diagnosis."""
    parent = tree.get(expansion.parent_id) if expansion.parent_id is not None else None
    history: tuple[Attempt, ...] = ()
    siblings: tuple[Attempt, ...] = ()
    if parent is not None and expansion.memory_mode == "inherit":
        history = tuple(tree.attempt(n) for n in tree.path(parent.id)[:-1])
    if parent is not None and expansion.memory_mode == "siblings":
        siblings = tuple(tree.attempt(n) for n in tree.children(parent.id) if n.evaluated)
    docs: tuple = ()
    skills: tuple[Skill, ...] = ()
    if context.knowledge is not None:
        diagnosis = parent.evaluation.diagnosis if parent is not None and parent.evaluation else None
        try:
            docs = tuple(context.knowledge.retrieve(context.spec, context.target, diagnosis, k=RETRIEVED_DOCS))
            skills = tuple(context.knowledge.skills_for(context.spec, context.target))
        except KevolveError as exc:  # the notes help; a search without them still goes on
            emit(Event("note", f"no retrieval this round: {exc.message}"))
    return SynthesisRequest(
        spec=context.spec, target=context.target, ceilings=context.ceilings, memory_mode=expansion.memory_mode,
        parent=tree.attempt(parent) if parent is not None else None, history=history, siblings=siblings,
        knowledge=docs, skills=skills, n=expansion.n)


def synthesize(synthesizer: Synthesizer, requests: Sequence[SynthesisRequest]) -> list[list[Candidate]]:
    """Candidates for each request; a synthesizer that can batch (the LLM's) gets them all at once."""
    batch = getattr(synthesizer, "propose_many", None)
    if batch is not None:
        return batch(list(requests))
    return [synthesizer.propose(r) for r in requests]


def evaluate(evaluator: Any, candidate: Candidate) -> Evaluation:
    """Compile, check, profile and diagnose one candidate, in the harness's isolated workers."""
    return evaluator.evaluate([candidate])[0]


def remeasure(evaluator: Any, candidate: Candidate) -> Evaluation:
    return evaluator.remeasure(candidate)


def distill(context: RunContext, parent: Attempt, child: Attempt) -> Skill | None:
    """A skill from a child that beat its parent (the knowledge base applies its margin)."""
    if context.knowledge is None:
        return None
    return context.knowledge.record_improvement(context.spec, context.target, context.dims, parent, child)


# How the loop calls them --------------------------------------------------------------------
EvaluateAll = Callable[[Any, Sequence[Node]], Iterator[tuple[Node, Evaluation]]]


@dataclass(frozen=True)
class Stages:
    select: Callable[[Policy, SearchTree, int], list[Expansion]]
    retrieve: Callable[[RunContext, SearchTree, Expansion], SynthesisRequest]
    synthesize: Callable[[Synthesizer, Sequence[SynthesisRequest]], list[list[Candidate]]]
    evaluate_all: EvaluateAll  # fans out; yields each result the moment it ends
    remeasure: Callable[[Any, Candidate], Evaluation]
    distill: Callable[[RunContext, Attempt, Attempt], Skill | None]


def evaluate_in_threads(evaluator: Any, nodes: Sequence[Node]) -> Iterator[tuple[Node, Evaluation]]:
    """Evaluate nodes concurrently (the harness spreads them over its workers), as they finish.
    Interrupted, it waits for nothing: what was in flight is evaluated again on resume."""
    if not nodes:
        return
    pool = ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="evaluate")
    try:
        futures = {pool.submit(evaluate, evaluator, node.candidate): node for node in nodes}
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def engine_stages() -> Stages:
    """The stages with no orchestration around them."""
    return Stages(select=select, retrieve=retrieve, synthesize=synthesize, evaluate_all=evaluate_in_threads,
                  remeasure=remeasure, distill=distill)
