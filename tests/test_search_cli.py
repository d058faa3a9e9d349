"""`kevolve tune` and `kevolve llm` as a user runs them, in a fresh process; a run killed with
SIGKILL mid-search and resumed. (`kevolve tune` through the Prefect flow: test_flow_tune.py.)"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from searchkit import FakeOpenAI, Reply, fenced, free_url, softmax_kernel

pytestmark = pytest.mark.slow


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("KEVOLVE_LLM_URL", free_url())  # no LLM answers at the default address
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_an_llm_named_but_unreachable_is_one_clear_line(env):
    url = free_url()
    result = run_cli("tune", "softmax", "--llm", url, "--budget", "2", "--no-prefect")
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"kevolve: error: cannot reach LLM at {url}: no answer to GET /models; start one with "
        "`kevolve llm serve MODEL` or run with --offline"]


def evaluated(db: Path, run: str) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        try:
            return con.execute("SELECT COUNT(*) FROM evaluations WHERE run_id = ? AND kind = 'first'",
                               (run,)).fetchone()[0]
        except sqlite3.OperationalError:  # tables not made yet
            return 0


def snapshot(db: Path, run: str):
    with sqlite3.connect(db) as con:
        nodes = dict(con.execute("SELECT id, code_hash FROM nodes WHERE run_id = ?", (run,)).fetchall())
        attempts = dict(con.execute("SELECT id, eval_attempts FROM nodes WHERE run_id = ?", (run,)).fetchall())
        firsts = con.execute("SELECT node_id, session, evaluation_json FROM evaluations "
                             "WHERE run_id = ? AND kind = 'first'", (run,)).fetchall()
        status = con.execute("SELECT status, sessions FROM runs WHERE id = ?", (run,)).fetchone()
    return nodes, attempts, firsts, status


def test_sigkill_mid_search_then_the_same_command_resumes(env, tmp_path):
    kernels = [softmax_kernel(rows=r, warps=w) for r in (1, 2, 4) for w in (1, 2, 4, 8)]
    db = Path(os.environ["KEVOLVE_HOME"]) / "kevolve.db"
    with FakeOpenAI(lambda body, i: Reply(fenced(kernels[i % len(kernels)]))) as server:
        # without Prefect, whose flow the test above runs: the state is the engine's either way
        command = [sys.executable, "-m", "kevolve", "tune", "softmax", "--llm", server.url, "--budget", "6",
                   "--run-name", "killed", "--no-knowledge", "--expansions", "2", "--children", "2",
                   "--no-prefect"]
        # killed with its whole process group, as a power cut would (the harness's workers, in
        # sessions of their own, end when their parent's pipe closes; they never write the store)
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        deadline = time.monotonic() + 240
        while evaluated(db, "killed") < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        nodes_before, _, firsts_before, status = snapshot(db, "killed")
        assert status == ("running", 1)  # killed: it never had the chance to say so
        assert 2 <= len(firsts_before) < 6
        in_flight = set(nodes_before) - {n for n, _, _ in firsts_before}

        resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed (session 2)" in resumed.stderr
    nodes, attempts, firsts, status = snapshot(db, "killed")
    assert status == ("finished", 2)
    # every candidate evaluated exactly once: one first evaluation per node, no hash twice
    assert sorted(n for n, _, _ in firsts) == sorted(nodes) and len(nodes) == 6
    assert len(set(nodes.values())) == len(nodes)
    # nothing lost: what was evaluated before the kill is there unchanged, from session 1
    before = {n: (s, ev) for n, s, ev in firsts_before}
    for node, session, ev in firsts:
        if node in before:
            assert (session, ev) == before[node]
        else:
            assert session == 2
    # what was in flight was started twice and evaluated once; everything else started once
    for node, count in attempts.items():
        assert count == (2 if node in in_flight else 1), (node, in_flight)


def test_llm_check_reports_the_endpoint_and_model(env):
    with FakeOpenAI(lambda body, i: Reply("ready", prompt_tokens=9, completion_tokens=1),
                    models=("coder-x", "coder-y")) as server:
        result = run_cli("llm", "check", "--llm", server.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"endpoint   {server.url}"
    assert lines[1] == "models     coder-x, coder-y" and lines[2] == "model      coder-x"
    assert lines[3].startswith("chat       ok in ") and lines[3].endswith("'ready'")
    assert lines[4] == "tokens     9 prompt + 1 completion"
    down = run_cli("llm", "check", "--llm", free_url())
    assert down.returncode == 3 and "cannot reach LLM at" in down.stderr and "Traceback" not in down.stderr


def test_llm_serve_starts_vllm_where_installed_and_says_how_to_get_it_where_not(tmp_path, monkeypatch):
    from kevolve.cli.llm_cmd import VLLMMissing, serve_command

    result = run_cli("llm", "serve", "some/model")
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert "pip install 'kernel-evolve[vllm]'" in result.stderr and "--offline" in result.stderr
    with pytest.raises(VLLMMissing):
        serve_command("m", "127.0.0.1", 8000, [])
    (tmp_path / "vllm").mkdir()  # an importable vllm, as on a GPU machine
    (tmp_path / "vllm" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no `vllm` executable on PATH: run the module
    assert serve_command("Qwen/Qwen2.5-Coder-7B", "0.0.0.0", 8001, ["--max-model-len", "8192"]) == [
        sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", "Qwen/Qwen2.5-Coder-7B", "--host", "0.0.0.0",
        "--port", "8001", "--max-model-len", "8192"]
