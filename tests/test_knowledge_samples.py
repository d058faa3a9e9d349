"""The code samples of the corpus run under the Triton interpreter and match PyTorch: a sample
that a model copies must be right."""

import re
import sys

import pytest
import torch

from conftest import REPO
from kevolve.knowledge.corpus import split_front_matter

SAMPLES = sorted((REPO / "knowledge" / "samples").glob("*.md"))


def load_sample(path):
    meta, body = split_front_matter(path.read_text(), path.name)
    blocks = re.findall(r"```python\n(.*?)```", body, re.S)
    assert len(blocks) == 1, f"{path.name}: one python block expected"
    namespace: dict = {}
    exec(compile(blocks[0], str(path), "exec"), namespace)
    return namespace[meta["entry"]]


def jagged_reference(values, offsets):
    sys.path.insert(0, str(REPO / "specs" / "ref"))
    try:
        from jagged import jagged_segment_sum
    finally:
        sys.path.pop(0)
    return jagged_segment_sum(values, offsets)


def rms_reference(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def close(got, want, tol):
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got.double(), want.double(), atol=tol, rtol=tol)


def test_every_sample_is_covered():
    assert {p.stem for p in SAMPLES} == {"vector-add", "row-softmax", "online-softmax", "layernorm",
                                         "matmul-bias-relu", "jagged-segment-sum"}


def test_samples_match_pytorch():
    g = torch.Generator().manual_seed(0)
    fn = {p.stem: load_sample(p) for p in SAMPLES}

    x, y = torch.randn(1001, generator=g), torch.randn(1001, generator=g)
    close(fn["vector-add"](x, y), x + y, 0)

    rows = (torch.randn(7, 97, generator=g) * 3 + 1).to(torch.bfloat16)
    close(fn["row-softmax"](rows), torch.softmax(rows.double(), -1).to(torch.bfloat16), 1e-2)
    close(fn["row-softmax"](rows, log=True), torch.log_softmax(rows.double(), -1).to(torch.bfloat16), 1e-2)
    long_rows = torch.randn(3, 1001, generator=g) * 4 - 2
    close(fn["online-softmax"](long_rows, BLOCK_N=128), torch.softmax(long_rows, -1), 1e-5)

    h = torch.randn(5, 300, generator=g) + 4  # an offset mean: one-pass variance would drift
    w, b = torch.randn(300, generator=g), torch.randn(300, generator=g)
    close(fn["layernorm"](h, w, b), torch.nn.functional.layer_norm(h, (300,), w, b, 1e-5), 1e-4)
    close(fn["layernorm"](h, w, eps=1e-6, rms=True), rms_reference(h, w, 1e-6), 1e-4)

    a, m, bias = torch.randn(33, 40, generator=g), torch.randn(40, 50, generator=g), torch.randn(50, generator=g)
    got = fn["matmul-bias-relu"](a, m, bias, BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, num_warps=4)
    close(got, torch.relu(a @ m + bias), 1e-4)
    close(fn["matmul-bias-relu"](a, m.t().contiguous().t(), bias, BLOCK_M=16, BLOCK_N=32, BLOCK_K=16),
          torch.relu(a @ m + bias), 1e-4)  # a transposed weight, through its strides

    values = torch.randn(23, 40, generator=g)
    offsets = torch.tensor([0, 0, 5, 5, 20, 23])  # empty segments included
    out = fn["jagged-segment-sum"](values, offsets, ROWS=4, BLOCK_D=16)
    close(out, jagged_reference(values, offsets), 1e-5)
    assert (out[0] == 0).all() and (out[2] == 0).all()


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_samples_pass_the_evaluators_static_checks(path):
    """A model copies what it is shown: a sample must be a candidate the evaluator would accept."""
    from kevolve.evaluate.static_checks import static_checks

    meta, body = split_front_matter(path.read_text(), path.name)
    code = re.search(r"```python\n(.*?)```", body, re.S).group(1)
    assert [c for c in static_checks(code, meta["entry"]) if not c.passed] == []
    assert callable(load_sample(path))
