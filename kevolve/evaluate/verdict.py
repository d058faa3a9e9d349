"""An Evaluation as a few readable lines, for `kevolve eval` and reports."""

from __future__ import annotations

from kevolve.evaluate.result import BASELINE_NAMES, Evaluation, Timing

_LABELS = {"eager": "eager", "compile_default": "torch.compile", "compile_max_autotune": "max-autotune"}


def format_timing(t: Timing) -> str:
    text = (f"{t.median_ms:.4g} ms median (p20 {t.p20_ms:.4g}, p80 {t.p80_ms:.4g}, min {t.min_ms:.4g}; "
            f"{t.trials} trials, spread {100 * t.spread:.1f}%)")
    return text + (" - interpreter wall clock, not kernel speed" if t.interpreter else "")


def format_verdict(ev: Evaluation, name: str = "candidate") -> str:
    dims = ",".join(f"{k}={v}" for k, v in ev.dims.items())
    lines = [f"{name}: {ev.outcome.value.upper()}  ({ev.spec_name} at {dims} on {ev.target}, {ev.device}; "
             f"{ev.wall_s:.1f} s)"]
    failed = ev.failed_checks()
    lines.append(f"  checks    {len(ev.checks) - len(failed)} passed, {len(failed)} failed")
    for c in failed[:3]:
        lines.append(f"  failed    {c.name}: {c.detail}")
    if ev.error and not ev.correct:
        tail = [ln for ln in ev.error.strip().splitlines() if ln.strip()][-3:]
        if tail and tail[-1] not in (c.detail for c in failed):
            lines += [f"  error     {ln.strip()[:200]}" for ln in tail]
    if ev.timing:
        lines.append(f"  time      {format_timing(ev.timing)}")
    if ev.baselines:
        for n in BASELINE_NAMES:
            t = ev.baselines.get(n)
            if t is not None:
                speed = ev.speedup(n)
                versus = f"  -> {speed:.2f}x" if speed else ""
                lines.append(f"  {_LABELS[n]:<14}{t.median_ms:.4g} ms (spread {100 * t.spread:.1f}%)"
                             f"{' interpreter' if t.interpreter else ''}{versus}")
            elif n in ev.baselines.errors:
                lines.append(f"  {_LABELS[n]:<14}not timed: {ev.baselines.errors[n]}")
    d = ev.diagnosis
    if d:
        lines.append(f"  diagnosis {d.bound}: {d.summary}")
        for k in d.kernels:
            occ = f", {k.occupancy_warps_per_sm} warps/SM ({k.occupancy_limiter})" if k.occupancy_warps_per_sm else ""
            lines.append(f"  kernel    {k.name}: {k.num_regs} regs, {k.num_spills} spills, {k.shared_bytes} B shared, "
                         f"{k.num_warps} warps, {k.num_stages} stages{occ}")
        if d.ncu:
            lines.append("  ncu       " + ", ".join(f"{k} {v:.4g}" for k, v in d.ncu.items()))
        for s in d.suggestions[:3]:
            lines.append(f"  next      {s}")
    return "\n".join(lines)
