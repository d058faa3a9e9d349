"""What Prefect costs a search: the same short search of an example spec (offline synthesizer,
fixed budget, no knowledge base) through the `tune_operator` flow and through
`tune_without_prefect`, each round (iteration) timed from the search's own progress events, each
stage call timed around the call the loop makes (a Prefect task, or the plain function).

Reported: per-round wall time in each mode and Prefect's share of it, (prefect - plain) / prefect.
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
traces). Goal: under 5%.

On the GPU machine (prefect and its wheels carried from bench/make_wheelhouse.sh, see README):

    python3 bench/prefect_overhead.py [--spec softmax] [--budget 16]

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
FAKE_GPU = "fakehost-0"  # the made-up GPU whose slot fake timings hold (a limit on the Prefect server)


class StageClock:
    """Wraps each callable of a Stages bundle to time every call the loop makes."""

    def __init__(self):
        self.calls: dict[str, list[float]] = defaultdict(list)

    def wrap(self, stages):
        def timed(name, fn):
            if name == "evaluate_all":  # a generator: time it from the call to its last result
                def evaluate_all(*args, **kwargs):
                    start = time.perf_counter()
                    count = 0
                    for item in fn(*args, **kwargs):
                        count += 1
                        yield item
                    if count:
                        self.calls["evaluate (per candidate)"].append((time.perf_counter() - start) / count)
                return evaluate_all

            def call(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.calls[name].append(time.perf_counter() - start)
            return call

        return replace(stages, **{f.name: timed(f.name, getattr(stages, f.name)) for f in fields(stages)})


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
            out.append({"wall_s": t1 - t0, "evaluations": n1 - n0})
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
    for number, r in enumerate(per_round):  # a new run's rounds are numbered from 0, as its nodes are
        r.update(work.get(number, {"evaluated": [], "remeasured": []}))
    return {"mode": mode, "total_s": total, "rounds": per_round, "in_rounds_s": sum(r["wall_s"] for r in per_round),
            "stages": dict(clock.calls), "summary": summary}


def round_work(run_id: str) -> dict[int, dict[str, list[str]]]:
    """What each round of a run evaluated and re-measured: its candidates' code hashes, sorted."""
    from kevolve.search.store import SearchStore

    with SearchStore() as store:
        nodes = store.nodes(run_id)
        remeasured = {e.node_id for e in store.evaluations(run_id) if e.kind == "remeasure"}
    work: dict[int, dict[str, list[str]]] = defaultdict(lambda: {"evaluated": [], "remeasured": []})
    for node in nodes:  # a new best is re-measured in the round that found it
        work[node.round]["evaluated"].append(node.candidate.code_hash)
        if node.id in remeasured:
            work[node.round]["remeasured"].append(node.candidate.code_hash)
    return {n: {k: sorted(v) for k, v in w.items()} for n, w in work.items()}


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
             "same_candidates": same_work(a, b)}
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
    return {"rounds": rows, "matched_rounds": [r["round"] for r in matched], "share_matched_rounds": share(matched),
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
    c = result["comparison"]
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    verdict = c["share_matched_rounds"]
    matched = ", ".join(map(str, c["matched_rounds"])) or "none"
    lines = [f"# Prefect's share of a search's wall time: {result['spec']} on {result['device']}", "",
             ("a new kernel for every request" if result.get("fake_evaluation_s") else "offline synthesizer")
             + f", budget {result['budget']}, policy {result['policy']}; prefect "
             f"{result['prefect_version']}, flow with the thread runner and a local API server", "",
             f"- Prefect's share of the rounds after the first in which both modes evaluated the same candidates "
             f"(rounds {matched}): **{pct(verdict)}** (goal under {pct(GOAL)}: "
             + ("met" if verdict is not None and verdict < GOAL else "NOT met") + ")"
             + ("" if c["matched_overhead_s_per_round"] is None else
                f"; {1e3 * c['matched_overhead_s_per_round']:.0f} ms a round"),
             f"- every round after the first, matched or not: {pct(c['share_after_first_round'])}; over all rounds: "
             f"{pct(c['share_all_rounds'])}; median round: {pct(c['median_round_share'])}",
             f"- outside the rounds (API server start, session, outputs, artifacts): prefect "
             f"{c['outside_rounds_s']['prefect']:.2f} s, plain {c['outside_rounds_s']['plain']:.2f} s", "",
             "| round | evaluations (prefect/plain) | same candidates | prefect s | plain s | Prefect's share |",
             "|---|---|---|---|---|---|"]
    for r in c["rounds"]:
        same = "yes" if r["same_candidates"] else "no" if r["evaluations"] or r["evaluations_plain"] else "-"
        lines.append(f"| {r['round']} | {r['evaluations']}/{r['evaluations_plain']} | {same} | {r['prefect_s']:.3f} | "
                     f"{r['plain_s']:.3f} | {pct(r['share'])} |")
    lines += ["", "Per stage call (median): the orchestration cost of one task", "",
              "| stage | calls | prefect ms | plain ms | overhead ms |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['calls']} | {v['prefect_ms']:.2f} | {v['plain_ms']:.2f} | {v['overhead_ms']:.2f} |"
              for k, v in c["stages"].items()]
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
    args = p.parse_args()
    os.environ.setdefault("KEVOLVE_HOME", "/tmp/kevolve-home")  # the other benches' baselines are reused
    from flows import configure_prefect

    configure_prefect()
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
    result = {"spec": args.spec, "target": target, "device": device, "budget": args.budget, "policy": args.policy,
              "fake_evaluation_s": args.fake_evaluation_s,
              "prefect_version": prefect.__version__, "goal": GOAL,
              "comparison": compare(orchestrated, plain), "runs": [plain, orchestrated]}
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
