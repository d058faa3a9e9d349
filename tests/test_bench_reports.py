"""`kevolve bench` and KernelBench mode under Triton's interpreter: real searches with the real
harness on tiny shapes, one shared worker pool; the outputs must never present interpreter times
as speedups. The GPU-side tables (speedups, fast_p) are checked on figures written by hand."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from kevolve.errors import KevolveError
from kevolve.report.bench import BenchSettings, markdown, plots, run_suite, suite_paths
from kevolve.report.kernelbench import fast_p, metrics, run_kernelbench, select_problems

INTERP = BenchSettings(target="cpu-interpreter", budget=2, offline=True, knowledge=False)


def test_the_suite_bench_searches_then_takes_the_librarys_kernel(tmp_path):
    from kevolve.evaluate.result import Evaluation
    from kevolve.library import store as library
    from kevolve.specs import resolve_spec

    out = tmp_path / "out"
    doc = run_suite(suite_paths(["clamp_log1p"]), INTERP, out, command="kevolve bench clamp_log1p")
    [row] = doc["specs"]
    assert row["status"] == "ok" and row["source"].startswith("search clamp_log1p-cpu-interpreter-")
    assert row["evaluations"] == 2 and row["correct"] >= 1 and row["gpu_s"] > 0
    assert row["best_ms"] is None and row["speedup"] == {} and row["fraction_of_floor"] is None  # no speed here
    assert row["report"] == "bench_suite_reports/clamp_log1p.html" and Path(row["kernel"]).is_file()
    assert "clamp_log1p on cpu-interpreter" in (out / row["report"]).read_text()
    text = (out / "bench_suite.md").read_text()
    assert "Interpreter run (CPU)" in text and "correct (no speed)" in text and "kevolve bench clamp_log1p" in text
    assert "(bench_suite_reports/clamp_log1p.html)" in text
    for plot in ("bench_suite_speedup.svg", "bench_suite_curves.svg"):
        svg = (out / plot).read_text()
        assert svg.startswith("<svg") and "never kernel speed" in svg
    assert json.loads((out / "bench_suite.json").read_text())["specs"][0]["spec"] == "clamp_log1p"

    # the kernel found goes to the library; the next bench takes it from there, unless --fresh
    spec = resolve_spec("clamp_log1p")
    run_dir = Path(row["kernel"]).parent
    evaluation = Evaluation.from_json((run_dir / "best_evaluation.json").read_text())
    entry = library.register(spec, "cpu-interpreter", Path(row["kernel"]).read_text(), evaluation,
                             [row["dims"]])
    again = run_suite(suite_paths(["clamp_log1p"]), INTERP, out, name="again")["specs"][0]
    assert again["status"] == "ok" and again["source"] == f"library {entry.ref}" and again["evaluations"] == 1


def test_a_suite_names_only_what_exists(tmp_path, monkeypatch):
    with pytest.raises(KevolveError, match="neither a spec file"):
        suite_paths(["softmax,no_such_spec"])
    assert [p.stem for p in suite_paths(["softmax,rmsnorm"])] == ["softmax", "rmsnorm"]
    assert len(suite_paths([])) >= 15  # the example specs
    # a name with a YAML spec and a KernelBench file is one spec (the YAML, as `kevolve tune` takes it)
    for name in ("twice.yaml", "twice.py"):
        (tmp_path / name).write_text("")
    monkeypatch.setenv("KEVOLVE_SPECS_DIR", str(tmp_path))
    assert suite_paths(["twice"]) == [tmp_path / "twice.yaml"]
    with pytest.raises(KevolveError, match="neither a spec file"):
        suite_paths(["twice,no_such_spec"])


def test_bench_settings_refuse_a_search_no_run_could_make():
    with pytest.raises(KevolveError, match="budget must be at least 1, not 0"):
        BenchSettings(budget=0)
    with pytest.raises(KevolveError, match="unknown policy 'annealing'"):
        BenchSettings(policy="annealing")
    assert BenchSettings(budget=3, wall_time_s=60).search_settings() == {"budget": 3, "policy": "mcts",
                                                                          "wall_time_s": 60}


def gpu_doc() -> dict:
    row = dict(spec="softmax", status="ok", source="search r1", dims={}, baseline_errors={"compile_max_autotune": "boom"},
               baselines_ms={"eager": 0.27, "compile_default": 0.16, "compile_max_autotune": None},
               best_ms=0.09, speedup={"eager": 3.0, "compile_default": 1.78, "compile_max_autotune": None},
               fraction_of_floor=0.95, floor_ms=0.085, bound="memory", evaluations=6, correct=6, gpu_s=4.2,
               wall_s=30.0, llm_tokens=0, curve=[(1, 1.5), (2, 1.78)], report="", kernel="", error="")
    row.update(best_spread=0.02, baselines_spread={"eager": 0.01, "compile_default": 0.03, "compile_max_autotune": None})
    slow = dict(row, spec="matmul", speedup={"eager": 0.9, "compile_default": 0.8, "compile_max_autotune": 0.5},
                baselines_ms={"eager": 0.3, "compile_default": 0.32, "compile_max_autotune": 0.2}, best_ms=0.4,
                baseline_errors={}, curve=[(1, 0.5)])
    # 0.204 ms against 0.2: 2% apart, inside the baseline's 3% spread but not the best's 1%
    tie = dict(slow, spec="rope", speedup={"eager": 1.5, "compile_default": 1.6, "compile_max_autotune": 0.98},
               best_ms=0.204, best_spread=0.01, baselines_spread={"eager": 0.01, "compile_default": 0.01,
                                                                  "compile_max_autotune": 0.03})
    return {"date": "2026-12-01", "target": "h100-sxm", "interpreter": False, "device": "NVIDIA H100 80GB HBM3",
            "command": "kevolve bench", "software": {"python": "3.12", "torch": "2.11", "triton": "3.6"},
            "settings": vars(BenchSettings()), "specs": [row, slow, tie, dict(row, spec="x", status="not run",
                                                                         error="suite time limit (480 s)")]}


def test_gpu_figures_are_tabled_with_speedups_and_plotted(tmp_path):
    from kevolve.report.bench import replot

    doc = gpu_doc()
    text = markdown(doc, "bench_suite")
    assert ("| softmax | search r1 | 0.27 | 0.16 | - | 0.09 | 3.00x | 1.78x | - | faster | 95% | memory | 6 (6) "
            "| 4.2 | 0 |") in text
    assert "| 0.50x | slower | 95% |" in text
    assert "| 0.98x | tie (spread 3.0%) | 95% |" in text
    assert "Faster than every baseline on 1 of 4 specs" in text  # matmul and rope lose to max-autotune
    assert "geometric mean speedup over the fastest baseline: 0.96x" in text  # cbrt(1.78 * 0.5 * 0.98)
    assert "beyond the timings' spread: faster on 1, slower on 1; within it (a tie): 1." in text
    assert "softmax, max-autotune: boom" in text and "| x | not run: suite time limit (480 s) |" in text
    svgs = plots(doc)
    assert "Best kernel's speedup per spec" in svgs["speedup"] and "n/a" in svgs["speedup"]
    assert "softmax" in svgs["curves"] and "matmul" in svgs["curves"]
    # figures written on a GPU machine without matplotlib are drawn later from their JSON
    (tmp_path / "gpu.json").write_text(json.dumps(doc))
    assert replot(tmp_path / "gpu.json").read_text() == markdown(doc, "gpu")
    assert (tmp_path / "gpu_speedup.svg").read_text() == svgs["speedup"]
    assert "--replot gpu.json" in markdown(doc, "gpu", drawn=False)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(KevolveError, match="not a JSON file written by `kevolve bench`"):
        replot(tmp_path / "bad.json")


PROBLEMS = {
    "19_ReLU.py": "return torch.relu(x)",
    "23_Softmax.py": "return torch.softmax(x, dim=1)",
    "89_cumsum.py": "return torch.cumsum(x, dim=1)",  # no offline template covers it
}


def kernelbench_tree(root: Path) -> Path:
    level = root / "KernelBench" / "level1"
    level.mkdir(parents=True)
    for name, body in PROBLEMS.items():
        (level / name).write_text(textwrap.dedent(f"""\
            import torch
            import torch.nn as nn


            class Model(nn.Module):
                def __init__(self):
                    super().__init__()

                def forward(self, x):
                    {body}


            batch_size = 8
            dim = 96


            def get_inputs():
                return [torch.rand(batch_size, dim)]


            def get_init_inputs():
                return []
            """))
    return root


def test_kernelbench_mode_writes_modelnew_files_and_reports_fast_p(tmp_path):
    root = kernelbench_tree(tmp_path / "kb")
    published = tmp_path / "published"
    published.mkdir()
    (published / "baseline_time_torch.json").write_text(json.dumps({"level1": {"19_ReLU.py": {"mean": 2.5}}}))
    out = tmp_path / "out"
    doc = run_kernelbench(root, 1, [], INTERP, out, published=published, command="kevolve kernelbench kb --level 1")
    rows = {r["problem"]: r for r in doc["problems"]}
    assert rows["89_cumsum.py"]["status"] == "not covered" and "needs an LLM" in rows["89_cumsum.py"]["note"]
    for name in ("19_ReLU.py", "23_Softmax.py"):
        assert rows[name]["status"] == "ok" and rows[name]["best_ms"] is None  # correct; no speed here
        written = (out / "level1" / name).read_text()
        assert "class ModelNew" in written and "@triton.jit" in written
    assert rows["19_ReLU.py"]["published_ms"] == {"eager": 2.5}
    m = doc["metrics"]
    assert m["problems"] == 3 and m["correct"] == 2 and m["not_covered"] == 1
    assert m["fast_0"] == pytest.approx(2 / 3)
    assert m["fast_1"] is None and m["fast_1.5"] is None  # never a speedup from interpreter times
    text = (out / "kernelbench_level1.md").read_text()
    assert "| fast_0 (correct) | 66.7% |" in text and "| fast_1 | n/a (interpreter: no kernel speed) |" in text
    assert "| 89_cumsum.py | not covered |" in text and "| 19_ReLU.py | ok | correct (no speed) |" in text


def test_kernelbench_problems_are_chosen_by_number_or_name(tmp_path):
    level = kernelbench_tree(tmp_path / "kb") / "KernelBench" / "level1"
    assert [p.name for p in select_problems(level, ["23", "19_ReLU"])] == ["23_Softmax.py", "19_ReLU.py"]
    assert [p.name for p in select_problems(level, [])] == ["19_ReLU.py", "23_Softmax.py", "89_cumsum.py"]
    with pytest.raises(KevolveError, match="no problem '7'"):
        select_problems(level, ["7"])
    with pytest.raises(KevolveError, match="no level2 folder"):
        run_kernelbench(tmp_path / "kb", 2, [], INTERP, tmp_path / "out")


def test_fast_p_is_kernelbenchs_share_of_all_problems_correct_and_faster():
    def row(correct, eager=None, compile_=None):
        return {"correct_kernel": correct, "best_ms": 1.0 if correct else None, "status": "ok" if correct else "x",
                "speedup": {"eager": eager, "compile_default": compile_}}

    rows = [row(True, 2.0, 1.2), row(True, 1.2, 0.9), row(True, 0.8, 0.5), row(False), row(False)]
    assert fast_p(rows, 0.0) == pytest.approx(3 / 5)
    assert fast_p(rows, 1.0) == pytest.approx(2 / 5)
    assert fast_p(rows, 1.5) == pytest.approx(1 / 5)
    assert fast_p(rows, 1.0, "compile_default") == pytest.approx(1 / 5)
    m = metrics(rows, [2.0], interpreter=False)
    assert m["fast_2"] == 0.0 and m["fast_1_vs_compile"] == pytest.approx(1 / 5)
