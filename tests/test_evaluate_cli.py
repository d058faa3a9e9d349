"""`kevolve eval` as a user runs it."""

import json

import pytest

from conftest import run_cli
from kevolve.evaluate.result import Evaluation, Outcome

HONEST = "tests/fixtures/candidates/honest/layernorm.py"


@pytest.mark.slow
def test_eval_prints_a_verdict_and_saves_code_beside_its_json(tmp_path):
    result = run_cli("eval", HONEST, "--spec", "layernorm", "--save", str(tmp_path / "saved"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("layernorm.py: CORRECT  (layernorm at M=5,N=97 on cpu-interpreter")
    assert any(ln.startswith("  time ") and "interpreter wall clock, not kernel speed" in ln for ln in lines)
    assert any(ln.startswith("  torch.compile not timed") for ln in lines)
    [saved] = (tmp_path / "saved").glob("*.json")
    assert Evaluation.from_json(saved.read_text()).outcome is Outcome.CORRECT
    assert saved.with_suffix(".py").read_text() == open(HONEST).read()


def test_eval_of_a_rejected_candidate_exits_1_with_json():
    result = run_cli("eval", "tests/fixtures/candidates/adversarial/opens_socket.py", "--spec", "gelu_tanh", "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "rejected" and doc["error"].startswith("static.imports: line 5: imports socket")


def test_eval_errors_are_one_line():
    result = run_cli("eval", "missing.py", "--spec", "softmax")
    assert result.returncode == 1
    assert result.stderr.strip() == "kevolve: error: candidate missing.py not found"
