"""Operator extraction: a tiny Llama from transformers' config and a DLRM-style recommendation
model, traced on fake tensors, grouped into specs, ranked, written and validated."""

import json

import pytest
import torch

from conftest import FIXTURES, run_cli
from kevolve.hardware import load_target
from kevolve.models import ModelError, extract_ops, resolve_model, trace_model, write_specs
from kevolve.models.ops import NO_SPEC
from kevolve.specs import load_spec
from kevolve.specs.runtime import OperatorRuntime

TINY_LLAMA = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=128, rms_norm_eps=1e-5)
H100 = load_target("h100-sxm")


@pytest.fixture(scope="module")
def tiny_llama():
    return extract_ops(resolve_model("LlamaConfig", batch=2, seq=8, overrides=TINY_LLAMA), H100)


def by_pattern(extraction):
    out = {}
    for g in extraction.groups:
        out.setdefault(g.pattern, []).append(g)
    return out


def test_trace_records_shapes_dtypes_flops_and_modules():
    trace = trace_model(resolve_model("LlamaConfig", batch=2, seq=8, overrides=TINY_LLAMA))
    mms = [c for c in trace.calls if c.name == "mm"]
    assert len(mms) == 2 * 7 + 1  # q k v o gate up down per layer, and the LM head
    for c in mms:
        (m, k), (_, n) = c.args[0].meta.shape, c.args[1].meta.shape
        assert c.flops == 2 * m * n * k and c.args[0].meta.dtype == "bfloat16"
    gate = next(c for c in mms if c.module == "model.layers.1.mlp.gate_proj")
    assert gate.outputs[0].meta.shape == (16, 172)
    assert all(c.flops == 0 for c in trace.calls if c.name in ("add", "mul", "silu"))
    assert all(c.bytes == 0 for c in trace.calls if c.is_view)


def test_tiny_llama_groups_recognise_the_fusions(tiny_llama):
    groups = by_pattern(tiny_llama)
    assert {"rmsnorm", "glu", "linear", "softmax", "rotary", "bmm", "embedding"} <= set(groups)
    (rms,) = groups["rmsnorm"]
    assert rms.count == 2 * 2 + 1 and rms.dims == {"M": 16, "N": 64}
    assert rms.match.variant_dict == {"eps": 1e-5, "upcast": True, "weight": "after_cast", "cast_back": True}
    assert set(rms.ops) == {"_to_copy", "pow", "mean", "add", "rsqrt", "mul"}  # one spec for the sequence
    (swiglu,) = groups["glu"]
    assert swiglu.name.startswith("swiglu_bf16_m16_n172") and set(swiglu.ops) == {"silu", "mul"}
    linear_shapes = {(g.dims["N"], g.dims["K"]): g.count for g in groups["linear"]}
    assert linear_shapes == {(64, 64): 4, (32, 64): 4, (172, 64): 4, (64, 172): 2, (128, 64): 1}
    (softmax,) = groups["softmax"]  # eager attention: scale, causal mask and softmax as one operator
    assert softmax.name.startswith("scaled_masked_softmax_bf16_b2_h4_m8_n8")
    assert softmax.match.variant_dict == {"upcast": True, "cast_back": True, "scale": 0.25, "mask": "x1xx"}
    assert {"mul", "add", "_softmax", "_to_copy"} <= set(softmax.ops)
    # What no pattern covers is still listed, ranked and marked.
    plain = groups[None]
    assert plain and all(g.note == NO_SPEC for g in plain)
    assert any(g.name.startswith("aten.add.Tensor") for g in plain)
    assert abs(sum(g.share for g in tiny_llama.groups) - 1.0) < 1e-9
    assert [g.est_s for g in tiny_llama.groups] == sorted((g.est_s for g in tiny_llama.groups), reverse=True)


def test_matmuls_rank_first_at_real_sizes():
    config = dict(num_hidden_layers=2, vocab_size=32000)  # Llama-7B widths: hidden 4096, MLP 11008
    extraction = extract_ops(resolve_model("LlamaConfig", batch=4, seq=256, overrides=config), H100)
    top = extraction.groups[:3]
    assert all(g.pattern == "linear" for g in top), [g.name for g in top]
    assert top[0].dims == {"M": 1024, "N": 11008, "K": 4096}  # gate and up projections
    assert sum(g.share for g in extraction.groups if g.pattern == "linear") > 0.6
    rms = next(g for g in extraction.groups if g.pattern == "rmsnorm")
    assert rms.fused_floor_s < rms.est_s / 4  # six eager passes against one fused read and write
    # The same model traced for the backward pass too: matmuls of the gradients appear.
    both = extract_ops(resolve_model("LlamaConfig", batch=2, seq=8, overrides=TINY_LLAMA), H100, backward=True)
    assert both.calls > 2 * extract_ops(resolve_model("LlamaConfig", batch=2, seq=8, overrides=TINY_LLAMA), H100).calls
    assert any("backward" in g.phases and g.pattern == "linear" for g in both.groups)


def test_written_specs_validate_and_reproduce_the_model(tiny_llama, tmp_path):
    written = write_specs(tiny_llama, tmp_path)
    assert written and all(w.ok for w in written), [w.error for w in written if not w.ok]
    assert len(written) == len(tiny_llama.with_specs())
    specs = {w.group.pattern: load_spec(w.path) for w in written}
    rms = specs["rmsnorm"]
    assert rms.params == {"eps": 1e-5} and "pattern=rmsnorm" in rms.tags
    assert any(d["N"] % 2 == 1 for d in rms.check_dims)  # odd sizes are checked
    assert all(d["M"] * d["N"] <= 1 << 16 for d in rms.interpreter_dims)

    # The written reference computes exactly what the model's module does.
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    norm = LlamaRMSNorm(64, eps=1e-5).to(torch.bfloat16)
    torch.nn.init.normal_(norm.weight, 1.0, 0.2)
    x = torch.randn(2, 8, 64, dtype=torch.bfloat16) * 3
    ref = OperatorRuntime(rms).reference(rms.tune_dims)
    assert torch.equal(ref(x.reshape(16, 64), norm.weight).reshape(2, 8, 64), norm(x))
    mlp = LlamaMLP(LlamaConfig(**TINY_LLAMA)).to(torch.bfloat16)
    a, b = torch.randn(16, 172, dtype=torch.bfloat16), torch.randn(16, 172, dtype=torch.bfloat16)
    assert torch.equal(OperatorRuntime(specs["glu"]).reference({})(a, b), mlp.act_fn(a) * b)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q = torch.randn(2, 4, 8, 16, dtype=torch.bfloat16)
    cos, sin = torch.rand(8, 16, dtype=torch.bfloat16), torch.rand(8, 16, dtype=torch.bfloat16)
    want, _ = apply_rotary_pos_emb(q, q, cos[None], sin[None])
    assert torch.equal(OperatorRuntime(specs["rotary"]).reference({})(q, cos, sin), want)
    report = json.loads((tmp_path / "ops.json").read_text())
    assert report["groups"][0]["rank"] == 1
    assert any(g["spec"] == NO_SPEC for g in report["groups"])


def test_recommendation_model_embedding_bags_interaction_and_mlps(tmp_path):
    extraction = extract_ops(resolve_model(f"{FIXTURES / 'rec_model.py'}:build"), H100)
    groups = by_pattern(extraction)
    (bags,) = groups["embedding_bag"]  # three tables, one shape class despite jagged totals
    assert bags.count == 3 and bags.match.variant_dict == {"mode": "sum"}
    assert bags.dims["V"] == 100 and bags.dims["D"] == 16 and bags.dims["B"] == 8
    assert bags.dims["L"] & (bags.dims["L"] - 1) == 0  # rounded up to a power of two
    assert {g.name.split("_fp32")[0] for g in groups["linear"]} == {"linear_bias_relu", "linear_bias_sigmoid"}
    (dot,) = groups["pairwise_dot"]
    assert dot.dims == {"B": 8, "F": 4, "D": 16}
    written = write_specs(extraction, tmp_path)
    assert all(w.ok for w in written), [w.error for w in written if not w.ok]
    spec = load_spec(next(w.path for w in written if w.group.pattern == "embedding_bag"))
    # The reference agrees with nn.EmbeddingBag (start offsets) once the last offset is appended.
    bag = torch.nn.EmbeddingBag(100, 16, mode="sum")
    idx, starts = torch.randint(0, 100, (20,)), torch.tensor([0, 3, 3, 9, 15])
    ref = OperatorRuntime(spec).reference({})
    assert torch.allclose(ref(bag.weight, idx, torch.cat([starts, torch.tensor([20])])), bag(idx, starts))


def test_cli_writes_specs_from_a_config_json(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", **TINY_LLAMA}))
    out = tmp_path / "specs"
    result = run_cli("model", "ops", str(config), "--seq", "8", "--target", "h100-sxm", "--out", str(out),
                     "--top", "3", "--set", "num_hidden_layers=1")
    assert result.returncode == 0, result.stderr
    assert "no spec: needs a pattern or an LLM" in result.stdout
    assert "wrote 3 specs" in result.stdout
    assert len(list(out.glob("*.yaml"))) == 3 and len(list((out / "ref").glob("*.py"))) == 3
    from kevolve.cli import main

    assert main(["specs", "validate", str(out)]) == 0  # in-process: one interpreter start is enough


@pytest.mark.parametrize("args, words", [
    (["model", "ops", "does/not/exist.json"], "no config.json there"),
    (["model", "ops", "NotAConfig"], "neither a config.json"),
    (["model", "ops", "LlamaConfig", "--set", "hidden"], "expected KEY=VALUE"),
    (["model", "ops", "missing.py:build"], "file not found"),
])
def test_cli_errors_are_one_line(args, words, capsys):
    from kevolve.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert words in err and err.strip().count("\n") == 0


def test_a_model_that_fails_on_fake_tensors_says_so(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\ndef build():\n    m = torch.nn.Linear(4, 4)\n"
                      "    return m, (torch.randn(3, 5),)\n")
    with pytest.raises(ModelError, match="fails in its forward pass"):
        trace_model(resolve_model(f"{broken}:build"))


class NormBiasGelu(torch.nn.Module):
    """LayerNorm without affine parameters, then a bias and GELU (tanh): no matmul to fuse into."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width, elementwise_affine=False)
        self.bias = torch.nn.Parameter(torch.zeros(width))

    def forward(self, x):
        return torch.nn.functional.gelu(self.norm(x) + self.bias, approximate="tanh")


def test_bias_activation_and_layernorm_are_recognised(tmp_path):
    from kevolve.models import ModelCase

    case = ModelCase("norm_bias_gelu", lambda: (NormBiasGelu(96).eval(), (torch.randn(4, 10, 96),), {}))
    groups = by_pattern(extract_ops(case, H100))
    (ln,) = groups["layernorm"]
    assert ln.dims == {"M": 40, "N": 96} and ln.match.variant_dict == {"eps": 1e-5, "weight": False, "bias": False}
    (bias_gelu,) = groups["bias_act"]
    assert bias_gelu.name.startswith("bias_gelu_tanh_fp32_m40_n96") and set(bias_gelu.ops) == {"add", "gelu"}
    assert None not in groups  # every call is covered by a spec
    written = write_specs(extract_ops(case, H100), tmp_path)
    assert all(w.ok for w in written), [w.error for w in written if not w.ok]
    spec = load_spec(next(w.path for w in written if w.group.pattern == "bias_act"))
    x, b = torch.randn(40, 96), torch.randn(96)
    assert torch.equal(OperatorRuntime(spec).reference({})(x, b),
                       torch.nn.functional.gelu(x + b, approximate="tanh"))


@pytest.mark.parametrize("config", ["GPT2Config", "Gemma2Config", "BertConfig", "Qwen3Config"])
def test_other_architectures_give_valid_specs(config, tmp_path):
    """Conv1D projections, soft-capped attention, post-norm encoders, per-head norms: whatever
    is recognised is written as a spec that validates."""
    extraction = extract_ops(resolve_model(config, seq=32, overrides={"num_hidden_layers": 1}), H100)
    written = write_specs(extraction, tmp_path)
    assert len(written) >= 4 and all(w.ok for w in written), [w.error for w in written if not w.ok]
    assert {"linear"} <= {w.group.pattern for w in written}
