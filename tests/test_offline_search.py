"""A real offline search on the CPU, end to end: seeds, children by inherit / siblings / restart,
and every kernel it keeps is correct on every interpreter shape. And the GPU benchmark script's
pipeline, run under the interpreter so that it cannot rot before it reaches a GPU."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from kevolve.hardware.calibrate import datasheet_ceilings
from kevolve.hardware.target import load_target
from kevolve.specs import load_spec
from kevolve.synth.base import Attempt, SynthesisRequest
from kevolve.synth.offline import OfflineSynthesizer, apply, config_key, render

INTERPRETER = load_target("cpu-interpreter")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    from kevolve.evaluate.pool import WorkerPool

    p = WorkerPool(INTERPRETER, tmp_path_factory.mktemp("offline-search"), workers=2)
    yield p
    p.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["softmax", "bias_gelu_residual", "jagged_segment_sum"])
def test_offline_search_runs_end_to_end(name, pool):
    """Seeds, then children by each memory mode from the fastest so far, every candidate judged by
    the harness's Evaluator; its diagnosis feeds the next proposal."""
    from kevolve.evaluate.evaluator import Evaluator
    from kevolve.evaluate.result import Outcome

    spec = load_spec(REPO / "specs" / f"{name}.yaml")
    synth = OfflineSynthesizer(rng_seed=11)
    evaluator = Evaluator(spec, INTERPRETER, pool=pool, timeout_s=120.0, baselines=False)

    def request(**kw):
        return SynthesisRequest(spec=spec, target=INTERPRETER, ceilings=datasheet_ceilings(INTERPRETER), **kw)

    def judge(candidates) -> list[Attempt]:
        out = []
        for c, e in zip(candidates, evaluator.evaluate(candidates)):
            assert e.outcome is Outcome.CORRECT, (c.origin.note, e.outcome, e.error[:500])
            out.append(Attempt(code=c.code, origin=c.origin, outcome=e.outcome.value, time_ms=e.timing.median_ms,
                               diagnosis=e.diagnosis))
        return out

    kept = judge(synth.propose(request(n=2)))
    seen = {config_key(a.origin.config) for a in kept}
    parent, path = kept[0], [kept[0]]
    for mode in ("inherit", "siblings", "restart"):
        siblings = tuple(a for a in kept if a is not parent)
        children = synth.propose(request(parent=parent, memory_mode=mode, n=2, history=tuple(path),
                                         siblings=siblings))
        assert children
        for child in children:
            assert config_key(child.origin.config) != config_key(parent.origin.config) and child.origin.transforms
            assert child.origin.memory_mode == mode
            # the child replays from the parent's config and its transforms alone
            assert render(spec, child.origin.family, apply(parent.origin.config, child.origin.transforms)) == child.code
            seen.add(config_key(child.origin.config))
        kept += judge(children)
        parent = min(kept, key=lambda a: a.time_ms)
        path.append(parent)
    assert len(seen) >= 7 and all(a.diagnosis is not None for a in kept)


@pytest.mark.slow
def test_matmul_by_tma_passes_the_harness(pool):
    """Operand tiles by TMA descriptors through the harness's static checks, sandbox and
    correctness checks, on a shape TMA reads and one it falls back from (rows of 58 bytes)."""
    from kevolve.candidate import Candidate, Origin
    from kevolve.evaluate.evaluator import Evaluator
    from kevolve.evaluate.result import Outcome

    spec = load_spec(REPO / "specs" / "matmul_bias_relu.yaml")
    request = SynthesisRequest(spec=spec, target=INTERPRETER, ceilings=datasheet_ceilings(INTERPRETER))
    config = dict(OfflineSynthesizer().propose(request)[0].origin.config, tma=True)
    candidate = Candidate(code=render(spec, "matmul", config), spec_name=spec.name,
                          origin=Origin(synthesizer="offline", family="matmul", config=config))
    evaluation = Evaluator(spec, INTERPRETER, pool=pool, timeout_s=120.0, baselines=False).evaluate([candidate])[0]
    assert evaluation.outcome is Outcome.CORRECT, evaluation.error[:500]


@pytest.mark.slow
def test_gpu_benchmark_pipeline_runs_under_the_interpreter(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, str(REPO / "bench" / "offline_gpu.py"), "--interpreter",
                          "--specs", "rmsnorm,bucketize,embedding_bag_sum", "--budget-s", "3", "--max-evals", "6",
                          "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "offline_gpu.json").read_text())
    assert [s["spec"] for s in result["specs"]] == ["rmsnorm", "bucketize", "embedding_bag_sum"]
    for s in result["specs"]:
        assert "error" not in s, s.get("error")
        assert s["correct"] == s["evaluations"] >= 4 and s["best_config"] and s["floor_ms"] > 0
    bag = result["specs"][2]["gather_ceiling"]  # random rows get their own measured ceiling
    assert bag["gather_ms"] > 0 and bag["index_select_ms"] > 0 and bag["floor_ms"] > bag["gather_ms"]
    assert result["specs"][2]["fraction_of_gather"] > 0 and result["specs"][0]["fraction_of_gather"] is None
    table = (tmp_path / "offline_gpu.md").read_text()
    assert "| rmsnorm | normalization |" in table and "| bucketize | bucketize |" in table
    assert "## Gather ceiling" in table and "| embedding_bag_sum | embedding_bag |" in table


def test_cli_shows_family_seeds_and_code(tmp_path):
    from conftest import run_cli

    out = run_cli("offline", "softmax", "--target", "h100-sxm", "-n", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("softmax: softmax family on h100-sxm")
    assert out.stdout.count("  seed ") == 3 and '"BLOCK_N": 8192' in out.stdout
    code = run_cli("offline", "rmsnorm", "--code")
    assert code.returncode == 0 and "def rmsnorm(x, weight, eps=1e-06):" in code.stdout
    (tmp_path / "ref.py").write_text("import torch\n\ndef running(x):\n    return torch.cumsum(x, -1)\n")
    (tmp_path / "running.yaml").write_text(
        "name: running\nreference: ref.py:running\nshapes:\n  tune: {N: 64}\n  interpreter: [{N: 64}]\n"
        "inputs:\n  - {name: x, shape: [N], dtype: fp32}\n")
    bad = run_cli("offline", str(tmp_path / "running.yaml"))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("kevolve: error: running: no offline template") and "needs an LLM" in bad.stderr


# One config per family, and the matmul's split-K and persistent kernels, compiled for sm_90.
SM90 = [
    ("gelu_tanh", {}), ("clamp_log1p", {}), ("bias_gelu_residual", {"persistent": True}), ("rotary_embedding", {}), ("softmax", {}),
    ("layernorm", {"variant": "looped"}), ("cross_entropy", {}), ("matmul_bias_relu", {"SPLIT_K": 2}),
    ("matmul_bias_relu", {"persistent": True}), ("matmul_bias_relu", {"tma": False}), ("embedding_bag_sum", {}),
    ("jagged_segment_sum", {}),
    ("bucketize", {"search": "linear"}),
]
LOOKUP = """import torch

def lookup(table, ids):
    return torch.nn.functional.embedding(ids, table)
"""


@pytest.mark.slow
def test_seed_kernels_compile_for_an_h100_without_a_gpu(tmp_path):
    from kevolve.candidate import Transform

    h100 = load_target("h100-sxm")
    args = []
    for name, change in SM90:
        spec = load_spec(REPO / "specs" / f"{name}.yaml")
        request = SynthesisRequest(spec=spec, target=h100, ceilings=datasheet_ceilings(h100))
        config = apply(OfflineSynthesizer().propose(request)[0].origin.config,
                       [Transform(k, v) for k, v in change.items()])
        args.append(f"{spec.path}::{json.dumps(config)}")
    (tmp_path / "lookup.py").write_text(LOOKUP)
    (tmp_path / "lookup.yaml").write_text(
        "name: lookup\nreference: lookup.py:lookup\nshapes:\n  tune: {V: 32000, D: 4096, M: 256}\n"
        "  interpreter: [{V: 50, D: 16, M: 23}]\ninputs:\n  - {name: table, shape: [V, D], dtype: bf16}\n"
        "  - {name: ids, shape: [M], dtype: int64, dist: {kind: randint, low: 0, high: V}}\n")
    lookup = load_spec(tmp_path / "lookup.yaml")
    config = OfflineSynthesizer().propose(SynthesisRequest(spec=lookup, target=h100,
                                                           ceilings=datasheet_ceilings(h100)))[0].origin.config
    args.append(f"{lookup.path}::{json.dumps(config)}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    run = subprocess.run([sys.executable, str(REPO / "tests" / "offline_sm90_compile.py"), *args],
                         capture_output=True, text=True, env=env, timeout=900)
    if "No module named 'triton.backends.nvidia'" in run.stderr:
        pytest.skip("this triton has no NVIDIA backend to compile with")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    kernels = {line.split()[2] for line in run.stdout.splitlines() if line.startswith("ok ")}
    assert {"_pointwise_kernel", "_rowwise_whole_row", "_rowwise_looped", "_ce_rows", "_ce_reduce",
            "_matmul_kernel", "_splitk_epilogue", "_embedding_bag_kernel", "_segment_sum_kernel",
            "_bucketize_kernel", "_embedding_kernel"} <= kernels
