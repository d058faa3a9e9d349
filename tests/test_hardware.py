import json

import pytest

from conftest import run_cli
from kevolve.errors import HardwareError
from kevolve.hardware import available_targets, calibrate, detect_target, load_ceilings, load_target
from kevolve.hardware.detect import match_target

REQUIRED_TARGETS = {"h100-sxm", "h200", "a100", "mi300x", "mtia-v2", "cpu-interpreter"}


def test_every_required_target_loads_with_sane_numbers():
    assert REQUIRED_TARGETS <= set(available_targets())
    for name in available_targets():
        t = load_target(name)
        assert t.sm_count > 0 and t.dram_bandwidth_gbps > 0 and t.l2_cache_mib > 0
        assert "triton" in t.kernel_languages
        assert all(v > 0 for v in t.peak_tflops.values())


def test_target_figures():
    h100 = load_target("h100-sxm")
    assert (h100.sm_count, h100.warp_size_threads, h100.shared_memory_per_sm_kib) == (132, 32, 228)
    assert h100.peak_flops("bfloat16") == pytest.approx(989.4e12)
    assert load_target("mi300x").warp_size_threads == 64
    assert "public figures only" in load_target("mtia-v2").figures_source
    assert load_target("cpu-interpreter").interpreter


def test_detection_maps_device_names():
    assert match_target("NVIDIA H100 80GB HBM3").name == "h100-sxm"
    assert match_target("NVIDIA H200").name == "h200"
    assert match_target("NVIDIA A100-SXM4-80GB").name == "a100"
    assert match_target("AMD Instinct MI300X").name == "mi300x"
    with pytest.raises(HardwareError, match="describe it in hardware/"):
        match_target("Voodoo 5 6000")
    assert detect_target().name == "cpu-interpreter"  # no GPU here


def test_unknown_target_is_one_clear_error():
    result = run_cli("hw", "show", "h900")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown hardware target 'h900'" in result.stderr


def test_calibration_is_measured_cached_and_used_by_the_roofline():
    target = load_target("cpu-interpreter")
    assert load_ceilings(target).source == "datasheet"
    measured = calibrate(target, quick=True)
    assert measured.source == "measured" and measured.copy_gbps > 0 and measured.matmul_tflops["fp32"] > 0
    again = load_ceilings(target, measured.device_name)
    assert again == measured


def test_a_gpu_without_measured_ceilings_is_calibrated_before_a_run(monkeypatch):
    """A run on a GPU whose ceilings are neither cached nor committed measures them first, once:
    its roofline never rests on the datasheet. Where figures exist, nothing is measured again."""
    import importlib

    import torch

    from kevolve.search.launch import plan_run

    calibration = importlib.import_module("kevolve.hardware.calibrate")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    measured = []

    def fake_calibrate(target, quick=False):  # the GPU's measurement, recorded where calibrate keeps it
        measured.append(target.name)
        c = calibration.Ceilings(copy_gbps=1700.0, matmul_tflops={"bf16": 250.0, "fp32": 19.0}, source="measured",
                                 device_name="NVIDIA A100-SXM4-80GB")
        path = calibration.cache_path("NVIDIA A100-SXM4-80GB")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(calibration.asdict(c)))
        return c

    monkeypatch.setattr(calibration, "calibrate", fake_calibrate)
    a100, h100 = load_target("a100"), load_target("h100-sxm")
    assert calibration.uncalibrated_gpu(h100) is None  # committed figures
    assert calibration.uncalibrated_gpu(a100) == "NVIDIA A100-SXM4-80GB"
    plan = plan_run("softmax", target="a100", offline=True)
    assert measured == ["a100"] and any("calibrated NVIDIA A100-SXM4-80GB" in n for n in plan.notes)
    assert load_ceilings(a100, "NVIDIA A100-SXM4-80GB").copy_gbps == 1700.0
    assert calibration.uncalibrated_gpu(a100) is None
    plan_run("softmax", target="a100", offline=True)
    assert measured == ["a100"]  # cached: once per device


def test_cli_lists_and_shows():
    result = run_cli("--help")
    assert result.returncode == 0 and "specs" in result.stdout and "hw" in result.stdout
    shown = run_cli("hw", "show", "h100-sxm", "--json")
    assert json.loads(shown.stdout)["target"]["sm_count"] == 132
