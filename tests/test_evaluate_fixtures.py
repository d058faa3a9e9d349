"""The judge end to end under the Triton interpreter: every honest fixture passes, every adversarial
fixture gets the outcome and the check its header names."""

import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import FIXTURES
from kevolve.candidate import Candidate, Origin
from kevolve.evaluate.evaluator import Evaluator
from kevolve.evaluate.pool import WorkerPool
from kevolve.evaluate.result import Evaluation, Outcome
from kevolve.hardware import load_target
from kevolve.specs import load_spec, resolve_spec

CANDIDATES = FIXTURES / "candidates"
HONEST = sorted((CANDIDATES / "honest").glob("*.py"))
ADVERSARIAL = sorted((CANDIDATES / "adversarial").glob("*.py"))
TARGET = load_target("cpu-interpreter")
TIMEOUT_S = 20.0  # far above an honest fixture's slowest run here, well under a stuck one's


def spec_for(name: str):
    if name.startswith("kernelbench_"):
        return load_spec(FIXTURES / "kernelbench" / f"{name.removeprefix('kernelbench_')}_problem.py")
    if "/" in name:
        return load_spec(FIXTURES / name)
    return resolve_spec(name)


def header(path: Path, key: str) -> str:
    return re.search(rf"# {key}: (.+)", path.read_text()).group(1).strip()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = WorkerPool(TARGET, tmp_path_factory.mktemp("eval-scratch"), workers=2)
    yield p
    p.close()


def evaluate(pool, spec, code: str, **kw):
    evaluator = Evaluator(spec, TARGET, pool=pool, timeout_s=kw.pop("timeout_s", TIMEOUT_S), **kw)
    return evaluator, evaluator.evaluate([Candidate(code, spec.name, Origin("manual"))])[0]


@pytest.fixture(scope="module")
def fixture_results(pool, tmp_path_factory):
    """Every fixture evaluated once, two at a time (one per worker)."""
    jobs = {path: (spec_for(path.stem), {}) for path in HONEST}
    for path in ADVERSARIAL:
        timed_out = header(path, "expect").startswith("timed_out")
        jobs[path] = (spec_for(header(path, "spec")), {"timeout_s": 3.0} if timed_out else {})
    with pytest.MonkeyPatch.context() as mp, ThreadPoolExecutor(max_workers=2) as ex:
        mp.setenv("KEVOLVE_HOME", str(tmp_path_factory.mktemp("kevolve-home")))
        futures = {path: ex.submit(evaluate, pool, spec, path.read_text(), **kw) for path, (spec, kw) in jobs.items()}
        return {path: (jobs[path][0], f.result()[1]) for path, f in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("path", HONEST, ids=lambda p: p.stem)
def test_honest_fixture_is_correct(fixture_results, path):
    spec, ev = fixture_results[path]
    assert ev.outcome is Outcome.CORRECT, (ev.error, ev.failed_checks())
    names = [c.name for c in ev.checks]
    tune, others = spec.shapes_for(True)
    assert sum(n.startswith("trial[") for n in names) >= 3 + len(others)
    assert any(n.startswith("repeat_identical[") for n in names) and names[-1].startswith("recheck[")
    assert ev.timing.interpreter and ev.speedup() is None
    assert ev.baselines.eager is not None and ev.baselines.eager.interpreter
    assert ev.diagnosis.min_bytes > 0 and ev.diagnosis.bound == "unknown"
    assert ev.dims == dict(tune) and ev.device.startswith("cpu")
    # Where the time went: every phase an honest candidate passes through, inside its wall time.
    assert {"queue", "start", "wait", "guard", "check", "time", "release", "worker"} <= set(ev.phases)
    assert ev.phases["check"] > 0 and ev.phases["time"] > 0 and ev.phases["worker"] > 0
    assert sum(v for k, v in ev.phases.items() if k != "worker") <= ev.wall_s + 0.01
    assert ev.phases["worker"] <= ev.phases["check"] + ev.phases["time"] + ev.phases["release"]
    assert Evaluation.from_json(ev.to_json()).phases == ev.phases


@pytest.mark.slow
@pytest.mark.parametrize("path", ADVERSARIAL, ids=lambda p: p.stem)
def test_adversarial_fixture_gets_its_outcome(fixture_results, path):
    outcome, _, check = header(path, "expect").partition(" ")
    _, ev = fixture_results[path]
    assert ev.outcome is Outcome(outcome), (ev.error, ev.failed_checks())
    assert ev.timing is None and ev.speedup() is None
    if check:
        assert any(c.name.startswith(check) or check in c.detail for c in ev.failed_checks()), ev.failed_checks()


@pytest.mark.slow
def test_a_batch_keeps_its_order_and_the_pool_survives_bad_candidates(pool):
    spec = resolve_spec("softmax")
    honest = (CANDIDATES / "honest" / "softmax.py").read_text()
    batch = [honest, (CANDIDATES / "adversarial" / "partial_write.py").read_text(),
             honest.replace("num_warps=8 if block >= 2048 else 4", "num_warps=2"),
             (CANDIDATES / "adversarial" / "calls_torch_op.py").read_text(), "def softmax(:\n"]
    evaluator = Evaluator(spec, TARGET, pool=pool, timeout_s=TIMEOUT_S)
    results = evaluator.evaluate([Candidate(code, "softmax", Origin("manual")) for code in batch])
    assert [r.outcome for r in results] == [Outcome.CORRECT, Outcome.WRONG, Outcome.CORRECT, Outcome.REJECTED,
                                            Outcome.REJECTED]
    assert results[0].candidate_hash != results[2].candidate_hash
    assert evaluator.remeasure(Candidate(honest, "softmax", Origin("manual"))).outcome is Outcome.CORRECT


@pytest.mark.slow
def test_baselines_are_cached_per_spec_shape_and_device(pool, tmp_path):
    spec = resolve_spec("gelu_tanh")
    first = Evaluator(spec, TARGET, pool=pool).baselines()
    cached = list((tmp_path / "kevolve-home" / "baselines").glob("gelu-tanh-*.json"))
    assert len(cached) == 1 and first.eager is not None
    assert "not timed on the interpreter" in first.errors["compile_default"]
    again = Evaluator(spec, TARGET, pool=pool).baselines()
    assert again == first  # read back, not re-timed (a re-timing would differ in its figures)


@pytest.mark.slow
def test_import_errors_and_crashes_are_typed_with_their_text(pool):
    spec = resolve_spec("gelu_tanh")
    honest = (CANDIDATES / "honest" / "gelu_tanh.py").read_text()
    _, ev = evaluate(pool, spec, honest + "\nundefined_name()\n")
    assert ev.outcome is Outcome.COMPILE_ERROR and "NameError" in ev.error
    crash = honest.replace("    x = x.contiguous()\n", "    raise RuntimeError('launch refused')\n")
    _, ev = evaluate(pool, spec, crash)
    assert ev.outcome is Outcome.CRASHED and "RuntimeError: launch refused" in ev.failed_checks()[0].detail


@pytest.mark.slow
def test_a_worker_that_dies_is_replaced(pool):
    spec = resolve_spec("clamp_log1p")
    honest = (CANDIDATES / "honest" / "clamp_log1p.py").read_text()
    wild = honest.replace("x = tl.load(x_ptr + offs, mask=mask, other=0.0)",
                          "x = tl.load(x_ptr + offs + (1 << 44))")  # far outside any mapping: SIGSEGV
    _, ev = evaluate(pool, spec, wild)
    assert ev.outcome is Outcome.CRASHED and "worker died" in ev.error
    _, ev = evaluate(pool, spec, honest)
    assert ev.outcome is Outcome.CORRECT


@pytest.mark.slow
def test_memory_limit_kills_the_worker(tmp_path):
    spec = resolve_spec("clamp_log1p")
    hog = (CANDIDATES / "honest" / "clamp_log1p.py").read_text().replace(
        "    y = torch.empty_like(x)\n", "    _HOLD.append(torch.ones(1 << 26))\n    y = torch.empty_like(x)\n")
    hog = hog.replace("import torch\n", "import torch\n\n_HOLD = []\n", 1)  # 256 MB more per call
    small = WorkerPool(TARGET, tmp_path / "scratch", workers=1, memory_limit_mb=1200)
    try:
        _, ev = evaluate(small, spec, hog, baselines=False)
    finally:
        small.close()
        shutil.rmtree(tmp_path / "scratch", ignore_errors=True)
    assert ev.outcome is Outcome.CRASHED and "limit 1200 MB" in ev.error
