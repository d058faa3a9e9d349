"""`kevolve offline SPEC`: the offline synthesizer's reading of a spec and its seed kernels.

    kevolve offline softmax                      family, why, and the seed configs
    kevolve offline softmax --code               the first seed's module
    kevolve offline softmax --config '{...}'     the module for a config (replays a result)
"""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("offline", help="show the offline synthesizer's family, seeds and code for a spec")
    p.add_argument("spec", help="a spec path, or the name of an example spec (softmax)")
    p.add_argument("--target", help="hardware target to size seeds for (default: this machine's)")
    p.add_argument("-n", type=int, default=4, help="how many seeds to list")
    p.add_argument("--code", action="store_true", help="print the first seed's module")
    p.add_argument("--config", help="render this config (JSON) instead of the seeds")
    p.set_defaults(func=run)


def run(args) -> int:
    from kevolve.errors import KevolveError
    from kevolve.hardware import detect_target, load_ceilings, load_target
    from kevolve.specs import resolve_spec
    from kevolve.synth.base import SynthesisRequest
    from kevolve.synth.offline import OfflineSynthesizer, match_family, render

    spec = resolve_spec(args.spec)
    target = load_target(args.target) if args.target else detect_target()
    found = match_family(spec)
    if args.config:
        try:
            config = json.loads(args.config)
        except json.JSONDecodeError as exc:
            raise KevolveError(f"--config is not JSON ({exc.msg}); pass the config a result recorded") from None
        print(render(spec, found.family, config), end="")
        return 0
    request = SynthesisRequest(spec=spec, target=target, ceilings=load_ceilings(target), n=args.n)
    seeds = OfflineSynthesizer().propose(request)
    if args.code:
        print(seeds[0].code, end="")
        return 0
    print(f"{spec.name}: {found.family} family on {target.name}: {found.reason}")
    for i, c in enumerate(seeds, 1):
        print(f"  seed {i}: {json.dumps(dict(c.origin.config), sort_keys=True)}")
    return 0
