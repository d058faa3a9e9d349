"""A search session: one process working on a run, from opening (or resuming) it to its outputs.

The session is the single writer of the run's state: it persists each node before its candidate
is evaluated and each evaluation the moment it returns, keeps the in-memory tree and the
policy in step with the store, and decides (through termination.py) when the run is done.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

from kevolve.candidate import Candidate
from kevolve.evaluate.result import Baselines, Evaluation
from kevolve.search import outputs
from kevolve.search.components import make_evaluator, make_synthesizer, open_knowledge, prior_kernel
from kevolve.search.config import SearchConfig, TuneSettings
from kevolve.search.fitness import INTERPRETER_NOTE, confirmed_fitness, fitness, speedup, timed
from kevolve.search.policies import Expansion, Policy, make_policy
from kevolve.search.progress import Event, emit
from kevolve.search.stages import RunContext
from kevolve.search.store import ExpansionRow, RetrievalRow, RunRecord, SearchStore
from kevolve.search.termination import Progress, stop_reason
from kevolve.search.tree import Node, SearchTree
from kevolve.synth.base import Attempt, SynthesisRequest
from kevolve.synth.llm.client import Usage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    spec: str
    target: str
    policy: str
    synthesizer: str
    reason: str
    evaluations: int
    correct: int
    best_node: int | None
    best_fitness: float | None
    best_speedup: float | None
    outputs: str  # the folder with best_kernel.py, path.md, tree.json, ...
    notes: tuple[str, ...] = ()
    llm: Usage = Usage()
    retrieved: tuple[tuple[str, int], ...] = ()  # (document source, times in a prompt), this session

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def new_run_id(spec_name: str, target: str) -> str:
    return f"{spec_name}-{target}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"


class SearchSession:
    def __init__(self, store: SearchStore, run: RunRecord, number: int, settings: TuneSettings,
                 context: RunContext, synthesizer: Any, evaluator: Any, notes: list[str]):
        self.store = store
        self.run_id = run.id
        self.number = number  # this process is the run's n-th session
        self.settings = settings
        self.config: SearchConfig = settings.search
        self.context = context
        self.synthesizer = synthesizer
        self.evaluator = evaluator
        self.notes = notes
        self.tree = SearchTree.from_rows(store.nodes(run.id), store.evaluations(run.id), store.expansions(run.id),
                                         self.config.baseline)
        self.policy: Policy = make_policy(self.config)
        self.round = max([run.rounds, *(n.round + 1 for n in self.tree)])
        self._elapsed_before = run.elapsed_s
        self._started = time.monotonic()
        self._baselines: Baselines | None = None
        self._owns_evaluator = False
        self._confirmed: list[Node] = []  # re-measured this round
        self._retrieved: Counter[str] = Counter()

    # Opening ----------------------------------------------------------------------------------
    @staticmethod
    def open(settings: TuneSettings | None, run_id: str | None = None, *,
             search_overrides: Mapping[str, Any] | None = None, notes: Sequence[str] = (),
             store: SearchStore | None = None, evaluator: Any = None, synthesizer: Any = None,
             timing_guard: Any = None) -> "SearchSession":
        """Open a new run, or resume `run_id` with the settings it was started with (a few search
        limits, like the budget, may be raised through `search_overrides`). `timing_guard` is
        held around each timing of the evaluator the session starts (see Evaluator)."""
        from kevolve.hardware import device_name, load_ceilings, load_target
        from kevolve.specs import load_spec

        store = store or SearchStore()
        existing = store.find_run(run_id) if run_id else None
        if existing is not None:
            settings = TuneSettings.from_dict(existing.settings)
        if settings is None:
            store.run(run_id or "")  # raises RunNotFound with the way out
        if search_overrides:
            search = SearchConfig.from_dict({**settings.search.to_dict(), **search_overrides})
            settings = dataclasses.replace(settings, search=search)
        spec = load_spec(settings.spec)
        target = load_target(settings.target)
        notes = list(notes)
        knowledge, note = open_knowledge(settings)
        notes += [note] if note else []
        context = RunContext(spec, target, load_ceilings(target, device_name()),
                             spec.shapes_for(target.interpreter)[0], knowledge)
        run_id = run_id or new_run_id(spec.name, target.name)
        synthesizer = synthesizer or make_synthesizer(settings)
        owned = evaluator is None  # the session closes only an evaluator it started
        evaluator = evaluator or make_evaluator(spec, target, settings, timing_guard)
        try:
            run = existing or store.create_run(run_id, spec.name, target.name, settings.to_dict())
            number = store.claim(run_id)
        except BaseException:
            if owned:
                evaluator.close()
            raise
        if existing is not None:  # resumed: the stored settings, plus the overrides
            store.update_settings(run_id, settings.to_dict())
        session = SearchSession(store, run, number, settings, context, synthesizer, evaluator, notes)
        session._owns_evaluator = owned
        if existing is None:
            session._seed_from_prior()
        if target.interpreter:
            session.notes.append(INTERPRETER_NOTE)
        emit(Event("start", f"run {run_id}: {spec.name} on {target.name}, policy {session.policy.name}, "
                            f"synthesizer {getattr(synthesizer, 'name', '?')}"
                            + (f", resumed (session {number})" if existing else ""),
                   len(session.tree), session.config.budget))
        for note in session.notes:
            emit(Event("note", note, len(session.tree), session.config.budget))
        return session

    def _seed_from_prior(self) -> None:
        """A request close to one solved before starts from that best kernel."""
        found = prior_kernel(self.context)
        if found is not None:
            self.add_children([Expansion(None, "inherit", 1, 0, "best prior kernel")], [[found]])

    # State ------------------------------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        return self._elapsed_before + time.monotonic() - self._started

    @property
    def baselines(self) -> Baselines | None:
        """The run's baselines, for evaluations that do not carry their own."""
        return self.load_baselines()

    def load_baselines(self) -> Baselines | None:
        """Timed by the harness (or read from its cache) once per run, before the first fan-out,
        so parallel evaluations never time them twice."""
        wanted = not self.context.target.interpreter and hasattr(self.evaluator, "baselines")
        if self._baselines is None and wanted:
            self._baselines = self.evaluator.baselines()
            self.tree.baselines = self._baselines
        return self._baselines

    def best(self) -> Node | None:
        return self.tree.best(confirmed_only=True)

    def best_speedup(self) -> float | None:
        best = self.best()
        if best is None or best.evaluation is None:
            return None
        return speedup(best.remeasure or best.evaluation, self.config.baseline, self.baselines)

    def stop_reason(self) -> str | None:
        return stop_reason(self.config, Progress.of(self.tree, self.elapsed_s, self.best_speedup()))

    def replay(self) -> None:
        """Bring a fresh policy up to date with the rounds already stored."""
        for r in sorted({n.round for n in self.tree}):
            self.policy.update(self.tree, [n for n in self.tree if n.round == r and n.evaluated], r)

    # Writing ----------------------------------------------------------------------------------
    def record_retrieval(self, expansions: Sequence[Expansion], requests: Sequence[SynthesisRequest]) -> None:
        """Which documents and skills the knowledge base handed the synthesizer for each
        expansion: kept with the run, so its report shows what lay behind each step."""
        for expansion, request in zip(expansions, requests):
            self._retrieved.update({doc.source: request.n for doc in request.knowledge})  # a prompt per candidate
            if request.knowledge or request.skills:
                row = RetrievalRow(self.round, expansion.parent_id, expansion.memory_mode,
                                   tuple((d.source, d.title, round(float(d.score), 4)) for d in request.knowledge),
                                   tuple((s.id, s.describe()) for s in request.skills))
                self.store.record_retrieval(self.run_id, row)

    def add_children(self, expansions: Sequence[Expansion], proposals: Sequence[Sequence[Candidate]]) -> list[Node]:
        """Persist each new candidate as a node (before it is evaluated); drop duplicates."""
        added: list[Node] = []
        for expansion, candidates in zip(expansions, proposals):
            count = 0
            for candidate in candidates[:expansion.n]:
                origin = dataclasses.replace(candidate.origin, memory_mode=expansion.memory_mode)
                candidate = dataclasses.replace(candidate, origin=origin)
                node_id = self.store.add_node(self.run_id, candidate, parent_id=expansion.attaches_to,
                                              memory_mode=expansion.memory_mode, group=expansion.group,
                                              round=self.round)
                if node_id is None:
                    continue
                node = Node(node_id, expansion.attaches_to, candidate, expansion.memory_mode, expansion.group,
                            self.round)
                self.tree.add(node)
                added.append(node)
                count += 1
            row = ExpansionRow(self.round, expansion.parent_id, expansion.memory_mode, expansion.group,
                               expansion.n, len(candidates), count)
            self.store.record_expansion(self.run_id, row)
            self.tree.add_expansion(row)
        return added

    def started(self, nodes: Sequence[Node]) -> None:
        if nodes:
            self.load_baselines()
        for node in nodes:
            self.store.mark_evaluating(node.id)

    def record(self, node: Node, evaluation: Evaluation) -> Node:
        """Commit an evaluation the moment it returns."""
        score = fitness(evaluation, self.config.baseline, self.baselines)
        self.store.record_evaluation(self.run_id, node.id, "first", self.number, evaluation, score)
        node = self.tree.set_evaluation(node.id, evaluation, score)
        self._credit_skill(node)
        done = len(self.tree.evaluated())
        emit(Event("evaluated", f"#{node.id} {evaluation.outcome.value}"
                                + (f" {speedup(evaluation, self.config.baseline, self.baselines):.2f}x"
                                   if timed(evaluation) and score != 1.0 else ""), done, self.config.budget))
        return node

    def _credit_skill(self, node: Node) -> None:
        """A child made by applying a learnt skill: count whether it paid again (beat its
        parent), so skills that stop paying sink in the ranking. Only timed results count."""
        skill_id = node.candidate.origin.skill_id
        parent = self.tree.parent(node)
        kb = self.context.knowledge
        if skill_id is None or kb is None or parent is None or not timed(parent.evaluation):
            return
        paid = node.correct and timed(node.evaluation) and (node.fitness or 0) > (parent.fitness or 0)
        try:
            kb.record_reuse(skill_id, paid)
        except Exception as exc:  # the count is bookkeeping: never worth the run
            log.warning("could not count the reuse of skill %s: %s", skill_id, exc)

    def unconfirmed_best(self) -> Node | None:
        """The fittest kernel if it still awaits its re-measure."""
        best = self.tree.best()
        return best if best is not None and not best.confirmed else None

    def confirm(self, node: Node, again: Evaluation) -> Node:
        score = confirmed_fitness(node.evaluation, again, self.config.baseline, self.config.noise, self.baselines)
        self.store.record_evaluation(self.run_id, node.id, "remeasure", self.number, again, score)
        node = self.tree.set_remeasure(node.id, again, score)
        self._confirmed.append(node)  # the policy takes in the confirmed figure with the round
        if self.best() is not None and self.best().id == node.id:
            emit(Event("promoted", f"new best #{node.id}" + (f": fitness {score:.3g}" if score != 1.0 else ""),
                       len(self.tree.evaluated()), self.config.budget))
        return node

    def improvement(self, node: Node) -> tuple[Attempt, Attempt] | None:
        """(parent, child) when a confirmed kernel was timed faster than its correct parent: the
        pair a skill is distilled from. Interpreter runs have no speed, so no skills."""
        parent = self.tree.parent(node)
        if parent is None or not parent.correct or not node.confirmed:
            return None
        if not (timed(parent.evaluation) and timed(node.remeasure)) or (node.fitness or 0) <= (parent.fitness or 0):
            return None
        return self.tree.attempt(parent), self.tree.attempt(node)

    def record_usage(self) -> None:
        meter = getattr(getattr(self.synthesizer, "client", None), "meter", None)
        if meter is not None:
            self.store.record_llm_usage(self.run_id, self.number, self.synthesizer.client.model, meter.take())

    def end_round(self, nodes: Sequence[Node]) -> None:
        ids = dict.fromkeys([n.id for n in nodes] + [n.id for n in self._confirmed])
        self._confirmed.clear()
        self.policy.update(self.tree, [self.tree.get(i) for i in ids], self.round)
        self.round += 1
        best = self.best()
        self.store.update_progress(self.run_id, elapsed_s=self.elapsed_s, rounds=self.round,
                                   best_node_id=best.id if best else None)
        emit(Event("round", f"round {self.round} done", len(self.tree.evaluated()), self.config.budget))

    # Closing ----------------------------------------------------------------------------------
    def finish(self, reason: str) -> RunSummary:
        self.record_usage()
        best = self.best()
        self.store.update_progress(self.run_id, elapsed_s=self.elapsed_s, rounds=self.round,
                                   best_node_id=best.id if best else None)
        summary = self.summary(reason)
        self.store.release(self.run_id, "finished", reason)  # first, so the report reads the run as finished
        outputs.write(outputs.run_dir(self.run_id), self.context.spec, self.tree, summary, self.settings,
                      self.store)
        self._record_best_kernel(best)
        emit(Event("end", reason, summary.evaluations, self.config.budget))
        return summary

    def stop(self, error: BaseException) -> None:
        """Leave the run resumable after an error or an interrupt."""
        try:
            self.record_usage()
        finally:
            self.store.update_progress(self.run_id, elapsed_s=self.elapsed_s, rounds=self.round,
                                       best_node_id=self.best().id if self.best() else None)
            self.store.release(self.run_id, "stopped", getattr(error, "message", None) or type(error).__name__)

    def close(self) -> None:
        if self._owns_evaluator:
            self.evaluator.close()
        close_knowledge = getattr(self.context.knowledge, "close", None)
        if close_knowledge is not None:
            close_knowledge()
        self.store.close()

    def summary(self, reason: str) -> RunSummary:
        best = self.best()
        return RunSummary(
            run_id=self.run_id, spec=self.context.spec.name, target=self.context.target.name,
            policy=self.policy.name, synthesizer=getattr(self.synthesizer, "name", "?"), reason=reason,
            evaluations=len(self.tree.evaluated()), correct=sum(1 for n in self.tree if n.correct),
            best_node=best.id if best else None, best_fitness=best.fitness if best else None,
            best_speedup=self.best_speedup(), outputs=str(outputs.run_dir(self.run_id)),
            notes=tuple(self.notes), llm=self.store.llm_usage(self.run_id),
            retrieved=tuple(self._retrieved.most_common()))

    def _record_best_kernel(self, best: Node | None) -> None:
        kb = self.context.knowledge
        s = self.best_speedup()
        if kb is None or best is None or s is None:
            return
        ev = best.remeasure or best.evaluation
        kb.record_best_kernel(self.context.spec, self.context.target, self.context.dims, best.candidate.code,
                              dict(best.candidate.origin.config), s, ev.to_json())
