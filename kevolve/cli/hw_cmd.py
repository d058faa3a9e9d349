"""`kevolve hw detect | show | list | calibrate`."""

from __future__ import annotations

import json
from dataclasses import asdict


def register(sub) -> None:
    p = sub.add_parser("hw", help="hardware targets: detect, show, list, calibrate")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    verbs.add_parser("detect", help="the target of this machine's device").set_defaults(func=detect)
    verbs.add_parser("list", help="known targets").set_defaults(func=list_targets)
    show = verbs.add_parser("show", help="a target's figures and its ceilings (measured or datasheet)")
    show.add_argument("target", nargs="?", help="target name (default: detected)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=show_target)
    cal = verbs.add_parser("calibrate", help="measure copy bandwidth and matmul rate on this device")
    cal.add_argument("--quick", action="store_true", help="small sizes: checks the path, not a figure to quote")
    cal.set_defaults(func=calibrate_cmd)


def detect(args) -> int:
    from kevolve.hardware import detect_target, device_name

    target = detect_target()
    print(f"{target.name}\t{device_name() or 'no GPU: Triton interpreter on the CPU'}")
    return 0


def list_targets(args) -> int:
    from kevolve.hardware import available_targets, load_target

    for name in available_targets():
        t = load_target(name)
        print(f"{name:<16} {t.display_name:<34} {t.figures_source}")
    return 0


def show_target(args) -> int:
    from kevolve.hardware import detect_target, device_name, load_ceilings, load_target

    target = load_target(args.target) if args.target else detect_target()
    ceilings = load_ceilings(target, device_name())
    if args.json:
        print(json.dumps({"target": asdict(target), "ceilings": asdict(ceilings)}, indent=2, default=list))
        return 0
    for key, value in asdict(target).items():
        if value not in ("", {}, ()):
            print(f"{key:<28} {value}")
    print(f"{'ceilings':<28} copy {ceilings.copy_gbps:g} GB/s, matmul "
          + ", ".join(f"{k} {v:g} TFLOP/s" for k, v in ceilings.matmul_tflops.items())
          + f" ({ceilings.source}{', ' + ceilings.measured_at if ceilings.measured_at else ''})")
    return 0


def calibrate_cmd(args) -> int:
    from kevolve.hardware import calibrate, detect_target
    from kevolve.hardware.calibrate import cache_path

    target = detect_target()
    ceilings = calibrate(target, quick=args.quick)
    print(f"target {target.name} ({ceilings.device_name})")
    print(f"copy bandwidth  {ceilings.copy_gbps:10.1f} GB/s (read + write)")
    for k, v in ceilings.matmul_tflops.items():
        print(f"matmul {k:<8} {v:10.2f} TFLOP/s")
    print(f"saved to {cache_path(ceilings.device_name)}")
    return 0
