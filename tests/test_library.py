"""The kernel library: registering and versioning, the CLI, and run-time dispatch with fallback.

Kernels are hand-written honest Triton kernels (tests/fixtures/library_kernels/) run under the
interpreter, registered against specs that `kevolve model ops` wrote for a tiny Llama and a
recommendation model.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, run_cli
from fixtures.interpreter_check import evaluate_on_interpreter
from kevolve.evaluate.result import Baselines, Evaluation, Outcome, Timing
from kevolve.hardware import load_target
from kevolve.library import LibraryError, NotAnImprovement, entries, get, register
from kevolve.library import runtime
from kevolve.models import extract_ops, resolve_model, write_specs
from kevolve.specs import load_spec
from kevolve.specs.runtime import OperatorRuntime

KERNELS = FIXTURES / "library_kernels"
TINY_LLAMA = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=128)


@pytest.fixture(scope="module")
def llama_specs(tmp_path_factory):
    out = tmp_path_factory.mktemp("llama_specs")
    case = resolve_model("LlamaConfig", batch=2, seq=8, overrides=TINY_LLAMA)
    written = write_specs(extract_ops(case, load_target("h100-sxm")), out)
    assert all(w.ok for w in written), [w.error for w in written if not w.ok]
    return {w.group.pattern: load_spec(w.path) for w in written}


@pytest.fixture(scope="module")
def rec_specs(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec_specs")
    case = resolve_model(f"{FIXTURES / 'rec_model.py'}:build")
    written = write_specs(extract_ops(case, load_target("h100-sxm")), out)
    assert all(w.ok for w in written), [w.error for w in written if not w.ok]
    return {w.group.pattern: load_spec(w.path) for w in written}


def add_kernel(spec, kernel_file: str):
    code = (KERNELS / kernel_file).read_text()
    evaluation, shapes = evaluate_on_interpreter(spec, code)
    assert evaluation.outcome is Outcome.CORRECT, evaluation.failed_checks()
    return register(spec, "cpu-interpreter", code, evaluation, shapes)


def gpu_record(spec, kernel_ms: float, eager_ms: float = 1.0) -> Evaluation:
    """An evaluation record as a GPU run writes it (timings given), for the versioning rules."""
    timing = lambda ms: Timing(ms, ms, ms, ms, 100, "cuda events")  # noqa: E731
    return Evaluation(candidate_hash="0" * 16, spec_name=spec.name, target="h100-sxm", device="H100",
                      dims=dict(spec.tune_dims), outcome=Outcome.CORRECT, timing=timing(kernel_ms),
                      baselines=Baselines(eager=timing(eager_ms)))


def test_register_keeps_versions_and_refuses_slower_kernels(llama_specs):
    spec = llama_specs["rmsnorm"]
    code = (KERNELS / "rmsnorm_llama.py").read_text()
    first = register(spec, "h100-sxm", code, gpu_record(spec, 0.5), [spec.tune_dims])
    assert (first.version, first.speedup) == (1, 2.0)
    with pytest.raises(NotAnImprovement, match="kept .*@1"):
        register(spec, "h100-sxm", code + "\n# slower\n", gpu_record(spec, 0.8), [spec.tune_dims])
    second = register(spec, "h100-sxm", code + "\n# faster\n", gpu_record(spec, 0.25), [spec.tune_dims])
    assert second.version == 2 and second.speedup == 4.0
    assert [e.version for e in entries(spec.name, "h100-sxm", all_versions=True)] == [1, 2]
    assert get(spec.name, "h100-sxm").version == 2  # the current one
    assert get(f"{spec.name}@1", "h100-sxm").kernel_path.read_text() == code  # old versions stay
    # The entry carries its own spec copy, usable wherever the original went.
    assert get(spec.name, "h100-sxm").spec().params == spec.params


def test_register_refuses_what_did_not_pass(llama_specs):
    spec = llama_specs["rmsnorm"]
    wrong = Evaluation(candidate_hash="0" * 16, spec_name=spec.name, target="cpu-interpreter", device="cpu",
                       dims=dict(spec.tune_dims), outcome=Outcome.WRONG)
    with pytest.raises(LibraryError, match="passed every check"):
        register(spec, "cpu-interpreter", "x = 1", wrong, [spec.tune_dims])
    evaluation, _ = evaluate_on_interpreter(spec, (KERNELS / "rmsnorm_llama.py").read_text())
    with pytest.raises(LibraryError, match="must name the spec's dimensions"):
        register(spec, "cpu-interpreter", "x = 1", evaluation, [{"M": 4}])
    with pytest.raises(LibraryError, match="ran on 'cpu-interpreter'"):
        register(spec, "h100-sxm", "x = 1", evaluation, [spec.tune_dims])
    assert entries() == []


def test_a_wrong_kernel_fails_the_interpreter_check(llama_specs):
    # The check that guards registration in these tests can fail: swiglu's kernel is not RMSNorm.
    code = (KERNELS / "rmsnorm_llama.py").read_text().replace("mean_square + eps", "mean_square + 1.0")
    evaluation, _ = evaluate_on_interpreter(llama_specs["rmsnorm"], code)
    assert evaluation.outcome is Outcome.WRONG


def test_library_cli_list_show_export(llama_specs, tmp_path):
    entry = add_kernel(llama_specs["rmsnorm"], "rmsnorm_llama.py")
    listed = run_cli("library", "list")
    assert listed.returncode == 0, listed.stderr
    assert f"{entry.operator}@1" in listed.stdout and "M=3..16" in listed.stdout
    shown = run_cli("library", "show", entry.operator)
    assert shown.returncode == 0, shown.stderr
    assert "correct on cpu (Triton interpreter)" in shown.stdout and "pattern         rmsnorm" in shown.stdout
    exported = run_cli("library", "export", f"{entry.operator}@1", "--out", str(tmp_path / "exp"))
    assert exported.returncode == 0, exported.stderr
    module = tmp_path / "exp" / f"{entry.operator}.py"
    record = json.loads((tmp_path / "exp" / f"{entry.operator}.evaluation.json").read_text())
    assert record["outcome"] == "correct" and record["spec_name"] == entry.operator
    # The exported module is standalone: it imports and computes RMSNorm on its own.
    from kevolve.specs.kernelbench_format import load_module

    kernel = load_module(module)
    x, w = torch.randn(4, 64, dtype=torch.bfloat16), torch.randn(64, dtype=torch.bfloat16)
    xf = x.float()
    want = w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)
    assert torch.allclose(kernel.rmsnorm(x, w).float(), want.float(), atol=0.07, rtol=0.02)
    missing = run_cli("library", "show", "nothing_like_this@3")
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "no library entry" in missing.stderr


def test_load_dispatches_inside_validated_shapes_and_falls_back_outside(llama_specs):
    spec = llama_specs["rmsnorm"]
    add_kernel(spec, "rmsnorm_llama.py")
    kernel = runtime.load(spec.name, "cpu-interpreter")
    ref = kernel.reference
    x, w = torch.randn(16, 64, dtype=torch.bfloat16) * 3, torch.randn(64, dtype=torch.bfloat16)
    out = kernel(x, w)
    assert (kernel.counts.kernel, kernel.counts.fallback) == (1, 0)
    assert torch.allclose(out.float(), ref(x, w).float(), atol=0.07, rtol=0.02)
    assert not torch.equal(out, torch.zeros_like(out))
    # Outside: more rows than validated, a wider row, another dtype, a strided view.
    cases = [(torch.randn(40, 64, dtype=torch.bfloat16), w, "outside the validated range"),
             (torch.randn(8, 65, dtype=torch.bfloat16), torch.randn(65, dtype=torch.bfloat16), "outside"),
             (torch.randn(8, 64), w, "is float32, not bfloat16"),
             (torch.randn(64, 8, dtype=torch.bfloat16).t(), w, "not contiguous")]
    for xs, ws, why in cases:
        got = kernel(xs, ws)
        assert torch.equal(got, ref(xs, ws))  # exactly the reference: it is what ran
        assert any(why in reason for reason in kernel.counts.reasons)
    assert (kernel.counts.kernel, kernel.counts.fallback) == (1, 4)


def test_exact_mode_runs_only_the_validated_shapes(llama_specs):
    spec = llama_specs["rmsnorm"]
    add_kernel(spec, "rmsnorm_llama.py")
    kernel = runtime.load(spec.name, "cpu-interpreter", mode="exact")
    w = torch.randn(64, dtype=torch.bfloat16)
    kernel(torch.randn(16, 64, dtype=torch.bfloat16), w)  # validated
    kernel(torch.randn(14, 64, dtype=torch.bfloat16), w)  # inside the range, never validated
    assert (kernel.counts.kernel, kernel.counts.fallback) == (1, 1)


def test_installed_custom_op_dispatches_counts_and_traces(rec_specs):
    spec = rec_specs["embedding_bag"]
    entry = add_kernel(spec, "embedding_bag_sum.py")
    op = runtime.install(spec.name, "cpu-interpreter")
    assert op is getattr(torch.ops.kevolve, runtime.op_name(spec.name))
    table = torch.randn(100, 16)
    indices = torch.randint(0, 100, (30,))
    offsets = torch.tensor([0, 4, 4, 9, 15, 20, 22, 27, 30])  # 8 bags, one empty
    want = F.embedding_bag(indices, table, offsets, mode="sum", include_last_offset=True)
    assert torch.allclose(op(table, indices, offsets), want, atol=1e-5)
    counts = runtime.counts(spec.name)
    assert (counts.kernel, counts.fallback) == (1, 0)
    # More bags than validated: the reference answers, and the count says so.
    assert entry.shape_max["B"] < 30
    many_bags = torch.arange(31)
    got = op(table, indices, many_bags)
    assert torch.equal(got, F.embedding_bag(indices, table, many_bags, mode="sum", include_last_offset=True))
    assert runtime.counts(spec.name).fallback == 1
    # The fake implementation lets torch trace through the op without running a kernel.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = op(torch.empty(100, 16), torch.zeros(30, dtype=torch.int64), offsets)
    assert tuple(fake.shape) == (8, 16)
    assert runtime.counts(spec.name).kernel == 1
    # Installing again rebinds without redefining the op.
    assert runtime.install(spec.name, "cpu-interpreter") is op


def tiny_llama_model():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(**TINY_LLAMA)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.bfloat16).eval()


def test_patched_llama_runs_library_kernels_inside_and_pytorch_outside(llama_specs):
    from kevolve.library.patch import patch_model

    rms = add_kernel(llama_specs["rmsnorm"], "rmsnorm_llama.py")
    glu = add_kernel(llama_specs["glu"], "swiglu.py")
    model = tiny_llama_model()
    ids = torch.randint(0, 128, (2, 8))
    long_ids = torch.randint(0, 128, (2, 24))  # 48 rows: beyond the validated 16
    with torch.no_grad():
        eager, eager_long = model(ids).logits, model(long_ids).logits
        report = patch_model(model, "cpu-interpreter")
        patched_paths = {path for path, _, _ in report.patched}
        assert "model.layers.0.mlp" in patched_paths and "model.norm" in patched_paths
        assert any("no library kernel computes this linear" in why for _, why in report.skipped)
        before = (runtime.counts(rms.operator).kernel, runtime.counts(glu.operator).kernel)
        patched = model(ids).logits
        assert runtime.counts(rms.operator).kernel - before[0] == 2 * 2 + 1
        assert runtime.counts(glu.operator).kernel - before[1] == 2
        assert torch.allclose(patched.float(), eager.float(), atol=0.1, rtol=0.05)
        assert not torch.equal(patched, eager)  # the kernels round differently: they really ran
        fallbacks = runtime.counts(rms.operator).fallback
        patched_long = model(long_ids).logits
        assert runtime.counts(rms.operator).fallback - fallbacks == 5
        assert torch.equal(patched_long, eager_long)  # every call fell back to the exact reference
        report.undo()
        assert torch.equal(model(ids).logits, eager)


def test_patched_recommendation_model_uses_the_embedding_bag_kernel(rec_specs):
    import importlib.util

    from kevolve.library.patch import patch_model

    entry = add_kernel(rec_specs["embedding_bag"], "embedding_bag_sum.py")
    spec = importlib.util.spec_from_file_location("rec_model_fixture", FIXTURES / "rec_model.py")
    rec = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rec)
    torch.manual_seed(0)
    model, args = rec.build()
    with torch.no_grad():
        eager = model(*args)
        report = patch_model(model, "cpu-interpreter")
        assert sum(what == "embedding_bag_sum" for _, what, _ in report.patched) == 3
        before = runtime.counts(entry.operator).kernel
        out = model(*args)
    assert runtime.counts(entry.operator).kernel - before == 3
    assert torch.allclose(out, eager, atol=1e-5)


def test_custom_op_stays_in_a_compiled_graph(llama_specs):
    spec = llama_specs["rmsnorm"]
    add_kernel(spec, "rmsnorm_llama.py")
    op = runtime.install(spec.name, "cpu-interpreter")
    torch.library.opcheck(op, (torch.randn(16, 64, dtype=torch.bfloat16), torch.randn(64, dtype=torch.bfloat16)),
                          test_utils=("test_schema", "test_faketensor"))
    compiled = torch.compile(lambda x, w: op(x, w) * 2, backend="aot_eager", fullgraph=True)
    w = torch.randn(64, dtype=torch.bfloat16)
    before = (runtime.counts(spec.name).kernel, runtime.counts(spec.name).fallback)
    compiled(torch.randn(16, 64, dtype=torch.bfloat16), w)  # one graph, the op inside it
    compiled(torch.randn(40, 64, dtype=torch.bfloat16), w)  # same graph: the op falls back at run time
    after = (runtime.counts(spec.name).kernel, runtime.counts(spec.name).fallback)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def test_kernels_judged_by_the_harness_go_through_the_library(llama_specs, rec_specs):
    """The real judge (static checks, isolated workers, guarded correctness under the
    interpreter) passes the hand-written kernels on specs written from models; what it passes
    is registered with the shapes it checked, and served."""
    from kevolve.candidate import Candidate, Origin
    from kevolve.evaluate import Evaluator
    from kevolve.models.tuning import register_best, validated_dims

    target = load_target("cpu-interpreter")
    pairs = ((llama_specs["rmsnorm"], "rmsnorm_llama.py"), (rec_specs["embedding_bag"], "embedding_bag_sum.py"))
    for spec, kernel in pairs:
        code = (KERNELS / kernel).read_text()
        with Evaluator(spec, target, workers=1, baselines=False) as judge:
            (evaluation,) = judge.evaluate([Candidate(code, spec.name, Origin("manual"))])
        assert evaluation.outcome is Outcome.CORRECT, (evaluation.error, evaluation.failed_checks())
        outcome = register_best(spec, target, code, evaluation)
        assert outcome.entry == f"{spec.name}@1", outcome.message
        kernel_fn = runtime.load(spec.name, "cpu-interpreter")
        assert [dict(d) for d in kernel_fn.entry.validated_dims] == validated_dims(spec, target)
        inputs = OperatorRuntime(spec).inputs(spec.interpreter_dims[-1], seed=11)
        out = kernel_fn(*inputs)
        assert kernel_fn.counts.kernel == 1
        assert torch.allclose(out.float(), kernel_fn.reference(*inputs).float(), atol=0.07, rtol=0.02)


def test_compiled_model_with_library_kernels_has_no_graph_breaks(rec_specs, tmp_path):
    """Two library kernels of the same computation (bags at two batch sizes) put into the
    recommendation model: one custom op chooses between them inside, so torch.compile traces
    the whole forward as one graph and gives the patched model's output. A table of another
    width is left alone: no kernel was validated at its sizes, so it would only fall back."""
    import importlib.util

    from kevolve.library.patch import patch_model

    spec = importlib.util.spec_from_file_location("rec_model_fixture", FIXTURES / "rec_model.py")
    rec = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rec)
    import yaml

    bags = rec_specs["embedding_bag"]
    first = add_kernel(bags, "embedding_bag_sum.py")
    doc = yaml.safe_load(bags.path.read_text())  # the same computation tuned at a larger batch
    doc.update(name=bags.name + "_b64", reference=f"{bags.reference_path}:{bags.reference_name}")
    doc["shapes"]["tune"]["B"] = 64
    (tmp_path / "b64.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    second = add_kernel(load_spec(tmp_path / "b64.yaml"), "embedding_bag_sum.py")

    torch.manual_seed(0)
    model, args = rec.build()
    model.tables.append(torch.nn.EmbeddingBag(100, 24, mode="sum"))  # a width no kernel covers
    with torch.no_grad():
        report = patch_model(model, "cpu-interpreter")
        patched = {path: ops for path, _, ops in report.patched}
        assert {p for p in patched if p.startswith("tables")} == {"tables.0", "tables.1", "tables.2"}
        assert set(patched["tables.0"]) == {first.operator, second.operator}
        assert any(path == "tables.3" and "validated at its sizes (V=100, D=24)" in why
                   for path, why in report.skipped)
        eager = model(*args)
        explanation = torch._dynamo.explain(model)(*args)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        before = runtime.counts(first.operator).kernel + runtime.counts(second.operator).kernel
        out = compiled(*args)
        after = runtime.counts(first.operator).kernel + runtime.counts(second.operator).kernel
    torch._dynamo.reset()
    assert after - before == 3  # the kernels ran inside the compiled graph
    assert torch.allclose(out, eager, atol=1e-6)
