"""Static checks on candidates' syntax trees: what they accept and what they reject, and why."""

import re
from pathlib import Path

import pytest

from conftest import FIXTURES
from kevolve.evaluate.static_checks import rejection_reason, static_checks

HONEST = sorted((FIXTURES / "candidates" / "honest").glob("*.py"))
ADVERSARIAL = sorted((FIXTURES / "candidates" / "adversarial").glob("*.py"))

KERNEL = '''
import torch
import triton
import triton.language as tl

@triton.jit
def _k(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)
'''
ENTRY = '''
def op(x):
    y = torch.empty_like(x)
    {body}
    _k[(triton.cdiv(x.numel(), 256),)](x, y, x.numel(), BLOCK=256)
    return y
'''


def candidate(body: str = "pass", prelude: str = "") -> str:
    return prelude + KERNEL + ENTRY.format(body=body)


def failed(code: str, entry: str = "op") -> dict[str, str]:
    return {c.name: c.detail for c in static_checks(code, entry) if not c.passed}


def entry_point(code: str) -> str:
    return "ModelNew" if "class ModelNew" in code else re.search(r"^def (\w+)\(", code, re.M).group(1)


def expectation(path: Path) -> tuple[str, str]:
    text = path.read_text()
    outcome, _, check = re.search(r"# expect: (.+)", text).group(1).partition(" ")
    return outcome, check


@pytest.mark.parametrize("path", HONEST, ids=lambda p: p.stem)
def test_honest_fixtures_pass_every_static_check(path):
    code = path.read_text()
    assert failed(code, entry_point(code)) == {}


@pytest.mark.parametrize("path", [p for p in ADVERSARIAL if expectation(p)[1].startswith("static.")],
                         ids=lambda p: p.stem)
def test_adversarial_fixture_fails_its_static_check(path):
    _, check = expectation(path)
    code = path.read_text()
    problems = failed(code, entry_point(code))
    assert check in problems, problems


def test_a_clean_candidate_passes_and_every_category_is_reported():
    checks = static_checks(candidate(), "op")
    assert [c.name for c in checks][:3] == ["static.syntax", "static.language", "static.imports"]
    assert all(c.passed for c in checks)


@pytest.mark.parametrize("body, category, words", [
    ("y = torch.nn.functional.gelu(x)", "static.torch", "torch.nn.functional.gelu"),
    ("y = torch.ops.aten.softmax(x, -1, False)", "static.torch", "torch.ops"),
    ("x = x.exp()", "static.torch", ".exp()"),
    ("x = x.sum(0)", "static.torch", ".sum()"),
    ("s = torch.cuda.Stream()", "static.torch", "torch.cuda.Stream"),
    ("f = getattr(torch, 'softmax')", "static.builtins", "getattr"),
    ("eval('1')", "static.builtins", "eval"),
    ("g = globals()", "static.builtins", "globals"),
    ("c = x.__class__", "static.introspection", "__class__"),
    ("b = __builtins__", "static.introspection", "__builtins__"),
    ("torch.cuda.synchronize = print", "static.patching", "torch.cuda.synchronize"),
    ("tl.store = print", "static.patching", "triton.language.store"),
    ("t = triton.testing.do_bench(lambda: 0)", "static.torch", "triton.testing"),
])
def test_forbidden_uses_inside_the_entry_point(body, category, words):
    problems = failed(candidate(body))
    assert category in problems, problems
    assert words in problems[category]


def test_try_except_is_a_fallback_and_rejected():
    body = "try:\n        pass\n    except Exception:\n        return torch.empty_like(x)"
    assert "try/except" in failed(candidate(body))["static.fallback"]


@pytest.mark.parametrize("prelude, words", [
    ("import os\n", "imports os"),
    ("import subprocess\n", "imports subprocess"),
    ("import torch.nn.functional as F\n", "imports torch.nn.functional"),
    ("from . import helper\n", "imports from ."),
    ("from torch import *\n", "import *"),
    ("import importlib\n", "imports importlib"),
])
def test_import_allow_list(prelude, words):
    assert words in failed(candidate(prelude=prelude))["static.imports"]


def test_importing_a_torch_op_by_name_is_caught_as_torch_use():
    problems = failed(candidate("y = softmax(x, -1)", prelude="from torch import softmax\n"))
    assert "torch.softmax" in problems["static.torch"]


def test_allowed_aliases_resolve():
    prelude = "from torch import nn, empty_like\nfrom triton.language.extra import libdevice\nimport math\n"
    assert failed(candidate("z = empty_like(x); m = math.sqrt(2.0)", prelude=prelude)) == {}


def test_method_names_inside_kernels_are_triton_not_torch():
    code = candidate().replace("tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)",
                               "v = tl.load(x_ptr + offs, mask=offs < n)\n    "
                               "tl.store(y_ptr + offs, v.to(tl.float32).exp(), mask=offs < n)")
    assert failed(code) == {}


def test_kernel_requirements():
    no_kernel = "import torch\ndef op(x):\n    return x\n"
    assert "no @triton.jit kernel" in failed(no_kernel)["static.kernel"]
    no_store = candidate().replace("tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)",
                                   "v = tl.load(x_ptr + offs, mask=offs < n)")
    assert "no kernel stores anything" in failed(no_store)["static.kernel"]
    no_launch = candidate().replace("_k[(triton.cdiv(x.numel(), 256),)](x, y, x.numel(), BLOCK=256)", "pass")
    assert "never launches" in failed(no_launch)["static.kernel"]


def test_entry_point_and_syntax_and_language():
    assert "defines no module-level 'softmax'" in failed(candidate(), "softmax")["static.entry_point"]
    assert "line 2" in failed("x = 1\ndef (:\n")["static.syntax"]
    [check] = static_checks(candidate(), "op", language="cuda")
    assert check.name == "static.language" and not check.passed and "cuda" in check.detail
    assert rejection_reason(static_checks("import os\n", "op")).startswith("static.imports: line 1: imports os")
