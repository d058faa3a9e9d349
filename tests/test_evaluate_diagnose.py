"""Pure parts of the judge: roofline, occupancy, classification, ncu parsing, statistics, the
reader-writer lock, the verdict text and persistence."""

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from kevolve.candidate import Candidate, Origin
from kevolve.evaluate import ncu
from kevolve.evaluate.diagnose import classify, diagnose, implausibly_fast, occupancy, roofline_floor_ms
from kevolve.evaluate.evaluator import save_evaluation
from kevolve.evaluate.pool import RWLock, worker_env
from kevolve.evaluate.result import Baselines, Check, Evaluation, KernelStats, Outcome, Timing
from kevolve.evaluate.timing import summarize
from kevolve.evaluate.verdict import format_verdict
from kevolve.hardware import load_target
from kevolve.hardware.calibrate import Ceilings

H100 = load_target("h100-sxm")
MEASURED = Ceilings(copy_gbps=3000.0, matmul_tflops={"bf16": 686.0, "fp32": 52.0}, source="measured")
SOFTMAX_BYTES = 2 * 8192 * 8192 * 2  # bf16 in and out


def timing(ms: float, interpreter: bool = False) -> Timing:
    return Timing(ms, ms * 0.99, ms * 1.01, ms * 0.98, 100, "test", interpreter)


def stats(regs=32, warps=4, shared=0, spills=0) -> KernelStats:
    return KernelStats("k", regs, spills, shared, warps, 3)


@pytest.mark.parametrize("kernel, warps_per_sm, limiter", [
    (stats(regs=32, warps=4), 64, "warps"),
    (stats(regs=128, warps=8), 16, "registers"),
    (stats(regs=40, warps=4, shared=100 * 1024), 8, "shared memory"),
    (stats(regs=16, warps=1), 32, "blocks"),
])
def test_occupancy_on_h100(kernel, warps_per_sm, limiter):
    k = occupancy(kernel, H100)
    assert (k.occupancy_warps_per_sm, k.occupancy_limiter) == (warps_per_sm, limiter)


def test_occupancy_is_not_computed_for_the_interpreter():
    assert occupancy(stats(), load_target("cpu-interpreter")).occupancy_warps_per_sm is None


def test_roofline_floor_is_the_slower_roof():
    assert roofline_floor_ms(0, 0, SOFTMAX_BYTES, "bfloat16", H100, MEASURED) == pytest.approx(0.08948, rel=1e-3)
    matmul = 2 * 8192 * 4096 * 4096
    assert roofline_floor_ms(matmul, 0, 1e6, "bfloat16", H100, MEASURED) == pytest.approx(matmul / 686e12 * 1e3)


def test_memory_bound_softmax_near_its_floor():
    d = diagnose(matmul_flops=0, other_flops=5 * 8192 * 8192, min_bytes=SOFTMAX_BYTES, dtype="bfloat16",
                 timing=timing(0.1), kernels=[stats()], target=H100, ceilings=MEASURED)
    assert d.bound == "memory" and d.fraction_of_floor == pytest.approx(0.8948, rel=1e-3)
    assert d.achieved_gbps == pytest.approx(2684.4, rel=1e-3) and d.kernels[0].occupancy_warps_per_sm == 64
    assert "89% of it" in d.summary and d.ceilings_source == "measured"
    assert any("bandwidth" in s or "once" in s for s in d.suggestions)


def test_compute_bound_matmul():
    flops = 2 * 8192 * 4096 * 4096
    d = diagnose(matmul_flops=flops, other_flops=0, min_bytes=2 * (8192 * 4096 * 2 + 4096 * 4096), dtype="bfloat16",
                 timing=timing(0.55), kernels=[stats(regs=168, warps=8, shared=98304)], target=H100,
                 ceilings=MEASURED)
    assert d.bound == "compute" and d.achieved_tflops == pytest.approx(flops / 0.55e-3 / 1e12)
    assert d.suggestions[0].startswith("Use tl.dot")


@pytest.mark.parametrize("t_ms, floor_ms, kernels, bound", [
    (0.005, 0.0001, [stats()], "launch"),
    (1.0, 0.1, [stats()], "latency"),
    (1.0, 0.3, [stats(regs=255, warps=16)], "occupancy"),
    (1.0, 0.7, [stats(regs=255, warps=16)], "memory"),
])
def test_classification(t_ms, floor_ms, kernels, bound):
    kernels = [occupancy(k, H100) for k in kernels]
    assert classify(t_ms, floor_ms, "memory", kernels, H100)[0] == bound


def test_ncu_figures_decide_the_class_when_present():
    assert classify(1.0, 0.2, "memory", [], H100, {"dram_throughput_pct": 85.0, "sm_throughput_pct": 20.0})[0] == "memory"
    assert classify(1.0, 0.2, "memory", [], H100, {"dram_throughput_pct": 10.0, "sm_throughput_pct": 75.0})[0] == "compute"
    low = {"dram_throughput_pct": 20.0, "sm_throughput_pct": 20.0, "achieved_occupancy_pct": 12.0}
    assert classify(1.0, 0.2, "memory", [], H100, low)[0] == "occupancy"


def test_interpreter_timings_are_never_diagnosed_as_speed():
    d = diagnose(matmul_flops=0, other_flops=100, min_bytes=4000, dtype="float32", timing=timing(50.0, True),
                 kernels=[], target=load_target("cpu-interpreter"), ceilings=MEASURED)
    assert d.bound == "unknown" and d.fraction_of_floor is None and d.achieved_gbps is None
    assert "interpreter" in d.summary


def test_faster_than_the_roofline_is_implausible():
    assert implausibly_fast(2.0) and not implausibly_fast(1.2) and not implausibly_fast(None)


NCU_CSV = '''==PROF== Connected to process 4242 (/usr/bin/python3.12)
==PROF== Profiling "_softmax_row" - 0: 0%....50%....100% - 9 passes
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","4242","python3.12","127.0.0.1","_softmax_row","1","7","(256, 1, 1)","(8192, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","134,217,728"
"0","4242","python3.12","127.0.0.1","_softmax_row","1","7","(256, 1, 1)","(8192, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","134,217,728"
"0","4242","python3.12","127.0.0.1","_softmax_row","1","7","(256, 1, 1)","(8192, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","nsecond","100,000"
"0","4242","python3.12","127.0.0.1","_softmax_row","1","7","(256, 1, 1)","(8192, 1, 1)","0","9.0","Command line profiler metrics","dram__throughput.avg.pct_of_peak_sustained_elapsed","%","80"
"0","4242","python3.12","127.0.0.1","_softmax_row","1","7","(256, 1, 1)","(8192, 1, 1)","0","9.0","Command line profiler metrics","sm__throughput.avg.pct_of_peak_sustained_elapsed","%","30"
"1","4242","python3.12","127.0.0.1","_softmax_row","1","7","(256, 1, 1)","(8192, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","134,217,728"
"1","4242","python3.12","127.0.0.1","_softmax_row","1","7","(256, 1, 1)","(8192, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","134,217,728"
"1","4242","python3.12","127.0.0.1","_softmax_row","1","7","(256, 1, 1)","(8192, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","nsecond","300,000"
"1","4242","python3.12","127.0.0.1","_softmax_row","1","7","(256, 1, 1)","(8192, 1, 1)","0","9.0","Command line profiler metrics","dram__throughput.avg.pct_of_peak_sustained_elapsed","%","40"
"1","4242","python3.12","127.0.0.1","_softmax_row","1","7","(256, 1, 1)","(8192, 1, 1)","0","9.0","Command line profiler metrics","sm__throughput.avg.pct_of_peak_sustained_elapsed","%","10"
==PROF== Disconnected from process 4242
'''


def test_ncu_csv_is_summed_per_call_and_weighted_by_duration():
    m = ncu.parse(NCU_CSV, calls=2)
    assert m["kernel_launches_per_call"] == 1.0
    assert m["duration_ms_per_call"] == pytest.approx(0.2)
    assert m["dram_bytes_per_call"] == pytest.approx(268435456)
    assert m["dram_gbps"] == pytest.approx(4 * 134217728 / 400000)
    assert m["dram_throughput_pct"] == pytest.approx((80 * 1 + 40 * 3) / 4)
    with pytest.raises(ncu.NcuError):
        ncu.parse("==PROF== No kernels were profiled.\n", calls=3)


def test_ncu_command_profiles_the_worker_between_profiler_start_and_stop(tmp_path):
    cmd = ncu.command("/usr/local/bin/ncu", tmp_path / "req.json")
    assert cmd[:3] == ["/usr/local/bin/ncu", "--clock-control", "none"]
    assert "--profile-from-start" in cmd and cmd[cmd.index("--profile-from-start") + 1] == "off"
    assert cmd[-3:] == ["kevolve.evaluate.worker", "--profile", str(tmp_path / "req.json")]


def test_statistics_of_a_timing():
    t = summarize([float(x) for x in range(10, 0, -1)], "m")
    assert (t.median_ms, t.min_ms, t.trials) == (5.5, 1.0, 10)
    assert (t.p20_ms, t.p80_ms) == pytest.approx((2.8, 8.2))
    assert t.spread == pytest.approx(5.4 / 5.5)


def test_a_waiting_writer_goes_before_new_readers():
    lock, order = RWLock(), []
    first_reader_in, release_first = threading.Event(), threading.Event()

    def reader(name, hold=None, entered=None):
        with lock.shared():
            if entered:
                entered.set()
            order.append(name)
            if hold:
                hold.wait(5)

    def writer():
        with lock.exclusive():
            order.append("writer")

    threads = [threading.Thread(target=reader, args=("r1", release_first, first_reader_in))]
    threads[0].start()
    first_reader_in.wait(5)
    threads.append(threading.Thread(target=writer))
    threads[1].start()
    time.sleep(0.1)  # the writer is waiting for r1
    threads.append(threading.Thread(target=reader, args=("r2",)))
    threads[2].start()
    time.sleep(0.1)
    assert order == ["r1"]  # r2 waits behind the writer
    release_first.set()
    for t in threads:
        t.join(5)
    assert order == ["r1", "writer", "r2"]


def evaluation(outcome=Outcome.CORRECT, **kw) -> Evaluation:
    base = dict(candidate_hash="abc", spec_name="softmax", target="h100-sxm", device="NVIDIA H100 80GB HBM3",
                dims={"M": 8192, "N": 8192}, outcome=outcome, wall_s=1.5)
    return Evaluation(**{**base, **kw})


def test_verdict_of_a_correct_gpu_candidate():
    ev = evaluation(checks=(Check("trial[seed=11 M=8192,N=8192]", True),), timing=timing(0.1),
                    baselines=Baselines(eager=timing(0.2), compile_default=timing(0.12),
                                        errors={"compile_max_autotune": "timed_out: killed"}),
                    diagnosis=diagnose(matmul_flops=0, other_flops=0, min_bytes=SOFTMAX_BYTES, dtype="bfloat16",
                                       timing=timing(0.1), kernels=[stats()], target=H100, ceilings=MEASURED))
    text = format_verdict(ev, "softmax.py")
    assert text.startswith("softmax.py: CORRECT  (softmax at M=8192,N=8192 on h100-sxm")
    assert "-> 2.00x" in text and "-> 1.20x" in text and "max-autotune  not timed: timed_out" in text
    assert "diagnosis memory:" in text and "64 warps/SM (warps)" in text


def test_verdict_of_a_wrong_candidate_names_the_failed_check():
    ev = evaluation(Outcome.WRONG, checks=(Check("trial[seed=12 M=7,N=97]", False, "output 0: 154 of 679 off"),),
                    error="output 0: 154 of 679 off")
    text = format_verdict(ev)
    assert "WRONG" in text and "failed    trial[seed=12 M=7,N=97]: output 0: 154 of 679 off" in text
    assert text.count("154 of 679") == 1


def test_saved_evaluation_reads_back_beside_its_code(tmp_path):
    cand = Candidate("print('kernel')\n", "softmax", Origin("offline", family="softmax", config={"BLOCK": 1024}))
    ev = evaluation(candidate_hash=cand.code_hash, timing=timing(0.1),
                    checks=(Check("trial[seed=11 M=8192,N=8192]", True, "max error 0.001"),))
    path = save_evaluation(tmp_path / "runs", cand, ev)
    assert path == tmp_path / "runs" / f"{cand.code_hash}.json"
    assert Evaluation.from_json(path.read_text()) == ev
    doc = json.loads(path.read_text())
    assert (tmp_path / "runs" / doc["candidate"]["code_file"]).read_text() == cand.code
    assert doc["candidate"]["origin"]["config"] == {"BLOCK": 1024}


def test_worker_environment_keeps_no_secrets_and_puts_caches_in_scratch(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-123")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    env = worker_env(tmp_path, gpu=1, interpreter=False)
    assert "AWS_SECRET_ACCESS_KEY" not in env and "OPENAI_API_KEY" not in env
    assert "TRITON_INTERPRET" not in env and env["CUDA_VISIBLE_DEVICES"] == "3"
    for key in ("HOME", "TMPDIR", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
        assert env[key].startswith(str(tmp_path)) and Path(env[key]).is_dir()
    assert worker_env(tmp_path, gpu=None, interpreter=True)["TRITON_INTERPRET"] == "1"


def test_least_bytes_of_an_embedding_bag_count_each_distinct_row_once(tmp_path):
    from kevolve.evaluate.cost import reference_cost
    from kevolve.specs import load_spec
    from kevolve.specs.runtime import OperatorRuntime

    spec = load_spec(Path(__file__).resolve().parent.parent / "specs" / "embedding_bag_sum.yaml")
    runtime = OperatorRuntime(spec)
    dims = {"V": 300, "D": 16, "B": 5, "L": 200}  # 200 lookups into 300 rows: about a third repeat
    table, indices, offsets = runtime.inputs(dims, seed=0)
    rows = torch.unique(indices).numel()
    assert rows < indices.numel()
    want = rows * 16 * 4 + indices.numel() * 8 + offsets.numel() * 8 + 5 * 16 * 4
    assert reference_cost(runtime, dims, "cpu").min_bytes == want
