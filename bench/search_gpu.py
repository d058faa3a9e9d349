"""The search on a GPU, end to end: a short search through the tune_operator loop with the LLM
path driven by prepared answers (honest softmax kernels of several designs, one broken, one wrong)
from an OpenAI-compatible server started in this process, evaluated by the real harness on the
GPU; then the persisted tree dumped with its timings, speedups and diagnoses. With the offline
synthesizer present, a second short search uses it.

Runs through the Prefect flow where prefect is installed, else the same loop without it.
Needs the `openai` package; with no network, carry its wheels (bench/search_gpu_wheels.sh):

    pip install --no-index --find-links .whl/search openai
    python3 bench/search_gpu.py [--budget 12] [--policy mcts] [--offline-budget 8]

Writes search_gpu.json and search_gpu.md under $OUT (default bench/results/) and prints the
markdown. A CPU smoke run: TRITON_INTERPRET=1 python3 bench/search_gpu.py --target cpu-interpreter --budget 4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def prepared_answers():
    """Kernels for the fake model to answer with, in turn: one-pass rows of several widths and
    warps, looped blocks, plus a kernel that does not parse and one that forgets to normalise."""
    from searchkit import Reply, broken_softmax, fenced, softmax_kernel, unnormalised_softmax

    kernels = [(softmax_kernel(rows=r, warps=w), f"one pass, {r} row(s) per program, {w} warps")
               for r, w in ((1, 8), (1, 16), (2, 8), (4, 16), (1, 4), (2, 16), (4, 8))]
    kernels += [(softmax_kernel(block=b, warps=w), f"three passes over blocks of {b}, {w} warps")
                for b, w in ((2048, 8), (4096, 8), (1024, 4), (4096, 16), (2048, 4))]
    answers = [Reply(fenced(code, f"This kernel: {why}.")) for code, why in kernels]
    answers.insert(3, Reply(fenced(broken_softmax(), "Fused the three passes.")))
    answers.insert(6, Reply(fenced(unnormalised_softmax(), "Skipped the sum.")))
    return answers


def run_search(args, llm_url: str | None, offline: bool) -> dict:
    search = {"policy": args.policy, "budget": args.offline_budget if offline else args.budget,
              "seeds": 3, "children_per_expansion": 2}
    request = dict(target=args.target, llm=llm_url, offline=offline, knowledge=False, search=search)
    start = time.perf_counter()
    from flows.tune_operator import PREFECT, tune_operator, tune_without_prefect

    if PREFECT and not args.no_prefect:
        summary = tune_operator(spec=args.spec, **request)
        via = "prefect flow"
    else:
        summary = tune_without_prefect(args.spec, **request).to_dict()
        via = "no prefect"
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["via"] = via
    return summary


def dump(summary: dict) -> dict:
    """The persisted tree, read back from the store, with what each node measured."""
    from kevolve.search.fitness import speedup
    from kevolve.search.store import SearchStore

    with SearchStore() as store:
        nodes = store.nodes(summary["run_id"])
        evaluations = {(e.node_id, e.kind): e for e in store.evaluations(summary["run_id"])}
    rows, baselines = [], None
    for n in nodes:
        first = evaluations.get((n.id, "first"))
        again = evaluations.get((n.id, "remeasure"))
        ev = first.evaluation if first else None
        if ev is not None and ev.baselines is not None:
            baselines = ev.baselines
        d = ev.diagnosis if ev else None
        origin = n.candidate.origin
        rows.append({
            "node": n.id, "parent": n.parent_id, "memory": n.memory_mode,
            "made_by": origin.synthesizer + (f" {origin.family}" if origin.family else ""),
            "note": origin.note[:80],
            "transforms": [f"{t.name}={t.value}" for t in origin.transforms],
            "outcome": ev.outcome.value if ev else "pending",
            "median_ms": ev.timing.median_ms if ev and ev.timing else None,
            "spread": round(ev.timing.spread, 4) if ev and ev.timing else None,
            "interpreter": bool(ev and ev.timing and ev.timing.interpreter),
            "remeasured_ms": again.evaluation.timing.median_ms if again and again.evaluation.timing else None,
            "speedup_eager": speedup(ev, "eager") if ev else None,
            "speedup_fastest": speedup(ev, "fastest") if ev else None,
            "bound": d.bound if d else None, "fraction_of_floor": d.fraction_of_floor if d else None,
            "achieved_gbps": d.achieved_gbps if d else None, "diagnosis": d.summary if d else None,
            "kernels": [{"regs": k.num_regs, "spills": k.num_spills, "warps": k.num_warps} for k in d.kernels]
            if d else [],
            "error": (ev.error.strip().splitlines() or [""])[0][:120] if ev and ev.error else "",
        })
    base = {}
    if baselines is not None:
        for name in ("eager", "compile_default", "compile_max_autotune"):
            t = baselines.get(name)
            base[name] = t.median_ms if t else baselines.errors.get(name, "missing")
    return {"summary": summary, "baselines_ms": base, "nodes": rows}


def markdown(results: list[dict], device: str) -> str:
    out = [f"# Search on {device}", ""]
    for r in results:
        s = r["summary"]
        out += [f"## {s['synthesizer']} / {s['policy']} ({s['via']}): {s['reason']}", "",
                f"run {s['run_id']}: {s['evaluations']} evaluated, {s['correct']} correct, best node "
                f"{s['best_node']}, speedup {s['best_speedup']}, {s['seconds']} s; LLM {s['llm']}", "",
                "baselines (ms): " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in r["baselines_ms"].items()), "",
                "| node | parent | memory | made by | outcome | ms | spread | re-ms | x eager | x fastest | bound | "
                "floor frac | GB/s | note / error |", "|" + "---|" * 14]
        for n in r["nodes"]:
            def f(v, fmt="{:.4g}"):
                return fmt.format(v) if isinstance(v, (int, float)) and v is not None else "-"
            out.append(f"| {n['node']} | {n['parent'] or '-'} | {n['memory']} | {n['made_by']} | {n['outcome']} | "
                       f"{f(n['median_ms'])} | {f(n['spread'])} | {f(n['remeasured_ms'])} | "
                       f"{f(n['speedup_eager'], '{:.2f}')} | {f(n['speedup_fastest'], '{:.2f}')} | "
                       f"{n['bound'] or '-'} | "
                       f"{f(n['fraction_of_floor'], '{:.2f}')} | {f(n['achieved_gbps'], '{:.0f}')} | "
                       f"{(n['error'] or n['note']).replace('|', '/')} |")
        out.append("")
    return "\n".join(out)


def problems(results: list[dict]) -> list[str]:
    """What would make these figures wrong to quote."""
    found = []
    for r in results:
        for n in r["nodes"]:
            if n["outcome"] == "correct" and (n["median_ms"] is None or n["interpreter"] or n["bound"] is None):
                found.append(f"{r['summary']['run_id']} node {n['node']}: correct but no GPU timing or diagnosis")
        if r["summary"]["best_node"] is None:
            found.append(f"{r['summary']['run_id']}: no kernel passed")
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="softmax")
    p.add_argument("--target", default=None, help="default: this machine's")
    p.add_argument("--policy", default="mcts")
    p.add_argument("--budget", type=int, default=12)
    p.add_argument("--offline-budget", type=int, default=8, help="0: no offline search")
    p.add_argument("--no-prefect", action="store_true")
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "results"))
    args = p.parse_args()
    # The harness bench's state folder: baselines it timed there are reused, not timed again.
    os.environ.setdefault("KEVOLVE_HOME", "/tmp/kevolve-home")
    from flows import configure_prefect

    configure_prefect()

    import torch

    from searchkit import FakeOpenAI

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (Triton interpreter)"
    results = []
    with FakeOpenAI(_cycle(prepared_answers())) as server:
        results.append(dump(run_search(args, server.url, offline=False)))
    if args.offline_budget and importlib.util.find_spec("kevolve.synth.offline") is not None:
        results.append(dump(run_search(args, None, offline=True)))
    text = markdown(results, device)
    found = problems(results)
    text += "\n" + ("\n".join(f"PROBLEM: {x}" for x in found) if found else "checks: every correct node has a "
                    "GPU timing and a diagnosis") + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_gpu.json").write_text(json.dumps({"device": device, "runs": results}, indent=1, default=str))
    (out / "search_gpu.md").write_text(text)
    print(text)
    print(f"wrote {out / 'search_gpu.json'} and {out / 'search_gpu.md'}")
    return 1 if found else 0


def _cycle(answers):
    return lambda body, i: answers[i % len(answers)]


if __name__ == "__main__":
    raise SystemExit(main())
