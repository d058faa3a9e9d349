"""What limits a correct kernel, from numbers only: pure functions, testable without a GPU.

Inputs: the reference's FLOPs and minimal bytes (cost.py), the candidate's measured time, the
compiled kernels' registers, spills, shared memory, warps and stages, the target's figures, the
measured ceilings, and ncu's throughputs where ncu ran. Output: a Diagnosis with a roofline floor,
the achieved fraction of it, occupancy per kernel, a classification and the next things to try.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Mapping, Sequence

from kevolve.evaluate.result import Diagnosis, KernelStats, Timing
from kevolve.hardware.calibrate import Ceilings
from kevolve.hardware.target import HardwareTarget

LAUNCH_BOUND_MS = 0.012  # a handful of kernel launches' worth of time
LOW_OCCUPANCY = 0.25  # of the SM's warp slots
FAR_FROM_ROOF = 0.30  # achieved fraction of the floor below which neither roof explains the time
IMPLAUSIBLY_FAST = 1.5  # faster than the roofline floor allows by this much: suspect the timing
NCU_BUSY_PCT = 60.0
REGISTER_ALLOCATION_UNIT = 256  # registers are allocated per warp in chunks of this many


def occupancy(stats: KernelStats, target: HardwareTarget) -> KernelStats:
    """Resident warps per SM for this kernel and what limits them (NVIDIA-style rules)."""
    if target.interpreter or target.registers_per_sm <= 0 or stats.num_warps <= 0:
        return stats
    warps = stats.num_warps
    limits: dict[str, int] = {
        "warps": target.max_warps_per_sm // warps,
        "blocks": int(target.extra.get("max_blocks_per_sm", 32)),
    }
    if stats.num_regs > 0:
        per_warp = math.ceil(stats.num_regs * target.warp_size_threads / REGISTER_ALLOCATION_UNIT) \
            * REGISTER_ALLOCATION_UNIT
        limits["registers"] = (target.registers_per_sm // per_warp) // warps
    if stats.shared_bytes > 0:
        reserved = int(target.extra.get("shared_reserved_per_block_bytes", 1024))
        limits["shared memory"] = int(target.shared_memory_per_sm_kib * 1024) // (stats.shared_bytes + reserved)
    limiter = min(limits, key=lambda k: (limits[k], k != "warps"))
    return replace(stats, occupancy_warps_per_sm=limits[limiter] * warps, occupancy_limiter=limiter)


def roofline_floor_ms(matmul_flops: float, other_flops: float, min_bytes: float, dtype: str,
                      target: HardwareTarget, ceilings: Ceilings) -> float:
    """The least time the reference's work can take on this device: the slower of its roofs."""
    compute_s = 0.0
    if matmul_flops:
        compute_s += matmul_flops / max(ceilings.matmul_flops(dtype), 1.0)
    if other_flops:
        compute_s += other_flops / max(target.peak_flops("float32"), 1.0)
    memory_s = min_bytes / max(ceilings.copy_bytes_per_s, 1.0)
    return max(compute_s, memory_s) * 1e3


def diagnose(*, matmul_flops: float, other_flops: float, min_bytes: float, dtype: str, timing: Timing,
             kernels: Sequence[KernelStats], target: HardwareTarget, ceilings: Ceilings,
             ncu: Mapping[str, float] | None = None) -> Diagnosis:
    flops = matmul_flops + other_flops
    kernels = tuple(occupancy(k, target) for k in kernels)
    floor_ms = roofline_floor_ms(matmul_flops, other_flops, min_bytes, dtype, target, ceilings)
    intensity = flops / min_bytes if min_bytes else 0.0
    ridge = ceilings.matmul_flops(dtype) / ceilings.copy_bytes_per_s if matmul_flops else \
        target.peak_flops("float32") / ceilings.copy_bytes_per_s
    roof = "compute" if intensity > ridge else "memory"
    common = dict(flops=flops, min_bytes=min_bytes, arithmetic_intensity=intensity, floor_ms=floor_ms,
                  kernels=kernels, ncu=dict(ncu or {}), ceilings_source=ceilings.source)
    if timing.interpreter:
        return Diagnosis(bound="unknown", summary=(
            f"Timed under the Triton interpreter, which says nothing about GPU speed. At this shape the "
            f"reference does {_si(flops)}FLOP over at least {_si(min_bytes)}B ({intensity:.2f} FLOP/B, "
            f"{roof}-bound by {target.name}'s ceilings)."),
            suggestions=(f"Measure on a GPU to diagnose; the {roof} roof sets the goal.",), **common)
    t_ms = timing.median_ms
    fraction = floor_ms / t_ms if t_ms > 0 else None
    gbps = min_bytes / (t_ms / 1e3) / 1e9 if t_ms > 0 else None
    tflops = flops / (t_ms / 1e3) / 1e12 if t_ms > 0 else None
    bound, why = classify(t_ms, floor_ms, roof, kernels, target, ncu)
    summary = (f"{t_ms:.4g} ms against a roofline floor of {floor_ms:.3g} ms "
               f"({100 * (fraction or 0):.0f}% of it): {gbps:.0f} GB/s of {ceilings.copy_gbps:.0f} and "
               f"{tflops:.3g} TFLOP/s; intensity {intensity:.2f} FLOP/B puts the op under the {roof} roof. {why}")
    return Diagnosis(bound=bound, summary=summary, suggestions=suggestions(bound, roof, kernels, fraction),
                     fraction_of_floor=fraction, achieved_gbps=gbps, achieved_tflops=tflops, **common)


def classify(t_ms: float, floor_ms: float, roof: str, kernels: Sequence[KernelStats],
             target: HardwareTarget, ncu: Mapping[str, float] | None = None) -> tuple[str, str]:
    """(bound, one sentence why): memory | compute | occupancy | launch | latency."""
    fraction = floor_ms / t_ms if t_ms > 0 else 0.0
    occ = _worst_occupancy(kernels, target)
    if t_ms < LAUNCH_BOUND_MS and fraction < 0.5:
        return "launch", f"At {1e3 * t_ms:.1f} us the time is mostly launch overhead, not work."
    if ncu:
        dram, sm = ncu.get("dram_throughput_pct", 0.0), ncu.get("sm_throughput_pct", 0.0)
        if dram >= NCU_BUSY_PCT or sm >= NCU_BUSY_PCT:
            bound = "memory" if dram >= sm else "compute"
            return bound, f"ncu: DRAM {dram:.0f}% and SM {sm:.0f}% of peak throughput."
        achieved = ncu.get("achieved_occupancy_pct")
        if achieved is not None and achieved < 100 * LOW_OCCUPANCY:
            return "occupancy", f"ncu: achieved occupancy {achieved:.0f}%, DRAM {dram:.0f}%, SM {sm:.0f}%."
        return "latency", f"ncu: neither DRAM ({dram:.0f}%) nor SM ({sm:.0f}%) is busy; the kernel waits."
    if occ is not None and occ[0] < LOW_OCCUPANCY and fraction < 0.5:
        return "occupancy", f"Only {100 * occ[0]:.0f}% of warp slots can be resident ({occ[1]} limit)."
    if fraction < FAR_FROM_ROOF:
        return "latency", "Far from both roofs: too little parallelism or serial dependent work."
    return roof, f"Close enough to the {roof} roof that it is the limit."


def suggestions(bound: str, roof: str, kernels: Sequence[KernelStats], fraction: float | None) -> tuple[str, ...]:
    spills = sum(k.num_spills for k in kernels)
    out: list[str] = []
    if spills:
        out.append(f"Remove the {spills} register spills: smaller tiles or fewer accumulators per program.")
    if bound == "memory":
        if fraction is not None and fraction > 0.85:
            out.append("Within 15% of the copy bandwidth: only fusing neighbouring operators saves more.")
        out += ["Read and write each element once: keep a row in registers instead of a second pass.",
                "Wider, aligned accesses: BLOCK a multiple of 8 bf16 (16 bytes) per thread.",
                "Fuse the producer or consumer operator to cut DRAM traffic."]
    elif bound == "compute":
        out += ["Use tl.dot on bf16 tiles with fp32 accumulation so tensor cores do the work.",
                "Larger tiles (BLOCK_M, BLOCK_N 128) with num_stages 3-4 to pipeline loads.",
                "Group programs (GROUP_M) so tiles reuse operands from L2."]
    elif bound == "occupancy":
        limiter = next((k.occupancy_limiter for k in kernels if k.occupancy_limiter), "")
        if limiter == "registers":
            out.append("Lower register pressure: fewer elements per thread or num_warps 8 over 4.")
        elif limiter == "shared memory":
            out.append("Less shared memory per program: fewer num_stages or smaller tiles.")
        out.append("More resident warps: smaller programs, more of them.")
    elif bound == "launch":
        out += ["Do more work per launch: fuse kernels, or process several rows per program.",
                "At this size the fixed cost dominates; batch calls or capture a CUDA graph."]
    elif bound == "latency":
        out += ["Expose more parallelism: more programs (split long rows or K), or more warps.",
                "Pipeline loads (num_stages) and avoid dependent loads inside the loop.",
                f"Then the {roof} roof becomes the limit."]
    return tuple(out)


def implausibly_fast(fraction_of_floor: float | None) -> bool:
    return fraction_of_floor is not None and fraction_of_floor > IMPLAUSIBLY_FAST


def _worst_occupancy(kernels: Sequence[KernelStats], target: HardwareTarget) -> tuple[float, str] | None:
    known = [k for k in kernels if k.occupancy_warps_per_sm is not None]
    if not known or target.max_warps_per_sm <= 0:
        return None
    worst = min(known, key=lambda k: k.occupancy_warps_per_sm)
    return worst.occupancy_warps_per_sm / target.max_warps_per_sm, worst.occupancy_limiter


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} "
