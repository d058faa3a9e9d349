import pytest
import torch

from conftest import FIXTURES, REPO, run_cli
from kevolve.errors import SpecError
from kevolve.specs import discover, load_spec
from kevolve.specs.compare import compare
from kevolve.specs.model import Tolerance, eval_dim
from kevolve.specs.runtime import OperatorRuntime, as_outputs
from kevolve.specs.validate import validate_spec

EXAMPLES = discover([REPO / "specs"])
BROKEN = FIXTURES / "broken_specs"

# Each broken fixture, the field its one error line must name, and words of the reason.
BROKEN_CASES = {
    "unknown_dtype.yaml": ("inputs.x.dtype", "unknown dtype 'float24'"),
    "missing_reference.yaml": ("reference", "does_not_exist.py not found"),
    "missing_function.yaml": ("reference", "has no triple"),
    "reference_fails.yaml": ("reference", "fails on its own inputs"),
    "inconsistent_shapes.yaml": ("inputs", "shapes inconsistent"),
    "undefined_dimension.yaml": ("inputs.x.shape", "dimension 'Q' is not defined"),
    "not_yaml.yaml": ("line 2", "not valid YAML"),
}


def test_examples_cover_what_users_tune():
    names = {p.stem for p in EXAMPLES}
    assert {"softmax", "layernorm", "rmsnorm", "gelu_tanh", "swiglu", "bias_gelu_residual",
            "cross_entropy", "rotary_embedding", "matmul_bias_relu", "embedding_bag_sum",
            "jagged_segment_sum", "bucketize", "clamp_log1p"} <= names
    dtypes = {i.dtype for p in EXAMPLES for i in load_spec(p).inputs}
    assert {"bfloat16", "float32"} <= dtypes


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_reference_runs_on_cpu_at_reduced_shape(path):
    spec = load_spec(path)
    validate_spec(spec)  # raises on any problem
    runtime = OperatorRuntime(spec)
    dims = spec.interpreter_dims[0]
    outs = as_outputs(runtime.reference(dims)(*runtime.inputs(dims, seed=1)))
    assert all(o.numel() > 0 for o in outs)
    # The inputs are not degenerate: two seeds give different values.
    a, b = runtime.inputs(dims, seed=1), runtime.inputs(dims, seed=2)
    assert any(not torch.equal(x, y) for x, y in zip(a, b))


def test_validate_cli_accepts_every_example():
    result = run_cli("specs", "validate", "specs/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\nok ") + result.stdout.startswith("ok ") == len(EXAMPLES)


@pytest.mark.parametrize("name", sorted(BROKEN_CASES))
def test_broken_spec_gets_one_clear_line(name):
    field, reason = BROKEN_CASES[name]
    result = run_cli("specs", "validate", f"tests/fixtures/broken_specs/{name}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"kevolve: error: tests/fixtures/broken_specs/{name}: {field}: ")
    assert reason in lines[0]


def test_kernelbench_problem_loads_with_derived_shapes():
    spec = load_spec(FIXTURES / "kernelbench" / "scale_bias_problem.py")
    assert spec.format == "kernelbench" and spec.entry_point == "ModelNew"
    assert spec.tune_dims == {"batch_size": 256, "in_features": 1024, "out_features": 512}
    small = spec.interpreter_dims[0]
    assert small["batch_size"] * small["in_features"] <= 1 << 16
    validate_spec(spec)
    runtime = OperatorRuntime(spec)
    x = runtime.inputs(small, seed=0)
    ref = runtime.reference(small, seed=3)(*x)
    ref64 = runtime.reference(small, float64=True, seed=3)(*x)
    assert ref.shape == (small["batch_size"], small["out_features"])
    assert compare(ref, ref64, Tolerance.for_dtype("float32")).ok


# A problem in the style of KernelBench's newer losses: a size tuple, heavy-tailed inputs drawn
# from torch.distributions, and a (B,) target broadcast against (B, N) predictions, which ties
# the tuple's size to the batch.
TUPLE_PROBLEM = """
import torch
import torch.nn as nn
from torch.distributions import Pareto


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, predictions, targets):
        return torch.mean(torch.relu(1 - predictions * targets))


batch_size = 4096
input_shape = (4096,)


def get_inputs():
    predictions = Pareto(0.01, 1.5).sample((batch_size, *input_shape))
    targets = torch.randint(0, 2, (batch_size,)).float() * 2 - 1
    return [predictions, targets]


def get_init_inputs():
    return []
"""


def test_kernelbench_size_tuples_and_distributions_load(tmp_path):
    path = tmp_path / "100_TupleLoss.py"
    path.write_text(TUPLE_PROBLEM)
    validating = torch.distributions.Distribution._validate_args
    spec = load_spec(path)
    assert spec.tune_dims == {"batch_size": 4096, "input_shape.0": 4096}
    small = spec.interpreter_dims[0]
    assert small["batch_size"] == small["input_shape.0"] and small["batch_size"] ** 2 <= 1 << 16
    validate_spec(spec)
    runtime = OperatorRuntime(spec)
    predictions, targets = runtime.inputs(small, seed=0)
    assert predictions.shape == (small["batch_size"], small["input_shape.0"]) and targets.shape == (small["batch_size"],)
    assert torch.distributions.Distribution._validate_args == validating  # loading left it as it was


def test_shape_expressions():
    assert eval_dim("B+1", {"B": 7}) == 8
    assert eval_dim("M*N//2", {"M": 3, "N": 4}) == 6
    with pytest.raises(ValueError):
        eval_dim("__import__('os')", {})


def test_jagged_offsets_are_valid():
    spec = load_spec(REPO / "specs" / "jagged_segment_sum.yaml")
    runtime = OperatorRuntime(spec)
    for seed in range(5):
        values, offsets = runtime.inputs({"L": 1000, "D": 4, "B": 50}, seed=seed)
        assert offsets[0] == 0 and offsets[-1] == 1000 and offsets.numel() == 51
        assert bool((offsets[1:] >= offsets[:-1]).all())


def test_jagged_offsets_have_no_giant_segment():
    # many segments each drop a fraction of a row when their length is floored; those rows
    # must be spread out, or one segment of thousands of rows sets every kernel's time
    spec = load_spec(REPO / "specs" / "jagged_segment_sum.yaml")
    _, offsets = OperatorRuntime(spec).inputs({"L": 655360, "D": 1, "B": 16384}, seed=0)
    lengths = offsets[1:] - offsets[:-1]
    assert int(offsets[-1]) == 655360
    assert int(lengths.max()) < 4 * 655360 // 16384


def test_compare_rejects_zeros_that_a_loose_atol_would_pass():
    ref = torch.softmax(torch.randn(64, 16384, dtype=torch.float64) * 0.1, -1)  # every value < atol
    verdict = compare(torch.zeros_like(ref), ref, Tolerance.for_dtype("bfloat16"))
    assert verdict.mismatched == 0  # elementwise, zeros would pass
    assert not verdict.ok and "relative L2" in verdict.reason
    assert not compare(torch.full_like(ref, float("nan")), ref, Tolerance.for_dtype("float32")).ok
    assert compare(ref.float(), ref, Tolerance.for_dtype("float32")).ok


def test_spec_error_is_one_line():
    with pytest.raises(SpecError) as info:
        load_spec(BROKEN / "unknown_dtype.yaml")
    assert "\n" not in info.value.message
