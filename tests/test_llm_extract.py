"""Code extraction from replies that mix prose, several blocks and truncation."""

import pytest

from kevolve.synth.llm.extract import ExtractionError, code_blocks, extract_code

KERNEL = "import triton\n\n\ndef softmax(x):\n    return x\n"
SKETCH = "def helper(y):\n    return y\n"


def test_last_complete_block_that_defines_the_entry_point_wins():
    reply = (f"First a sketch:\n```python\n{SKETCH}```\nThen the kernel:\n```python\n{KERNEL}```\n"
             f"And how to call it:\n```python\nprint(softmax(x))\n```\nDone.")
    assert extract_code(reply, "softmax") == KERNEL
    # of two versions, the later one is the answer
    v2 = KERNEL.replace("return x", "return x * 1")
    assert extract_code(f"```py\n{KERNEL}```\nBetter:\n```python\n{v2}```", "softmax") == v2


def test_else_the_longest_block_that_parses():
    # no block defines the entry point (the model renamed it): the longest parsing block, so the
    # evaluator can say what is missing
    long_block = "def other(x):\n    y = x\n    return y\n"
    reply = f"```python\n{SKETCH}```\n```python\n{long_block}```\n```python\ndef broken(:\n```"
    assert extract_code(reply, "softmax") == long_block


def test_truncated_reply_keeps_its_complete_statements():
    cut = "Here:\n```python\n" + KERNEL + "\n\ndef helper(y):\n    return (y"
    assert extract_code(cut, "softmax") == KERNEL
    cut_inside_entry = "Here:\n```python\nimport triton\n\ndef softmax(x):\n    return (x"
    with pytest.raises(ExtractionError, match="cut off inside its code block") as err:
        extract_code(cut_inside_entry, "softmax")
    assert err.value.attempt.startswith("import triton")


def test_bare_code_and_tildes_and_tags():
    assert extract_code(KERNEL, "softmax") == KERNEL
    assert extract_code(f"~~~python\n{KERNEL}~~~", "softmax") == KERNEL
    # a block in another language is not Python
    with pytest.raises(ExtractionError, match="no ```python code block|no code block"):
        extract_code("```cuda\n__global__ void softmax() {}\n```", "softmax")
    blocks = code_blocks(f"```python\n{KERNEL}```\ntext\n```\n{SKETCH}")
    assert [(b.language, b.closed) for b in blocks] == [("python", True), ("", False)]


def test_class_entry_points_and_clear_errors():
    model = "import torch\n\n\nclass ModelNew(torch.nn.Module):\n    pass\n"
    assert extract_code(f"```python\n{model}```", "ModelNew") == model
    with pytest.raises(ExtractionError, match="the reply was empty"):
        extract_code("   ", "softmax")
    with pytest.raises(ExtractionError, match="has no ```python code block defining `softmax`"):
        extract_code("I cannot write this kernel.", "softmax")
    with pytest.raises(ExtractionError, match="parses as Python and defines `softmax`") as err:
        extract_code("```python\ndef softmax(x:\n    return x\n```", "softmax")
    assert "def softmax(x:" in err.value.attempt  # the broken block goes to the evaluator
