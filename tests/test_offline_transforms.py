"""Transformations as data: they keep kernels correct, follow the diagnosis, replay exactly,
and the synthesizer's memory modes, skills and seeding behave as the search relies on."""

import pytest
import torch

from conftest import FIXTURES, REPO
from kevolve.candidate import Origin, Transform
from kevolve.evaluate.result import Diagnosis
from kevolve.hardware.calibrate import datasheet_ceilings
from kevolve.hardware.target import load_target
from kevolve.knowledge.types import Skill
from kevolve.specs import load_spec
from kevolve.synth.base import Attempt, SynthesisError, SynthesisRequest
from kevolve.specs.runtime import OperatorRuntime
from kevolve.synth.offline import (OfflineSynthesizer, apply, config_key, match_family, render, template_for,
                                   transforms_for)
from offline_support import load_module, problems

INTERPRETER = load_target("cpu-interpreter")
H100 = load_target("h100-sxm")
SPEC_DIR = REPO / "specs"

# Transformed configs per spec: each must stay correct on the interpreter shapes.
TRANSFORMED = {
    "softmax": [{"variant": "looped", "BLOCK_N": 64, "online": True}, {"variant": "looped", "BLOCK_N": 32,
                                                                         "online": False, "BLOCK_M": 4},
                {"persistent": True, "programs_per_sm": 2, "BLOCK_M": 2}],
    "softmax_fp32": [{"variant": "looped", "BLOCK_N": 256, "evict": "stream", "persistent": True}],
    "log_softmax": [{"variant": "looped", "BLOCK_N": 64, "online": False}],
    "layernorm": [{"variant": "looped", "BLOCK_N": 64, "BLOCK_M": 2}, {"BLOCK_M": 1, "evict": "stream"}],
    "rmsnorm": [{"variant": "looped", "BLOCK_N": 128, "persistent": True, "programs_per_sm": 1}],
    "gelu_tanh": [{"BLOCK": 128, "persistent": True, "programs_per_sm": 1}],
    "swiglu": [{"BLOCK": 512, "evict": "stream"}],
    "bias_gelu_residual": [{"BLOCK": 128}, {"BLOCK": 4096, "persistent": True, "programs_per_sm": 1},
                           {"evict": "reuse"}, {"erf": "library", "BLOCK": 256}],
    "clamp_log1p": [{"BLOCK": 64, "num_warps": 2}],
    "rotary_embedding": [{"BLOCK": 64}, {"BLOCK": 256, "persistent": True, "programs_per_sm": 1},
                         {"evict": "reuse"}, {"evict": "stream", "unmasked": True}],
    "matmul_bias_relu": [{"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 1},
                         {"SPLIT_K": 4, "BLOCK_K": 16}, {"persistent": True, "programs_per_sm": 1, "GROUP_M": 4},
                         {"tma": True, "SPLIT_K": 2, "BLOCK_K": 16}, {"tma": True, "persistent": True}],
    "cross_entropy": [{"BLOCK_N": 32, "BLOCK_M": 4}, {"persistent": True, "programs_per_sm": 1, "BLOCK_M": 2},
                      {"lse": "rescale", "aligned": False, "BLOCK_N": 16, "BLOCK_M": 2},
                      {"BLOCK_N": 16, "BLOCK_M": 8, "lse": "one_exp", "aligned": True},
                      {"BLOCK_N": 64, "BLOCK_M": 2, "lse": "grouped", "GROUP": 16}],
    "embedding_bag_sum": [{"UNROLL": 1, "vec": 1}, {"BLOCK_D": 16, "UNROLL": 32, "vec": 8}],
    "jagged_segment_sum": [{"BLOCK_L": 1}, {"BLOCK_D": 32, "BLOCK_L": 64, "vec": 2}],
    "bucketize": [{"search": "binary", "BLOCK": 128}, {"search": "linear", "BLOCK_K": 8, "BLOCK": 64},
                  {"search": "split", "SPLITS": 4, "BLOCK": 64}, {"search": "split", "SPLITS": 64, "BLOCK": 128},
                  {"search": "table", "CELLS": 128, "BLOCK": 128}],
}


def request(spec, target=INTERPRETER, **kw):
    return SynthesisRequest(spec=spec, target=target, ceilings=datasheet_ceilings(target), **kw)


def seed(spec, target=INTERPRETER):
    return OfflineSynthesizer().propose(request(spec, target))[0]


def attempt(candidate, outcome="correct", time_ms=1.0, diagnosis=None):
    return Attempt(code=candidate.code, origin=candidate.origin, outcome=outcome, time_ms=time_ms,
                   diagnosis=diagnosis)


@pytest.mark.parametrize("name", sorted(TRANSFORMED))
def test_transformed_configs_stay_correct(name):
    spec = load_spec(SPEC_DIR / f"{name}.yaml")
    base = seed(spec)
    for change in TRANSFORMED[name]:
        transforms = [Transform(k, v) for k, v in change.items()]
        config = apply(base.origin.config, transforms)
        code = render(spec, base.origin.family, config)
        assert code != base.code
        assert problems(spec, code, seeds=(3,)) == [], config


def test_eviction_hints_follow_each_loads_role():
    """A read that repeats (rotary's tables, the rotate-half partner) is kept with evict_last
    under "reuse" and "stream"; a stream is read evict_first only under "stream", and never when
    the same tensor is read again at the partner columns."""
    spec = load_spec(SPEC_DIR / "rotary_embedding.yaml")
    base = seed(spec)
    loads = {}
    for evict in ("none", "reuse", "stream"):
        code = render(spec, base.origin.family, dict(base.origin.config, evict=evict))
        loads[evict] = [line for line in code.splitlines() if "tl.load(" in line]
    assert not any("eviction_policy" in line for line in loads["none"])
    for evict in ("reuse", "stream"):
        assert not any("evict_first" in line for line in loads[evict])
        partner = next(line for line in loads[evict] if "HALF" in line)
        assert partner.count('eviction_policy="evict_last"') == 2
        assert sum('"evict_last"' in line for line in loads[evict]) == 3  # cos, sin and the partner
    gelu = load_spec(SPEC_DIR / "bias_gelu_residual.yaml")
    base = seed(gelu)
    stream = render(gelu, base.origin.family, dict(base.origin.config, evict="stream"))
    reuse = render(gelu, base.origin.family, dict(base.origin.config, evict="reuse"))
    assert stream.count('"evict_first"') == 2 and reuse.count('"evict_first"') == 0  # x and the residual
    assert stream.count('"evict_last"') == reuse.count('"evict_last"') == 1  # the bias


def test_the_erf_knob_is_seeded_only_where_erf_is_computed_and_its_polynomial_is_erf():
    """gelu's exact form calls erf: its seed carries the knob, a spec without erf does not (a
    step of it would repeat the parent). The polynomial in fp32 stays within 5e-7 of erf (1.5e-7
    by its construction, the rest fp32 rounding: a few ulp near 1)."""
    gelu = seed(load_spec(SPEC_DIR / "bias_gelu_residual.yaml"))
    assert gelu.origin.config["erf"] == "poly"
    assert "erf" not in seed(load_spec(SPEC_DIR / "swiglu.yaml")).origin.config
    library = render(load_spec(SPEC_DIR / "bias_gelu_residual.yaml"), gelu.origin.family,
                     dict(gelu.origin.config, erf="library"))
    assert "tl.erf(" in library and "tl.erf(" not in gelu.code and "tl.exp(-a * a)" in gelu.code

    from kevolve.synth.offline.expr import POLY_ERF

    module = load_module("import triton\nimport triton.language as tl\n\n" + POLY_ERF + """

@triton.jit
def erf_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, _erf(tl.load(x_ptr + offs)))
""")
    x = torch.linspace(-6.0, 6.0, 4096)
    got = torch.empty_like(x)
    module.erf_kernel[(1,)](x, got, BLOCK=4096)
    assert (got.double() - torch.erf(x.double())).abs().max().item() < 5e-7


def test_ranked_transforms_of_every_seed_stay_correct():
    """The first moves the synthesizer would make from a seed, with no diagnosis, on a sample."""
    for name in ("layernorm", "bias_gelu_residual", "matmul_bias_relu"):
        spec = load_spec(SPEC_DIR / f"{name}.yaml")
        parent = seed(spec)
        children = OfflineSynthesizer().propose(request(spec, parent=attempt(parent), n=3))
        assert len(children) == 3
        for child in children:
            assert problems(spec, child.code, shapes=spec.interpreter_dims[:1], seeds=(5,)) == [], child.origin.note


def test_render_is_deterministic_and_replays_a_child():
    spec = load_spec(SPEC_DIR / "softmax.yaml")
    parent = seed(spec)
    assert render(spec, "softmax", parent.origin.config) == parent.code
    child = OfflineSynthesizer().propose(request(spec, parent=attempt(parent)))[0]
    replayed = render(spec, child.origin.family, apply(parent.origin.config, child.origin.transforms))
    assert replayed == child.code
    assert child.origin.config == apply(parent.origin.config, child.origin.transforms)
    assert '"variant"' in child.code  # the config travels in the module's docstring


def test_render_refuses_the_wrong_family_and_missing_knobs():
    spec = load_spec(SPEC_DIR / "softmax.yaml")
    with pytest.raises(SynthesisError, match="softmax family, not matmul"):
        render(spec, "matmul", {})
    with pytest.raises(SynthesisError, match="lacks the knob"):
        render(spec, "softmax", {"variant": "looped"})


@pytest.mark.parametrize("bound, expect", [
    ("memory", {"BLOCK_M", "evict", "persistent", "BLOCK_N", "online", "variant", "num_stages", "static_n"}),
    ("occupancy", {"num_warps"}),
    ("launch", {"persistent"}),
])
def test_transforms_follow_the_diagnosis_for_softmax(bound, expect):
    spec = load_spec(SPEC_DIR / "softmax.yaml")
    config = seed(spec, H100).origin.config
    first = transforms_for("softmax", config, Diagnosis(bound=bound, summary=""), H100)[0]
    assert first.name in expect
    if bound == "occupancy":
        assert first.value < config["num_warps"]
    if bound == "launch":
        assert first.value is True


def test_compute_bound_matmul_tries_tma_tiles_stages_grouping_and_split_k_first():
    spec = load_spec(SPEC_DIR / "matmul_bias_relu.yaml")
    seeds = OfflineSynthesizer().propose(request(spec, H100, n=4))
    assert seeds[0].origin.config["tma"] and not seeds[-1].origin.config["tma"]  # pointers kept as a seed
    config = seeds[0].origin.config
    moves = transforms_for("matmul", config, Diagnosis(bound="compute", summary=""), H100)
    assert {t.name for t in moves[:5]} <= {"BLOCK_N", "BLOCK_M", "num_stages", "GROUP_M", "BLOCK_K", "SPLIT_K"}
    pointers = seeds[-1].origin.config
    assert transforms_for("matmul", pointers, Diagnosis(bound="compute", summary=""), H100)[:2] == [
        Transform("tma", True), Transform("BLOCK_N", pointers["BLOCK_N"] * 2)]
    memory = transforms_for("matmul", config, Diagnosis(bound="occupancy", summary=""), H100)
    assert memory[0] == Transform("num_warps", config["num_warps"] // 2)
    a100 = OfflineSynthesizer().propose(request(spec, load_target("a100"), n=4))
    assert all("tma" not in c.origin.config for c in a100)  # no TMA before Hopper


def test_suggestions_lead_and_inert_knobs_are_left_alone():
    spec = load_spec(SPEC_DIR / "softmax.yaml")
    config = seed(spec, H100).origin.config
    assert config["variant"] == "whole_row" and not config["persistent"]
    diag = Diagnosis(bound="memory", summary="", suggestions=("try a persistent grid",))
    moves = transforms_for("softmax", config, diag, H100)
    assert moves[0] == Transform("persistent", True)
    assert not {"BLOCK_N", "online", "programs_per_sm"} & {t.name for t in moves}


def test_children_never_repeat_the_parent_or_its_history():
    spec = load_spec(SPEC_DIR / "gelu_tanh.yaml")
    syn = OfflineSynthesizer()
    parent = seed(spec, H100)
    first = syn.propose(request(spec, H100, parent=attempt(parent), n=4))
    history = tuple(attempt(c) for c in first)
    again = syn.propose(request(spec, H100, parent=attempt(parent), history=history, n=4))
    seen = {config_key(parent.origin.config)} | {config_key(c.origin.config) for c in first}
    assert all(config_key(c.origin.config) not in seen for c in again)
    assert all(c.origin.memory_mode == "inherit" and c.origin.transforms for c in again)


def test_siblings_mode_moves_toward_the_best_sibling():
    spec = load_spec(SPEC_DIR / "gelu_tanh.yaml")
    syn = OfflineSynthesizer()
    parent = seed(spec, H100)
    kids = syn.propose(request(spec, H100, parent=attempt(parent), n=3))
    siblings = (attempt(kids[0], time_ms=2.0), attempt(kids[1], time_ms=0.5), attempt(kids[2], outcome="wrong",
                                                                                     time_ms=None))
    best = kids[1].origin.config
    out = syn.propose(request(spec, H100, parent=attempt(parent), siblings=siblings, memory_mode="siblings", n=2))
    assert "best sibling" in out[0].origin.note
    # the sibling changed one knob: adopt it and take one more step
    adopted, further = out[0].origin.transforms
    assert best[adopted.name] == adopted.value != parent.origin.config[adopted.name]
    assert further.name != adopted.name and out[0].origin.config == apply(best, [further])
    assert all(config_key(c.origin.config) not in {config_key(k.origin.config) for k in kids} for c in out)


def test_restart_jumps_a_few_knobs_to_configs_not_yet_tried():
    spec = load_spec(SPEC_DIR / "layernorm.yaml")
    first, *others = OfflineSynthesizer().propose(request(spec, H100, n=3))
    history = (attempt(first), *map(attempt, others))
    out = OfflineSynthesizer().propose(request(spec, H100, parent=attempt(first), memory_mode="restart", n=6,
                                               history=history))
    tried = {config_key(a.origin.config) for a in history}
    for c in out:
        changed = [k for k in first.origin.config if c.origin.config[k] != first.origin.config[k]]
        assert 2 <= len(changed) == len(c.origin.transforms) and config_key(c.origin.config) not in tried
        assert c.origin.note.startswith("restart")
    jumps = [c for c in out if c.origin.note.startswith("restart: a jump")]
    assert jumps and all(len(c.origin.transforms) <= 3 for c in jumps)


def test_skills_are_tried_first_when_they_apply():
    spec = load_spec(SPEC_DIR / "cross_entropy.yaml")
    parent = seed(spec, H100)
    skill = Skill(id="ce-wide", operator="cross_entropy", family="cross_entropy", target="h100-sxm",
                  shape_class="rows=8192 cols=50257", change="wider chunks, more rows",
                  transforms=(Transform("BLOCK_N", 8192), Transform("BLOCK_M", 2)), motivation="memory-bound",
                  before_ms=0.6, after_ms=0.3)
    alien = Skill(id="mm", operator="matmul", family="matmul", target="h100-sxm", shape_class="", change="",
                  transforms=(Transform("SPLIT_K", 2),), motivation="", before_ms=1, after_ms=0.5)
    out = OfflineSynthesizer().propose(request(spec, H100, parent=attempt(parent), skills=(alien, skill), n=2))
    assert out[0].origin.transforms == skill.transforms and "skill ce-wide" in out[0].origin.note
    assert out[0].origin.skill_id == "ce-wide" and out[1].origin.skill_id is None
    assert all(t.name != "SPLIT_K" for c in out for t in c.origin.transforms)


def test_randomness_is_seeded():
    spec = load_spec(SPEC_DIR / "swiglu.yaml")
    parent = seed(spec, H100)
    req = request(spec, H100, parent=attempt(parent), memory_mode="restart", n=10)  # past the seeds
    a = [c.origin.config for c in OfflineSynthesizer(rng_seed=1).propose(req)]
    assert a == [c.origin.config for c in OfflineSynthesizer(rng_seed=1).propose(req)]
    assert a != [c.origin.config for c in OfflineSynthesizer(rng_seed=2).propose(req)]


def test_seeds_are_sized_for_the_target():
    spec = load_spec(SPEC_DIR / "softmax.yaml")  # rows of 8192 on a GPU, 97-300 under the interpreter
    gpu = OfflineSynthesizer().propose(request(spec, H100, n=3))
    cpu = OfflineSynthesizer().propose(request(spec, INTERPRETER, n=3))
    assert gpu[0].origin.config["BLOCK_N"] == 8192 and gpu[0].origin.config["num_warps"] >= 8
    assert cpu[0].origin.config["BLOCK_N"] == 128 and cpu[0].origin.config["num_warps"] == 1
    assert len({config_key(c.origin.config) for c in gpu}) == 3
    mi300 = OfflineSynthesizer().propose(request(spec, load_target("mi300x")))[0]
    assert mi300.origin.config["num_warps"] < gpu[0].origin.config["num_warps"]  # 64-lane wavefronts


def test_a_parent_from_elsewhere_restarts_from_seeds():
    spec = load_spec(FIXTURES / "kernelbench" / "relu_problem.py")
    llm = Attempt(code="...", origin=Origin(synthesizer="llm", model="m"), outcome="correct", time_ms=1.0)
    out = OfflineSynthesizer().propose(request(spec, parent=llm))
    assert out and "restart from a pointwise seed" in out[0].origin.note
    assert template_for(out[0].origin.family).families[0] == "pointwise"


def test_the_harness_diagnosis_words_map_to_moves():
    from kevolve.evaluate.diagnose import suggestions
    from kevolve.evaluate.result import KernelStats

    spec = load_spec(SPEC_DIR / "matmul_bias_relu.yaml")
    config = seed(spec, H100).origin.config
    smem = KernelStats("k", 128, 0, 200_000, 8, 3, occupancy_warps_per_sm=8, occupancy_limiter="shared memory")
    diag = Diagnosis(bound="occupancy", summary="", suggestions=suggestions("occupancy", "compute", [smem], 0.3))
    assert transforms_for("matmul", config, diag, H100)[0] == Transform("num_stages", config["num_stages"] - 1)
    spilled = KernelStats("k", 255, 40, 0, 8, 3)
    diag = Diagnosis(bound="compute", summary="", suggestions=suggestions("compute", "compute", [spilled], 0.5))
    assert transforms_for("matmul", config, diag, H100)[0] in (Transform("BLOCK_N", config["BLOCK_N"] // 2),
                                                               Transform("BLOCK_M", config["BLOCK_M"] // 2))
    softmax = load_spec(SPEC_DIR / "softmax.yaml")
    looped = dict(seed(softmax, H100).origin.config, variant="looped")
    diag = Diagnosis(bound="memory", summary="", suggestions=suggestions("memory", "memory", [], 0.6))
    assert transforms_for("softmax", looped, diag, H100)[0] == Transform("variant", "whole_row")


TMA_PROBLEMS = {  # KernelBench-style; every operand row on 16 bytes, so TMA reads them all
    "linear_relu": ("self.proj = nn.Linear(32, 48)", "x", "return torch.relu(self.proj(x))",
                    "[torch.rand(40, 32)]"),  # the weight is read through .t(): B stored transposed
    "a_transposed": ("pass", "a, b", "return torch.matmul(a.T, b)", "[torch.rand(24, 40), torch.rand(24, 36)]"),
}


@pytest.mark.parametrize("name", sorted(TMA_PROBLEMS))
def test_matmul_by_tma_reads_transposed_operands_and_falls_back_to_pointers(tmp_path, name):
    init, args, body, inputs = TMA_PROBLEMS[name]
    (tmp_path / f"{name}.py").write_text(
        "import torch\nimport torch.nn as nn\n\n\nclass Model(nn.Module):\n    def __init__(self):\n"
        f"        super().__init__()\n        {init}\n\n    def forward(self, {args}):\n        {body}\n\n\n"
        f"def get_inputs():\n    return {inputs}\n\n\ndef get_init_inputs():\n    return []\n")
    spec = load_spec(tmp_path / f"{name}.py")
    config = dict(seed(spec).origin.config, tma=True)
    code = render(spec, "matmul", config)
    assert problems(spec, code, seeds=(1,)) == [], config
    module = load_module(code)
    made, read_by = module._tma_operand, []  # per operand: stored transposed, or None (pointers)

    def recording(t, block):
        desc, transposed = made(t, block)
        read_by.append(transposed if desc is not None else None)
        return desc, transposed

    module._tma_operand = recording
    runtime = OperatorRuntime(spec)
    dims = spec.interpreter_dims[0]
    runtime.candidate(module, dims)(*runtime.inputs(dims, 1))
    assert read_by == ([False, True] if name == "linear_relu" else [True, False])
    odd = module._tma_operand(torch.rand(5, 7), (16, 16))  # rows of 28 bytes: pointers instead
    assert odd == (None, False)


def _launches(module, kernel: str) -> list[dict]:
    """Record the compile-time arguments of each launch of a module's kernel."""
    seen, jit = [], getattr(module, kernel)

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(kwargs)
                return jit[grid](*args, **kwargs)
            return launch

    setattr(module, kernel, Spy())
    return seen


@pytest.mark.parametrize("name, kernel, even, uneven, knobs", [
    ("gelu_tanh", "_pointwise_kernel", {"M": 4, "N": 256}, {"M": 3, "N": 100}, {"BLOCK": 256}),
    ("rotary_embedding", "_pointwise_kernel", {"B": 1, "H": 2, "S": 8, "D": 64}, {"B": 1, "H": 1, "S": 3, "D": 6},
     {"BLOCK": 256}),
    ("rmsnorm", "_rowwise_whole_row", {"M": 32, "N": 256}, {"M": 5, "N": 97}, {}),
    ("softmax", "_rowwise_whole_row", {"M": 32, "N": 128}, {"M": 3, "N": 100}, {"static_n": True}),
    ("rmsnorm", "_rowwise_looped", {"M": 32, "N": 256}, {"M": 5, "N": 97},
     {"variant": "looped", "BLOCK_N": 64, "BLOCK_M": 2, "static_n": True}),
    ("layernorm", "_rowwise_looped", {"M": 6, "N": 128}, {"M": 6, "N": 100}, {"variant": "looped", "BLOCK_N": 32, "BLOCK_M": 2}),
])
def test_unmasked_tiles_drop_the_masks_only_where_the_tiles_divide_the_shape(name, kernel, even, uneven, knobs):
    spec = load_spec(SPEC_DIR / f"{name}.yaml")
    request = SynthesisRequest(spec=spec, target=INTERPRETER, ceilings=datasheet_ceilings(INTERPRETER))
    config = dict(OfflineSynthesizer().propose(request)[0].origin.config, unmasked=True, **knobs)
    family = match_family(spec).family
    code = render(spec, family, config)
    assert problems(spec, code, [even, uneven]) == []
    runtime = OperatorRuntime(spec)
    for dims, want in ((even, True), (uneven, False)):
        module = load_module(code)
        launches = _launches(module, kernel)
        runtime.candidate(module, dims)(*runtime.inputs(dims, 1))
        assert [kw["EVEN"] for kw in launches] == [want], dims
    masked = render(spec, family, dict(config, unmasked=False))
    module = load_module(masked)
    launches = _launches(module, kernel)
    runtime.candidate(module, even)(*runtime.inputs(even, 1))
    assert [kw["EVEN"] for kw in launches] == [False]

