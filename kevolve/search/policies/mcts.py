"""Monte Carlo tree search with UCT and progressive widening.

Each evaluation is a rollout: its fitness is backed up the path to the root, where a node's value
is the best fitness in its subtree (a kernel search wants the best leaf, not the mean one),
normalised between the worst and best of the siblings compared, so that the exploration constant
means the same on every operator and a few percent of speedup still count.
Descent picks the child with the highest upper confidence bound until it reaches a node that may
take another expansion: a node takes expansion k+1 once it has about k**(1/widening) visits, so
good nodes are refined before the tree grows wide.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from kevolve.search.config import SearchConfig
from kevolve.search.policies import Expansion, expandable, expansion, fit_budget
from kevolve.search.tree import ROOT, Node, SearchTree


class MCTSPolicy:
    name = "mcts"

    def __init__(self, config: SearchConfig):
        self.config = config
        self.visits: Counter[int | None] = Counter()  # evaluated nodes in each subtree
        self.value: dict[int | None, float] = {}  # best fitness in each subtree
        self._seen: set[int] = set()

    # Backup -----------------------------------------------------------------------------------
    def update(self, tree: SearchTree, evaluated: Sequence[Node], round: int) -> None:
        for node in evaluated:
            path = [n.id for n in tree.path(node.id)][::-1] + [ROOT]
            if node.id not in self._seen:
                self._seen.add(node.id)
                for v in path:
                    self.visits[v] += 1
            for v in path:  # recomputed from the children, so a re-measured (lower) figure backs up too
                own = (tree.get(v).fitness or 0.0) if v is not None else 0.0
                kids = [self.value.get(c.id, 0.0) for c in tree.children(v) if c.id in self._seen]
                self.value[v] = max([own, *kids])

    # Selection --------------------------------------------------------------------------------
    def select(self, tree: SearchTree, round: int) -> list[Expansion]:
        picks: list[Expansion] = []
        virtual: Counter[int | None] = Counter()  # this round's picks, so parallel slots spread out
        closed: dict[int | None, bool] = {}
        for slot in range(self.config.expansions_per_round):
            node_id = self._descend(tree, virtual, closed)
            if node_id is False:
                break
            pick = expansion(tree, node_id, self.config, may_restart=slot == 0,
                             why="widen the root" if node_id is None else "UCT")
            picks.append(pick)
            cursor: int | None = node_id
            while True:
                virtual[cursor] += 1
                if cursor is None:
                    break
                cursor = tree.get(cursor).parent_id
        return fit_budget(picks, self.config.budget - len(tree))

    def _descend(self, tree: SearchTree, virtual: Counter, closed: dict) -> int | None | bool:
        """The node to expand, or False when every node is closed."""
        node: int | None = ROOT
        while True:
            kids = [c for c in tree.children(node) if c.id in self._seen and not self._closed(tree, c.id, closed)]
            if expandable(tree, node, self.config) and (self._may_widen(tree, node, virtual) or not kids):
                return node
            if not kids:
                return False
            values = [self.value.get(c.id, 0.0) for c in kids]
            low, high = min(values), max(values)
            node = max(kids, key=lambda c: (self._uct(node, c.id, virtual, low, high), -c.id)).id

    def _may_widen(self, tree: SearchTree, node: int | None, virtual: Counter) -> bool:
        taken = len(tree.expansions(node)) + virtual[node]
        return taken < max(1, math.ceil((self.visits[node] + virtual[node]) ** self.config.widening))

    def _uct(self, parent: int | None, child: int, virtual: Counter, low: float, high: float) -> float:
        # Values normalised over the siblings compared: speedups differ by a few percent, which
        # must still tell the subtrees apart.
        exploit = (self.value.get(child, 0.0) - low) / (high - low) if high > low else 0.5
        n_parent = self.visits[parent] + virtual[parent]
        n_child = self.visits[child] + virtual[child]
        return exploit + self.config.exploration * math.sqrt(math.log(max(n_parent, 1)) / max(n_child, 1))

    def _closed(self, tree: SearchTree, node: int, memo: dict) -> bool:
        if node not in memo:
            memo[node] = not expandable(tree, node, self.config) and all(
                self._closed(tree, c.id, memo) for c in tree.children(node) if c.id in self._seen)
        return memo[node]
