"""Search policies: which nodes to expand next, and with what memory.

A policy answers two questions each round: `select` (the parents to expand, each with a memory
mode and how many children to ask for) and `update` (here are the evaluated results of a round).
Policies keep only state they can rebuild by replaying `update` over the stored rounds, so a
resumed run makes the same choices it would have made.

Memory modes (kevolve.synth.base.MEMORY_MODES): "inherit" gives the synthesizer the parent's
history, "siblings" its other children to compare with, "restart" asks for a fresh design away
from the current best, attached to the root; a stall of `restart_patience` evaluations triggers it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, Sequence

from kevolve.search.config import SearchConfig
from kevolve.search.tree import ROOT, Node, SearchTree


@dataclass(frozen=True)
class Expansion:
    parent_id: int | None  # None: seeds from the reference
    memory_mode: str
    n: int  # children to ask for
    group: int = 0  # the policy's group for the children (an island)
    why: str = ""  # one line for logs and the report

    @property
    def attaches_to(self) -> int | None:
        """Where the children hang in the tree: restarts start a new subtree at the root."""
        return ROOT if self.memory_mode == "restart" else self.parent_id


class Policy(Protocol):
    name: str

    def select(self, tree: SearchTree, round: int) -> list[Expansion]:
        """The expansions for this round, most promising first."""
        ...

    def update(self, tree: SearchTree, evaluated: Sequence[Node], round: int) -> None:
        """Take in the nodes of a round once they are all evaluated."""
        ...


def make_policy(config: SearchConfig) -> Policy:
    from kevolve.search.policies.beam import BeamPolicy
    from kevolve.search.policies.evolutionary import EvolutionaryPolicy
    from kevolve.search.policies.mcts import MCTSPolicy

    if config.policy == "mcts":
        return MCTSPolicy(config)
    if config.policy == "evolutionary":
        return EvolutionaryPolicy(config)
    return BeamPolicy(config)  # beam, and greedy (a beam of width 1)


# Shared by the policies ---------------------------------------------------------------------
def expandable(tree: SearchTree, node_id: int | None, config: SearchConfig) -> bool:
    """The root and evaluated nodes may be expanded until their expansions keep bringing nothing new."""
    if node_id is not None and not tree.get(node_id).evaluated:
        return False
    return tree.barren(node_id) < config.max_barren_expansions


def stalled(tree: SearchTree, config: SearchConfig) -> bool:
    """No better kernel in `restart_patience` evaluations, counting from the last restart too."""
    best = tree.best()
    since = max([x for x in (best.id if best else None, tree.last_restart()) if x is not None], default=0)
    return sum(1 for n in tree.evaluated() if n.id > since) >= config.restart_patience


def memory_mode(tree: SearchTree, parent_id: int | None, config: SearchConfig, *, may_restart: bool) -> str:
    if config.memory_mode != "auto":
        return config.memory_mode if parent_id is not None else "inherit"
    if parent_id is None:
        return "inherit"
    if may_restart and stalled(tree, config):
        return "restart"
    if any(c.evaluated for c in tree.children(parent_id)):
        return "siblings"
    return "inherit"


def expansion(tree: SearchTree, parent_id: int | None, config: SearchConfig, *, group: int = 0,
              may_restart: bool = False, why: str = "") -> Expansion:
    mode = memory_mode(tree, parent_id, config, may_restart=may_restart)
    if mode == "restart":
        best = tree.best()
        parent_id = best.id if best else parent_id
        why = f"stalled for {config.restart_patience} evaluations: a fresh design away from #{parent_id}"
    n = config.seeds if parent_id is None else config.children_per_expansion
    return Expansion(parent_id, mode, n, group, why)


def fit_budget(expansions: list[Expansion], budget: int) -> list[Expansion]:
    """Ask for no more children than the budget has left."""
    out = []
    for e in expansions:
        if budget <= 0:
            break
        out.append(replace(e, n=min(e.n, budget)))
        budget -= out[-1].n
    return out


def rank_key(node: Node) -> tuple[float, int]:
    return (-(node.fitness or 0.0), node.id)
