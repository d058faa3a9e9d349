"""The steps of tuning a model that do not need a search: choosing specs, validated shapes,
and registering a run's best kernel."""

import pytest

from conftest import FIXTURES
from fixtures.interpreter_check import evaluate_on_interpreter
from kevolve.evaluate.result import Baselines, Evaluation, Outcome, Timing
from kevolve.hardware import load_target
from kevolve.library import entries
from kevolve.models import extract_ops, resolve_model, write_specs
from kevolve.models.tuning import choose_specs, register_best, register_run_outputs, validated_dims
from kevolve.specs import load_spec

TINY_LLAMA = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=128)
CPU, H100 = load_target("cpu-interpreter"), load_target("h100-sxm")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    case = resolve_model("LlamaConfig", batch=2, seq=8, overrides=TINY_LLAMA)
    return write_specs(extract_ops(case, H100), tmp_path_factory.mktemp("specs"))


def test_choose_specs_ranks_by_what_can_be_won_and_skips_the_roofline(tmp_path):
    """At Llama-7B widths the bf16 matmuls take most of the time but cuBLAS runs them at the
    roofline: the norms, rotary and the gated MLP are what tuning can win."""
    case = resolve_model("LlamaConfig", batch=2, seq=128, attn="sdpa",
                         overrides=dict(num_hidden_layers=1, vocab_size=1024))
    written = write_specs(extract_ops(case, H100), tmp_path)
    choice = choose_specs(written, 3)
    assert {w.group.pattern for w in choice.chosen} == {"rmsnorm", "rotary", "glu"}
    gains = [w.group.gain_s() for w in choice.chosen]
    assert gains == sorted(gains, reverse=True) and gains[-1] > 0
    assert choice.skipped and all(w.group.pattern == "linear" and "at the roofline already" in why
                                  for w, why in choice.skipped)
    # A measured eager time replaces the estimate: a matmul measured at three times its floor
    # comes first; a norm measured at its floor is skipped, and the reason says measured.
    linear = max((w.group for w in written if w.group.pattern == "linear"), key=lambda g: g.est_s)
    norm = next(w.group for w in choice.chosen if w.group.pattern == "rmsnorm")
    measured = {linear.name: 3 * linear.fused_floor_s, norm.name: 1.01 * norm.fused_floor_s}
    again = choose_specs(written, 3, measured)
    assert again.chosen[0].group.name == linear.name
    assert norm.name not in [w.group.name for w in again.chosen]
    # With `top`, write_specs writes only the groups worth tuning, the most to win first.
    only = write_specs(extract_ops(case, H100), tmp_path / "top", top=2)
    assert [w.group.name for w in only] == [w.group.name for w in choice.chosen[:2]]


def test_validated_dims_are_the_shapes_the_harness_checks(written):
    spec = load_spec(next(w.path for w in written if w.group.pattern == "rmsnorm"))
    assert validated_dims(spec, CPU) == [dict(d) for d in spec.interpreter_dims]
    assert validated_dims(spec, H100) == [dict(spec.tune_dims), *map(dict, spec.check_dims)]


def gpu_record(spec, kernel_ms, outcome=Outcome.CORRECT):
    t = lambda ms: Timing(ms, ms, ms, ms, 100, "cuda events")  # noqa: E731
    return Evaluation(candidate_hash="0" * 16, spec_name=spec.name, target="h100-sxm", device="H100",
                      dims=dict(spec.tune_dims), outcome=outcome, timing=t(kernel_ms),
                      baselines=Baselines(eager=t(1.0), compile_default=t(0.8)))


def test_register_best_takes_only_kernels_that_pay(written):
    spec = load_spec(next(w.path for w in written if w.group.pattern == "rmsnorm"))
    code = (FIXTURES / "library_kernels" / "rmsnorm_llama.py").read_text()
    slower = register_best(spec, H100, code, gpu_record(spec, 0.9))
    assert slower.entry is None and "0.89x" in slower.message
    failed = register_best(spec, H100, code, gpu_record(spec, 0.1, Outcome.WRONG))
    assert failed.entry is None and "wrong" in failed.message
    assert entries() == []
    faster = register_best(spec, H100, code, gpu_record(spec, 0.4))
    assert faster.entry == f"{spec.name}@1" and "2.00x" in faster.message
    again = register_best(spec, H100, code, gpu_record(spec, 0.5))
    assert again.entry is None and "kept" in again.message


def test_register_run_outputs_reads_what_a_run_left(written, tmp_path):
    path = next(w.path for w in written if w.group.pattern == "glu")
    spec = load_spec(path)
    empty = register_run_outputs(path, CPU, tmp_path / "run-without-result")
    assert empty.entry is None and "no correct kernel" in empty.message
    code = (FIXTURES / "library_kernels" / "swiglu.py").read_text()
    evaluation, _ = evaluate_on_interpreter(spec, code)
    run = tmp_path / "run"
    run.mkdir()
    (run / "best_kernel.py").write_text(code)
    (run / "best_evaluation.json").write_text(evaluation.to_json())
    done = register_run_outputs(path, CPU, run)
    assert done.entry == f"{spec.name}@1"
    (entry,) = entries(spec.name)
    assert [dict(d) for d in entry.validated_dims] == [dict(d) for d in spec.interpreter_dims]


def test_tune_model_steps_tune_the_top_specs_and_register_what_passed(tmp_path):
    """The sequence of the tune_model flow, with each spec tuned by a stand-in for the search that
    checks a hand-written kernel under the interpreter (the flow's own test runs the real search)."""
    from kevolve.models.tuning import tune_model_steps

    kernels = {"rmsnorm": "rmsnorm_llama.py", "swiglu": "swiglu.py"}
    tuned = []

    def tune_one(spec_path: str) -> dict:
        spec = load_spec(spec_path)
        tuned.append(spec.name)
        run = tmp_path / "runs" / spec.name
        run.mkdir(parents=True)
        kernel = next((k for prefix, k in kernels.items() if spec.name.startswith(prefix)), None)
        if kernel is not None:
            code = (FIXTURES / "library_kernels" / kernel).read_text()
            evaluation, _ = evaluate_on_interpreter(spec, code)
            (run / "best_kernel.py").write_text(code)
            (run / "best_evaluation.json").write_text(evaluation.to_json())
        return {"outputs": str(run), "run_id": f"run-{spec.name}", "evaluations": 1}

    config = dict(TINY_LLAMA, hidden_size=256, intermediate_size=1024)  # norms and MLP near the top
    case = resolve_model("LlamaConfig", batch=1, seq=64, overrides=config)
    report = tune_model_steps(case, CPU, tmp_path / "specs", tune_one, top=6)
    # five groups have something to win; the matmuls, the largest by time, are at the roofline
    assert len(tuned) == 5 and [r["spec"] for r in report["tuned"]] == tuned
    assert report["skipped"] and all(r["spec"].startswith(("linear", "bmm")) for r in report["skipped"])
    assert "skipped: at the roofline already" in (tmp_path / "specs" / "tune_model.md").read_text()
    registered = {r["spec"] for r in report["tuned"] if r["library"]}
    assert {n.split("_")[0] for n in registered} == {"rmsnorm", "swiglu"}
    assert {e.operator for e in entries()} == registered
    assert all("no correct kernel" in r["result"] for r in report["tuned"] if not r["library"])
    assert "| rmsnorm" in (tmp_path / "specs" / "tune_model.md").read_text()


def test_measured_eager_times_decide_what_is_tuned(tmp_path):
    """Where the machine measures a group's eager time, the measurement, not the roofline
    estimate, says what can be won: a group measured at its floor is skipped, one measured far
    above it is tuned first. The interpreter measures nothing, so the estimates stand there."""
    from kevolve.models.tuning import ModelSteps, measured_eager_s, tune_model_steps

    config = dict(TINY_LLAMA, hidden_size=256, intermediate_size=1024)
    case = resolve_model("LlamaConfig", batch=1, seq=64, overrides=config)
    written = write_specs(extract_ops(case, CPU), tmp_path / "probe")
    assert measured_eager_s(written, CPU) == {}
    by_estimate = choose_specs(written, 6).chosen
    first, rest = by_estimate[0].group, [w.group for w in by_estimate[1:]]
    at_floor = {first.name: first.fused_floor_s}  # eager already at the fused floor
    far_above = {g.name: g.fused_floor_s + 1.0 for g in rest[-1:]}  # a second above it

    tuned = []

    def tune_one(spec_path: str) -> dict:
        tuned.append(load_spec(spec_path).name)
        (tmp_path / "runs" / tuned[-1]).mkdir(parents=True)
        return {"outputs": str(tmp_path / "runs" / tuned[-1]), "run_id": tuned[-1], "evaluations": 0}

    steps = ModelSteps(measure=lambda written, target: {**at_floor, **far_above})
    report = tune_model_steps(case, CPU, tmp_path / "specs", tune_one, top=6, steps=steps)
    assert first.name not in tuned and tuned[0] == rest[-1].name
    assert any(r["spec"] == first.name and "measured" in r["result"] for r in report["skipped"])


def test_offline_kernels_pass_the_rec_models_embedding_bag_spec_at_model_proportions(tmp_path):
    """The spec `kevolve model ops` writes for a recommendation model's embedding bags (fp32,
    a large table, jagged offsets, lengths about 40): the offline synthesizer's kernels pass the
    harness at the spec's own tuned and check shapes, scaled down for the interpreter. Its
    small-batch check keeps the model's bag lengths rather than piling the whole jagged total
    into three bags."""
    import importlib.util

    import yaml

    from kevolve.evaluate import Evaluator
    from kevolve.models.trace import ModelCase
    from kevolve.synth.base import SynthesisRequest
    from kevolve.synth.offline import OfflineSynthesizer

    source = importlib.util.spec_from_file_location("rec_model_fixture", FIXTURES / "rec_model.py")
    rec = importlib.util.module_from_spec(source)
    source.loader.exec_module(rec)
    build = lambda: (*rec.make(batch=16, tables=1, rows=20_000, dim=32, dense_in=13, bottom=[16], top=[16],  # noqa: E731
                               mean_len=40), {})
    written = write_specs(extract_ops(ModelCase(name="rec", build=build), H100), tmp_path)
    path = next(w.path for w in written if w.group.pattern == "embedding_bag")
    doc = yaml.safe_load(path.read_text())
    tune, checks = doc["shapes"]["tune"], doc["shapes"]["check"]
    assert tune["V"] == 20_000 and tune["L"] >= 16 * 40 * 0.8
    assert all(0.8 < (c["L"] / c["B"]) / (tune["L"] / tune["B"]) < 1.25 for c in checks)  # bags keep their lengths
    doc["shapes"]["interpreter"] = [tune, *checks]  # the model's proportions, under the interpreter
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    spec = load_spec(path)
    with Evaluator(spec, CPU, workers=1, baselines=False) as judge:
        request = SynthesisRequest(spec=spec, target=CPU, ceilings=judge.ceilings, n=3)
        candidates = OfflineSynthesizer(rng_seed=0).propose(request)
        evaluations = judge.evaluate(candidates)
    assert len(evaluations) == 3
    assert all(e.outcome is Outcome.CORRECT for e in evaluations), [(e.error, e.failed_checks()) for e in evaluations]
    assert {d["B"] for d in validated_dims(spec, CPU)} == {tune["B"], *(c["B"] for c in checks)}
