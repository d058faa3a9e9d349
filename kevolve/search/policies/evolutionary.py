"""Evolutionary search over islands, with tournament selection and periodic migration.

Each island keeps a population of its fittest members (truncation, so elites survive). Expansion
slots go to the islands in turn; a slot holds a tournament among a few random members of its
island and mutates the winner, whose children join that island. Every `migration_every` rounds
each island's best joins the next island's population, so a good idea spreads without the
islands collapsing into one. An empty island seeds itself from the reference, and adopts the
best kernels of the others when the reference has nothing new to give.
"""

from __future__ import annotations

import random
from typing import Sequence

from kevolve.search.config import SearchConfig
from kevolve.search.policies import Expansion, expandable, expansion, fit_budget, rank_key
from kevolve.search.tree import ROOT, Node, SearchTree

POPULATION = 8  # members kept per island


class EvolutionaryPolicy:
    name = "evolutionary"

    def __init__(self, config: SearchConfig):
        self.config = config
        self.populations: list[list[int]] = [[] for _ in range(config.islands)]
        self.migrations = 0

    def update(self, tree: SearchTree, evaluated: Sequence[Node], round: int) -> None:
        for node in evaluated:
            island = node.group % self.config.islands
            if node.id not in self.populations[island]:
                self.populations[island].append(node.id)
        for island, members in enumerate(self.populations):
            self.populations[island] = self._fittest(tree, members)
        if (round + 1) % self.config.migration_every == 0 and self.config.islands > 1:
            self._migrate(tree)

    def _fittest(self, tree: SearchTree, ids: list[int]) -> list[int]:
        return [n.id for n in sorted((tree.get(i) for i in ids), key=rank_key)[:POPULATION]]

    def _migrate(self, tree: SearchTree) -> None:
        bests = [members[0] if members else None for members in self.populations]
        for island, best in enumerate(bests):
            target = (island + 1) % self.config.islands
            if best is not None and best not in self.populations[target]:
                self.populations[target] = self._fittest(tree, self.populations[target] + [best])
                self.migrations += 1

    def select(self, tree: SearchTree, round: int) -> list[Expansion]:
        picks: list[Expansion] = []
        for slot in range(self.config.expansions_per_round):
            island = (round * self.config.expansions_per_round + slot) % self.config.islands
            rng = random.Random(f"{self.config.rng_seed}:{round}:{slot}")
            pool = [tree.get(i) for i in self.populations[island] if expandable(tree, i, self.config)]
            if not pool:
                if expandable(tree, ROOT, self.config):
                    picks.append(expansion(tree, ROOT, self.config, group=island, why=f"seed island {island}"))
                    continue
                pool = [n for n in tree.ranked() if expandable(tree, n.id, self.config)][:POPULATION]
                if not pool:
                    continue
            contestants = rng.sample(pool, min(self.config.tournament, len(pool)))
            winner = min(contestants, key=rank_key)
            picks.append(expansion(tree, winner.id, self.config, group=island, may_restart=slot == 0,
                                   why=f"island {island}: won a tournament of {len(contestants)}"))
        return fit_budget(picks, self.config.budget - len(tree))
