"""The search tree in memory: nodes with their candidate, evaluation and fitness.

The root is the reference itself (id None): seeds are its children. The tree is rebuilt from the
store on resume and updated as evaluations come in; policies read it, the session writes it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Iterator

from kevolve.candidate import Candidate
from kevolve.evaluate.result import Baselines, Evaluation
from kevolve.search.fitness import speedup
from kevolve.search.store import EvaluationRow, ExpansionRow, NodeRow
from kevolve.synth.base import Attempt

ROOT = None  # the reference: parent of the seeds


@dataclass(frozen=True)
class Node:
    id: int
    parent_id: int | None
    candidate: Candidate
    memory_mode: str
    group: int
    round: int
    evaluation: Evaluation | None = None  # None while in flight
    fitness: float | None = None  # None while in flight; the confirmed figure once re-measured
    remeasure: Evaluation | None = None  # set when it was re-measured as a new best

    @property
    def evaluated(self) -> bool:
        return self.evaluation is not None

    @property
    def correct(self) -> bool:
        return self.evaluation is not None and self.evaluation.correct

    @property
    def confirmed(self) -> bool:
        return self.remeasure is not None


class SearchTree:
    def __init__(self, nodes: Iterable[Node] = (), expansions: Iterable[ExpansionRow] = (),
                 baseline: str = "fastest"):
        self.baseline = baseline
        self.baselines: Baselines | None = None  # the run's, for evaluations that carry none
        self._nodes: dict[int, Node] = {}
        self._children: dict[int | None, list[int]] = {ROOT: []}
        self._expansions: dict[int | None, list[ExpansionRow]] = {}
        for node in nodes:
            self.add(node)
        for row in expansions:
            self.add_expansion(row)

    @staticmethod
    def from_rows(nodes: list[NodeRow], evaluations: list[EvaluationRow], expansions: list[ExpansionRow],
                  baseline: str) -> "SearchTree":
        first = {e.node_id: e for e in evaluations if e.kind == "first"}
        again = {e.node_id: e for e in evaluations if e.kind == "remeasure"}
        built = []
        for row in nodes:
            ev = first.get(row.id)
            re = again.get(row.id)
            built.append(Node(row.id, row.parent_id, row.candidate, row.memory_mode, row.group, row.round,
                              evaluation=ev.evaluation if ev else None,
                              fitness=(re.fitness if re else ev.fitness) if ev else None,
                              remeasure=re.evaluation if re else None))
        return SearchTree(built, expansions, baseline)

    # Building ---------------------------------------------------------------------------------
    def add(self, node: Node) -> None:
        self._nodes[node.id] = node
        self._children.setdefault(node.id, [])
        self._children.setdefault(node.parent_id, []).append(node.id)

    def replace(self, node: Node) -> None:
        self._nodes[node.id] = node

    def set_evaluation(self, node_id: int, evaluation: Evaluation, fitness: float) -> Node:
        node = dataclasses.replace(self._nodes[node_id], evaluation=evaluation, fitness=fitness)
        self._nodes[node_id] = node
        return node

    def set_remeasure(self, node_id: int, evaluation: Evaluation, fitness: float) -> Node:
        node = dataclasses.replace(self._nodes[node_id], remeasure=evaluation, fitness=fitness)
        self._nodes[node_id] = node
        return node

    def add_expansion(self, row: ExpansionRow) -> None:
        self._expansions.setdefault(row.parent_id, []).append(row)

    # Reading ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes[i] for i in sorted(self._nodes))

    def get(self, node_id: int) -> Node:
        return self._nodes[node_id]

    def children(self, node_id: int | None) -> list[Node]:
        return [self._nodes[i] for i in self._children.get(node_id, [])]

    def parent(self, node: Node) -> Node | None:
        return None if node.parent_id is None else self._nodes[node.parent_id]

    def path(self, node_id: int) -> list[Node]:
        """From the seed down to the node."""
        out = []
        current: int | None = node_id
        while current is not None:
            node = self._nodes[current]
            out.append(node)
            current = node.parent_id
        return out[::-1]

    def subtree(self, node_id: int | None) -> Iterator[Node]:
        stack = list(self._children.get(node_id, []))
        if node_id is not None:
            yield self._nodes[node_id]
        while stack:
            node = self._nodes[stack.pop()]
            yield node
            stack.extend(self._children.get(node.id, []))

    def evaluated(self) -> list[Node]:
        return [n for n in self if n.evaluated]

    def pending(self) -> list[Node]:
        return [n for n in self if not n.evaluated]

    def expansions(self, node_id: int | None) -> list[ExpansionRow]:
        return self._expansions.get(node_id, [])

    def barren(self, node_id: int | None) -> int:
        """How many expansions of this node brought no new candidate."""
        return sum(1 for e in self.expansions(node_id) if e.added == 0)

    def best(self, confirmed_only: bool = False) -> Node | None:
        """The fittest correct node; ties go to the earlier one."""
        pool = [n for n in self if n.correct and (n.confirmed or not confirmed_only)]
        return max(pool, key=lambda n: (n.fitness, -n.id)) if pool else None

    def ranked(self) -> list[Node]:
        """Evaluated nodes, fittest first, earlier first among equals."""
        return sorted(self.evaluated(), key=lambda n: (-(n.fitness or 0.0), n.id))

    def evaluations_since_best(self) -> int:
        best = self.best()
        return sum(1 for n in self.evaluated() if best is None or n.id > best.id)

    def last_restart(self) -> int | None:
        restarts = [n.id for n in self if n.memory_mode == "restart"]
        return max(restarts) if restarts else None

    # What a synthesizer sees ------------------------------------------------------------------
    def attempt(self, node: Node) -> Attempt:
        ev = node.evaluation
        error = ev.error if ev else ""
        if ev is not None and not ev.correct and not error:
            error = "; ".join(f"{c.name}: {c.detail}" for c in ev.failed_checks())
        return Attempt(
            code=node.candidate.code,
            origin=node.candidate.origin,
            outcome=ev.outcome.value if ev else "pending",
            speedup=speedup(ev, self.baseline, self.baselines) if ev else None,
            time_ms=ev.timing.median_ms if ev and ev.timing else None,
            error=error,
            diagnosis=ev.diagnosis if ev else None,
        )
