"""Poisoned allocations, guard bands, the aten-op record, and the correctness procedure, in process
(the fixtures here are trusted test code; candidates proper only ever run in workers)."""

import importlib.util
import math

import pytest
import torch
import triton
import triton.language as tl

from conftest import FIXTURES
from kevolve.evaluate.correctness import (
    CandidateFailure, TrialFactory, Watch, check_shape, failure_from_exception,
)
from kevolve.evaluate.guards import GuardMode, guarded_copy, poison_value
from kevolve.evaluate.result import Outcome
from kevolve.specs import resolve_spec
from kevolve.specs.runtime import OperatorRuntime


def load_fixture(name: str):
    spec = importlib.util.spec_from_file_location(f"fixture_{name}", FIXTURES / "candidates" / "honest" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@triton.jit
def _softmax_rows(x_ptr, y_ptr, n_cols, shift, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=-float("inf")).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=0))
    y = e / tl.sum(e, axis=0) + shift
    tl.store(y_ptr + row * n_cols + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def softmax_launch(x, y, shift=0.0):
    _softmax_rows[(x.shape[0],)](x, y, x.shape[1], shift, BLOCK=triton.next_power_of_2(x.shape[1]))
    return y


@pytest.fixture(scope="module")
def softmax_trials():
    spec = resolve_spec("softmax")
    factory = TrialFactory(OperatorRuntime(spec), "cpu")
    tune, (other,) = spec.shapes_for(True)
    return factory.trials(tune, tuned=True), factory.trials(other, tuned=False)


def run_checks(fn, trials):
    return check_shape(Watch(None, None), fn, trials, repeat_first=True)


def failure(fn, trials) -> CandidateFailure:
    with pytest.raises(CandidateFailure) as info:
        run_checks(fn, trials)
    return info.value


# Guards ----------------------------------------------------------------------------------------
def test_empty_allocations_are_poisoned_and_other_factories_keep_their_values():
    model = torch.ones(2, 3).t()
    with GuardMode() as mode:
        f = torch.empty(10)
        i = torch.empty(4, dtype=torch.int64)
        z = torch.zeros(3, dtype=torch.bfloat16)
        like = torch.empty_like(model)
    assert torch.isnan(f).all() and (i == poison_value(torch.int64)).all()
    assert torch.equal(z, torch.zeros(3, dtype=torch.bfloat16))
    assert like.stride() == (1, 3)  # empty_like keeps the layout of its model
    assert len(mode.guards) == 4 and mode.broken_guards() == 0


def test_a_write_past_an_allocation_breaks_its_guard_band():
    with GuardMode() as mode:
        t = torch.empty(8)
    t.as_strided((9,), (1,))[8].fill_(1.0)  # one element past the end
    assert mode.broken_guards() == 1


def test_guarded_copy_keeps_values_layout_and_alignment():
    x = torch.randn(5, 7).t()
    g, guard = guarded_copy(x)
    assert torch.equal(g, x) and g.is_contiguous() and g.storage_offset() > 0
    assert g.data_ptr() % 16 == 0 and guard.intact()
    g.as_strided((1,), (1,), g.storage_offset() - 1).fill_(0.0)  # one element before the start
    assert not guard.intact()


def test_torch_computation_is_recorded_but_allocation_views_and_triton_are_not():
    x = torch.randn(4, 4)
    with GuardMode() as mode:
        y = torch.empty_like(x)
        softmax_launch(x.view(4, 4).contiguous(), y)  # the interpreter's own tensor ops are Triton's
        x.t().reshape(16).unsqueeze(0)
    assert mode.computation_ops() == []
    with GuardMode() as mode:
        x @ x
        torch.relu(x)
    assert mode.computation_ops() == ["mm", "relu"]


# The correctness procedure -------------------------------------------------------------------
def test_honest_softmax_passes_every_trial(softmax_trials):
    tuned, other = softmax_trials
    fn = load_fixture("softmax").softmax
    names = [c.name for c in run_checks(fn, tuned)] + [c.name for c in run_checks(fn, other)]
    assert names == ["trial[seed=11 M=7,N=97]", "repeat_identical[seed=11 M=7,N=97]",
                     "trial[seed=12 M=7,N=97]", "trial[shifted seed=13 M=7,N=97]",
                     "trial[seed=21 M=16,N=300]", "repeat_identical[seed=21 M=16,N=300]",
                     "trial[shifted seed=22 M=16,N=300]"]


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_the_long_row_path_of_the_honest_fixtures_is_correct_too(name):
    module = load_fixture(name)
    module.MAX_BLOCK = 64  # rows of 97 then take the looped path, four blocks of 32
    spec = resolve_spec(name)
    trials = TrialFactory(OperatorRuntime(spec), "cpu").trials(spec.interpreter_dims[0], tuned=True)
    assert len(run_checks(getattr(module, name), trials[::2])) == 3  # a plain and a shifted trial, repeated


def test_trials_use_fresh_seeds_and_a_shifted_distribution(softmax_trials):
    tuned, _ = softmax_trials
    a, b, shifted = (t.inputs[0].float() for t in tuned)
    assert not torch.equal(a, b)
    assert shifted.mean() > a.mean() + 0.4 and shifted.std() > 1.5 * a.std()


def test_reshuffled_trials_permute_unordered_inputs_and_keep_sorted_ones():
    spec = resolve_spec("bucketize")
    factory = TrialFactory(OperatorRuntime(spec), "cpu")
    dims = spec.interpreter_dims[0]
    base = factory.trials(dims, tuned=True)[0]
    new = factory.reshuffled(dims, seed=5)
    x, bounds = new.inputs
    assert not torch.equal(x, base.inputs[0]) and torch.equal(x.sort().values, base.inputs[0].sort().values)
    assert torch.equal(bounds, base.inputs[1])  # sorted boundaries must stay sorted
    assert torch.equal(new.refs[0], torch.bucketize(x, bounds))


def test_result_cached_by_pointer_fails_when_inputs_are_refilled(softmax_trials):
    cache = {}

    def cached(x):
        if x.data_ptr() not in cache:
            cache[x.data_ptr()] = softmax_launch(x, torch.empty_like(x))
        return cache[x.data_ptr()]

    f = failure(cached, softmax_trials[0])
    assert f.outcome is Outcome.WRONG and f.check.name == "trial[seed=12 M=7,N=97]"
    assert "refilled in place" in f.check.detail


def test_unwritten_rows_show_as_poison(softmax_trials):
    def partial(x):
        y = torch.empty_like(x)
        _softmax_rows[(x.shape[0] - 1,)](x, y, x.shape[1], 0.0, BLOCK=triton.next_power_of_2(x.shape[1]))
        return y

    assert "never written" in failure(partial, softmax_trials[0]).check.detail


def test_modified_inputs_output_dtype_and_strides_are_checked(softmax_trials):
    def in_place(x):
        return softmax_launch(x, x)

    def fp32_output(x):
        return softmax_launch(x, torch.empty(x.shape, dtype=torch.float32))

    def transposed_layout(x):
        y = torch.empty(x.shape[1], x.shape[0], dtype=x.dtype).t()
        for r in range(x.shape[0]):  # correct values, column-major storage
            y[r].copy_(softmax_launch(x[r:r + 1].contiguous(), torch.empty(1, x.shape[1], dtype=x.dtype))[0])
        return y

    tuned = softmax_trials[0]
    assert failure(in_place, tuned).check.name.startswith("inputs_unchanged")
    assert "is torch.float32; the reference's is torch.bfloat16" in failure(fp32_output, tuned).check.detail
    assert "strides" in failure(transposed_layout, tuned).check.detail


def test_a_second_run_must_repeat_bit_for_bit(softmax_trials):
    calls = iter(range(100))

    def drifting(x):  # within tolerance, but never the same twice
        return softmax_launch(x, torch.empty_like(x), shift=next(calls) * 1e-3)

    f = failure(drifting, softmax_trials[0])
    assert f.check.name == "repeat_identical[seed=11 M=7,N=97]"


def test_torch_computation_inside_the_entry_point_is_rejected(softmax_trials):
    def via_torch(x):
        return torch.softmax(x, -1)

    f = failure(via_torch, softmax_trials[0])
    assert f.outcome is Outcome.REJECTED and f.check.name == "runtime.aten_ops"
    assert "aten::_softmax" in f.check.detail


def test_a_thread_left_running_is_rejected_and_named(softmax_trials):
    """Past the static checks (a thread reached through a library), a thread that outlives the
    call is caught at run time; the rejection names it and what it runs, to tell a library's
    own thread from a candidate's."""
    import threading

    release = threading.Event()

    def leaves_a_thread(x):
        threading.Thread(target=release.wait, name="late-copy", daemon=True).start()
        return torch.softmax(x, -1)

    try:
        f = failure(leaves_a_thread, softmax_trials[0])
    finally:
        release.set()
    assert f.outcome is Outcome.REJECTED and f.check.name == "sandbox"
    assert "left 1 thread(s) running: late-copy (threading.Event.wait)" in f.check.detail


def test_exceptions_become_crashes_with_their_text(softmax_trials):
    def raises(x):
        raise ValueError("block too large")

    f = failure(raises, softmax_trials[0])
    assert f.outcome is Outcome.CRASHED and f.reusable
    assert f.check.detail == "ValueError: block too large" and "Traceback" in f.error


def test_triton_refusing_to_compile_is_a_compile_error_and_a_device_fault_retires_the_worker():
    from triton.runtime.errors import OutOfResources

    f = failure_from_exception(OutOfResources(300000, 232448, "shared memory"))
    assert f.outcome is Outcome.COMPILE_ERROR and f.check.name == "compile" and f.reusable
    f = failure_from_exception(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert f.outcome is Outcome.CRASHED and not f.reusable


def test_poison_values_are_never_plausible_results():
    assert math.isnan(poison_value(torch.bfloat16))
    assert poison_value(torch.int64) > 2**62 and poison_value(torch.int32) > 2**30


def test_tolerance_widens_to_eagers_own_error_and_no_further():
    import torch

    from kevolve.evaluate.correctness import no_stricter_than_eager
    from kevolve.specs.model import Tolerance

    tol = Tolerance.for_dtype("float32")
    exact = torch.randn(1000, dtype=torch.float64) * 30
    eager = (exact + 5e-4).float()  # PyTorch itself off by 5e-4 (a long fp32 sum, say)
    wide = no_stricter_than_eager(tol, eager, exact)
    assert wide.atol >= 1e-3 - 1e-12 and wide.rtol == tol.rtol
    from kevolve.specs.compare import compare

    assert compare(eager, exact, wide).ok
    assert not compare(exact.to(torch.bfloat16), exact, wide).ok  # lower precision still fails
    # An exact eager result changes nothing.
    assert no_stricter_than_eager(tol, exact.float(), exact) == Tolerance(
        atol=max(tol.atol, 2 * float((exact.float().double() - exact).abs().max())), rtol=tol.rtol,
        max_rel_l2=tol.max_rel_l2)
