"""The search state in SQLite, fitness, termination, and a run's outputs."""

from __future__ import annotations

import pickle
import sqlite3
import subprocess
import sys
from dataclasses import replace

import pytest

from kevolve.candidate import Candidate, Origin, Transform
from kevolve.evaluate.result import Baselines, Check, Diagnosis, Evaluation, Outcome, Timing
from kevolve.search.config import ConfigError, SearchConfig, TuneSettings
from kevolve.search.fitness import confirmed_fitness, fitness, speedup
from kevolve.search.store import ExpansionRow, RunBusy, RunNotFound, SearchStore
from kevolve.search.termination import Progress, stop_reason
from kevolve.search.tree import SearchTree
from kevolve.synth.llm.client import Usage

CODE = '''
import triton


def relu(x):
    """Docstring."""
    return x  # a comment
'''


def timing(ms: float, interpreter: bool = False, spread: float = 0.01) -> Timing:
    return Timing(ms, ms * (1 - spread / 2), ms * (1 + spread / 2), ms * 0.9, 100, "cuda events", interpreter)


def correct(ms: float, eager_ms: float = 2.0, compile_ms: float | None = None, interpreter=False) -> Evaluation:
    baselines = Baselines(eager=timing(eager_ms, interpreter),
                          compile_default=timing(compile_ms, interpreter) if compile_ms else None)
    return Evaluation("h", "relu", "h100-sxm", "H100", {"N": 8}, Outcome.CORRECT,
                      (Check("trial[seed=1]", True),), timing=timing(ms, interpreter), baselines=baselines,
                      diagnosis=Diagnosis("memory", "reads each byte once", ("wider vectors",), fraction_of_floor=0.7))


def candidate(code: str = CODE, note: str = "") -> Candidate:
    return Candidate(code, "relu", Origin("offline", family="pointwise", config={"BLOCK": 1024},
                                           transforms=(Transform("num_warps", 8),), note=note))


@pytest.fixture
def store(tmp_path):
    with SearchStore(tmp_path / "kevolve.db") as s:
        yield s


def settings() -> dict:
    return TuneSettings("specs/relu.yaml", "h100-sxm", SearchConfig(), "offline").to_dict()


def test_nodes_are_unique_by_normalised_code_and_evaluations_round_trip(store):
    store.create_run("r1", "relu", "h100-sxm", settings())
    first = store.add_node("r1", candidate(), parent_id=None, memory_mode="inherit", group=0, round=0)
    # the same code with other comments and docstrings is the same candidate
    same = CODE.replace("# a comment", "# another").replace('"""Docstring."""', '"""Other."""')
    assert store.add_node("r1", candidate(same), parent_id=None, memory_mode="inherit", group=0, round=0) is None
    assert store.has_code("r1", candidate(same).code_hash)
    child = store.add_node("r1", candidate(CODE + "\ny = 1\n"), parent_id=first, memory_mode="siblings", group=1,
                           round=1)
    ev = correct(1.0)
    store.record_evaluation("r1", first, "first", 1, ev, 2.0)
    with pytest.raises(sqlite3.IntegrityError):  # an evaluation is never recorded twice
        store.record_evaluation("r1", first, "first", 1, ev, 2.0)
    nodes = store.nodes("r1")
    assert [n.id for n in nodes] == [first, child]
    assert nodes[0].candidate == candidate()  # origin, transforms and config survive the trip
    assert nodes[1].parent_id == first and nodes[1].group == 1 and nodes[1].memory_mode == "siblings"
    (row,) = store.evaluations("r1")
    assert row.evaluation == ev and row.fitness == 2.0 and row.session == 1
    # another run may hold the same code
    store.create_run("r2", "relu", "h100-sxm", settings())
    assert store.add_node("r2", candidate(), parent_id=None, memory_mode="inherit", group=0, round=0) is not None


def test_a_candidates_code_hash_is_made_once_and_is_no_part_of_its_identity(monkeypatch):
    import kevolve.candidate as made_here

    real, made = made_here.code_hash, []
    monkeypatch.setattr(made_here, "code_hash", lambda code: made.append(code) or real(code))
    first = candidate()
    assert first.code_hash == first.code_hash == real(CODE) and made == [CODE]  # parsing a kernel takes ms
    assert first == candidate() and pickle.loads(pickle.dumps(first)) == first
    other = replace(first, code=CODE + "\ny = 1\n")
    assert other.code_hash == real(other.code) != first.code_hash


def test_one_writer_per_run(store, tmp_path):
    store.create_run("r1", "relu", "h100-sxm", settings())
    assert store.claim("r1") == 1
    with pytest.raises(RunBusy, match="a run named 'r1' exists already"):
        store.create_run("r1", "relu", "h100-sxm", settings())
    # another live process holding the run: refused; once it is gone, the run can be claimed
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with sqlite3.connect(tmp_path / "kevolve.db") as db:
            db.execute("UPDATE runs SET owner_pid = ? WHERE id = 'r1'", (other.pid,))
        with pytest.raises(RunBusy, match=f"being written by process {other.pid}"):
            store.claim("r1")
    finally:
        other.kill()
        other.wait()
    assert store.claim("r1") == 2  # a second session
    store.release("r1", "stopped", "interrupted")
    run = store.run("r1")
    assert (run.status, run.finished_reason, run.sessions) == ("stopped", "interrupted", 2)
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        store.run("nope")


def test_usage_expansions_and_the_tree_rebuilt_from_rows(store):
    store.create_run("r1", "relu", "h100-sxm", settings())
    store.record_llm_usage("r1", 1, "m", Usage(2, 1, 300, 120))
    store.record_llm_usage("r1", 2, "m", Usage(1, 0, 100, 40))
    assert store.llm_usage("r1") == Usage(3, 1, 400, 160)
    a = store.add_node("r1", candidate(), parent_id=None, memory_mode="inherit", group=0, round=0)
    b = store.add_node("r1", candidate(CODE + "\nb = 1\n"), parent_id=a, memory_mode="inherit", group=0, round=1)
    c = store.add_node("r1", candidate(CODE + "\nc = 1\n"), parent_id=a, memory_mode="inherit", group=0, round=1)
    store.record_expansion("r1", ExpansionRow(1, a, "inherit", 0, 2, 3, 2))
    store.record_evaluation("r1", a, "first", 1, correct(1.0), 2.0)
    store.record_evaluation("r1", b, "first", 1, correct(0.5), 4.0)
    store.record_evaluation("r1", b, "remeasure", 1, correct(0.6), 3.3)
    tree = SearchTree.from_rows(store.nodes("r1"), store.evaluations("r1"), store.expansions("r1"), "fastest")
    assert [n.id for n in tree.pending()] == [c]  # in flight: no evaluation yet
    assert tree.get(b).fitness == 3.3 and tree.get(b).confirmed  # the re-measured figure counts
    assert tree.best().id == b and tree.best(confirmed_only=True).id == b
    assert [n.id for n in tree.path(b)] == [a, b]
    assert {n.id for n in tree.children(a)} == {b, c}
    assert tree.expansions(a)[0].proposed == 3 and tree.barren(a) == 0
    attempt = tree.attempt(tree.get(b))
    assert attempt.speedup == pytest.approx(4.0) and attempt.diagnosis.bound == "memory"


def test_fitness_gates_on_correctness_and_picks_the_baseline():
    ev = correct(1.0, eager_ms=2.0, compile_ms=1.5)
    assert fitness(ev, "eager") == pytest.approx(2.0)
    assert fitness(ev, "compile") == pytest.approx(1.5)
    assert fitness(ev, "fastest") == pytest.approx(1.5)
    wrong = Evaluation("h", "relu", "t", "d", {}, Outcome.WRONG, timing=timing(0.1))
    assert fitness(wrong, "fastest") == 0.0 and speedup(wrong, "fastest") is None
    # the interpreter has no kernel speed: correct scores 1, whatever the wall clock says
    interp = correct(50.0, eager_ms=1.0, interpreter=True)
    assert fitness(interp, "fastest") == 1.0 and speedup(interp, "fastest") is None
    # an evaluation without baselines uses the run's
    bare = Evaluation("h", "relu", "t", "d", {}, Outcome.CORRECT, timing=timing(1.0))
    assert fitness(bare, "eager", Baselines(eager=timing(3.0))) == pytest.approx(3.0)


def test_a_remeasure_out_of_noise_keeps_the_slower_figure():
    first = correct(1.0, eager_ms=2.0)
    assert confirmed_fitness(first, correct(1.01, eager_ms=2.0), "eager", 0.03) == pytest.approx(2.0)
    assert confirmed_fitness(first, correct(1.25, eager_ms=2.0), "eager", 0.03) == pytest.approx(1.6)
    # a remeasure that came out faster is noise too: the first (slower) figure stands
    assert confirmed_fitness(correct(1.25, eager_ms=2.0), first, "eager", 0.03) == pytest.approx(1.6)
    failed = Evaluation("h", "relu", "t", "d", {}, Outcome.WRONG)
    assert confirmed_fitness(first, failed, "eager", 0.03) == 0.0


def test_termination_reasons():
    config = SearchConfig(budget=10, wall_time_s=60, stall_patience=4, target_speedup=2.0)
    assert stop_reason(config, Progress(3, 1.0, 0, 1.2)) is None
    assert "target speedup" in stop_reason(config, Progress(3, 1.0, 0, 2.5))
    assert "budget spent (10 of 10)" in stop_reason(config, Progress(10, 1.0, 0, 1.0))
    assert "wall time" in stop_reason(config, Progress(3, 61.0, 0, 1.0))
    assert "stalled: 4 evaluations" in stop_reason(config, Progress(8, 1.0, 4, 1.0))
    with pytest.raises(ConfigError, match="unknown policy 'annealing'"):
        SearchConfig(policy="annealing")
    with pytest.raises(ConfigError, match="budget must be at least 1"):
        SearchConfig.from_dict({"budget": 0})
    with pytest.raises(ConfigError, match="unknown search setting 'budgett'"):
        SearchConfig.from_dict({"budgett": 3})
    again = TuneSettings.from_dict(TuneSettings("s.yaml", "h100-sxm", SearchConfig(policy="beam"), "llm").to_dict())
    assert again.search.policy == "beam" and again.synthesizer == "llm"
