"""What a recognised pattern becomes as a spec: its PyTorch reference (written to reproduce the
model's own sequence of operations, casts included), its input value distributions, its small
interpreter shapes and the dimensions that must stay even.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

HEADER = '"""PyTorch reference written by `kevolve model ops` from the sequence recognised in the model."""\n\n' \
         "import torch\nimport torch.nn.functional as F\n\n\n"

_ACT_EXPR = {
    "relu": "torch.relu({})",
    "gelu": "F.gelu({})",
    "gelu_tanh": 'F.gelu({}, approximate="tanh")',
    "silu": "F.silu({})",
    "sigmoid": "torch.sigmoid({})",
    "tanh": "torch.tanh({})",
}


def act_expr(act: str, inner: str) -> str:
    return _ACT_EXPR[act].format(inner) if act != "none" else inner


@dataclass(frozen=True)
class PatternSpecs:
    family: str  # the spec's family field
    function: str  # the reference function's name
    render: Callable[[Mapping[str, Any], tuple[str, ...]], str]  # (variant, input names) -> body
    params: Callable[[Mapping[str, Any]], dict[str, Any]]  # keyword arguments of the reference
    dists: Callable[[str, Mapping[str, int], Mapping[str, Any]], dict[str, Any]]  # name, tune dims, variant
    small: Mapping[str, tuple[int, int]]  # two interpreter sizes per dimension (capped by tune)
    batch_dims: tuple[str, ...] = ()  # set to 3 in one check shape: small batches stay valid
    even: frozenset[str] = frozenset()
    # Sizes that change from call to call (a jagged total): grouped together, and tuned at the
    # next power of two above the largest seen, so the validated range covers their variation.
    ragged: frozenset[str] = frozenset()
    tolerance: Callable[[Mapping[str, Any], str], dict[str, float] | None] = lambda v, dtype: None
    describe: Callable[[Mapping[str, Any]], str] = lambda v: ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def _normal(mean: float, std: float) -> dict[str, Any]:
    return {"kind": "normal", "mean": mean, "std": std}


def _rmsnorm(v, names) -> str:
    x = "x.float()" if v["upcast"] else "x"
    lines = [f"    xf = {x}",
             "    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)"]
    weighted = "weight" in names
    if weighted and v["weight"] == "after_cast":
        lines.append("    return weight * y.to(x.dtype)" if v["cast_back"] else "    return weight * y")
    elif weighted:
        lines.append("    y = weight * y")
        lines.append("    return y.to(x.dtype)" if v["cast_back"] else "    return y")
    else:
        lines.append("    return y.to(x.dtype)" if v["cast_back"] else "    return y")
    args = ", ".join(names)
    return f"def rmsnorm({args}, eps: float = {v['eps']!r}):\n" \
           f'    """RMSNorm over the last dimension, as the model computes it."""\n' + "\n".join(lines) + "\n"


def _layernorm(v, names) -> str:
    w = "weight" if v["weight"] else "None"
    b = "bias" if v["bias"] else "None"
    return (f"def layernorm({', '.join(names)}, eps: float = {v['eps']!r}):\n"
            '    """LayerNorm over the last dimension."""\n'
            f"    return F.layer_norm(x, (x.shape[-1],), {w}, {b}, eps)\n")


def _softmax(v, names) -> str:
    scores = "x"
    if v.get("mask"):  # attention's scores, scaled and masked in their own dtype as eager does
        scores = f"(x * {v['scale']!r} + mask)" if v.get("scale") is not None else "(x + mask)"
    if v["upcast"]:
        body = f"torch.softmax({scores}.float(), dim=-1)" + (".to(x.dtype)" if v["cast_back"] else "")
    else:
        body = f"torch.softmax({scores}, dim=-1)"
    doc = "Softmax over the last dimension" + (" of scaled, masked attention scores" if v.get("mask") else "")
    return f'def softmax({", ".join(names)}):\n    """{doc}."""\n    return {body}\n'


def _glu(v, names) -> str:
    return (f"def glu(a, b):\n    \"\"\"The gated MLP's middle: {v['act']}(gate) * up.\"\"\"\n"
            f"    return {act_expr(v['act'], 'a')} * b\n")


def _linear(v, names) -> str:
    if v["layout"] == "nk":
        product = "F.linear(x, weight, bias)" if v["bias"] == "fused" else "F.linear(x, weight)"
    else:
        product = "torch.addmm(bias, x, w)" if v["bias"] == "fused" else "x @ w"
    if v["bias"] == "add":
        product += " + bias"
    doc = "x [M, K] times weight [N, K] transposed" if v["layout"] == "nk" else "x [M, K] times w [K, N]"
    return (f"def linear({', '.join(names)}):\n    \"\"\"{doc}{', plus bias' if v['bias'] != 'none' else ''}"
            f"{', then ' + v['act'] if v['act'] != 'none' else ''}.\"\"\"\n"
            f"    return {act_expr(v['act'], product)}\n")


def _bmm(v, names) -> str:
    return 'def bmm(a, b):\n    """Batched matmul: a [B, M, K] times b [B, K, N]."""\n    return torch.bmm(a, b)\n'


def _pairwise(v, names) -> str:
    return ('def pairwise_dot(x):\n    """Dot products of every pair of feature vectors: x [B, F, D] -> [B, F, F]."""\n'
            "    return torch.bmm(x, x.transpose(1, 2))\n")


def _bias_act(v, names) -> str:
    return (f"def bias_act(x, bias):\n    \"\"\"{v['act']}(x + bias), bias broadcast over rows.\"\"\"\n"
            f"    return {act_expr(v['act'], 'x + bias')}\n")


def _embedding_bag(v, names) -> str:
    return ("def embedding_bag(table, indices, offsets):\n"
            f"    \"\"\"{v['mode'].capitalize()} of embedding rows per bag; bag b holds "
            "indices[offsets[b]:offsets[b+1]].\"\"\"\n"
            f"    return F.embedding_bag(indices, table, offsets, mode=\"{v['mode']}\", include_last_offset=True)\n")


def _embedding(v, names) -> str:
    return 'def embedding(table, ids):\n    """Rows of the table for each id."""\n    return F.embedding(ids, table)\n'


def _rotary(v, names) -> str:
    return ("def rotary(x, cos, sin):\n"
            '    """Rotary position embedding, rotate-half form: x [B, H, S, D], cos/sin [S, D]."""\n'
            "    half = x.shape[-1] // 2\n"
            "    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)\n"
            "    return x * cos + rotated * sin\n")


def _linear_dists(name: str, dims: Mapping[str, int], variant: Mapping[str, Any]) -> dict[str, Any]:
    if name in ("weight", "w"):  # scaled so outputs stay near unit size at any K
        return _normal(0.0, round(1.0 / math.sqrt(max(dims["K"], 1)), 4))
    return _normal(0.0, 1.0)


def _bmm_dists(name: str, dims: Mapping[str, int], variant: Mapping[str, Any]) -> dict[str, Any]:
    return _normal(0.0, round(1.0 / math.sqrt(max(dims["K"], 1)), 4)) if name == "b" else _normal(0.0, 1.0)


def _bf16_roundings(v, dtype: str) -> dict[str, float] | None:
    # Eager rounds after each operation in 16-bit (RMSNorm's cast before the weight, SiLU before
    # the product, a matmul before its bias); a kernel that sums in another order lands an ulp
    # away before the second rounding: two ulps at magnitude 8 exceed the default bf16 tolerance.
    if dtype in ("bfloat16", "float16"):
        return {"atol": 0.05, "rtol": 0.02, "max_rel_l2": 0.01}
    return None


def _softmax_dists(name: str, dims: Mapping[str, int], variant: Mapping[str, Any]) -> dict[str, Any]:
    if name == "mask":
        return _normal(0.0, 2.0)
    if variant.get("scale"):  # raw scores: scaled, they spread like logits (std 2)
        return _normal(0.0, round(2.0 / abs(variant["scale"]), 4))
    return _normal(1.0, 3.0)


def _masked_softmax_tolerance(v, dtype: str) -> dict[str, float] | None:
    # Eager rounds the scaled, masked scores to 16 bits before the fp32 softmax: a logit near 6
    # moves by 0.02, its probability by 2%, beyond the default bf16 rtol.
    if v.get("mask") and dtype in ("bfloat16", "float16"):
        return {"atol": 0.02, "rtol": 0.05, "max_rel_l2": 0.02}
    return None


ROWS = {"M": (5, 12), "N": (97, 260)}

PATTERNS: dict[str, PatternSpecs] = {
    "rmsnorm": PatternSpecs(
        "normalization", "rmsnorm", _rmsnorm, lambda v: {"eps": v["eps"]},
        lambda n, d, v: _normal(1.0, 0.2) if n == "weight" else _normal(0.5, 2.0), ROWS, ("M",),
        tolerance=lambda v, dt: _bf16_roundings(v, dt) if v["weight"] != "none" and v["cast_back"] else None,
        describe=lambda v: f"RMSNorm, eps {v['eps']:g}" + (", statistics in fp32" if v["upcast"] else "")),
    "layernorm": PatternSpecs(
        "normalization", "layernorm", _layernorm, lambda v: {"eps": v["eps"]},
        lambda n, d, v: {"weight": _normal(1.0, 0.2), "bias": _normal(0.0, 0.5)}.get(n, _normal(2.0, 3.0)),
        ROWS, ("M",), describe=lambda v: f"LayerNorm, eps {v['eps']:g}"),
    "softmax": PatternSpecs(
        "softmax", "softmax", _softmax, lambda v: {}, _softmax_dists,
        {**ROWS, "B": (1, 2), "H": (3, 2), "M": (5, 12), "N": (97, 260)}, ("M",),
        tolerance=_masked_softmax_tolerance,
        describe=lambda v: ("softmax of scaled, masked attention scores" if v.get("mask") else "row softmax")
        + (" computed in fp32" if v["upcast"] else "")),
    "glu": PatternSpecs(
        "pointwise", "glu", _glu, lambda v: {},
        lambda n, d, v: _normal(0.0, 3.0) if n == "a" else _normal(0.5, 2.0),
        {"M": (3, 7), "N": (1001, 333)}, ("M",), tolerance=_bf16_roundings,
        describe=lambda v: f"gated activation {v['act']}(a) * b"),
    "linear": PatternSpecs(
        "matmul", "linear", _linear, lambda v: {}, _linear_dists,
        {"M": (33, 64), "N": (47, 80), "K": (29, 96)}, ("M",),
        tolerance=lambda v, dt: _bf16_roundings(v, dt) if v["bias"] == "add" or v["act"] != "none" else None,
        describe=lambda v: "linear layer" + (" with bias" if v["bias"] != "none" else "")
        + (f" and {v['act']}" if v["act"] != "none" else "")),
    "bmm": PatternSpecs(
        "matmul", "bmm", _bmm, lambda v: {}, _bmm_dists,
        {"B": (2, 3), "M": (33, 16), "N": (47, 24), "K": (29, 16)}, ("B",), describe=lambda v: "batched matmul"),
    "pairwise_dot": PatternSpecs(
        "matmul", "pairwise_dot", _pairwise, lambda v: {}, lambda n, d, v: _normal(0.0, 1.0),
        {"B": (5, 9), "F": (7, 27), "D": (16, 40)}, ("B",),
        describe=lambda v: "pairwise dot products of feature vectors (feature interaction)"),
    "bias_act": PatternSpecs(
        "pointwise", "bias_act", _bias_act, lambda v: {},
        lambda n, d, v: _normal(0.0, 1.0) if n == "bias" else _normal(0.0, 2.0),
        {"M": (3, 7), "N": (1001, 333)}, ("M",), tolerance=_bf16_roundings,
        describe=lambda v: f"bias + {v['act']}"),
    "embedding_bag": PatternSpecs(
        "jagged", "embedding_bag", _embedding_bag, lambda v: {},
        lambda n, d, v: ({"kind": "randint", "low": 0, "high": "V"} if n == "indices"
                      else {"kind": "offsets", "total": "L"} if n == "offsets" else _normal(0.0, 1.0)),
        {"V": (50, 100), "D": (16, 40), "B": (5, 9), "L": (23, 61)}, ("B",), ragged=frozenset({"L"}),
        describe=lambda v: f"embedding bags, {v['mode']} pooling over jagged indices"),
    "embedding": PatternSpecs(
        "gather", "embedding", _embedding, lambda v: {},
        lambda n, d, v: {"kind": "randint", "low": 0, "high": "V"} if n == "ids" else _normal(0.0, 1.0),
        {"V": (50, 100), "D": (16, 40), "M": (23, 61)}, ("M",), describe=lambda v: "embedding lookup"),
    "rotary": PatternSpecs(
        "rotary", "rotary", _rotary, lambda v: {},
        lambda n, d, v: _normal(0.0, 2.0) if n == "x" else {"kind": "uniform", "low": -1.0, "high": 1.0},
        {"B": (1, 2), "H": (2, 3), "S": (7, 5), "D": (16, 64)}, ("B",), even=frozenset({"D"}),
        tolerance=lambda v, dt: {"atol": 0.04, "rtol": 0.02, "max_rel_l2": 0.01}
        if dt in ("bfloat16", "float16") else None,
        describe=lambda v: "rotary position embedding (rotate-half)"),
}


def display_name(pattern: str, variant: Mapping[str, Any]) -> str:
    """A short readable name: swiglu, linear_bias_relu, embedding_bag_sum, bias_gelu."""
    if pattern == "glu":
        names = {"silu": "swiglu", "gelu": "geglu", "gelu_tanh": "geglu_tanh"}
        return names.get(variant["act"], f"{variant['act']}_glu")
    if pattern == "linear":
        return "linear" + ("_bias" if variant["bias"] != "none" else "") + (
            f"_{variant['act']}" if variant["act"] != "none" else "")
    if pattern == "bias_act":
        return f"bias_{variant['act']}"
    if pattern == "embedding_bag":
        return f"embedding_bag_{variant['mode']}"
    if pattern == "softmax" and variant.get("mask"):
        return "scaled_masked_softmax" if variant.get("scale") is not None else "masked_softmax"
    return pattern


def reference_source(pattern: str, variant: Mapping[str, Any], input_names: tuple[str, ...]) -> str:
    return HEADER + PATTERNS[pattern].render(variant, input_names)
