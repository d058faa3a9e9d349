"""`kevolve eval CANDIDATE --spec SPEC`: judge one candidate file and print the verdict.

Exits 0 when the candidate is correct, 1 otherwise (so scripts can gate on it).
"""

from __future__ import annotations

from pathlib import Path

from kevolve.errors import KevolveError


def register(sub) -> None:
    p = sub.add_parser("eval", help="check and time one candidate kernel against a spec")
    p.add_argument("candidate", help="a candidate module (.py: Triton)")
    p.add_argument("--spec", required=True, help="spec file, or the name of an example spec (softmax)")
    p.add_argument("--target", help="hardware target (default: this machine's)")
    p.add_argument("--workers", type=int, help="worker processes (default: by cores and GPUs)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a run is killed (default 120)")
    p.add_argument("--trials", type=int, default=100, help="timing trials at most (default 100)")
    p.add_argument("--no-baselines", action="store_true", help="do not time eager and torch.compile")
    p.add_argument("--no-max-autotune", action="store_true", help="skip the torch.compile max-autotune baseline")
    p.add_argument("--ncu", action="store_true", help="also profile with Nsight Compute (GPU with ncu)")
    p.add_argument("--save", metavar="DIR", help="write the code and the evaluation JSON into DIR")
    p.add_argument("--json", action="store_true", help="print the evaluation as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    path = Path(args.candidate)
    if not path.is_file():
        raise KevolveError(f"candidate {path} not found")
    if path.suffix != ".py":
        raise KevolveError(f"candidate {path}: expected a Python module (.py) that launches Triton kernels")

    from kevolve.candidate import Candidate, Origin
    from kevolve.evaluate.evaluator import Evaluator, save_evaluation
    from kevolve.evaluate.verdict import format_verdict
    from kevolve.hardware import detect_target, load_target
    from kevolve.specs import resolve_spec

    spec = resolve_spec(args.spec)
    target = load_target(args.target) if args.target else detect_target()
    candidate = Candidate(code=path.read_text(), spec_name=spec.name, origin=Origin("manual", note=str(path)))
    with Evaluator(spec, target, workers=args.workers or 1, timeout_s=args.timeout,
                   baselines=not args.no_baselines, max_autotune=not args.no_max_autotune,
                   timing_trials=args.trials, ncu=args.ncu) as evaluator:
        evaluation = evaluator.evaluate([candidate])[0]
    print(evaluation.to_json() if args.json else format_verdict(evaluation, path.name))
    if args.save:
        saved = save_evaluation(Path(args.save), candidate, evaluation)
        if not args.json:
            print(f"saved {saved}")
    return 0 if evaluation.correct else 1
