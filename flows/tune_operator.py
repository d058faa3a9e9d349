"""The closed loop of Kernel Evolve, as the `tune_operator` Prefect flow.

    until a budget or a goal ends it:
        select parents -> retrieve -> synthesize -> compile + check -> profile -> diagnose -> update
        re-measure a new best before promoting it; distil a skill from what it changed

`search_loop` is that loop, over a bundle of stages: the flow hands it the Prefect tasks of
tasks/ (retries, fan-out, the UI), while `kevolve tune --no-prefect`, machines without Prefect
and the GPU bench hand it the plain engine functions. One loop either way.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

from kevolve.search.config import TuneSettings
from kevolve.search.launch import Plan, plan_run
from kevolve.search.session import RunSummary, SearchSession
from kevolve.search.stages import Stages, engine_stages
from kevolve.search.tree import Node


MAX_IDLE_ROUNDS = 3  # rounds in a row whose proposals were all duplicates: the space is spent


def search_loop(session: SearchSession, stages: Stages) -> RunSummary:
    try:
        evaluate(session, stages, session.tree.pending())  # in flight when the last session stopped
        promote(session, stages)
        session.replay()
        idle_rounds = 0
        while (reason := session.stop_reason()) is None:
            expansions = stages.select(session.policy, session.tree, session.round)
            if not expansions:
                reason = "nothing left to expand: every open node's expansions came back with nothing new"
                break
            requests = [stages.retrieve(session.context, session.tree, e) for e in expansions]
            session.record_retrieval(expansions, requests)
            proposals = stages.synthesize(session.synthesizer, requests)
            session.record_usage()
            children = session.add_children(expansions, proposals)  # persisted; duplicates dropped
            evaluate(session, stages, children)
            promote(session, stages)
            session.end_round(children)
            idle_rounds = 0 if children else idle_rounds + 1
            if idle_rounds >= MAX_IDLE_ROUNDS:  # every proposal was already in the tree
                reason = f"nothing new proposed in {idle_rounds} rounds: the synthesizer has run dry here"
                break
        return session.finish(reason)
    except BaseException as exc:  # an endpoint down, a crash, Ctrl-C: the run stays resumable
        session.stop(exc)
        raise


def evaluate(session: SearchSession, stages: Stages, nodes: list[Node]) -> None:
    """Compile, check, profile and diagnose each candidate (fanned out over the harness's
    workers), committing each result the moment it returns."""
    session.started(nodes)
    for node, evaluation in stages.evaluate_all(session.evaluator, nodes):
        session.record(node, evaluation)


def promote(session: SearchSession, stages: Stages) -> None:
    """A new best is re-measured before it is promoted (noise makes false elites); what it
    changed over its parent is distilled into a skill."""
    while (node := session.unconfirmed_best()) is not None:
        node = session.confirm(node, stages.remeasure(session.evaluator, node.candidate))
        improvement = session.improvement(node)
        if improvement is not None:
            stages.distill(session.context, *improvement)


def tune(plan: Plan, stages_for: Callable[[TuneSettings], Stages] = lambda settings: engine_stages(),
         **components: Any) -> RunSummary:
    """Open (or resume) the planned run and search until it ends, with the stages made for its
    settings. `components` may supply the evaluator or synthesizer; by default the settings choose."""
    session = SearchSession.open(plan.settings, plan.run_id, search_overrides=plan.overrides, notes=plan.notes,
                                 **components)
    try:
        return search_loop(session, stages_for(session.settings))
    finally:
        session.close()


def tune_without_prefect(spec: str | None = None, **options: Any) -> RunSummary:
    """The same loop with no orchestration; takes plan_run's arguments."""
    return tune(plan_run(spec, **options))


PREFECT = importlib.util.find_spec("prefect") is not None


def _tune_operator(spec: str | None = None, target: str | None = None, llm: str | None = None,
                   offline: bool = False, run_name: str | None = None, resume: str | None = None,
                   search: dict[str, Any] | None = None, knowledge: bool = True,
                   options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tune one operator: `search` holds SearchConfig fields (policy, budget, wall_time_s,
    stall_patience, target_speedup, baseline, ...), `options` other TuneSettings fields.
    Publishes the run's progress, leaderboard, best kernel and speedup plot as artifacts."""
    from flows.monitoring import ProgressArtifact, publish_outputs
    from kevolve.search.progress import listening
    from tasks import task_stages
    from tasks.gpu_slots import gpu_slot

    plan = plan_run(spec, target=target, llm=llm, offline=offline, run_name=run_name, resume=resume,
                    search=search, knowledge=knowledge, options=options)
    with ProgressArtifact(plan.spec_name, plan.target) as progress, listening(progress.on_event):
        summary = tune(plan, task_stages, timing_guard=gpu_slot).to_dict()
    publish_outputs(summary)
    return summary


def _run_name() -> str:
    """`tune softmax on h100-sxm`: the flow run's name in the UI."""
    from prefect.runtime import flow_run

    from kevolve.search.launch import request_label

    p = flow_run.parameters
    return "tune " + request_label(p.get("spec"), p.get("target"), p.get("resume"))


if PREFECT:
    from prefect import flow

    from flows.runners import evaluation_runner

    tune_operator = flow(name="tune-operator", flow_run_name=_run_name, persist_result=False,
                         task_runner=evaluation_runner())(_tune_operator)
else:  # the engine runs without orchestration too: see tune_without_prefect
    tune_operator = None
