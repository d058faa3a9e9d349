"""The host side of generated wrappers: the grid helpers agree with Triton's, the index-width
check agrees with the general extent, and the per-layout bookkeeping is reused only for the
layout it was worked out for."""

import pytest
import torch
import triton

from conftest import REPO
from kevolve.hardware.target import load_target
from kevolve.specs import load_spec
from kevolve.specs.runtime import OperatorRuntime
from kevolve.synth.offline import frame as fr
from kevolve.synth.offline import match_family, render, template_for
from kevolve.synth.offline.module import HOST_HELPERS
from kevolve.synth.offline.pointwise import EXTENT_HELPER
from offline_support import load_module


def defined(*sources: str) -> dict:
    namespace = {"torch": torch}
    for source in sources:
        exec(source, namespace)
    return namespace


def test_grid_helpers_agree_with_tritons():
    h = defined(*HOST_HELPERS.values())
    for n in range(0, 5000):
        assert h["_pow2"](n) == triton.next_power_of_2(n), n
        for block in (1, 3, 64, 1024):
            assert h["_cdiv"](n, block) == triton.cdiv(n, block)


def general_extent(t):
    return 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0)


@pytest.mark.parametrize("view", ["contiguous", "transposed", "expanded", "sliced", "size_one_dim", "empty"])
def test_the_contiguous_shortcut_of_extent_agrees_with_the_general_formula(view):
    base = torch.zeros(6, 10)
    t = {"contiguous": base, "transposed": base.t(), "expanded": torch.zeros(10).expand(6, 10),
         "sliced": base[:, ::3], "size_one_dim": torch.zeros(1, 10).as_strided((1, 10), (999, 1)),
         "empty": torch.zeros(0, 10)}[view]
    assert defined(EXTENT_HELPER)["_extent"](t) == general_extent(t)


def test_layouts_are_worked_out_once_per_layout_and_forgotten_in_bulk():
    h = defined(fr.HELPERS)
    x, w = torch.zeros(4, 6), torch.zeros(6)
    first = h["_frame_layout"]([4, 6], (1,), [(x, (0, 1)), (w, (1,))])
    assert h["_frame_layout"]([4, 6], (1,), [(x, (0, 1)), (w, (1,))]) is first
    assert first == h["_work_out_layout"]([4, 6], (1,), [(x, (0, 1)), (w, (1,))])
    strided = torch.zeros(12)[::2]  # same shape, another stride: another layout
    other = h["_frame_layout"]([4, 6], (1,), [(x, (0, 1)), (strided, (1,))])
    assert other[4][1][-1] == 2 and first[4][1][-1] == 1
    for n in range(1, 300):
        h["_frame_layout"]([n, 6], (1,), [(torch.zeros(n, 6), (0, 1))])
    assert len(h["_LAYOUTS"]) <= 256


def test_one_wrapper_called_on_two_layouts_in_turn_is_right_on_both():
    """rmsnorm's weight as a plain vector, then as a strided view of the same shape, then plain
    again: the cached layout of one must never serve the other."""
    spec = load_spec(REPO / "specs" / "rmsnorm.yaml")
    found = match_family(spec)
    config = template_for(found.family).seeds(found.match, spec, load_target("cpu-interpreter"))[0]
    fn = getattr(load_module(render(spec, found.family, config)), spec.entry_point)
    runtime = OperatorRuntime(spec)
    x, weight = runtime.inputs(spec.shapes_for(True)[0], seed=0, device="cpu")
    ref = runtime.reference(spec.shapes_for(True)[0], "cpu")
    spread = torch.zeros(weight.numel() * 2, dtype=weight.dtype)
    spread[::2] = weight * 3
    for w in (weight, spread[::2], weight):
        torch.testing.assert_close(fn(x, w), ref(x, w), atol=2e-2, rtol=2e-2)
