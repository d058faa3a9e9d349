"""`kevolve bench [SUITE ...]`: eager, torch.compile, max-autotune and the best kernel for each spec
of a suite (the example specs by default), as JSON, a markdown table and SVG plots.

    kevolve bench                                   every example spec, this machine's target
    kevolve bench specs/ --budget 6 --out bench/results
    kevolve bench softmax,layernorm --fresh         search even where the library holds a kernel
    kevolve bench --replot bench/results/bench_suite.json   the table and plots again from the JSON
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark a suite of specs: baselines, best kernel, roofline, cost")
    p.add_argument("suite", nargs="*", help="spec files, folders of specs, or example names (softmax,rmsnorm); "
                                            "default: the example specs")
    p.add_argument("--target", help="hardware target (default: this machine's)")
    p.add_argument("--budget", type=int, default=8, help="evaluations per spec's search (default 8)")
    p.add_argument("--wall-time", type=float, metavar="S", help="stop each spec's search after S seconds")
    p.add_argument("--suite-time", type=float, metavar="S",
                   help="start no spec after S seconds; the rest are reported as not run")
    p.add_argument("--policy", default="mcts", help="search policy (default mcts)")
    p.add_argument("--offline", action="store_true", help="use the offline synthesizer")
    p.add_argument("--llm", metavar="URL", help="OpenAI-compatible endpoint for the LLM synthesizer")
    p.add_argument("--no-knowledge", action="store_true", help="no retrieval, no skills")
    p.add_argument("--fresh", action="store_true", help="search even where the library holds a kernel")
    p.add_argument("--workers", type=int, help="evaluation workers (default: the harness's)")
    p.add_argument("--out", default="kevolve-bench", help="folder for the JSON, markdown and plots "
                                                          "(default ./kevolve-bench)")
    p.add_argument("--name", default="bench_suite", help="file stem of the outputs (default bench_suite)")
    p.add_argument("--replot", metavar="JSON", help="write the table and plots again from a bench's JSON, and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    from kevolve.report.bench import BenchSettings, replot, run_suite, suite_paths

    if args.replot:
        print(f"wrote {replot(Path(args.replot))} and its plots")
        return 0
    settings = BenchSettings(target=args.target, budget=args.budget, wall_time_s=args.wall_time,
                             suite_time_s=args.suite_time, policy=args.policy, offline=args.offline, llm=args.llm,
                             knowledge=not args.no_knowledge, fresh=args.fresh, workers=args.workers)
    paths = suite_paths(args.suite)
    out = Path(args.out)
    command = shlex.join(["kevolve", *sys.argv[1:]]) if sys.argv[1:] else "kevolve bench"
    doc = run_suite(paths, settings, out, args.name, command,
                    say=lambda line: print(line, file=sys.stderr, flush=True))
    if doc["interpreter"]:
        print("interpreter run: times are interpreter wall clock, not kernel speed; no speedup is reported")
    done = sum(1 for r in doc["specs"] if r["status"] == "ok")
    print(f"{done} of {len(doc['specs'])} specs with a correct kernel; wrote {out / args.name}.json, .md, "
          f"_speedup.svg and _curves.svg")
    return 0
