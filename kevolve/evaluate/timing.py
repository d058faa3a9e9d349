"""How a callable is timed: the same method for candidates and baselines, in the same process.

On a GPU: CUDA events around each call, the L2 cache flushed (a buffer larger than L2 written)
before each trial, a short spin on the GPU so the host's launch latency stays outside the timed
region, input sets rotated, warm-up outside the timed region, a device synchronize
after each trial so trials never overlap; median, p20, p80 and min over the trials. Trials are
capped by a time budget so one slow candidate cannot stall the search.

Under the Triton interpreter only wall clock exists; those timings are labelled and never
compared as kernel speed.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import torch

from kevolve.evaluate.result import Timing

MIN_TRIALS = 10
LAUNCH_SHIELD_CYCLES = 200_000  # about 0.1 ms at Hopper clocks, longer than a launch takes
INTERPRETER_TRIALS = 1  # the correctness runs were the warm-up; these figures are labels, not speed


def summarize(times_ms: Sequence[float], method: str, interpreter: bool = False) -> Timing:
    ordered = sorted(times_ms)
    qs = statistics.quantiles(ordered, n=10, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 9
    return Timing(median_ms=statistics.median(ordered), p20_ms=qs[1], p80_ms=qs[7], min_ms=ordered[0],
                  trials=len(ordered), method=method, interpreter=interpreter)


def time_cuda(fn: Callable[..., Any], input_sets: Sequence[Sequence[Any]], *, trials: int,
              flush_bytes: int, budget_s: float = 2.0, warmup: int = 3) -> Timing:
    """Median of `trials` calls, each on the next input set, after an L2 flush."""
    flush = torch.empty(max(flush_bytes, 1 << 20) // 4, dtype=torch.int32, device="cuda")
    for i in range(warmup):
        fn(*input_sets[i % len(input_sets)])
    torch.cuda.synchronize()
    # Estimate the cost of a trial to fit the budget.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(3):
        flush.zero_()
        fn(*input_sets[i % len(input_sets)])
    end.record()
    torch.cuda.synchronize()
    per_trial_s = max(start.elapsed_time(end) / 3 / 1e3, 1e-6)
    n = max(MIN_TRIALS, min(trials, int(budget_s / per_trial_s)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        args = input_sets[i % len(input_sets)]
        flush.zero_()
        # Keep the GPU busy while the host enqueues the timed call: what is measured is then the
        # call's GPU time, not how fast this (possibly contended) CPU thread launches it.
        torch.cuda._sleep(LAUNCH_SHIELD_CYCLES)
        starts[i].record()
        fn(*args)
        ends[i].record()
        torch.cuda.synchronize()
    times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    del flush
    method = (f"cuda events, L2 flushed ({flush_bytes >> 20} MiB written), {len(input_sets)} input sets "
              f"rotated, {warmup} warm-up calls, {n} trials")
    return summarize(times, method)


def time_wall(fn: Callable[..., Any], input_sets: Sequence[Sequence[Any]], *, trials: int = INTERPRETER_TRIALS,
              warmup: int = 0) -> Timing:
    """Wall clock, for the interpreter: says nothing about a GPU."""
    for i in range(warmup):
        fn(*input_sets[i % len(input_sets)])
    times = []
    for i in range(max(1, trials)):
        args = input_sets[i % len(input_sets)]
        t0 = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times, f"wall clock under the Triton interpreter, {len(times)} trials (not kernel speed)",
                     interpreter=True)
