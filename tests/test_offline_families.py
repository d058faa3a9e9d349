"""Family detection from the traced reference, and seeds that are correct under the interpreter
on every interpreter shape of every example spec (and of KernelBench problems)."""

import textwrap

import pytest

from conftest import FIXTURES, REPO
from kevolve.hardware.target import load_target
from kevolve.hardware.calibrate import datasheet_ceilings
from kevolve.specs import discover, load_spec
from kevolve.synth.base import SynthesisError, SynthesisRequest
from kevolve.synth.offline import OfflineSynthesizer, match_family
from offline_support import problems

EXPECTED = {
    "bias_gelu_residual": "pointwise", "bucketize": "bucketize", "clamp_log1p": "pointwise",
    "cross_entropy": "cross_entropy", "embedding_bag_sum": "embedding_bag", "gelu_tanh": "pointwise",
    "jagged_segment_sum": "segment_sum", "layernorm": "normalization", "log_softmax": "softmax",
    "matmul_bias_relu": "matmul", "rmsnorm": "normalization", "rotary_embedding": "rotary",
    "softmax": "softmax", "softmax_fp32": "softmax", "swiglu": "pointwise",
    "relu_problem": "pointwise", "scale_bias_problem": "matmul",
}
SPECS = discover([REPO / "specs"]) + sorted((FIXTURES / "kernelbench").glob("*.py"))
INTERPRETER = load_target("cpu-interpreter")


def seeds(spec, n=1):
    request = SynthesisRequest(spec=spec, target=INTERPRETER, ceilings=datasheet_ceilings(INTERPRETER), n=n)
    return OfflineSynthesizer().propose(request)


def test_every_example_spec_is_covered():
    assert {p.stem for p in SPECS} == set(EXPECTED)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_family_read_from_the_graph(path):
    found = match_family(load_spec(path))
    assert found.family == EXPECTED[path.stem], found.reason
    assert found.reason


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_seed_is_correct_on_every_interpreter_shape(path):
    spec = load_spec(path)
    (candidate,) = seeds(spec)
    assert candidate.origin.synthesizer == "offline" and candidate.origin.family == EXPECTED[path.stem]
    assert candidate.origin.transforms == () and candidate.origin.note.startswith("seed 1")
    assert "@triton.jit" in candidate.code and "tl.load" in candidate.code and "tl.store" in candidate.code
    assert problems(spec, candidate.code) == []


def write_spec(tmp_path, name, source, inputs, shapes, params="{}", family=None):
    (tmp_path / "ref.py").write_text(textwrap.dedent(source))
    fam = f"family: {family}\n" if family else ""
    (tmp_path / f"{name}.yaml").write_text(
        f"name: {name}\n{fam}reference: ref.py:{name}\nshapes:\n  tune: {shapes[0]}\n"
        f"  interpreter: [{', '.join(shapes)}]\ninputs:\n" + "".join(f"  - {i}\n" for i in inputs)
        + f"params: {params}\n")
    return load_spec(tmp_path / f"{name}.yaml")


def test_the_family_hint_is_not_the_answer(tmp_path):
    spec = write_spec(tmp_path, "gelu_named_softmax", """
        import torch
        def gelu_named_softmax(x):
            return torch.nn.functional.gelu(x)
        """, ["{name: x, shape: [M, N], dtype: fp32, dist: {kind: normal}}"], ["{M: 3, N: 50}"], family="softmax")
    assert match_family(spec).family == "pointwise"


def test_an_operator_no_family_covers_needs_an_llm(tmp_path):
    spec = write_spec(tmp_path, "running_total", """
        import torch
        def running_total(x):
            return torch.cumsum(x, dim=-1)
        """, ["{name: x, shape: [M, N], dtype: fp32, dist: {kind: normal}}"], ["{M: 3, N: 50}"])
    with pytest.raises(SynthesisError) as err:
        match_family(spec)
    assert "needs an LLM" in err.value.message and "cumsum" in err.value.message
    with pytest.raises(SynthesisError, match="needs an LLM"):
        seeds(spec)


def test_two_matmuls_need_an_llm(tmp_path):
    spec = write_spec(tmp_path, "mlp", """
        import torch
        def mlp(x, w1, w2):
            return torch.relu(x @ w1) @ w2
        """, ["{name: x, shape: [M, K], dtype: fp32, dist: {kind: normal}}",
              "{name: w1, shape: [K, K], dtype: fp32, dist: {kind: normal}}",
              "{name: w2, shape: [K, K], dtype: fp32, dist: {kind: normal}}"], ["{M: 8, K: 16}"])
    with pytest.raises(SynthesisError, match="more than one matmul.*needs an LLM"):
        match_family(spec)


def test_a_full_reduction_of_an_input_broadcast_along_one_reduced_dim_needs_an_llm(tmp_path):
    """mean(relu(1 - p * t)) over (B, N) with a (B,) target: the reduced dims are not one column
    run for the target, so no offline kernel can walk them; reported as not covered rather than
    proposed and crashed."""
    spec = write_spec(tmp_path, "hinge", """
        import torch
        def hinge(p, t):
            return torch.mean(torch.relu(1 - p * t))
        """, ["{name: p, shape: [B, B], dtype: fp32, dist: {kind: normal}}",
              "{name: t, shape: [B], dtype: fp32, dist: {kind: normal}}"], ["{B: 9}"])
    with pytest.raises(SynthesisError, match="broadcast along some of the reduced dims.*needs an LLM"):
        match_family(spec)


# Generality: graphs the example specs do not exercise.

def test_pointwise_broadcasts_lower_rank_and_transposed_inputs(tmp_path):
    spec = write_spec(tmp_path, "mixed", """
        import torch
        def mixed(x, row, col, y):
            return torch.where(x > 0, x * row.unsqueeze(-1), torch.exp(x) - 1) + col * y.t() - 2.0
        """, ["{name: x, shape: [M, N], dtype: fp32, dist: {kind: normal}}",
              "{name: row, shape: [M], dtype: fp32, dist: {kind: normal}}",
              "{name: col, shape: [N], dtype: fp32, dist: {kind: normal}}",
              "{name: y, shape: [N, M], dtype: fp32, dist: {kind: normal}}"], ["{M: 5, N: 37}", "{M: 9, N: 16}"])
    found = match_family(spec)
    assert found.family == "pointwise" and "broadcast" in found.reason
    assert problems(spec, seeds(spec)[0].code) == []


def test_reduction_over_a_middle_dim_with_an_epilogue(tmp_path):
    spec = write_spec(tmp_path, "rms_over_channels", """
        import torch
        def rms_over_channels(x):
            return torch.sqrt((x * x).mean(dim=1) + 1e-3)
        """, ["{name: x, shape: [B, C, L], dtype: fp32, dist: {kind: normal}}"], ["{B: 3, C: 20, L: 7}"])
    assert match_family(spec).family == "reduction"
    for candidate in seeds(spec, n=3):
        assert problems(spec, candidate.code) == [], candidate.origin.config


def test_kernelbench_style_softmax_with_a_prologue(tmp_path):
    (tmp_path / "scaled_softmax.py").write_text(textwrap.dedent("""
        import torch
        import torch.nn as nn

        class Model(nn.Module):
            def __init__(self, scale):
                super().__init__()
                self.scale = scale

            def forward(self, x):
                return torch.softmax(x * self.scale, dim=1)

        batch_size = 64
        dim = 300

        def get_inputs():
            return [torch.rand(batch_size, dim)]

        def get_init_inputs():
            return [0.5]
        """))
    spec = load_spec(tmp_path / "scaled_softmax.py")
    assert match_family(spec).family == "softmax"
    assert problems(spec, seeds(spec)[0].code) == []


def test_linear_on_a_3d_input(tmp_path):
    (tmp_path / "proj.py").write_text(textwrap.dedent("""
        import torch
        import torch.nn as nn

        class Model(nn.Module):
            def __init__(self, d_in, d_out):
                super().__init__()
                self.proj = nn.Linear(d_in, d_out)

            def forward(self, x):
                return torch.tanh(self.proj(x))

        batch = 4
        seq = 24
        d_in = 40
        d_out = 36

        def get_inputs():
            return [torch.rand(batch, seq, d_in)]

        def get_init_inputs():
            return [d_in, d_out]
        """))
    spec = load_spec(tmp_path / "proj.py")
    assert match_family(spec).family == "matmul"
    code = seeds(spec)[0].code
    assert "class ModelNew(nn.Module)" in code and "nn.Linear(d_in, d_out)" in code
    assert problems(spec, code) == []


# KernelBench-style problems (level 1 shapes, scaled down): family and a correct seed.
KERNELBENCH = {
    "sum_keepdim": ("x", "return torch.sum(x, dim=1, keepdim=True)", "[torch.rand(B, D1, D2)]",
                    "B = 4\nD1 = 33\nD2 = 20", "reduction"),
    "max_over_dim": ("x", "return torch.max(x, dim=1)[0]", "[torch.rand(B, D1, D2)]",
                     "B = 4\nD1 = 33\nD2 = 20", "reduction"),
    "softmax_dim0": ("x", "return torch.softmax(x, dim=0)", "[torch.rand(B, D1)]", "B = 37\nD1 = 24", "softmax"),
    "layernorm_3d": ("x", "return torch.nn.functional.layer_norm(x, x.shape[1:])", "[torch.randn(B, F, D1, D2)]",
                     "B = 3\nF = 4\nD1 = 8\nD2 = 10", "normalization"),
    "activations": ("x", "return torch.nn.functional.softplus(torch.selu(x)) + torch.nn.functional.softsign(x) "
                         "+ torch.nn.functional.hardtanh(torch.nn.functional.elu(x, alpha=0.7), -0.5, 0.5)",
                    "[torch.randn(B, D1)]", "B = 20\nD1 = 300", "pointwise"),
    "matmul_a_transposed": ("a, b", "return torch.matmul(a.T, b)", "[torch.rand(K, M), torch.rand(K, N)]",
                            "M = 40\nK = 24\nN = 36", "matmul"),
    "batched_matmul": ("a, b", "return torch.bmm(a, b)", "[torch.rand(B, M, K), torch.rand(B, K, N)]",
                       "B = 3\nM = 20\nK = 24\nN = 36", "matmul"),
}


@pytest.mark.parametrize("name", sorted(KERNELBENCH))
def test_kernelbench_style_problems(tmp_path, name):
    args, body, inputs, sizes, family = KERNELBENCH[name]
    (tmp_path / f"{name}.py").write_text(
        "import torch\nimport torch.nn as nn\n\n\nclass Model(nn.Module):\n    def __init__(self):\n"
        f"        super().__init__()\n\n    def forward(self, {args}):\n        {body}\n\n\n{sizes}\n\n\n"
        f"def get_inputs():\n    return {inputs}\n\n\ndef get_init_inputs():\n    return []\n")
    spec = load_spec(tmp_path / f"{name}.py")
    assert match_family(spec).family == family
    for candidate in seeds(spec, n=2):
        assert problems(spec, candidate.code, seeds=(1,)) == [], candidate.origin.config


def test_an_argmax_needs_an_llm(tmp_path):
    spec = write_spec(tmp_path, "argmax_rows", """
        import torch
        def argmax_rows(x):
            return torch.max(x, dim=1)[1]
        """, ["{name: x, shape: [M, N], dtype: fp32, dist: {kind: normal}}"], ["{M: 3, N: 50}"])
    with pytest.raises(SynthesisError, match="argmax.*needs an LLM"):
        match_family(spec)


def test_a_data_dependent_shape_needs_an_llm(tmp_path):
    spec = write_spec(tmp_path, "positives", """
        import torch
        def positives(x):
            return x[x > 0] * 2
        """, ["{name: x, shape: [N], dtype: fp32, dist: {kind: normal}}"], ["{N: 50}"])
    with pytest.raises(SynthesisError, match="computes gt, index, mul.*needs an LLM"):
        match_family(spec)


def test_embedding_lookup_with_2d_ids(tmp_path):
    spec = write_spec(tmp_path, "lookup", """
        import torch
        def lookup(table, ids):
            return torch.nn.functional.embedding(ids, table)
        """, ["{name: table, shape: [V, D], dtype: bf16, dist: {kind: normal}}",
              "{name: ids, shape: [B, S], dtype: int64, dist: {kind: randint, low: 0, high: V}}"],
        ["{V: 50, D: 40, B: 3, S: 7}", "{V: 9, D: 128, B: 2, S: 33}"])
    assert match_family(spec).family == "embedding"
    for candidate in seeds(spec, n=3):
        assert problems(spec, candidate.code) == [], candidate.origin.config



def test_cross_entropy_rows_of_odd_length_from_any_address_and_with_masked_classes():
    """Chunks start on 16-byte boundaries behind each row: rows of odd length, a base pointer that
    is not 16-byte aligned (no aligned chunks then) and -inf logits must all give the reference."""
    import torch
    import torch.nn.functional as F

    from offline_support import load_module

    spec = load_spec(REPO / "specs" / "cross_entropy.yaml")
    m, v = 7, 203
    flat = torch.randn(m * v + 1, generator=torch.Generator().manual_seed(4)).mul(4).to(torch.bfloat16)
    shifted = flat[1:].view(m, v)  # one bf16 element past an aligned allocation
    shifted[2, ::3] = float("-inf")
    target = torch.randint(0, v, (m,), generator=torch.Generator().manual_seed(5))
    target[2] = 1  # a class with a finite logit in the row with masked classes
    candidates = seeds(spec, n=6)
    assert {(c.origin.config["lse"], c.origin.config["aligned"]) for c in candidates} >= {
        ("grouped", True), ("one_exp", True), ("rescale", False)}
    for candidate in candidates:
        fn = getattr(load_module(candidate.code), spec.entry_point)
        for logits in (shifted, shifted.clone()):
            want = F.cross_entropy(logits.double(), target)
            got = fn(logits, target)
            assert got.dtype == torch.float32
            assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5), (candidate.origin.config, got, want)


@pytest.mark.parametrize("name", ["embedding_bag_sum", "jagged_segment_sum"])
def test_every_jagged_seed_is_correct_with_empty_and_long_segments(name):
    """The seeds that hold a whole bag or segment in one step as well as the ones that walk it:
    odd widths, segments longer than a step and empty ones (about one in ten)."""
    spec = load_spec(REPO / "specs" / f"{name}.yaml")
    shapes = [dict(d) for d in spec.interpreter_dims] + [
        {"V": 70, "D": 24, "B": 3, "L": 150} if name == "embedding_bag_sum" else {"L": 150, "D": 24, "B": 3}]
    candidates = seeds(spec, n=5)
    assert len({c.origin.config.get("UNROLL", c.origin.config.get("BLOCK_L")) for c in candidates}) >= 3
    for candidate in candidates:
        assert problems(spec, candidate.code, shapes=shapes, seeds=(1,)) == [], candidate.origin.config


def test_bucketize_searches_with_ties_infinities_nan_and_odd_boundaries():
    """Values equal to boundaries, repeated boundaries, infinities, NaN (past every boundary, as in
    PyTorch), more pieces or cells than boundaries, a single boundary, a point range, infinite
    boundaries and more boundaries than a packed table entry holds: every search lands where
    torch.bucketize does."""
    import torch

    from kevolve.synth.offline import render
    from offline_support import load_module

    spec = load_spec(REPO / "specs" / "bucketize.yaml")
    ties = torch.tensor([-2.0, -1.0, -1.0, 0.0, 0.5, 0.5, 0.5, 1.0, 3.0])
    x = torch.cat([ties, torch.linspace(-3, 4, 301), torch.tensor([float("inf"), -float("inf"), float("nan")])])
    odd = [torch.tensor([1.0]), torch.tensor([1.0, 1.0, 1.0]), torch.tensor([-float("inf"), 0.0, float("inf")]),
           torch.sort(torch.randn(1000, generator=torch.Generator().manual_seed(0)))[0]]
    configs = [dict(search="split", SPLITS=s) for s in (4, 8, 64)] + [dict(search="binary"), dict(search="linear")]
    configs += [dict(search="table", CELLS=c) for c in (64, 256)]
    for change in configs:
        config = dict(seeds(spec)[0].origin.config, BLOCK=64, **change)
        fn = getattr(load_module(render(spec, "bucketize", config)), spec.entry_point)
        for boundaries in [ties] + odd:
            assert torch.equal(fn(x, boundaries), torch.bucketize(x, boundaries)), (change, len(boundaries))
    many = torch.sort(torch.rand(70000, generator=torch.Generator().manual_seed(1)))[0]  # unpacked table
    values = torch.cat([many[::997], torch.rand(200, generator=torch.Generator().manual_seed(2))])
    fn = getattr(load_module(render(spec, "bucketize", dict(seeds(spec)[0].origin.config, BLOCK=64, search="table",
                                                            CELLS=64))), spec.entry_point)
    assert torch.equal(fn(values, many), torch.bucketize(values, many))


def test_pointwise_reads_a_column_broadcast_input_at_offs_mod_c(tmp_path):
    # Biases over the last dim of a 3-d tensor: the kernel walks the output flat and reads each
    # at offs % C; a last dim that is not a power of two, and rows of one.
    spec = write_spec(tmp_path, "two_biases", """
        import torch
        def two_biases(x, b, s):
            return torch.tanh(x + b) * s
        """, ["{name: x, shape: [B, L, N], dtype: fp32, dist: {kind: normal}}",
              "{name: b, shape: [N], dtype: fp32, dist: {kind: normal}}",
              "{name: s, shape: [N], dtype: fp32, dist: {kind: normal}}"], ["{B: 2, L: 5, N: 37}", "{B: 3, L: 1, N: 64}"])
    found = match_family(spec)
    assert found.family == "pointwise" and found.match.detail.broadcast_flat
    for candidate in seeds(spec):
        assert "offs % C" in candidate.code
        assert problems(spec, candidate.code) == [], candidate.origin.config


def test_pointwise_reads_a_table_of_the_trailing_dims_at_offs_mod_its_size(tmp_path):
    # Rotary's cos/sin tables [S, D] under x [B, H, S, D], one as [1, S, D]: the kernel walks the
    # output flat, reads each table at offs % (S * D) and x's rotate-half partner at offs +- D/2.
    spec = write_spec(tmp_path, "rope", """
        import torch
        def rope(x, cos, sin):
            half = x.shape[-1] // 2
            rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
            return x * cos + rotated * sin
        """, ["{name: x, shape: [B, H, S, D], dtype: fp32, dist: {kind: normal}}",
              "{name: cos, shape: [S, D], dtype: fp32, dist: {kind: normal}}",
              "{name: sin, shape: [1, S, D], dtype: fp32, dist: {kind: normal}}"],
        ["{B: 2, H: 3, S: 5, D: 16}", "{B: 1, H: 2, S: 1, D: 6}"])
    found = match_family(spec)
    assert found.family == "rotary" and found.match.detail.broadcast_flat
    for candidate in seeds(spec, n=2):
        assert "offs % l1_P" in candidate.code and "offs + HALF" in candidate.code
        assert problems(spec, candidate.code) == [], candidate.origin.config


def test_rows_up_to_the_longest_whole_row_tile_are_seeded_whole(tmp_path):
    h100 = load_target("h100-sxm")
    spec = load_spec(REPO / "specs" / "softmax_fp32.yaml")  # rows of 32000
    gpu = OfflineSynthesizer().propose(SynthesisRequest(spec=spec, target=h100, ceilings=datasheet_ceilings(h100)))[0]
    assert {k: gpu.origin.config[k] for k in ("variant", "BLOCK_N", "num_warps")} == {
        "variant": "whole_row", "BLOCK_N": 32768, "num_warps": 16}
    # the same seed under the interpreter: a row that fills the tile, and a short one beside it
    long_rows = write_spec(tmp_path, "softmax_long", """
        import torch
        def softmax_long(x):
            return torch.softmax(x, dim=-1)
        """, ["{name: x, shape: [M, N], dtype: fp32, dist: {kind: normal, std: 4.0}}"],
        ["{M: 2, N: 20000}", "{M: 3, N: 700}"])
    (candidate,) = seeds(long_rows)
    assert candidate.origin.config["variant"] == "whole_row" and candidate.origin.config["BLOCK_N"] == 32768
    assert problems(long_rows, candidate.code) == []


def test_log1p_calls_libdevice_on_gpus_and_a_portable_formula_under_the_interpreter():
    from kevolve.evaluate.static_checks import rejection_reason, static_checks

    spec = load_spec(REPO / "specs" / "clamp_log1p.yaml")
    h100 = load_target("h100-sxm")
    gpu = OfflineSynthesizer().propose(SynthesisRequest(spec=spec, target=h100, ceilings=datasheet_ceilings(h100)))[0]
    assert gpu.origin.config["libdevice"] and "libdevice.log1p(x)" in gpu.code
    assert rejection_reason(static_checks(gpu.code, spec.entry_point)) == ""  # the harness takes it
    cpu = seeds(spec)[0]
    assert not cpu.origin.config["libdevice"] and "libdevice" not in cpu.code.replace('"libdevice": false', "")
    assert problems(spec, cpu.code) == []


def test_a_broadcast_input_rotated_half_walks_the_tile(tmp_path):
    # x [S, D] under a table [B, S, D]: x repeats along the flat output but its rotate-half partner
    # is read through the tile's column shuffle, not at offs +- HALF.
    spec = write_spec(tmp_path, "rope_shared", """
        import torch
        def rope_shared(x, cos):
            half = x.shape[-1] // 2
            return torch.cat((-x[..., half:], x[..., :half]), dim=-1) * cos
        """, ["{name: x, shape: [S, D], dtype: fp32, dist: {kind: normal}}",
              "{name: cos, shape: [B, S, D], dtype: fp32, dist: {kind: normal}}"], ["{B: 3, S: 5, D: 8}"])
    found = match_family(spec)
    assert found.family == "rotary" and not found.match.detail.broadcast_flat
    for candidate in seeds(spec, n=2):
        assert problems(spec, candidate.code) == [], candidate.origin.config
