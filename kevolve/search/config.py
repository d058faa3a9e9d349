"""How a search is configured, and everything a run needs to be resumed by its id alone."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from kevolve.errors import KevolveError
from kevolve.synth.base import MEMORY_MODES
from kevolve.synth.llm.client import DEFAULT_LLM_URL

POLICIES = ("mcts", "evolutionary", "beam", "greedy")
BASELINES = ("fastest", "eager", "compile")


class ConfigError(KevolveError):
    exit_code = 2


@dataclass(frozen=True)
class SearchConfig:
    policy: str = "mcts"
    budget: int = 24  # candidate evaluations (re-measures of a new best are not counted)
    wall_time_s: float | None = None  # across every session of the run
    stall_patience: int | None = None  # stop after this many evaluations without a new best
    restart_patience: int = 8  # then expand once from the root ("restart") to leave a local optimum
    target_speedup: float | None = None  # stop once a promoted kernel is this much faster
    baseline: str = "fastest"  # the speedup is over: eager | compile (its faster mode) | fastest of all
    expansions_per_round: int = 2
    children_per_expansion: int = 2
    seeds: int = 3  # candidates asked for when expanding the root
    memory_mode: str = "auto"  # auto, or always one of inherit | siblings | restart
    rng_seed: int = 0
    exploration: float = 0.7  # MCTS: the UCT constant (values are normalised to [0, 1])
    widening: float = 0.5  # MCTS: a node takes another expansion while expansions <= visits ** widening
    islands: int = 2  # evolutionary
    tournament: int = 3  # evolutionary: contestants per selection
    migration_every: int = 3  # evolutionary: rounds between migrations of each island's best
    beam_width: int = 3  # beam; greedy is a beam of width 1 whatever this says
    max_barren_expansions: int = 2  # a parent whose expansions brought nothing new this often is closed
    noise: float = 0.03  # two timings closer than this (relative) are the same

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if self.baseline not in BASELINES:
            raise ConfigError(f"unknown baseline {self.baseline!r}; choose one of {', '.join(BASELINES)}")
        if self.memory_mode != "auto" and self.memory_mode not in MEMORY_MODES:
            raise ConfigError(f"unknown memory mode {self.memory_mode!r}; choose auto or one of "
                              f"{', '.join(MEMORY_MODES)}")
        positive = ("budget", "restart_patience", "expansions_per_round", "children_per_expansion", "seeds",
                    "islands", "tournament", "migration_every", "beam_width", "max_barren_expansions")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "SearchConfig":
        names = {f.name for f in dataclasses.fields(SearchConfig)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown search setting {unknown[0]!r}; known: {', '.join(sorted(names))}")
        return SearchConfig(**d)


@dataclass(frozen=True)
class TuneSettings:
    """A run's settings, stored with it: `kevolve tune --resume RUN_ID` needs nothing else."""

    spec: str  # path of the spec file
    target: str  # hardware target name
    search: SearchConfig
    synthesizer: str  # offline | llm
    llm_url: str = DEFAULT_LLM_URL
    llm_model: str | None = None  # None: the first model the endpoint lists
    llm_parallel: int = 4  # requests in flight at once
    llm_timeout_s: float = 300.0
    llm_retries: int = 2  # per request, with backoff, on connection errors, 408, 429 and 5xx
    llm_outage_retries: int = 1  # then the whole synthesis stage again (Prefect task retries) ...
    llm_outage_wait_s: float = 30.0  # ... after this long, for an endpoint that is restarting
    eval_workers: int | None = None  # None: the evaluator's default
    eval_timeout_s: float = 120.0
    infra_retries: int = 2  # an evaluation the infrastructure failed (GPU busy, a worker that would not start)
    knowledge: bool = True  # retrieve documents and skills, distil new skills

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["search"] = self.search.to_dict()
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "TuneSettings":
        d = dict(d)
        d["search"] = SearchConfig.from_dict(d.get("search") or {})
        names = {f.name for f in dataclasses.fields(TuneSettings)}
        return TuneSettings(**{k: v for k, v in d.items() if k in names})
