"""`kevolve library list | show NAME[@VERSION] | export NAME --out DIR`."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("library", help="the kernel library: list, show and export tuned kernels")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="the current kernel of each operator and target")
    ls.add_argument("--target", help="only this target")
    ls.add_argument("--all", action="store_true", help="every version, not only the current one")
    ls.set_defaults(func=list_cmd)
    show = verbs.add_parser("show", help="an entry's shapes, evaluation and files")
    show.add_argument("ref", metavar="NAME[@VERSION]")
    show.add_argument("--target", help="the target, where the name exists for several")
    show.add_argument("--code", action="store_true", help="also print the kernel's source")
    show.set_defaults(func=show_cmd)
    ex = verbs.add_parser("export", help="write a standalone kernel module and its evaluation JSON")
    ex.add_argument("ref", metavar="NAME[@VERSION]")
    ex.add_argument("--out", required=True, help="folder to write into")
    ex.add_argument("--target", help="the target, where the name exists for several")
    ex.set_defaults(func=export_cmd)


def _speed(speedup: float | None) -> str:
    return f"{speedup:.2f}x" if speedup is not None else "-"


def _range(entry) -> str:
    lo, hi = entry.shape_min, entry.shape_max
    return ",".join(f"{k}={lo[k]}" if lo[k] == hi[k] else f"{k}={lo[k]}..{hi[k]}" for k in lo)


def list_cmd(args) -> int:
    from kevolve.library.store import entries

    found = entries(target=args.target, all_versions=args.all)
    if not found:
        print("the library is empty" + (f" for {args.target}" if args.target else "")
              + "; `kevolve model ops CONFIG --out DIR` writes specs to tune, and tuning registers kernels")
        return 0
    width = max(len(e.ref) for e in found)
    print(f"{'operator@version':<{width}}  {'target':<16} {'speedup':>8}  {'created':<25} validated shapes")
    for e in found:
        print(f"{e.ref:<{width}}  {e.target:<16} {_speed(e.speedup):>8}  {e.created_at:<25} {_range(e)}")
    return 0


def show_cmd(args) -> int:
    from kevolve.library.store import entries, get

    entry = get(args.ref, args.target)
    evaluation = entry.evaluation()
    versions = [e.version for e in entries(entry.operator, entry.target, all_versions=True)]
    print(f"{entry.ref} on {entry.target} (versions {', '.join(map(str, versions))})")
    print(f"  pattern         {entry.pattern or '-'}  (semantics {entry.semantics or '-'})")
    print(f"  validated       {'; '.join(','.join(f'{k}={v}' for k, v in d.items()) for d in entry.validated_dims)}")
    print(f"  dispatch range  {_range(entry)}")
    print(f"  evaluation      {evaluation.outcome.value} on {evaluation.device} at "
          f"{','.join(f'{k}={v}' for k, v in evaluation.dims.items())}; "
          f"{sum(c.passed for c in evaluation.checks)}/{len(evaluation.checks)} checks passed")
    if evaluation.timing is not None:
        kind = "interpreter wall clock, not kernel speed" if evaluation.timing.interpreter else evaluation.timing.method
        print(f"  time            {evaluation.timing.median_ms:.4g} ms median ({kind})")
    if evaluation.baselines is not None:
        for name in ("eager", "compile_default", "compile_max_autotune"):
            t = evaluation.baselines.get(name)
            if t is not None:
                print(f"  {name:<15} {t.median_ms:.4g} ms" + (" (interpreter wall clock)" if t.interpreter else ""))
    print(f"  speedup         {_speed(entry.speedup)} over the fastest baseline")
    if evaluation.diagnosis is not None:
        print(f"  diagnosis       {evaluation.diagnosis.bound}: {evaluation.diagnosis.summary}")
    print(f"  created         {entry.created_at}")
    print(f"  files           {entry.path}")
    if args.code:
        print()
        print(entry.kernel_path.read_text())
    return 0


def export_cmd(args) -> int:
    from pathlib import Path

    from kevolve.library.store import export, get

    for path in export(get(args.ref, args.target), Path(args.out)):
        print(f"wrote {path}")
    return 0
