"""`kevolve kernelbench PATH --level N [--problems 1,19]`: tune KernelBench problems from a checkout,
write a ModelNew file for each one solved, and report fast_0, fast_1 and fast_p.

    kevolve kernelbench ~/KernelBench --level 1 --problems 19,23 --budget 8 --out kb-results
    kevolve kernelbench ~/KernelBench --level 1 --published ../shared/data/kernelbench-h100-timing
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("kernelbench", help="run over a KernelBench checkout: ModelNew files, fast_0/fast_1/fast_p")
    p.add_argument("path", help="a KernelBench checkout (holding KernelBench/levelN/ or levelN/)")
    p.add_argument("--level", type=int, required=True, help="the level to run (1, 2 or 3)")
    p.add_argument("--problems", default="", help="comma-separated problem numbers or file names (default: all)")
    p.add_argument("--p", default="1.5", help="comma-separated speedup thresholds for fast_p (default 1.5)")
    p.add_argument("--published", help="folder of KernelBench's published timing JSON, quoted beside ours")
    p.add_argument("--target", help="hardware target (default: this machine's)")
    p.add_argument("--budget", type=int, default=8, help="evaluations per problem (default 8)")
    p.add_argument("--wall-time", type=float, metavar="S", help="stop each problem's search after S seconds")
    p.add_argument("--offline", action="store_true", help="use the offline synthesizer")
    p.add_argument("--llm", metavar="URL", help="OpenAI-compatible endpoint for the LLM synthesizer")
    p.add_argument("--no-knowledge", action="store_true", help="no retrieval, no skills")
    p.add_argument("--fresh", action="store_true", help="search even where the library holds a kernel")
    p.add_argument("--workers", type=int, help="evaluation workers (default: the harness's)")
    p.add_argument("--out", default="kevolve-kernelbench", help="folder for ModelNew files and the report")
    p.set_defaults(func=run)


def run(args) -> int:
    from kevolve.errors import KevolveError
    from kevolve.report.bench import BenchSettings
    from kevolve.report.kernelbench import run_kernelbench

    root = Path(args.path)
    if not root.is_dir():
        raise KevolveError(f"{root} is not a folder; point at a KernelBench checkout")
    try:
        ps = [float(x) for x in args.p.split(",") if x]
    except ValueError:
        raise KevolveError(f"--p takes numbers separated by commas (1.5,2), not {args.p!r}") from None
    published = Path(args.published) if args.published else None
    if published is not None and not published.is_dir():
        raise KevolveError(f"--published {published} is not a folder of KernelBench timing JSON files")
    settings = BenchSettings(target=args.target, budget=args.budget, wall_time_s=args.wall_time,
                             offline=args.offline, llm=args.llm, knowledge=not args.no_knowledge, fresh=args.fresh,
                             workers=args.workers)
    out = Path(args.out)
    command = shlex.join(["kevolve", *sys.argv[1:]])
    problems = [x for x in args.problems.split(",") if x]
    doc = run_kernelbench(root, args.level, problems, settings, out, ps=ps, published=published, command=command,
                          say=lambda line: print(line, file=sys.stderr, flush=True))
    m = doc["metrics"]
    print(f"level {args.level}: {m['correct']} of {m['problems']} correct, {m['not_covered']} not covered")
    if doc["interpreter"]:
        print(f"fast_0 {m['fast_0']:.1%}; fast_1 and fast_p: n/a (interpreter: no kernel speed)")
    else:
        print("  ".join(f"{k} {v:.1%}" for k, v in m.items() if k.startswith("fast_") and v is not None))
    print(f"ModelNew files in {out / f'level{args.level}'}; table in {out / f'kernelbench_level{args.level}.md'}")
    return 0
