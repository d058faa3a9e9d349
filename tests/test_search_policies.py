"""The policies' choices on trees built here by hand: UCT and progressive widening, islands with
tournaments and migration, beam and greedy, memory modes, budgets, and replay after a resume.

Nodes carry real Evaluation records with GPU-style timings made up for the tree in question:
these tests are about which parent a policy picks given a tree, not about any kernel."""

from __future__ import annotations

import itertools

import pytest

from kevolve.candidate import Candidate, Origin
from kevolve.evaluate.result import Baselines, Evaluation, Outcome, Timing
from kevolve.search.config import SearchConfig
from kevolve.search.fitness import fitness
from kevolve.search.policies import Expansion, fit_budget, make_policy, stalled
from kevolve.search.store import ExpansionRow
from kevolve.search.tree import ROOT, Node, SearchTree

EAGER_MS = 10.0


def timing(ms: float) -> Timing:
    return Timing(ms, ms * 0.99, ms * 1.01, ms * 0.98, 100, "cuda events, L2 flushed, 100 trials")


def evaluation(ms: float | None) -> Evaluation:
    """Correct and timed at `ms`, or wrong when ms is None."""
    if ms is None:
        return Evaluation("h", "op", "h100-sxm", "H100", {"N": 1}, Outcome.WRONG, error="3 elements off")
    return Evaluation("h", "op", "h100-sxm", "H100", {"N": 1}, Outcome.CORRECT, timing=timing(ms),
                      baselines=Baselines(eager=timing(EAGER_MS)))


class Grower:
    """Applies a policy's expansions to a tree: each child is a new node whose time comes from
    `time_of(parent_time, k)`; rounds end with the policy's update, as in the loop."""

    def __init__(self, config: SearchConfig, time_of, duplicate=lambda parent, k: False):
        self.config = config
        self.tree = SearchTree()
        self.policy = make_policy(config)
        self.time_of = time_of
        self.duplicate = duplicate
        self.ids = itertools.count(1)
        self.round = 0
        self.picks: list[list[Expansion]] = []

    def step(self) -> list[Node]:
        picks = self.policy.select(self.tree, self.round)
        self.picks.append(picks)
        new = []
        for e in picks:
            parent_ms = None if e.parent_id is None else self.tree.get(e.parent_id).evaluation.timing
            parent_ms = parent_ms.median_ms if parent_ms else EAGER_MS
            added = 0
            for k in range(e.n):
                if self.duplicate(e.parent_id, k):
                    continue
                node_id = next(self.ids)
                ms = self.time_of(parent_ms, k, node_id)
                ev = evaluation(ms)
                cand = Candidate(f"# node {node_id}\n", "op", Origin("test", note=f"child {k} of {e.parent_id}"))
                node = Node(node_id, e.attaches_to, cand, e.memory_mode, e.group, self.round, ev,
                            fitness(ev, "fastest"))
                self.tree.add(node)
                new.append(node)
                added += 1
            self.tree.add_expansion(ExpansionRow(self.round, e.parent_id, e.memory_mode, e.group, e.n, e.n, added))
        self.policy.update(self.tree, new, self.round)
        self.round += 1
        return new

    def run(self, rounds: int) -> None:
        for _ in range(rounds):
            if not self.step() and not self.picks[-1]:
                break


def better_child(parent_ms: float, k: int, node_id: int) -> float:
    return parent_ms * (0.9 if k == 0 else 1.1)  # the first child of any node is 10% faster


def one_good_seed(parent_ms: float, k: int, node_id: int) -> float:
    """The first seed is the one to refine; seeds asked for later are worse."""
    if parent_ms == EAGER_MS:
        return 9.0 if node_id == 1 else 12.0 + node_id
    return better_child(parent_ms, k, node_id)


def test_mcts_widens_by_visits_and_descends_to_the_best_subtree():
    config = SearchConfig(policy="mcts", budget=200, expansions_per_round=1, children_per_expansion=2, seeds=2,
                          widening=0.5, restart_patience=1000)
    g = Grower(config, one_good_seed)
    g.run(12)
    # progressive widening: the root was expanded about sqrt(visits) times, not every round
    root_expansions = len(g.tree.expansions(ROOT))
    assert 1 < root_expansions <= 1 + len(g.tree) ** 0.5
    # descent follows value: the good seed's subtree got the most visits by far, and the best
    # kernel is deep in it
    best = g.tree.best()
    assert g.tree.path(best.id)[0].id == 1
    assert len(g.tree.path(best.id)) >= 3
    visits = g.policy.visits
    others = sorted(visits[s.id] for s in g.tree.children(ROOT) if s.id != 1)
    assert visits[1] >= 3 * others[-1]


def test_mcts_backs_up_the_best_fitness():
    config = SearchConfig(policy="mcts", budget=100, expansions_per_round=2, children_per_expansion=1, seeds=1,
                          restart_patience=1000)
    g = Grower(config, lambda p, k, i: p * (0.95 if i % 3 else 1.2))
    g.run(8)
    for node in g.tree:  # a node's value is the best fitness in its subtree
        assert g.policy.value[node.id] == pytest.approx(max(n.fitness for n in g.tree.subtree(node.id)))
    assert g.policy.value[ROOT] == pytest.approx(g.tree.best().fitness)
    assert g.policy.visits[ROOT] == len(g.tree)


def test_mcts_closes_nodes_whose_expansions_bring_nothing_new():
    config = SearchConfig(policy="mcts", budget=100, expansions_per_round=1, children_per_expansion=1, seeds=1,
                          max_barren_expansions=2, restart_patience=1000)
    # one seed, and every later proposal a duplicate: the space is exhausted, not looped over
    g = Grower(config, lambda p, k, i: 9.0, duplicate=lambda parent, k: len(g.tree) >= 1)
    g.run(10)
    assert len(g.tree) == 1
    assert g.tree.barren(1) == 2 and g.tree.barren(ROOT) == 2
    assert g.policy.select(g.tree, g.round) == []


def test_evolutionary_islands_tournaments_and_migration():
    config = SearchConfig(policy="evolutionary", budget=200, islands=2, expansions_per_round=2,
                          children_per_expansion=2, seeds=2, tournament=2, migration_every=2, restart_patience=1000)
    times = {}

    def island_times(parent_ms, k, node_id):  # island 1's line improves faster than island 0's
        times[node_id] = parent_ms * (0.97 if k == 0 else 1.02)
        return times[node_id]

    g = Grower(config, island_times)
    g.step()
    for _ in range(5):
        populations = [list(p) for p in g.policy.populations]
        g.step()
        picks = g.picks[-1]
        assert [e.group for e in picks] == [0, 1]  # slots go to the islands in turn
        for e in picks:  # a tournament winner comes from its island's population
            assert e.parent_id in populations[e.group]
            # it beat the other contestant, so it is not the island's worst
            assert g.tree.get(e.parent_id).fitness >= sorted(
                g.tree.get(i).fitness for i in populations[e.group])[config.tournament - 1]
    assert {n.group for n in g.tree} == {0, 1}
    # migration: each island's population holds the other island's best at some point
    assert g.policy.migrations >= 2
    for island, members in enumerate(g.policy.populations):
        assert any(g.tree.get(m).group != island for m in members)


def test_beam_keeps_the_fittest_and_greedy_refines_the_best():
    config = SearchConfig(policy="beam", budget=200, beam_width=3, children_per_expansion=2, seeds=4,
                          restart_patience=1000)
    g = Grower(config, better_child)
    g.run(4)
    ranked = g.tree.ranked()
    assert g.policy.beam == [n.id for n in ranked[:3]]
    assert [e.parent_id for e in g.policy.select(g.tree, g.round)] == g.policy.beam

    greedy = Grower(SearchConfig(policy="greedy", budget=200, children_per_expansion=2, seeds=2,
                                 restart_patience=1000), better_child)
    greedy.run(5)
    assert greedy.policy.name == "greedy" and greedy.policy.width == 1
    for picks in greedy.picks[1:]:
        assert len(picks) == 1
    # each round refined the best so far, so the best is a straight line of first children
    best = greedy.tree.best()
    assert len(greedy.tree.path(best.id)) == 5


def test_memory_modes_siblings_then_restart_after_a_stall():
    config = SearchConfig(policy="greedy", budget=200, children_per_expansion=2, seeds=1, restart_patience=4)
    # nothing ever beats the seed: the search stalls and must restart from the root
    g = Grower(config, lambda p, k, i: p * 1.5)
    g.step()  # the seed
    g.step()  # its first children: inherit
    assert g.picks[1][0].memory_mode == "inherit"
    g.step()  # the seed has children now: compare with them
    assert g.picks[2][0].memory_mode == "siblings"
    assert stalled(g.tree, config)
    g.step()
    restart = g.picks[3][0]
    assert restart.memory_mode == "restart" and restart.parent_id == g.tree.best().id
    assert restart.attaches_to is ROOT
    new_roots = [n for n in g.tree.children(ROOT) if n.memory_mode == "restart"]
    assert len(new_roots) == 2
    assert not stalled(g.tree, config)  # counting starts again after the restart


def test_fixed_memory_mode_and_budget_are_respected():
    config = SearchConfig(policy="mcts", budget=7, children_per_expansion=3, seeds=3, expansions_per_round=3,
                          memory_mode="siblings")
    g = Grower(config, better_child)
    g.run(10)
    assert len(g.tree) == 7  # never a child beyond the budget
    assert {e.memory_mode for picks in g.picks[1:] for e in picks} <= {"siblings"}
    assert fit_budget([Expansion(1, "inherit", 4), Expansion(2, "inherit", 4)], 5) == [
        Expansion(1, "inherit", 4), Expansion(2, "inherit", 1)]


@pytest.mark.parametrize("policy", ["mcts", "evolutionary", "beam"])
def test_a_policy_rebuilt_by_replay_chooses_as_the_live_one(policy):
    config = SearchConfig(policy=policy, budget=200, expansions_per_round=2, children_per_expansion=2, seeds=3,
                          restart_patience=6)
    g = Grower(config, lambda p, k, i: p * (0.9 + 0.07 * ((i * 7) % 5)))
    g.run(6)
    fresh = make_policy(config)
    for r in range(g.round):
        fresh.update(g.tree, [n for n in g.tree if n.round == r], r)
    assert fresh.select(g.tree, g.round) == g.policy.select(g.tree, g.round)


def test_wrong_kernels_score_zero_but_stay_expandable_for_repair():
    config = SearchConfig(policy="beam", budget=50, beam_width=2, children_per_expansion=1, seeds=2)
    g = Grower(config, lambda p, k, i: None if i <= 2 else p * 0.9)  # both seeds wrong
    g.step()
    assert all(n.fitness == 0.0 for n in g.tree)
    picks = g.policy.select(g.tree, 1)
    assert {e.parent_id for e in picks} == {1, 2}  # repair attempts from the failed seeds
