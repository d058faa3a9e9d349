"""The search: its state (store, tree), its policies, fitness and termination, the stages of the
loop as plain functions, and a run's outputs. The loop itself is flows/tune_operator.py."""

from kevolve.search.config import SearchConfig, TuneSettings
from kevolve.search.policies import Expansion, Policy, make_policy
from kevolve.search.store import SearchStore
from kevolve.search.tree import Node, SearchTree

__all__ = ["Expansion", "Node", "Policy", "SearchConfig", "SearchStore", "SearchTree", "TuneSettings",
           "make_policy"]
