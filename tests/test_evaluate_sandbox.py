"""The worker's run-time defences, reached directly (past the static checks that would stop these
candidates first): file writes, sockets, processes, frame introspection, threads and patches are
caught as they happen; prints cannot corrupt the protocol; the parent never imports candidates."""

import subprocess
import sys

import pytest

from conftest import FIXTURES, REPO
from kevolve.evaluate.pool import WorkerPool
from kevolve.hardware import load_target
from kevolve.specs import resolve_spec

HONEST = (FIXTURES / "candidates" / "honest" / "gelu_tanh.py").read_text()
SPEC = resolve_spec("gelu_tanh")


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    pool = WorkerPool(load_target("cpu-interpreter"), tmp_path_factory.mktemp("sandbox-scratch"), workers=1)
    w = pool.worker(pool.slots[0])
    yield w
    pool.close()


def check(worker, name: str, prelude: str = "", body: str = "") -> dict:
    """Run the honest gelu_tanh with extra module-level lines and extra lines in its entry point."""
    code = HONEST.replace("import torch\n", f"import torch\n{prelude}\n", 1)
    code = code.replace("    x = x.contiguous()\n", "".join(f"    {ln}\n" for ln in body.splitlines())
                        + "    x = x.contiguous()\n")
    folder = worker.scratch / "candidates" / name
    folder.mkdir(parents=True)
    (folder / "candidate.py").write_text(code)
    reply = worker.request({"op": "check", "spec": str(SPEC.path), "path": str(folder / "candidate.py"),
                            "entry_point": "gelu_tanh"}, 60)
    assert reply.status == "ok" and reply.data["ok"], reply
    return reply.data


def failed(data: dict) -> tuple[str, str]:
    name, passed, detail = data["checks"][-1]
    assert not passed
    return name, detail


# Order matters: the later cases leave the worker in states that only a fresh worker would clear.
def test_prints_go_to_the_log_not_into_the_protocol(worker):
    data = check(worker, "prints", body="print('{\"ok\": false}')")
    assert data["outcome"] == "correct"
    assert '{"ok": false}' in worker.log_tail()


def test_writes_inside_its_own_folder_are_allowed(worker):
    data = check(worker, "own_folder", prelude="import os",
                 body="open(os.path.join(os.path.dirname(__file__), 'notes.txt'), 'w').close()")
    assert data["outcome"] == "correct"
    assert (worker.scratch / "candidates" / "own_folder" / "notes.txt").is_file()


def test_a_file_written_outside_is_blocked_and_rejected(worker, tmp_path):
    target = tmp_path / "planted.txt"
    data = check(worker, "writes", body=f"open({str(target)!r}, 'w').write('planted')")
    assert data["outcome"] == "rejected" and not data["reusable"]
    assert failed(data) == ("sandbox", f"file write outside the candidate's folder: {target}")
    assert not target.exists()


def test_a_swallowed_violation_is_still_reported(worker, tmp_path):
    body = f"try:\n    open({str(tmp_path / 'x')!r}, 'a')\nexcept OSError:\n    pass"
    data = check(worker, "swallowed", body=body)
    assert data["outcome"] == "rejected" and "file write outside" in failed(data)[1]


@pytest.mark.parametrize("name, prelude, body, words", [
    ("socket", "import socket", "socket.socket()", "network access (socket.__new__)"),
    ("system", "import os", "os.system('true')", "process control (os.system)"),
    ("popen", "import subprocess", "subprocess.run(['true'])", "process control (subprocess.Popen)"),
    ("frames", "import sys", "sys._getframe(1)", "introspection (sys._getframe)"),
    ("gc", "import gc", "gc.get_objects()", "introspection (gc.get_objects)"),
])
def test_forbidden_actions_are_caught_as_they_happen(worker, name, prelude, body, words):
    data = check(worker, name, prelude=prelude, body=body)
    assert data["outcome"] == "rejected"
    assert words in failed(data)[1]


def test_a_thread_left_running_is_rejected(worker):
    data = check(worker, "thread", prelude="import threading, time",
                 body="threading.Thread(target=time.sleep, args=(30,), daemon=True).start()")
    assert data["outcome"] == "rejected" and "left 1 thread(s) running" in failed(data)[1]


def test_a_patched_timer_is_rejected(worker):
    data = check(worker, "patch", prelude="torch.cuda.Event.elapsed_time = lambda self, end: 1e-6")
    assert data["outcome"] == "rejected" and "replaced torch.cuda.Event.elapsed_time" in failed(data)[1]


def test_the_parent_never_imports_candidate_code():
    # Evaluating in a fresh interpreter: the candidate's module-level code would print if imported.
    code = ("import sys\nfrom kevolve.evaluate.static_checks import static_checks\n"
            f"static_checks(open({str(FIXTURES / 'candidates' / 'honest' / 'softmax.py')!r}).read(), 'softmax')\n"
            "print(sorted(m for m in sys.modules if 'candidate' in m or 'softmax' in m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_packages_in_a_venv_are_not_taken_for_the_standard_library():
    # In a venv, sysconfig's platstdlib (venv/lib/python3.X) also holds site-packages: Triton's
    # compiler calling ptxas from there must count as Triton, not as the standard library.
    import torch
    import triton

    from kevolve.evaluate.sandbox import Sandbox

    box = Sandbox([], [torch, triton])
    box._stdlib = ("/venv/lib/python3.12/", "/usr/lib/python3.12/")
    box._site = ("/venv/lib/python3.12/site-packages/",)
    assert box.is_stdlib("/usr/lib/python3.12/subprocess.py")
    assert box.is_stdlib("/venv/lib/python3.12/os.py")
    assert not box.is_stdlib("/venv/lib/python3.12/site-packages/triton/backends/nvidia/driver.py")
