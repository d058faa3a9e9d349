"""`kevolve tune SPEC [--target] [--budget] [--policy] [--llm URL] ...`: search for the best kernel.

Runs the `tune_operator` Prefect flow (or, with --no-prefect, the same loop with no
orchestration), shows progress, and ends by saying where the outputs are. Re-running with the
same --run-name, or --resume RUN_ID, picks a stopped run up where it stopped.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from kevolve.errors import KevolveError

# argparse destination -> SearchConfig field, for the limits a resumed run may change too
_SEARCH_ARGS = {
    "policy": "policy", "budget": "budget", "wall_time": "wall_time_s", "patience": "stall_patience",
    "target_speedup": "target_speedup", "baseline": "baseline", "memory": "memory_mode", "seed": "rng_seed",
    "expansions": "expansions_per_round", "children": "children_per_expansion",
}


def register(sub) -> None:
    from kevolve.search.config import BASELINES, POLICIES

    p = sub.add_parser("tune", help="search for the fastest correct kernel for an operator")
    p.add_argument("spec", nargs="?", help="a spec file, or an example spec's name (softmax)")
    p.add_argument("--target", help="hardware target (default: this machine's)")
    p.add_argument("--budget", type=int, help="candidate evaluations (default 24)")
    p.add_argument("--policy", choices=POLICIES, help="search policy (default mcts)")
    p.add_argument("--llm", metavar="URL", help="OpenAI-compatible endpoint (default $KEVOLVE_LLM_URL, else "
                                                "http://127.0.0.1:8000/v1; with none answering there, the "
                                                "offline synthesizer)")
    p.add_argument("--model", help="the endpoint's model (default: the first it lists)")
    p.add_argument("--offline", action="store_true", help="use the offline synthesizer (templates + transformations)")
    p.add_argument("--wall-time", type=float, metavar="S", help="stop after this many seconds")
    p.add_argument("--patience", type=int, metavar="N", help="stop after N evaluations without a better kernel")
    p.add_argument("--target-speedup", type=float, metavar="X", help="stop once a kernel is X times faster")
    p.add_argument("--baseline", choices=BASELINES, help="speedup over eager, torch.compile, or the fastest (default)")
    p.add_argument("--memory", choices=("auto", "inherit", "siblings", "restart"), help="memory mode (default auto)")
    p.add_argument("--expansions", type=int, metavar="N", help="parents expanded per round (default 2)")
    p.add_argument("--children", type=int, metavar="N", help="children asked per parent (default 2)")
    p.add_argument("--seed", type=int, help="random seed of the policy and the offline synthesizer")
    p.add_argument("--workers", type=int, help="evaluation workers (default: the harness's)")
    p.add_argument("--run-name", help="name the run; the same name again resumes it")
    p.add_argument("--resume", metavar="RUN_ID", help="resume a stopped run with its own settings")
    p.add_argument("--no-knowledge", action="store_true", help="no retrieval, no skills")
    p.add_argument("--no-prefect", action="store_true", help="run the loop without Prefect orchestration")
    p.add_argument("--list", action="store_true", help="list the runs in the state folder and exit")
    p.set_defaults(func=tune)


def tune(args) -> int:
    if args.list:
        return list_runs()
    search = {field: getattr(args, dest) for dest, field in _SEARCH_ARGS.items() if getattr(args, dest) is not None}
    options: dict[str, Any] = {"eval_workers": args.workers} if args.workers else {}
    request = dict(spec=args.spec, target=args.target, llm=args.llm, offline=args.offline, run_name=args.run_name,
                   resume=args.resume, search=search, knowledge=not args.no_knowledge, options=options)
    if args.model:
        request["options"] = {**options, "llm_model": args.model}
    orchestrated = not args.no_prefect
    if orchestrated and importlib.util.find_spec("prefect") is None:
        raise KevolveError("prefect is not installed: pip install 'prefect==3.8.8', or run the same loop "
                           "without orchestration with --no-prefect")
    if orchestrated:
        from flows import configure_prefect

        configure_prefect()

    from kevolve.search.progress import listening

    with ProgressView() as view, listening(view.on_event):
        if orchestrated:
            summary = run_flow(request)
        else:
            from flows.tune_operator import tune_without_prefect

            summary = tune_without_prefect(**request).to_dict()
    report(summary)
    return 0


def run_flow(request: dict[str, Any]) -> dict[str, Any]:
    from flows.tune_operator import tune_operator

    try:
        return tune_operator(**request)
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        raise KevolveError("Prefect's temporary server did not start; start one with `prefect server start` "
                           "and set PREFECT_API_URL=http://127.0.0.1:4200/api, or run with --no-prefect") from None


def report(summary: dict[str, Any]) -> None:
    print(f"run {summary['run_id']}: {summary['reason']}")
    print(f"evaluated {summary['evaluations']}, correct {summary['correct']}")
    if summary["best_node"] is None:
        print("no kernel passed every check; tree.json in the outputs says why each failed")
    elif summary["best_speedup"] is not None:
        print(f"best: node #{summary['best_node']}, {summary['best_speedup']:.2f}x")
    else:
        print(f"best: node #{summary['best_node']} (correct; no kernel speed on this target)")
    llm = summary.get("llm") or {}
    if llm.get("requests"):
        print(f"LLM: {llm['requests']} requests, {llm['prompt_tokens'] + llm['completion_tokens']} tokens")
    print(f"outputs: {summary['outputs']} (report.html, summary.md, path.md, best_kernel.py)")
    report = Path(summary["outputs"]) / "report.html"
    if report.is_file():
        print(f"report: {report}  (open it in a browser, or `kevolve report {summary['run_id']} --open`)")


def list_runs() -> int:
    from kevolve.search.store import SearchStore

    with SearchStore() as store:
        for run in store.runs():
            nodes = store.nodes(run.id)
            done = {e.node_id for e in store.evaluations(run.id)}
            print(f"{run.id:<48} {run.spec_name:<20} {run.status:<9} {len(done):>4}/{len(nodes):<4} "
                  f"{run.finished_reason}")
    return 0


class ProgressView:
    """A progress bar over the evaluation budget on a terminal; plain lines elsewhere."""

    def __init__(self):
        self.live = sys.stderr.isatty()
        self._bar = None
        self._task = None

    def __enter__(self) -> "ProgressView":
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("[bold]tune"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.description}"), console=Console(stderr=True), transient=False)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def on_event(self, event) -> None:
        if self._bar is None:
            if event.kind in ("start", "note", "promoted", "round", "end"):
                count = f"[{event.evaluations}/{event.budget}] " if event.budget else ""
                print(f"{count}{event.message}", file=sys.stderr, flush=True)
            return
        if self._task is None:
            self._task = self._bar.add_task("", total=max(event.budget, 1))
        if event.kind in ("start", "note", "promoted", "end"):
            self._bar.console.print(event.message)
        self._bar.update(self._task, completed=event.evaluations, total=max(event.budget, 1),
                         description=event.message if event.kind == "evaluated" else "")
