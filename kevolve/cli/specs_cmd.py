"""`kevolve specs validate PATH...` and `kevolve specs list`."""

from __future__ import annotations

import sys

from kevolve.errors import SpecError


def register(sub) -> None:
    p = sub.add_parser("specs", help="validate and list operator specs")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    v = verbs.add_parser("validate", help="load each spec and run its reference at small shapes")
    v.add_argument("paths", nargs="+", help="spec files or folders of them")
    v.set_defaults(func=validate)
    ls = verbs.add_parser("list", help="list specs with their tuned shape")
    ls.add_argument("paths", nargs="*", help="spec files or folders (default: specs/)")
    ls.set_defaults(func=list_specs)


def validate(args) -> int:
    from kevolve.specs import discover, load_spec
    from kevolve.specs.validate import validate_spec

    paths = discover(args.paths)
    if not paths:
        print("kevolve: error: no spec files found in " + " ".join(args.paths), file=sys.stderr)
        return 2
    failed = 0
    for path in paths:
        try:
            spec = load_spec(path)
            validate_spec(spec)
        except SpecError as exc:
            failed += 1
            print(f"kevolve: error: {exc.message}", file=sys.stderr)
            continue
        print(f"ok  {spec.name:<28} {spec.format:<11} {path}")
    if failed:
        print(f"{failed} of {len(paths)} specs invalid", file=sys.stderr)
        return 2
    return 0


def list_specs(args) -> int:
    from kevolve.paths import specs_dir
    from kevolve.specs import discover, dims_key, load_spec

    for path in discover(args.paths or [specs_dir()]):
        spec = load_spec(path)
        dtypes = ",".join(sorted({i.dtype for i in spec.inputs})) or "-"
        print(f"{spec.name:<28} {spec.family or '-':<14} {dtypes:<18} {dims_key(spec.tune_dims)}")
    return 0
