"""The offline synthesizer's seeds through the harness's Evaluator on the cpu-interpreter target:
static checks, isolated workers, every correctness trial. All must come back CORRECT."""

import pytest

from conftest import FIXTURES, REPO
from kevolve.evaluate.evaluator import Evaluator
from kevolve.evaluate.pool import WorkerPool
from kevolve.evaluate.result import Outcome
from kevolve.hardware import load_target
from kevolve.hardware.calibrate import datasheet_ceilings
from kevolve.specs import discover, load_spec
from kevolve.synth.base import SynthesisRequest
from kevolve.synth.offline import OfflineSynthesizer

TARGET = load_target("cpu-interpreter")
SPECS = discover([REPO / "specs"]) + sorted((FIXTURES / "kernelbench").glob("*.py"))


@pytest.mark.slow
def test_every_seed_passes_the_evaluator(tmp_path, monkeypatch):
    monkeypatch.setenv("KEVOLVE_HOME", str(tmp_path / "home"))
    pool = WorkerPool(TARGET, tmp_path / "scratch", workers=2)

    def judge(path):
        spec = load_spec(path)
        request = SynthesisRequest(spec=spec, target=TARGET, ceilings=datasheet_ceilings(TARGET))
        candidate = OfflineSynthesizer().propose(request)[0]
        evaluator = Evaluator(spec, TARGET, pool=pool, timeout_s=120.0, baselines=False)
        return spec.name, candidate.origin.family, evaluator.evaluate([candidate])[0]

    try:  # one spec at a time: CPython 3.11's ast.parse is not safe across threads
        results = [judge(path) for path in SPECS]
    finally:
        pool.close()
    failed = [(name, family, e.outcome.value, e.error[:300], [c.name for c in e.failed_checks()])
              for name, family, e in results if e.outcome is not Outcome.CORRECT]
    assert failed == []
    assert len(results) == len(SPECS)
    assert all(e.timing is not None and e.timing.interpreter for _, _, e in results)
