"""Nsight Compute, where it is installed: DRAM bytes and throughput, SM throughput and achieved
occupancy of a candidate's kernels at the tuned shape.

ncu runs the worker's `--profile` mode (same sandbox, same clean environment), which calls the
candidate a few times between cudaProfilerStart and cudaProfilerStop; `--clock-control none`
keeps the clocks as the timing saw them, and ncu's default cache control flushes caches before
each kernel, as the timing does.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping

METRICS = {
    "dram__bytes_read.sum": "dram_read_bytes",
    "dram__bytes_write.sum": "dram_write_bytes",
    "gpu__time_duration.sum": "duration_ns",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed": "dram_throughput_pct",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed": "sm_throughput_pct",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "achieved_occupancy_pct",
}
_PERCENTAGES = ("dram_throughput_pct", "sm_throughput_pct", "achieved_occupancy_pct")


class NcuError(Exception):
    pass


def ncu_path() -> str | None:
    return shutil.which("ncu")


def command(ncu: str, request_path: Path) -> list[str]:
    return [ncu, "--clock-control", "none", "--profile-from-start", "off", "--target-processes", "all",
            "--csv", "--print-units", "base", "--metrics", ",".join(METRICS),
            sys.executable, "-m", "kevolve.evaluate.worker", "--profile", str(request_path)]


def profile(request: Mapping, scratch: Path, env: Mapping[str, str], timeout_s: float) -> dict[str, float]:
    """Profile one candidate; raise NcuError with ncu's last words when it fails."""
    ncu = ncu_path()
    if ncu is None:
        raise NcuError("ncu is not on PATH")
    request_path = scratch / "ncu-request.json"
    request_path.write_text(json.dumps(dict(request)))
    try:
        done = subprocess.run(command(ncu, request_path), capture_output=True, text=True, env=dict(env),
                              cwd=scratch, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise NcuError(f"ncu did not finish within {timeout_s:.0f} s") from None
    (scratch / "ncu-output.csv").write_text(done.stdout)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise NcuError(f"ncu exited {done.returncode}: {' | '.join(tail)}")
    return parse(done.stdout, calls=int(request.get("calls", 3)))


def parse(text: str, calls: int) -> dict[str, float]:
    """ncu's CSV (one row per kernel launch and metric) -> per-call totals and weighted averages."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if '"Metric Name"' in ln and '"ID"' in ln), None)
    if start is None:
        raise NcuError("no metrics in ncu's output (no kernel ran between profiler start and stop?)")
    launches: dict[str, dict[str, float]] = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
        key = METRICS.get(row.get("Metric Name", ""))
        if key is None:
            continue
        try:
            value = float(row["Metric Value"].replace(",", ""))
        except (TypeError, ValueError):  # "n/a" where a metric does not apply
            continue
        launches.setdefault(row["ID"], {})[key] = value
    if not launches:
        raise NcuError("ncu reported none of the requested metrics")
    total_ns = sum(m.get("duration_ns", 0.0) for m in launches.values())
    total_bytes = sum(m.get("dram_read_bytes", 0.0) + m.get("dram_write_bytes", 0.0) for m in launches.values())
    out = {
        "kernel_launches_per_call": len(launches) / max(calls, 1),
        "duration_ms_per_call": total_ns / 1e6 / max(calls, 1),
        "dram_bytes_per_call": total_bytes / max(calls, 1),
        "dram_gbps": total_bytes / total_ns if total_ns else 0.0,  # bytes per ns = GB/s
    }
    for key in _PERCENTAGES:  # weighted by each launch's duration
        if total_ns:
            out[key] = sum(m.get(key, 0.0) * m.get("duration_ns", 0.0) for m in launches.values()) / total_ns
    return out
