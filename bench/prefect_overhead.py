"""What Prefect costs a search: the same short search of an example spec (offline synthesizer,
fixed budget, no knowledge base) through the `tune_operator` flow and through
`tune_without_prefect`, each round (iteration) timed from the search's own progress events, each
stage call timed around the call the loop makes (a Prefect task, or the plain function).

Reported first: Prefect's share measured inside the flow's own run. The engine's stage functions
are timed where they run (inside the tasks) and the loop's calls around them: a round's
orchestration is each task call less the engine function's own time in it, the evaluation
fan-out's span less the time in which some evaluation ran or the loop recorded a result, and the
waits for GPU-slot leases; its share is that over the round's wall time. This is immune to the
work's own variation (the same kernel's compile can take 10% longer in the next run), and the
plain loop measured the same way should show about zero. It misses what Prefect's threads might
take from the workers' CPU; the comparison below would show that.

Then the comparison with the plain search: per-round wall time in each mode and Prefect's share
of it, (prefect - plain) / prefect.
The two searches may part ways after a timing's noise (another kernel looks best, another parent
is expanded), and then a round evaluates other kernels in each mode, some of which take far longer
to compile and check: such a round compares the kernels, not the orchestration. So the headline
is the share over the rounds after the first (the first also starts the harness's workers) in
which both modes evaluated and re-measured the same candidates (by code hash, read from each run's
tree in the search database); the share over every round is shown beside it. Per stage, the
median time of one call in each mode and the difference (the orchestration cost of one task,
evaluations per candidate); the flow's fixed costs outside the rounds (API server, session,
artifacts). The baselines are timed once before both runs (cached), so neither pays for them;
the flow's cached verdicts are refreshed, so every evaluation really runs; a short plain search
first warms what the first search of a process pays for (imports, the offline synthesizer's
traces). With --plain-again the plain search runs once more after the flow, and the same
comparison between the two plain runs shows what the order and the machine alone move (the
noise of the comparison). Each evaluation's phases (kevolve/evaluate/phases.py) show where the
matched rounds' evaluations spent their time in each mode. Goal: under 5%.

On the GPU machine (prefect and its wheels carried from bench/make_wheelhouse.sh, see README):

    python3 bench/prefect_overhead.py [--spec softmax] [--budget 16] [--plain-again]

Writes prefect_overhead.json and prefect_overhead.md under $OUT (default bench/results/) and prints
the markdown. A CPU check of the path (no speeds there, and the interpreter's workers share the
cores with the flow; under a minute on two cores): python3 bench/prefect_overhead.py --target
cpu-interpreter --budget 12 --out /tmp/overhead (--budget 4 is the seeds' round alone, which the
headline leaves out).

The orchestration alone, on any machine: --fake-evaluation-s 0.25 replaces the harness with one
whose evaluations sleep that long (checks side by side, timings one at a time under the GPU slot
of a made-up GPU, as the harness's) and whose verdicts follow the code hash, and the synthesizer
with one that proposes a new kernel every time; both modes then evaluate the same candidates in
every round. python3 bench/prefect_overhead.py --fake-evaluation-s 0.25 --budget 48 --out /tmp/fake
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import statistics
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]
GOAL = 0.05
ENGINE: EngineClock | None = None  # installed by main() before anything imports tasks/
FAKE_GPU = "fakehost-0"  # the made-up GPU whose slot fake timings hold (a limit on the Prefect server)


class StageClock:
    """Wraps each callable of a Stages bundle to time every call the loop makes: durations by
    stage, and each call's interval (for evaluate_all, also the intervals in which the loop held
    a result, recording it, while the generator waited)."""

    def __init__(self):
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.intervals: list[tuple[str, float, float]] = []
        self.held: list[tuple[float, float]] = []

    def wrap(self, stages):
        def timed(name, fn):
            if name == "evaluate_all":  # a generator: time it from the call to its last result
                def evaluate_all(*args, **kwargs):
                    start = time.perf_counter()
                    count = 0
                    for item in fn(*args, **kwargs):
                        count += 1
                        handed = time.perf_counter()
                        yield item
                        self.held.append((handed, time.perf_counter()))
                    end = self.held[-1][0] if count else time.perf_counter()
                    self.intervals.append((name, start, end))
                    if count:
                        self.calls["evaluate (per candidate)"].append((end - start) / count)
                return evaluate_all

            def call(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    end = time.perf_counter()
                    self.calls[name].append(end - start)
                    self.intervals.append((name, start, end))
            return call

        return replace(stages, **{f.name: timed(f.name, getattr(stages, f.name)) for f in fields(stages)})


class EngineClock:
    """The engine's own stage functions timed where they run (inside a Prefect task, or called by
    the plain loop): installed on kevolve.search.stages before tasks/ wraps those functions."""

    NAMES = ("select", "retrieve", "synthesize", "evaluate", "remeasure", "distill")

    def __init__(self):
        self.intervals: list[tuple[str, float, float]] = []  # appended from many threads: atomic
        self._undo: list[tuple[Any, str, Any]] = []

    def install(self) -> "EngineClock":
        """Wraps the engine's functions, and the `fn` of tasks made from them before this (an
        earlier import of tasks/, or an earlier clock in this process, which this one replaces)."""
        import functools

        import kevolve.search.stages as engine

        def timed(name, fn):
            @functools.wraps(fn)
            def call(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.intervals.append((name, start, time.perf_counter()))
            call.engine_clock = True
            return call

        replaced = {}
        for name in self.NAMES:
            current = getattr(engine, name)
            original = current.__wrapped__ if getattr(current, "engine_clock", False) else current
            wrapped = timed(name, original)
            replaced.update({original: wrapped, current: wrapped})
            self._undo.append((engine, name, original))
            setattr(engine, name, wrapped)
        for module in [m for n, m in list(sys.modules.items()) if n == "tasks" or n.startswith("tasks.")]:
            for value in vars(module).values():
                fn = getattr(value, "fn", None)
                if callable(fn) and fn in replaced:
                    self._undo.append((value, "fn", fn.__wrapped__ if getattr(fn, "engine_clock", False) else fn))
                    value.fn = replaced[fn]
        return self

    def uninstall(self) -> None:
        """Tasks made while installed keep timing, harmlessly; what was there before is restored."""
        while self._undo:
            owner, attr, value = self._undo.pop()
            setattr(owner, attr, value)


ENGINE_NAME = {"evaluate_all": "evaluate"}  # the loop's name for a stage -> the engine function's


def union_s(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of the intervals, clipped to [lo, hi]."""
    total, reach = 0.0, lo
    clipped = [(max(a, lo), min(b, hi)) for a, b in intervals]
    for a, b in sorted((a, b) for a, b in clipped if b > a):  # those outside [lo, hi] add nothing
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def orchestration_s(loop: list[tuple[str, float, float]], held: list[tuple[float, float]],
                    engine: list[tuple[str, float, float]], lo: float, hi: float) -> dict[str, float]:
    """Within [lo, hi): the time the loop spent in stage calls, and the part of it in which no
    engine work of that call ran: a sequential stage's call less the engine function's own time
    inside it; for the evaluation fan-out, its span less the time in which some evaluation ran
    or the loop was recording a result (dispatch, result delivery, waits between)."""
    spans = orchestration = 0.0
    for name, a, b in loop:
        if not lo <= a < hi:
            continue
        spans += b - a
        inner = ENGINE_NAME.get(name, name)
        if name == "evaluate_all":
            busy = [(s, e) for n, s, e in engine if n == inner] + held
            orchestration += (b - a) - union_s(busy, a, b)
        else:
            own = sum(e - s for n, s, e in engine if n == inner and a <= s and e <= b)
            orchestration += max(0.0, (b - a) - own)
    return {"stage_calls_s": spans, "orchestration_s": orchestration}


class RoundClock:
    """Round boundaries from the search's progress events."""

    def __init__(self):
        self.marks: list[tuple[str, float, int]] = []

    def on_event(self, event) -> None:
        if event.kind in ("start", "round", "end"):
            self.marks.append((event.kind, time.perf_counter(), event.evaluations))

    def rounds(self) -> list[dict[str, float]]:
        out = []
        starts = [m for m in self.marks if m[0] in ("start", "round")]
        for (_, t0, n0), (_, t1, n1) in zip(starts, starts[1:]):
            out.append({"wall_s": t1 - t0, "evaluations": n1 - n0, "from": t0, "to": t1})
        return out


class SleepingHarness:
    """--fake-evaluation-s: the harness's shape without its work. An evaluation sleeps, 60% side by
    side with the others (compile, check), 30% one at a time under the timing guard (timing),
    10% after; its verdict and time follow the code hash, so both modes choose alike."""

    recipe = None  # the threads of this process evaluate

    def __init__(self, spec: Any, seconds: float, timing_guard: Any = None):
        self.spec, self.seconds = spec, seconds
        self.timing_guard = timing_guard or (lambda gpu: nullcontext())
        self._gpu = threading.Lock()  # the harness's exclusive lock around a GPU's timings
        self._salt = str(time.time_ns())  # no verdict cached by an earlier run

    def evaluate(self, candidates: list[Any]) -> list[Any]:
        return [self._evaluate(c) for c in candidates]

    def remeasure(self, candidate: Any) -> Any:
        return self._evaluate(candidate)

    def baselines(self) -> Any:
        from kevolve.evaluate.result import Baselines, Timing

        return Baselines(eager=Timing(1.0, 0.99, 1.01, 0.98, 100, "fake: slept"))

    def cache_key(self, candidate: Any) -> str:
        return hashlib.sha256(f"{self._salt}\0{candidate.code_hash}".encode()).hexdigest()[:32]

    def close(self) -> None:
        pass

    def _evaluate(self, candidate: Any) -> Any:
        from kevolve.evaluate.result import Check, Evaluation, Outcome, Timing

        started = time.monotonic()
        time.sleep(0.6 * self.seconds)
        with self._gpu, self.timing_guard(FAKE_GPU):
            time.sleep(0.3 * self.seconds)
        time.sleep(0.1 * self.seconds)
        ms = 0.5 + int(candidate.code_hash[:6], 16) % 1000 / 1000
        timing = Timing(ms, 0.98 * ms, 1.02 * ms, 0.97 * ms, 100, "fake: slept")
        return Evaluation(candidate.code_hash, self.spec.name, "fake", FAKE_GPU, {}, Outcome.CORRECT,
                          (Check("fake", True),), timing=timing, baselines=self.baselines(),
                          wall_s=time.monotonic() - started)


class FreshSynthesizer:
    """--fake-evaluation-s: a kernel never proposed before for every one asked for (the same
    sequence in both modes), so every round evaluates all it asks for."""

    name = "offline"

    def __init__(self):
        self._count = itertools.count()

    def propose(self, request: Any) -> list[Any]:
        from kevolve.candidate import Candidate, Origin

        return [Candidate(f"VARIANT = {next(self._count)}\n", request.spec.name, Origin("offline", "fake"))
                for _ in range(request.n)]


@contextmanager
def fakes(seconds: float | None) -> Iterator[None]:
    """Searches opened here use the SleepingHarness and the FreshSynthesizer (when seconds is set)."""
    import kevolve.search.session as session

    made = session.make_evaluator, session.make_synthesizer
    if seconds:
        session.make_evaluator = lambda spec, target, settings, guard=None: SleepingHarness(spec, seconds, guard)
        session.make_synthesizer = lambda settings: FreshSynthesizer()
    try:
        yield
    finally:
        session.make_evaluator, session.make_synthesizer = made


def run(mode: str, args, budget: int | None = None) -> dict[str, Any]:
    import flows.tune_operator as loop
    import tasks
    from kevolve.search.progress import listening

    search = {"budget": budget or args.budget, "policy": args.policy, "expansions_per_round": 2, "children_per_expansion": 2,
              "seeds": 4, "rng_seed": 0}
    request = dict(target=args.target, offline=True, knowledge=False, search=search,
                   run_name=f"overhead-{mode}-{time.time_ns()}")
    clock, rounds = StageClock(), RoundClock()
    start = time.perf_counter()
    with listening(rounds.on_event), fakes(args.fake_evaluation_s):
        if mode == "prefect":
            from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

            plain_task_stages = tasks.task_stages
            tasks.task_stages = lambda settings: clock.wrap(plain_task_stages(settings))
            try:
                with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):
                    summary = loop.tune_operator(spec=args.spec, **request)
            finally:
                tasks.task_stages = plain_task_stages
        else:
            original = loop.engine_stages
            loop.engine_stages = lambda: clock.wrap(original())
            try:
                summary = loop.tune_without_prefect(args.spec, **request).to_dict()
            finally:
                loop.engine_stages = original
    total = time.perf_counter() - start
    per_round = rounds.rounds()
    work = round_work(summary["run_id"])
    engine = [i for i in (ENGINE.intervals if ENGINE else []) if i[1] >= start]
    marks = [m[1] for m in rounds.marks]
    for number, r in enumerate(per_round):  # a new run's rounds are numbered from 0, as its nodes are
        r.update(work.get(number, {"evaluated": [], "remeasured": [], "phases_s": {}}))
        r.update(orchestration_s(clock.intervals, clock.held, engine, r.pop("from"), r.pop("to")))
        r["orchestration_s"] += r["phases_s"].get("guard", 0.0)  # waits for a GPU slot's lease

    def since(t: float) -> float:
        return round(t - start, 4)

    timeline = {"round_marks": [since(t) for t in marks],  # seconds from the run's start, to read it by
                "loop": [(n, since(a), since(b)) for n, a, b in clock.intervals],
                "held": [(since(a), since(b)) for a, b in clock.held],
                "engine": [(n, since(a), since(b)) for n, a, b in engine]}
    return {"mode": mode, "total_s": total, "rounds": per_round, "in_rounds_s": sum(r["wall_s"] for r in per_round),
            "stages": dict(clock.calls), "summary": summary, "timeline": timeline}


def round_work(run_id: str) -> dict[int, dict[str, Any]]:
    """What each round of a run evaluated and re-measured (its candidates' code hashes, sorted),
    and where those evaluations' time went (seconds by phase, summed over the round's evaluations)."""
    from kevolve.search.store import SearchStore

    with SearchStore() as store:
        nodes = store.nodes(run_id)
        evaluations = store.evaluations(run_id)
    round_of = {node.id: node.round for node in nodes}
    work: dict[int, dict[str, Any]] = defaultdict(lambda: {"evaluated": [], "remeasured": [], "phases_s": {}})
    for node in nodes:  # a new best is re-measured in the round that found it
        work[node.round]["evaluated"].append(node.candidate.code_hash)
    for row in evaluations:
        w = work[round_of[row.node_id]]
        if row.kind == "remeasure":
            w["remeasured"].append(row.evaluation.candidate_hash)
        for phase, seconds in {**row.evaluation.phases, "evaluation": row.evaluation.wall_s}.items():
            w["phases_s"][phase] = w["phases_s"].get(phase, 0.0) + seconds
    for w in work.values():
        w["evaluated"].sort()
        w["remeasured"].sort()
    return dict(work)


def time_baselines(args) -> str:
    """Time (or read from the cache) the spec's baselines once, so neither run pays for them."""
    from kevolve.evaluate.evaluator import Evaluator
    from kevolve.hardware import detect_target, load_target
    from kevolve.specs import resolve_spec

    target = load_target(args.target) if args.target else detect_target()
    if target.interpreter:
        return target.name
    with Evaluator(resolve_spec(args.spec), target) as evaluator:
        evaluator.baselines()
    return target.name


def compare(prefect: dict, plain: dict) -> dict[str, Any]:
    pairs = list(zip(prefect["rounds"], plain["rounds"]))
    rows = [{"round": i + 1, "prefect_s": a["wall_s"], "plain_s": b["wall_s"], "evaluations": a["evaluations"],
             "evaluations_plain": b["evaluations"], "share": (a["wall_s"] - b["wall_s"]) / a["wall_s"],
             "same_candidates": same_work(a, b), "orchestration_s": a.get("orchestration_s"),
             "orchestration_plain_s": b.get("orchestration_s")}
            for i, (a, b) in enumerate(pairs) if a["wall_s"] > 0]
    matched = [r for r in rows[1:] if r["same_candidates"]]

    def share(selected):
        p, q = sum(r["prefect_s"] for r in selected), sum(r["plain_s"] for r in selected)
        return (p - q) / p if p else None

    stages = {}
    for name in sorted(set(prefect["stages"]) | set(plain["stages"])):
        a, b = prefect["stages"].get(name, []), plain["stages"].get(name, [])
        if a and b:
            stages[name] = {"calls": len(a), "prefect_ms": 1e3 * statistics.median(a),
                            "plain_ms": 1e3 * statistics.median(b),
                            "overhead_ms": 1e3 * (statistics.median(a) - statistics.median(b))}
    def direct(run_, selected):  # the share of the rounds' wall time the loop spent in orchestration
        wall = sum(r["wall_s"] for r in selected)
        return sum(r.get("orchestration_s", 0.0) for r in selected) / wall if wall else None

    direct_shares = {mode: {"after_first_round": direct(run_, run_["rounds"][1:]),
                            "all_rounds": direct(run_, run_["rounds"])}
                     for mode, run_ in (("prefect", prefect), ("plain", plain))}
    phases: dict[str, dict[str, float]] = {}  # where the matched rounds' evaluations spent their time
    for r in matched:
        for mode, run_ in (("prefect", prefect), ("plain", plain)):
            for phase, seconds in run_["rounds"][r["round"] - 1].get("phases_s", {}).items():
                phases.setdefault(phase, {"prefect": 0.0, "plain": 0.0})[mode] += seconds
    return {"rounds": rows, "matched_rounds": [r["round"] for r in matched], "share_matched_rounds": share(matched),
            "matched_phases_s": phases, "direct_share": direct_shares,
            "matched_overhead_s_per_round": (sum(r["prefect_s"] - r["plain_s"] for r in matched) / len(matched)
                                             if matched else None),
            "share_after_first_round": share(rows[1:]), "share_all_rounds": share(rows),
            "median_round_share": statistics.median([r["share"] for r in rows]) if rows else None,
            "stages": stages,
            "outside_rounds_s": {"prefect": prefect["total_s"] - prefect["in_rounds_s"],
                                 "plain": plain["total_s"] - plain["in_rounds_s"]}}


def same_work(a: dict, b: dict) -> bool:
    """Both rounds evaluated and re-measured the same candidates (and did evaluate some)."""
    return bool(a["evaluated"]) and a["evaluated"] == b["evaluated"] and a["remeasured"] == b["remeasured"]


def markdown(result: dict) -> str:
    from kevolve.evaluate.phases import PHASES

    c = result["comparison"]
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    matched = ", ".join(map(str, c["matched_rounds"])) or "none"
    goal = lambda x: "met" if x is not None and x < GOAL else "NOT met"  # noqa: E731
    direct = c.get("direct_share") or {}
    inside, beside = direct.get("prefect", {}), direct.get("plain", {})
    lines = [f"# Prefect's share of a search's wall time: {result['spec']} on {result['device']}", "",
             ("a new kernel for every request" if result.get("fake_evaluation_s") else "offline synthesizer")
             + f", budget {result['budget']}, policy {result['policy']}; prefect "
             f"{result['prefect_version']}, flow with the thread runner and a local API server", ""]
    if inside:
        lines.append(
            f"- **Measured inside the flow's run: {pct(inside['after_first_round'])}** of the wall time of the rounds "
            f"after the first (all rounds: {pct(inside['all_rounds'])}; goal under {pct(GOAL)}: "
            f"{goal(inside['after_first_round'])}). The time the loop spent on Prefect around the engine's work: "
            "each task call less the engine function's own time inside it, the evaluation fan-out's span less the "
            "time in which an evaluation ran or the loop recorded a result, and waits for GPU-slot leases. The plain "
            f"loop measured the same way: {pct(beside.get('after_first_round'))}.")
    lines += [f"- Against the plain search, round by round (rounds after the first in which both evaluated the same "
              f"candidates: {matched}): {pct(c['share_matched_rounds'])}"
              + ("" if c["matched_overhead_s_per_round"] is None else
                 f", {1e3 * c['matched_overhead_s_per_round']:.0f} ms a round")
              + f"; every round after the first: {pct(c['share_after_first_round'])}; over all rounds: "
              f"{pct(c['share_all_rounds'])}; median round: {pct(c['median_round_share'])}. This comparison also "
              "carries the difference in the work itself (compile times vary run to run)."]
    if result.get("noise"):
        n = result["noise"]
        lines.append(f"- Noise of that comparison: the plain search run again after the flow, against the first "
                     f"plain run over the same rounds, (again - plain) / again: {pct(n['share_matched_rounds'])} "
                     f"(rounds {', '.join(map(str, n['matched_rounds'])) or 'none'}).")
    lines += [f"- Outside the rounds (API server start, session, outputs, artifacts): prefect "
              f"{c['outside_rounds_s']['prefect']:.2f} s, plain {c['outside_rounds_s']['plain']:.2f} s", "",
              "| round | evaluations (prefect/plain) | same candidates | prefect s | plain s | share against plain "
              "| orchestration inside the flow s (plain) |",
              "|---|---|---|---|---|---|---|"]
    sec = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    for r in c["rounds"]:
        same = "yes" if r["same_candidates"] else "no" if r["evaluations"] or r["evaluations_plain"] else "-"
        lines.append(f"| {r['round']} | {r['evaluations']}/{r['evaluations_plain']} | {same} | {r['prefect_s']:.3f} | "
                     f"{r['plain_s']:.3f} | {pct(r['share'])} | {sec(r.get('orchestration_s'))} "
                     f"({sec(r.get('orchestration_plain_s'))}) |")
    lines += ["", "Per stage call (median): the orchestration cost of one task", "",
              "| stage | calls | prefect ms | plain ms | overhead ms |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['calls']} | {v['prefect_ms']:.2f} | {v['plain_ms']:.2f} | {v['overhead_ms']:.2f} |"
              for k, v in c["stages"].items()]
    if c.get("matched_phases_s"):
        lines += ["", "Where the matched rounds' evaluations spent their time (seconds, summed over candidates "
                  "that ran side by side; `worker` is the part of the requests spent inside the worker)", "",
                  "| phase | prefect s | plain s | difference s |", "|---|---|---|---|"]
        order = {name: i for i, name in enumerate(("evaluation", *PHASES, "worker"))}
        for phase, v in sorted(c["matched_phases_s"].items(), key=lambda kv: order.get(kv[0], len(order))):
            lines.append(f"| {phase} | {v['prefect']:.3f} | {v['plain']:.3f} | {v['prefect'] - v['plain']:+.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="softmax")
    p.add_argument("--target", default=None, help="default: this machine's")
    p.add_argument("--policy", default="mcts")
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "results"))
    p.add_argument("--fake-evaluation-s", type=float, default=None,
                   help="evaluations that sleep this long instead of the harness (see above)")
    p.add_argument("--plain-again", action="store_true",
                   help="run the plain search once more after the flow: the noise between two identical runs")
    args = p.parse_args()
    os.environ.setdefault("KEVOLVE_HOME", "/tmp/kevolve-home")  # the other benches' baselines are reused
    from flows import configure_prefect

    configure_prefect()
    global ENGINE
    ENGINE = EngineClock().install()
    try:
        return measure(args)
    finally:
        ENGINE.uninstall()


def measure(args) -> int:
    import prefect
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (Triton interpreter)"
    if args.fake_evaluation_s:
        device = f"{device}, fake evaluations of {args.fake_evaluation_s:g} s (no kernel runs)"
        args.target = args.target or "cpu-interpreter"
    target = args.target if args.fake_evaluation_s else time_baselines(args)
    run("warm-up", args, budget=2)  # imports and the offline synthesizer's first traces: paid by neither run
    plain = run("plain", args)
    orchestrated = run("prefect", args)
    again = run("plain-again", args) if args.plain_again else None
    result = {"spec": args.spec, "target": target, "device": device, "budget": args.budget, "policy": args.policy,
              "fake_evaluation_s": args.fake_evaluation_s,
              "prefect_version": prefect.__version__, "goal": GOAL,
              "comparison": compare(orchestrated, plain), "runs": [plain, orchestrated] + ([again] if again else [])}
    if again:  # the same comparison between two plain runs: what the order and the machine alone move
        result["noise"] = {k: v for k, v in compare(again, plain).items()
                           if k in ("matched_rounds", "share_matched_rounds", "rounds", "matched_phases_s")}
    text = markdown(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefect_overhead.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "prefect_overhead.md").write_text(text)
    print(text)
    print(f"wrote {out / 'prefect_overhead.json'} and {out / 'prefect_overhead.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
