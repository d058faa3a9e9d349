"""Hardware targets: the numbers a kernel designer needs, read from hardware/*.yaml.

Every number carries its unit in its name. Datasheet figures are leads; the roofline uses the
ceilings measured by calibration where they exist (see calibrate.py).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from kevolve.errors import HardwareError
from kevolve.paths import hardware_dir


@dataclass(frozen=True)
class HardwareTarget:
    name: str
    display_name: str
    vendor: str
    architecture: str
    figures_source: str  # where the numbers come from; "public figures only" where that is all
    device_name_patterns: tuple[str, ...]  # substrings of the driver's device name
    sm_count: int  # streaming multiprocessors, compute units or processing elements
    warp_size_threads: int
    max_threads_per_sm: int
    max_threads_per_block: int
    registers_per_sm: int  # 32-bit registers
    max_registers_per_thread: int
    shared_memory_per_sm_kib: float
    shared_memory_per_block_kib: float
    l2_cache_mib: float
    dram_capacity_gib: float
    dram_bandwidth_gbps: float  # GB/s, datasheet
    peak_tflops: Mapping[str, float]  # dense, per dtype: fp64 fp32 tf32 bf16 fp16 fp8 int8
    kernel_languages: tuple[str, ...]
    compute_capability: str = ""
    interpreter: bool = False  # kernels run under TRITON_INTERPRET=1 on the CPU: no speed figures
    notes: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)  # target-specific numbers, units in names

    @property
    def max_warps_per_sm(self) -> int:
        return self.max_threads_per_sm // self.warp_size_threads

    def peak_flops(self, dtype: str) -> float:
        """FLOP/s for a dtype name as torch spells it, datasheet."""
        key = {"float32": "fp32", "float64": "fp64", "bfloat16": "bf16", "float16": "fp16",
               "float8_e4m3fn": "fp8", "int8": "int8"}.get(dtype, dtype)
        return float(self.peak_tflops.get(key, self.peak_tflops.get("fp32", 0.0))) * 1e12


def load_target_file(path: Path) -> HardwareTarget:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise HardwareError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise HardwareError(f"{path}: expected a mapping of hardware figures")
    known = {f.name for f in fields(HardwareTarget)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise HardwareError(f"{path}: unknown field {unknown[0]!r}; fields carry their unit in their name")
    required = [f.name for f in fields(HardwareTarget) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in doc]
    if missing:
        raise HardwareError(f"{path}: missing {', '.join(missing)}")
    try:
        doc = dict(doc)
        for key in ("device_name_patterns", "kernel_languages"):
            doc[key] = tuple(doc.get(key) or ())
        return HardwareTarget(**doc)
    except TypeError as exc:
        raise HardwareError(f"{path}: {exc}") from None


def available_targets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(hardware_dir().glob("*.yaml"))}


def load_target(name: str) -> HardwareTarget:
    """A target by name (`h100-sxm`) or by path to its YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_target_file(path)
    targets = available_targets()
    if name not in targets:
        raise HardwareError(f"unknown hardware target {name!r}; known targets: {', '.join(targets)} "
                            f"(add hardware/{name}.yaml to describe a new one)")
    return load_target_file(targets[name])
