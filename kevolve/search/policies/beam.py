"""Beam search: keep the `beam_width` fittest kernels and expand each of them every round.
Greedy search is a beam of width 1: always refine the best kernel so far.

The beam is elitist (a member stays until a fitter kernel displaces it), and a member whose
expansions keep bringing nothing new is passed over for the next fittest open kernel.
"""

from __future__ import annotations

from typing import Sequence

from kevolve.search.config import SearchConfig
from kevolve.search.policies import Expansion, expandable, expansion, fit_budget, rank_key
from kevolve.search.tree import ROOT, Node, SearchTree


class BeamPolicy:
    def __init__(self, config: SearchConfig):
        self.config = config
        self.name = config.policy if config.policy in ("beam", "greedy") else "beam"
        self.width = 1 if config.policy == "greedy" else config.beam_width
        self.beam: list[int] = []

    def update(self, tree: SearchTree, evaluated: Sequence[Node], round: int) -> None:
        members = {*self.beam, *(n.id for n in evaluated)}
        self.beam = [n.id for n in sorted((tree.get(i) for i in members), key=rank_key)][:self.width]

    def select(self, tree: SearchTree, round: int) -> list[Expansion]:
        open_members = [i for i in self.beam if expandable(tree, i, self.config)]
        if len(open_members) < self.width:
            # Fill the beam from the next fittest open kernels.
            spare = [n.id for n in tree.ranked() if n.id not in open_members and expandable(tree, n.id, self.config)]
            open_members += spare[:self.width - len(open_members)]
        if not open_members:
            if not expandable(tree, ROOT, self.config):
                return []
            return fit_budget([expansion(tree, ROOT, self.config, why="seed the beam")], self.config.budget - len(tree))
        picks = [expansion(tree, node_id, self.config, may_restart=rank == 0, why=f"beam member {rank + 1}")
                 for rank, node_id in enumerate(open_members)]
        return fit_budget(picks, self.config.budget - len(tree))
