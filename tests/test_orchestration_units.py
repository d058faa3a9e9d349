"""The orchestration's pieces without a server: the runner chosen by configuration, what a task
retries, artifact keys, the harness's timing guard and verdict key, and the evaluator's recipe."""

from __future__ import annotations

import pickle
from contextlib import contextmanager

import pytest

from kevolve.candidate import Candidate, Origin
from kevolve.errors import GPUBusy, KevolveError, LLMUnavailable
from kevolve.evaluate.pool import WorkerError
from searchkit import softmax_kernel, unnormalised_softmax

MANUAL = Origin("manual")


def test_the_task_runner_is_chosen_by_configuration(monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.runners import evaluation_runner

    monkeypatch.delenv("KEVOLVE_TASK_RUNNER", raising=False)
    assert isinstance(evaluation_runner(), ThreadPoolTaskRunner)
    monkeypatch.setenv("KEVOLVE_TASK_RUNNER", "tcp://gpu-scheduler:8786")
    runner = evaluation_runner()
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://gpu-scheduler:8786"
    assert isinstance(evaluation_runner("dask"), DaskTaskRunner)
    with pytest.raises(KevolveError, match="KEVOLVE_TASK_RUNNER='ray' is not a task runner: use threads, dask"):
        evaluation_runner("ray")


class Finished:
    def __init__(self, error: BaseException | None):
        self.error = error

    def result(self):
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize("error, retried", [
    (LLMUnavailable("endpoint down"), True), (GPUBusy("gpu-h-0 busy"), True), (WorkerError("no worker"), True),
    (ValueError("a kernel's own bug"), False), (None, False)])
def test_tasks_retry_the_infrastructure_never_a_kernel(error, retried):
    from tasks.retry import infrastructure_failure

    assert infrastructure_failure(None, None, Finished(error)) is retried


def test_artifact_keys_stay_the_same_for_an_operator_on_a_target():
    from flows.monitoring import artifact_key

    assert artifact_key("rmsnorm_bf16_M8192", "h100-sxm", "leaderboard") == "tune-rmsnorm-bf16-m8192-h100-sxm-leaderboard"
    assert artifact_key("x" * 200, "h100-sxm", "progress").endswith("-progress")
    assert len(artifact_key("x" * 200, "h100-sxm", "progress")) == 80 + len("-progress")
    # Prefect takes lowercase letters, digits and dashes only
    assert artifact_key("Softmax (fp16)", "h100-sxm", "speedup") == "tune-softmax-fp16-h100-sxm-speedup"


def test_gpu_limit_names_are_made_of_what_prefect_takes():
    from tasks.gpu_slots import limit_name

    assert limit_name("GPU-Host.local-0") == "gpu-gpu-host-local-0"


def test_the_harness_holds_the_timing_guard_around_each_timing_and_keys_its_verdicts():
    from kevolve.evaluate.evaluator import Evaluator
    from kevolve.evaluate.shared import EvaluatorRecipe
    from kevolve.hardware import load_target
    from kevolve.specs import resolve_spec
    from tasks.gpu_slots import gpu_slot

    held: list[str | None] = []

    @contextmanager
    def guard(gpu):
        held.append(gpu)
        yield

    spec, target = resolve_spec("softmax"), load_target("cpu-interpreter")
    honest = Candidate(softmax_kernel(), "softmax", MANUAL)
    wrong = Candidate(unnormalised_softmax(), "softmax", MANUAL)
    with Evaluator(spec, target, workers=1, baselines=False, timing_guard=guard) as evaluator:
        results = evaluator.evaluate([honest, wrong])
        assert [r.outcome.value for r in results] == ["correct", "wrong"]
        assert held == [None]  # the correct one was timed, once, on the CPU (no GPU to name)
        key = evaluator.cache_key(honest)
        assert key == evaluator.cache_key(Candidate(softmax_kernel(), "softmax", MANUAL))
        assert key != evaluator.cache_key(wrong)
    with Evaluator(spec, target, workers=1, baselines=False, timeout_s=5) as stricter:
        assert stricter.cache_key(honest) != key  # another judge, another verdict

    recipe = EvaluatorRecipe(str(spec.path), target.name, workers=1, baselines=False, timing_guard=gpu_slot)
    assert pickle.loads(pickle.dumps(recipe)) == recipe  # it travels to Dask workers
    assert recipe.cache_key(honest) == key  # a verdict found on a Dask worker is found from threads too


def test_a_gpu_slot_passes_from_timing_to_timing_then_goes_back(monkeypatch):
    """No server: the lease calls recorded. A lease is handed to the next timing of the process
    while it comes within LINGER_S and until HAND_OVER_S, and given back in the background."""
    import uuid

    import tasks.gpu_slots as slots

    taken, given_back = [], []

    class Client:
        def release_concurrency_slots_with_lease(self, lease_id):
            given_back.append(lease_id)

    def lease(client, name, deadline):
        taken.append(uuid.uuid4())
        return taken[-1]

    monkeypatch.setattr(slots, "_client", Client)
    monkeypatch.setattr(slots, "_lease", lease)
    monkeypatch.setattr(slots, "LINGER_S", 0.3)
    for _ in range(3):
        with slots.gpu_slot("unithost-0"):
            pass
    assert len(taken) == 1 and given_back == []  # one lease for the three timings, kept a while
    slots.wait_for_releases()
    assert given_back == taken  # unused for LINGER_S: back with the server

    monkeypatch.setattr(slots, "LINGER_S", 30.0)
    monkeypatch.setattr(slots, "HAND_OVER_S", 0.0)  # held long enough: given back at once, for others
    with slots.gpu_slot("unithost-0"):
        pass
    slots.wait_for_releases(timeout_s=5)
    assert len(taken) == 2 and given_back == taken

    monkeypatch.setattr(slots, "HAND_OVER_S", 10.0)
    monkeypatch.setattr(slots, "LINGER_S", 0.0)  # a lease per timing
    for _ in range(2):
        with slots.gpu_slot("unithost-0"):
            pass
    slots.wait_for_releases()
    assert len(taken) == 4 and given_back == taken


def test_the_overhead_bench_heads_with_the_rounds_both_modes_spent_on_the_same_candidates():
    import runpy

    from conftest import REPO

    bench = runpy.run_path(str(REPO / "bench" / "prefect_overhead.py"))

    def run(walls, work):
        rounds = [{"wall_s": w, "evaluations": len(e), "evaluated": e, "remeasured": r,
                   "phases_s": {"evaluation": 0.9 * w, "check": 0.5 * w}} for w, (e, r) in zip(walls, work)]
        return {"rounds": rounds, "stages": {}, "total_s": sum(walls) + 1, "in_rounds_s": sum(walls)}

    same = [(["a", "b"], []), (["c"], ["c"]), (["d", "e"], []), (["f"], [])]
    parted = [(["a", "b"], []), (["c"], ["c"]), (["d", "x"], []), (["f"], ["f"])]
    c = bench["compare"](run([5.0, 1.0, 9.0, 1.0], same), run([4.0, 0.9, 3.0, 0.8], parted))
    assert c["matched_rounds"] == [2]  # not the first, nor rounds that evaluated or re-measured others
    assert c["share_matched_rounds"] == pytest.approx(0.1)
    assert c["share_after_first_round"] == pytest.approx((11.0 - 4.7) / 11.0)
    text = bench["markdown"]({"comparison": c, "spec": "softmax", "device": "gpu", "budget": 8, "policy": "mcts",
                              "prefect_version": "3"})
    assert "same candidates: 2): 10.0%" in text and "| 3 | 2/2 | no |" in text
    # the phases of the matched round alone: where its extra time went
    assert c["matched_phases_s"]["check"] == pytest.approx({"prefect": 0.5, "plain": 0.45})
    assert "| evaluation | 0.900 | 0.810 | +0.090 |" in text and "| check | 0.500 | 0.450 | +0.050 |" in text


def test_the_overhead_bench_counts_only_the_time_no_engine_work_filled():
    import runpy

    from conftest import REPO

    bench = runpy.run_path(str(REPO / "bench" / "prefect_overhead.py"))
    # A select task of 10 ms whose function ran 2 ms; a fan-out from 20 to 50 in which two
    # evaluations ran 21-40 and 30-45, and the loop recorded a result 44-46; a call outside the window.
    loop = [("select", 0.0, 10.0), ("evaluate_all", 20.0, 50.0), ("select", 100.0, 110.0)]
    engine = [("select", 4.0, 6.0), ("evaluate", 21.0, 40.0), ("evaluate", 30.0, 45.0), ("select", 101.0, 109.0)]
    cost = bench["orchestration_s"](loop, [(44.0, 46.0)], engine, 0.0, 60.0)
    assert cost == {"stage_calls_s": 40.0, "orchestration_s": pytest.approx(8.0 + 1.0 + 4.0)}
    assert bench["union_s"]([(1.0, 3.0), (2.0, 5.0), (7.0, 20.0)], 0.0, 10.0) == pytest.approx(7.0)
    # intervals wholly outside the window, before or after it, add nothing
    assert bench["union_s"]([(-5.0, -1.0), (2.0, 4.0), (12.0, 30.0)], 0.0, 10.0) == pytest.approx(2.0)
    later = engine + [("evaluate", 70.0, 80.0)]  # the next round's evaluation
    assert bench["orchestration_s"](loop, [(44.0, 46.0)], later, 0.0, 60.0) == cost
