"""Measured ceilings: the copy bandwidth and matmul rate this device really reaches.

The roofline floor of an operator uses these, not the datasheet, since a kernel can at best
match what a plain copy and the vendor's matmul achieve. Measured once per device and cached
in the state folder; figures committed under hardware/measured/ serve as defaults.
"""

from __future__ import annotations

import json
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kevolve.hardware.target import HardwareTarget
from kevolve.paths import hardware_dir, state_dir


@dataclass(frozen=True)
class Ceilings:
    copy_gbps: float  # bytes read plus bytes written per second, / 1e9
    matmul_tflops: dict[str, float]  # per dtype (bf16, fp32), random data
    source: str  # "measured" or "datasheet"
    device_name: str = ""
    measured_at: str = ""
    software: dict[str, str] = field(default_factory=dict)
    method: str = ""

    def matmul_flops(self, dtype: str) -> float:
        key = {"bfloat16": "bf16", "float16": "bf16", "float32": "fp32"}.get(dtype, dtype)
        return self.matmul_tflops.get(key, self.matmul_tflops.get("bf16", 0.0)) * 1e12

    @property
    def copy_bytes_per_s(self) -> float:
        return self.copy_gbps * 1e9


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def host_device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu {platform.processor() or platform.machine()}"


def datasheet_ceilings(target: HardwareTarget) -> Ceilings:
    return Ceilings(
        copy_gbps=target.dram_bandwidth_gbps,
        matmul_tflops={"bf16": target.peak_tflops.get("bf16", 0.0), "fp32": target.peak_tflops.get("fp32", 0.0)},
        source="datasheet",
        device_name=target.display_name,
    )


def cache_path(device: str) -> Path:
    return state_dir() / "calibration" / f"{slug(device)}.json"


def committed_path(target: HardwareTarget) -> Path:
    return hardware_dir() / "measured" / f"{target.name}.json"


def load_ceilings(target: HardwareTarget, device: str | None = None) -> Ceilings:
    """Measured ceilings for this device if calibrated, else committed ones for the target, else
    the datasheet's."""
    for path in ([cache_path(device)] if device else []) + [committed_path(target)]:
        if path.is_file():
            return Ceilings(**json.loads(path.read_text()))
    return datasheet_ceilings(target)


def uncalibrated_gpu(target: HardwareTarget) -> str | None:
    """The name of this machine's GPU when neither its cache nor the committed figures hold its
    measured ceilings (its roofline would fall back to the datasheet), else None."""
    import torch

    if target.interpreter or not torch.cuda.is_available():
        return None
    name = host_device_name()
    return None if cache_path(name).is_file() or committed_path(target).is_file() else name


def calibrate_if_needed(target: HardwareTarget) -> str | None:
    """Measure this GPU's ceilings now if nothing holds them (a few seconds, once per device): a
    datasheet peak is more than the device reaches, and the roofline should be one a kernel can
    reach. Returns a line saying what was measured, or None when nothing needed measuring."""
    gpu = uncalibrated_gpu(target)
    if gpu is None:
        return None
    c = calibrate(target)
    return (f"calibrated {gpu} once (cached): copy {c.copy_gbps:.0f} GB/s, bf16 matmul "
            f"{c.matmul_tflops.get('bf16', 0):.0f} TFLOP/s; the roofline uses these")


def calibrate(target: HardwareTarget, *, quick: bool = False) -> Ceilings:
    """Measure and cache. `quick` uses small sizes (for tests; not a figure to quote)."""
    import torch

    cuda = torch.cuda.is_available() and not target.interpreter
    device = "cuda" if cuda else "cpu"
    copy_elems = (1 << 20 if quick else 1 << 28) if cuda else (1 << 18 if quick else 1 << 25)
    n_bf16 = (1024 if quick else 8192) if cuda else (256 if quick else 1024)
    n_fp32 = (1024 if quick else 4096) if cuda else (256 if quick else 1024)

    x = torch.randn(copy_elems, device=device)
    y = torch.empty_like(x)
    copy_s = _median_seconds(lambda: y.copy_(x), cuda)
    copy_gbps = 2 * x.numel() * x.element_size() / copy_s / 1e9
    del x, y

    rates = {}
    for key, dtype, n in (("bf16", torch.bfloat16, n_bf16), ("fp32", torch.float32, n_fp32)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
        try:
            seconds = _median_seconds(lambda: a @ b, cuda)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
        rates[key] = float(f"{2 * n**3 / seconds / 1e12:.4g}")

    import triton

    name = host_device_name()
    ceilings = Ceilings(
        copy_gbps=round(copy_gbps, 1),
        matmul_tflops=rates,
        source="measured",
        device_name=name,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        software={"torch": torch.__version__, "triton": triton.__version__},
        method=(f"median time; copy of {copy_elems} fp32 (bytes read + written); "
                f"bf16 {n_bf16}^3 and fp32 {n_fp32}^3 matmul on random normal data"
                + ("; quick sizes" if quick else "")),
    )
    path = cache_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(ceilings), indent=2))
    return ceilings


def _median_seconds(fn, cuda: bool) -> float:
    if cuda:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=100, rep=500, return_mode="median") / 1e3
    fn()
    times = []
    for _ in range(7):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
