"""Orchestration against a real `prefect server start` (one per module): the tune_operator flow
with its tasks and artifacts, read back through the Prefect API; prefect.yaml deployed, the
model-registered event starting a run with the event's parameters, the cron deployment's
scheduled runs; GPU slots; evaluations fanned out over a local Dask cluster."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, run_cli
from prefectkit import free_port, prefect_server

pytestmark = pytest.mark.slow

SEARCH = {"budget": 3, "seeds": 2, "children_per_expansion": 1, "expansions_per_round": 1}


@pytest.fixture(scope="module")
def server_home(tmp_path_factory):
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture(scope="module")
def server(server_home):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with prefect_server(server_home) as url:
        before = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url  # subprocesses and Dask workers reach it too
        try:
            with temporary_settings({PREFECT_API_URL: url}):
                yield url
                drain_prefect()
        finally:
            if before is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = before


def drain_prefect() -> None:
    """Send what Prefect still holds (logs, events) while the server is up: at exit it would
    retry a server that is gone."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=20)


def api(call):
    """Run `call(client)` against the module's server and return what it returns."""
    from prefect.client.orchestration import get_client

    async def run():
        async with get_client() as client:
            return await call(client)

    return asyncio.run(run())


def artifacts(keys: list[str]) -> dict:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    found = api(lambda c: c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))))
    return {a.key: a for a in found}


def test_tune_operator_runs_every_stage_as_a_task_and_publishes_its_artifacts(server):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.tune_operator import tune_operator

    state = tune_operator(spec="softmax", target="cpu-interpreter", offline=True, knowledge=False,
                          search=SEARCH, return_state=True)
    summary = state.result()
    flow_run_id = state.state_details.flow_run_id
    run = api(lambda c: c.read_flow_run(flow_run_id))
    assert run.state.is_completed() and run.name == "tune softmax on cpu-interpreter"

    tasks = api(lambda c: c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))))
    names = [t.name for t in tasks]
    assert all(t.state.is_completed() for t in tasks), [(t.name, t.state.type) for t in tasks]
    for stage in ("select", "retrieve", "synthesize", "remeasure"):
        assert any(n.startswith(stage) for n in names), (stage, names)
    assert sum(n.startswith("evaluate-") for n in names) == summary["evaluations"] == 3

    base = "tune-softmax-cpu-interpreter"
    found = artifacts([f"{base}-{what}" for what in ("progress", "leaderboard", "best-kernel", "speedup")])
    assert set(found) == {f"{base}-progress", f"{base}-leaderboard", f"{base}-best-kernel", f"{base}-speedup"}
    assert all(a.flow_run_id == flow_run_id for a in found.values())
    assert found[f"{base}-progress"].type == "progress" and float(found[f"{base}-progress"].data) == 100.0
    board = json.loads(found[f"{base}-leaderboard"].data)
    assert len(board) == summary["correct"] >= 1 and board[0]["node"] == summary["best_node"]
    report = found[f"{base}-best-kernel"].data
    assert f"from the reference to node #{summary['best_node']}" in report and "@triton.jit" in report
    assert "- diagnosis:" in report or "interpreter" in report
    plot = found[f"{base}-speedup"].data
    assert "data:image/svg+xml;base64," in plot and plot.count("\n| ") == summary["evaluations"] + 1


def slot_requests(monkeypatch) -> list[tuple[float, int]]:
    """(when, status) of each request for a GPU slot this process makes, from now on."""
    import httpx

    asked: list[tuple[float, int]] = []

    def record(request, response):
        if request.url.path.endswith("/concurrency_limits/increment-with-lease"):
            asked.append((time.monotonic(), response.status_code))
        return response

    sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

    def send(self, request, *args, **kwargs):
        return record(request, sync_send(self, request, *args, **kwargs))

    async def asend(self, request, *args, **kwargs):
        return record(request, await async_send(self, request, *args, **kwargs))

    monkeypatch.setattr(httpx.Client, "send", send)  # the client of either kind
    monkeypatch.setattr(httpx.AsyncClient, "send", asend)
    return asked


def test_gpu_slots_keep_two_timings_off_one_gpu(server, monkeypatch):
    from prefect.client.orchestration import get_client

    from tasks.gpu_slots import gpu_slot, limit_name, wait_for_releases

    asked = slot_requests(monkeypatch)
    held: list[tuple[str, float, float]] = []

    def time_on(gpu: str, who: str) -> None:
        with gpu_slot(gpu):
            start = time.monotonic()
            time.sleep(0.6)
            held.append((gpu + who, start, time.monotonic()))

    def thread(gpu: str, who: str) -> threading.Thread:  # with this test's settings (the server)
        return threading.Thread(target=contextvars.copy_context().run, args=(time_on, gpu, who))

    threads = [thread("testhost-3", "a"), thread("testhost-3", "b"), thread("testhost-4", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    on3 = sorted((s, e) for name, s, e in held if name.startswith("testhost-3"))
    assert len(on3) == 2 and on3[0][1] <= on3[1][0]  # one after the other
    on4 = next((s, e) for name, s, e in held if name.startswith("testhost-4"))
    assert on4[0] < on3[0][1]  # another GPU is not held up
    # Threads of one process queue here: the server never turns one away (423, then a wait of
    # its Retry-After) while another thread of the same process holds the slot, and the second
    # timing on testhost-3 is handed the first one's lease: one request per GPU.
    statuses = [status for _, status in asked]
    assert statuses.count(200) == 2 and set(statuses) <= {200, 503}, statuses
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(limit_name("testhost-3")).limit == 1
        wait_for_releases()  # once unused for LINGER_S, each lease goes back to the server
        for gpu in ("testhost-3", "testhost-4"):
            assert client.read_global_concurrency_limit_by_name(limit_name(gpu)).active_slots == 0
    assert gpu_slot(None).__enter__() is None  # the CPU holds nothing


def test_a_gpu_slot_is_asked_for_again_soon_when_the_server_database_is_busy(server, server_home, monkeypatch):
    """A local server (SQLite) answers 503 when another write holds its database; Prefect's
    client would ask again only after about 2 s, a stall on every timing that meets one."""
    import sqlite3

    from tasks.gpu_slots import ensure_limit, gpu_slot, limit_name

    ensure_limit(limit_name("testhost-5"))
    asked = slot_requests(monkeypatch)
    database = sqlite3.connect(server_home / "prefect.db", isolation_level=None, check_same_thread=False)
    database.execute("BEGIN IMMEDIATE")  # another writer holds the database

    def commit_after_a_refusal():
        deadline = time.monotonic() + 30
        while not asked and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # while the slot is asked for again
        database.execute("COMMIT")

    writer = threading.Thread(target=commit_after_a_refusal)
    writer.start()
    try:
        with gpu_slot("testhost-5"):
            pass
    finally:
        writer.join()
        database.close()
    statuses = [status for _, status in asked]
    assert statuses[0] == 503 and statuses[-1] == 200 and set(statuses) == {503, 200}, statuses
    waits = [later - earlier for (earlier, _), (later, _) in zip(asked, asked[1:])]
    assert max(waits) < 1.0, waits  # asked again within RETRY_AFTER_S (0.05 s) and a round trip


def test_deployments_the_model_registered_event_and_the_nightly_schedule(server, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": server, "PREFECT_HOME": str(tmp_path)}
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    subprocess.run([*prefect, "work-pool", "create", "kevolve-gpu", "--type", "process"], env=env, cwd=REPO,
                   check=True, capture_output=True, timeout=120)
    deployed = subprocess.run([*prefect, "deploy", "--all"], env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=240)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

    registered = run_cli("model", "register", "LlamaConfig", "--target", "h100-sxm", "--top", "2")
    assert registered.returncode == 0 and "kevolve.model.registered" in registered.stdout, registered.stderr

    deployments = {d.name: d for d in api(lambda c: c.read_deployments())}
    assert {"nightly-suite", "tune-on-new-architecture", "ingest-knowledge"} <= set(deployments)
    assert deployments["nightly-suite"].schedules[0].schedule.cron == "0 2 * * *"

    def runs_of(name):
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        wanted = DeploymentFilter(id=DeploymentFilterId(any_=[deployments[name].id]))
        return api(lambda c: c.read_flow_runs(deployment_filter=wanted))

    deadline = time.monotonic() + 60
    while not (triggered := runs_of("tune-on-new-architecture")) and time.monotonic() < deadline:
        time.sleep(1)
    assert [r.parameters for r in triggered] == [{"config": "LlamaConfig", "target": "h100-sxm", "top": 2}]
    nightly = runs_of("nightly-suite")
    assert nightly and all(r.state.is_scheduled() and r.expected_start_time.hour == 2 for r in nightly)

    no_server = run_cli("model", "register", "LlamaConfig", env_overrides={"PREFECT_API_URL": ""})
    assert no_server.returncode == 1 and "set PREFECT_API_URL" in no_server.stderr and "Traceback" not in no_server.stderr
    down = run_cli("model", "register", "LlamaConfig",
                   env_overrides={"PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"})
    assert down.returncode == 1 and not down.stdout  # never "registered" for an event that went nowhere
    assert down.stderr.strip().splitlines() == [down.stderr.strip()] and "no Prefect server answers" in down.stderr


def test_evaluations_fan_out_over_a_local_dask_cluster(server):
    from distributed import Client, LocalCluster

    from flows.runners import evaluation_runner
    from flows.tune_operator import tune_operator
    from kevolve.evaluate.shared import evaluations_here

    os.environ.setdefault("PYTHONPATH", str(REPO))
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        on_dask = tune_operator.with_options(task_runner=evaluation_runner(cluster.scheduler_address))
        summary = on_dask(spec="gelu_tanh", target="cpu-interpreter", offline=True, knowledge=False,
                          search={**SEARCH, "budget": 4})
        per_worker = client.run(evaluations_here)
    assert summary["evaluations"] == 4 and summary["correct"] >= 1
    assert sum(per_worker.values()) == 4, per_worker  # every evaluation ran in a Dask worker
    assert evaluations_here() == 0  # none in this process (the re-measure of the best is not a fan-out)


def test_tune_suite_tunes_each_spec_and_goes_on_past_one_that_fails(server):
    from flows.tune_suite import tune_suite

    rows = tune_suite(specs=["softmax", "no_such_spec"], target="cpu-interpreter", offline=True, knowledge=False,
                      search=SEARCH)
    assert [(r["spec"], r["status"]) for r in rows] == [("softmax", "completed"), ("no_such_spec", "failed")]
    assert rows[0]["evaluations"] == 3 and "no_such_spec" in rows[1]["error"]
    table = artifacts(["tune-suite-cpu-interpreter"])["tune-suite-cpu-interpreter"]
    assert [r["status"] for r in json.loads(table.data)] == ["completed", "failed"]


def test_ingest_knowledge_indexes_the_corpus_and_says_what_changed(server):
    from flows.ingest_knowledge import ingest_knowledge

    report = ingest_knowledge(embedding="hashing")
    assert report["added"] and report["chunks_written"] > 0
    text = artifacts(["knowledge-ingest"])["knowledge-ingest"].data
    assert f"- added: {report['added'][0]}" in text
    assert ingest_knowledge(embedding="hashing")["unchanged"]  # nothing re-embedded the second time


def test_the_prefect_overhead_bench_runs_on_the_cpu(server, tmp_path, monkeypatch):
    """The bench's path, not its figures: interpreter timings say nothing about a GPU."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["prefect_overhead.py", "--target", "cpu-interpreter", "--budget", "2",
                                      "--out", str(tmp_path)])
    bench = runpy.run_path(str(REPO / "bench" / "prefect_overhead.py"))
    assert bench["main"]() == 0
    result = json.loads((tmp_path / "prefect_overhead.json").read_text())
    plain, orchestrated = result["runs"]
    assert plain["summary"]["evaluations"] == orchestrated["summary"]["evaluations"] == 2
    assert {"synthesize", "select", "evaluate (per candidate)"} <= set(result["comparison"]["stages"])
    assert result["comparison"]["rounds"] and "Prefect's share" in (tmp_path / "prefect_overhead.md").read_text()


def test_the_prefect_overhead_bench_with_fake_evaluations_compares_every_round(server, tmp_path, monkeypatch):
    """Evaluations that sleep, verdicts by code hash: both modes evaluate the same candidates in
    every round, read back from each run's tree."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["prefect_overhead.py", "--fake-evaluation-s", "0.02", "--budget", "20",
                                      "--out", str(tmp_path)])
    bench = runpy.run_path(str(REPO / "bench" / "prefect_overhead.py"))
    assert bench["main"]() == 0
    c = json.loads((tmp_path / "prefect_overhead.json").read_text())["comparison"]
    assert len(c["rounds"]) >= 3 and all(r["same_candidates"] for r in c["rounds"])
    assert c["matched_rounds"] == [r["round"] for r in c["rounds"][1:]] and c["share_matched_rounds"] is not None
    assert "fake evaluations of 0.02 s" in (tmp_path / "prefect_overhead.md").read_text()
    # Measured inside each run too: the engine's functions were timed inside the tasks (the flow's
    # tasks cost something), and the clock came off the engine afterwards.
    assert 0 < c["direct_share"]["prefect"]["after_first_round"] < 1
    assert all(r["orchestration_s"] is not None for r in c["rounds"])
    from kevolve.search import stages
    assert not hasattr(stages.evaluate, "engine_clock")
