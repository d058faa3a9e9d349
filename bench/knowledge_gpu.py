"""Does a run learn from the last one? On a GPU: an offline search on softmax with a fresh knowledge
base (it distils skills and keeps its best kernel), then two searches on log_softmax with the same
budget: one with that knowledge base, one without (no skills, no prior kernel). Reported: for each
log_softmax run, how many evaluations it took to reach 95% of the best speedup either of them found
(and of its own best), and which skills led its first children.

Needs the search and the offline synthesizer; chromadb is not needed (skills live in SQLite, and
the offline synthesizer does not read retrieved documents). Nothing to install on the GPU machine:

    python3 bench/knowledge_gpu.py [--budget 16] [--policy mcts]

Each run takes a few minutes on an H100; to stay inside a 10-minute command, split them over
commands that share a state folder (the machine keeps /tmp between back-to-back commands):

    python3 bench/knowledge_gpu.py --state /tmp/kg --runs softmax,with
    python3 bench/knowledge_gpu.py --state /tmp/kg --runs without

Writes knowledge_gpu.json and knowledge_gpu.md under $OUT (default bench/results/) and prints the
markdown. A CPU smoke run of the pipeline (no speeds there, so no skills and no counts):
TRITON_INTERPRET=1 python3 bench/knowledge_gpu.py --budget 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]
GOAL = 0.95  # of the best speedup


def at_dims(spec: str, dims: str | None, state: Path, dtype: str | None = None) -> str:
    """The example spec, tuned at other dimensions (`M=131072,N=256`) or with another input dtype:
    written beside the state, with its reference path made absolute. Without either, the example as it is."""
    if not dims and not dtype:
        return spec
    import yaml

    source = REPO / "specs" / f"{spec}.yaml"
    doc = yaml.safe_load(source.read_text())
    if dims:
        doc["shapes"]["tune"] = {k: int(v) for k, v in (kv.split("=") for kv in dims.split(","))}
    for tensor in doc["inputs"] if dtype else []:
        tensor["dtype"] = dtype
    ref_file, _, ref_fn = doc["reference"].partition(":")
    doc["reference"] = f"{(source.parent / ref_file).resolve()}:{ref_fn}"
    path = state / "specs" / f"{spec}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def search(spec: str, args, knowledge: bool) -> dict:
    from flows.tune_operator import tune
    from kevolve.search.launch import plan_run

    plan = plan_run(at_dims(spec, args.dims, Path(os.environ["KEVOLVE_HOME"]), args.dtype), target=args.target, offline=True, knowledge=knowledge,
                    search={"policy": args.policy, "budget": args.budget, "seeds": 2, "children_per_expansion": 2})
    start = time.perf_counter()
    summary = tune(plan).to_dict()
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["knowledge"] = knowledge
    summary["trace"] = trace(summary["run_id"])
    return summary


def trace(run_id: str) -> list[dict]:
    """Each evaluated node in the order it was evaluated: its speedup and what made it."""
    from kevolve.search.fitness import speedup
    from kevolve.search.store import SearchStore

    with SearchStore() as store:
        nodes = {n.id: n for n in store.nodes(run_id)}
        firsts = [e for e in store.evaluations(run_id) if e.kind == "first"]
    rows = []
    for e in firsts:
        node = nodes[e.node_id]
        origin = node.candidate.origin
        rows.append({"node": node.id, "parent": node.parent_id, "outcome": e.evaluation.outcome.value,
                     "speedup": speedup(e.evaluation, "fastest"),
                     "median_ms": e.evaluation.timing.median_ms if e.evaluation.timing else None,
                     "made_by": origin.synthesizer, "transforms": [str(t) for t in origin.transforms],
                     "note": origin.note[:100]})
    return rows


def evaluations_to(rows: list[dict], goal: float) -> int | None:
    """How many evaluations until one reached the goal speedup (None: never)."""
    for count, row in enumerate(rows, 1):
        if row["speedup"] is not None and row["speedup"] >= goal:
            return count
    return None


def best(rows: list[dict]) -> float | None:
    found = [r["speedup"] for r in rows if r["speedup"] is not None]
    return max(found) if found else None


def skills_table() -> list[dict]:
    from kevolve.knowledge.base import KnowledgeBase

    with KnowledgeBase.open() as kb:
        return [{"id": s.id, "operators": list(s.operators), "transforms": [str(t) for t in s.transforms],
                 "before_ms": s.before_ms, "after_ms": s.after_ms, "gain": round(s.gain, 3),
                 "successes": s.successes, "failures": s.failures, "motivation": s.motivation}
                for s in kb.skills()]


def compare(with_kb: dict, without: dict) -> dict:
    common = max(filter(None, [best(with_kb["trace"]), best(without["trace"])]), default=None)
    out = {"common_best_speedup": common}
    for name, run in (("with_knowledge", with_kb), ("without_knowledge", without)):
        own = best(run["trace"])
        out[name] = {
            "best_speedup": own,
            "evaluations": len(run["trace"]),
            "to_95pct_of_common_best": evaluations_to(run["trace"], GOAL * common) if common else None,
            "to_95pct_of_own_best": evaluations_to(run["trace"], GOAL * own) if own else None,
            "first_children": [r["note"] for r in run["trace"] if r["transforms"]][:3],
        }
    return out


def _verdict_lines(verdict: dict) -> list[str]:
    lines: list[str] = []
    w, wo = verdict["with_knowledge"], verdict["without_knowledge"]
    lines += ["", f"log_softmax: evaluations to reach {GOAL:.0%} of the best speedup of either run "
              f"({verdict['common_best_speedup']}):", "",
              "| run | best speedup | to 95% of common best | to 95% of own best | first children |",
              "|---|---|---|---|---|"]
    for name, row in (("with skills and prior kernel", w), ("without", wo)):
        lines.append(f"| {name} | {row['best_speedup']} | {row['to_95pct_of_common_best']} | "
                     f"{row['to_95pct_of_own_best']} | {'; '.join(row['first_children']).replace('|', '/')} |")
    return lines


def markdown(device: str, runs: list[dict], verdict: dict, skills: list[dict]) -> str:
    lines = [f"# Learning across runs on {device}", "", f"Command: `{' '.join(['python3', *sys.argv])}`", ""]
    for run in runs:
        lines.append(f"- {run['spec']} ({'with' if run['knowledge'] else 'without'} knowledge): {run['reason']}; "
                     f"{run['evaluations']} evaluations, best speedup {run['best_speedup']}, {run['seconds']} s "
                     f"(run {run['run_id']})")
    if not verdict:
        lines += ["", "log_softmax with and without knowledge: not both run yet."]
    else:
        lines += _verdict_lines(verdict)
    lines += ["", "Skills in the knowledge base after the runs:", ""]
    lines += [f"- {s['id']} {s['operators']}: {', '.join(s['transforms'])} ({s['before_ms']:.4g} -> "
              f"{s['after_ms']:.4g} ms, {s['gain']}x; {s['successes']} paid, {s['failures']} not)" for s in skills]
    for run in runs:
        lines += ["", f"## {run['spec']} {'with' if run['knowledge'] else 'without'} knowledge", "",
                  "| # | node | parent | made by | outcome | ms | speedup | note |", "|---|---|---|---|---|---|---|---|"]
        for i, r in enumerate(run["trace"], 1):
            ms = f"{r['median_ms']:.4g}" if r["median_ms"] else "-"
            sp = f"{r['speedup']:.3f}" if r["speedup"] else "-"
            lines.append(f"| {i} | {r['node']} | {r['parent'] or '-'} | {r['made_by']} | {r['outcome']} | {ms} | "
                         f"{sp} | {r['note'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


RUNS = {  # name: (spec, with the knowledge base)
    "softmax": ("softmax", True),
    "with": ("log_softmax", True),
    "without": ("log_softmax", False),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=None, help="default: this machine's")
    p.add_argument("--policy", default="mcts")
    p.add_argument("--budget", type=int, default=16, help="evaluations per run")
    p.add_argument("--runs", default="softmax,with,without",
                   help="which of softmax,with,without to run now (the report covers all done so far)")
    p.add_argument("--dims", default=None,
                   help="tune both specs at these dimensions instead of their own, e.g. M=131072,N=256")
    p.add_argument("--dtype", default=None, help="inputs of both specs in this dtype instead, e.g. fp32")
    p.add_argument("--first", default="softmax", help="the spec of the first run, whose skills the second may use")
    p.add_argument("--state", default=None,
                   help="state folder kept between commands (default: a fresh temporary one)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "results"))
    args = p.parse_args()
    # A fresh state: the first run starts with no skills; the embedding needs no model weights.
    state = Path(args.state or tempfile.mkdtemp(prefix="kevolve-knowledge-gpu-"))
    state.mkdir(parents=True, exist_ok=True)
    os.environ["KEVOLVE_HOME"] = str(state)
    os.environ.setdefault("KEVOLVE_EMBEDDING", "hashing")

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (Triton interpreter)"
    for name in [r for r in args.runs.split(",") if r]:
        spec, knowledge = RUNS[name]
        spec = args.first if name == "softmax" else spec
        summary = search(spec, args, knowledge=knowledge)
        if name == "softmax":
            summary["skills_after"] = skills_table()
        (state / f"knowledge_gpu_{name}.json").write_text(json.dumps(summary, indent=1, default=str))
    done = {name: json.loads((state / f"knowledge_gpu_{name}.json").read_text())
            for name in RUNS if (state / f"knowledge_gpu_{name}.json").is_file()}
    runs = list(done.values())
    verdict = compare(done["with"], done["without"]) if {"with", "without"} <= set(done) else {}
    text = markdown(device, runs, verdict, skills_table())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    learnt = done.get("softmax", {}).get("skills_after", [])
    (out / "knowledge_gpu.json").write_text(json.dumps(
        {"device": device, "goal": GOAL, "verdict": verdict, "skills_after_softmax": learnt, "runs": runs},
        indent=1, default=str))
    (out / "knowledge_gpu.md").write_text(text)
    print(text)
    print(f"wrote {out / 'knowledge_gpu.json'} and {out / 'knowledge_gpu.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
