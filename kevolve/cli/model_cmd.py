"""`kevolve model ops CONFIG`: a model's operators, grouped into tuning specs and ranked."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("model", help="extract a model's operators into ranked tuning specs")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ops = verbs.add_parser(
        "ops", help="trace a model on fake tensors, group its operators into specs, rank by time",
        description="CONFIG is a transformers config.json (or a folder holding one), a config class "
                    "such as LlamaConfig, or FILE.py:FUNCTION returning (module, args[, kwargs]). "
                    "No weights are loaded: the model runs on fake tensors.")
    _model_arguments(ops)
    ops.add_argument("--backward", action="store_true", help="also trace the backward pass")
    ops.add_argument("--target", help="hardware target for the time estimate (default: detected)")
    ops.add_argument("--out", help="write one spec per recognised group here, plus ops.json")
    ops.add_argument("--top", type=int, help="write specs only for the TOP recognised groups with the most to win "
                     "(estimated time above the fused floor; none already at the roofline)")
    ops.add_argument("--rows", type=int, default=30, help="rows of the ranking to print (default 30)")
    ops.add_argument("--json", action="store_true", help="print the whole ranking as JSON")
    ops.set_defaults(func=ops_cmd)

    tune = verbs.add_parser(
        "tune", help="extract a model's operators, tune the top ones, register the kernels that pay",
        description="Runs the tune_model flow: extract -> write specs -> tune the TOP specs with the most "
                    "to win, estimated time above the fused floor (a tune_operator search each; groups at the "
                    "roofline already are skipped) -> register each run's best kernel in the library.")
    _model_arguments(tune)
    tune.add_argument("--top", type=int, default=3, help="how many specs to tune (default 3)")
    tune.add_argument("--budget", type=int, help="evaluations per spec")
    tune.add_argument("--policy", help="search policy: mcts, evolutionary, beam, greedy")
    tune.add_argument("--target", help="hardware target (default: detected)")
    tune.add_argument("--out", help="folder for the specs and the report (default: under $KEVOLVE_HOME/models)")
    tune.add_argument("--llm", help="OpenAI-compatible endpoint (default: vLLM's, else the offline synthesizer)")
    tune.add_argument("--offline", action="store_true", help="use the offline synthesizer only")
    tune.add_argument("--no-knowledge", action="store_true", help="do not retrieve from the knowledge base")
    tune.add_argument("--no-prefect", action="store_true", help="run the same steps without Prefect")
    tune.set_defaults(func=tune_cmd)

    register = verbs.add_parser(
        "register", help="announce a new model architecture: the tune-on-new-architecture deployment tunes it",
        description="Emits a kevolve.model.registered event to the Prefect server at PREFECT_API_URL; "
                    "the tune-on-new-architecture deployment (prefect.yaml) starts a tune_model run "
                    "with CONFIG, TARGET and TOP from the event.")
    register.add_argument("config", help="as `kevolve model ops` takes it; a file path is sent absolute")
    register.add_argument("--target", help="hardware target (default: the GPU host's own)")
    register.add_argument("--top", type=int, default=3, help="how many specs to tune (default 3)")
    register.set_defaults(func=register_cmd)


def _model_arguments(p) -> None:
    p.add_argument("config")
    p.add_argument("--batch", type=int, default=1, help="batch size of the token ids (default 1)")
    p.add_argument("--seq", type=int, default=2048, help="sequence length (default 2048)")
    p.add_argument("--dtype", help="bf16, fp16 or fp32 (default: the config's, else bf16)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set num_hidden_layers=2 (repeatable)")
    p.add_argument("--attn", default="eager", choices=("eager", "sdpa"),
                   help="attention implementation: eager shows its matmuls and softmax (default)")


def ops_cmd(args) -> int:
    from pathlib import Path

    from kevolve.hardware import detect_target, device_name, load_target
    from kevolve.models.ops import extract_ops
    from kevolve.models.source import parse_overrides, resolve_model
    from kevolve.models.specgen import extraction_summary, write_specs

    target = load_target(args.target) if args.target else detect_target()
    case = resolve_model(args.config, batch=args.batch, seq=args.seq, dtype=args.dtype,
                         overrides=parse_overrides(args.set), attn=args.attn)
    extraction = extract_ops(case, target, backward=args.backward,
                             device=None if args.target else device_name())
    written = write_specs(extraction, Path(args.out), top=args.top) if args.out else []
    if args.json:
        print(json.dumps(extraction_summary(extraction, written), indent=2))
        return 2 if any(not w.ok for w in written) else 0

    print(f"{extraction.model}: {extraction.calls} ATen calls"
          f"{' (forward and backward)' if extraction.backward else ''}; estimated "
          f"{extraction.total_s * 1e3:.4g} ms on {extraction.target} ({extraction.ceilings_source} ceilings)")
    print(f"{'rank':>4} {'share':>6} {'est ms':>9} {'gain ms':>9} {'calls':>5}  operator")
    for i, g in enumerate(extraction.groups[:args.rows]):
        note = g.note or ("at the roofline: nothing to win" if g.at_roofline() else "")
        note = f"   [{note}]" if note else ""
        print(f"{i + 1:>4} {g.share:>6.1%} {g.est_s * 1e3:>9.3g} {g.gain_s() * 1e3:>9.3g} {g.count:>5}  {g.name}{note}")
    hidden = len(extraction.groups) - args.rows
    if hidden > 0:
        print(f"     ... {hidden} more groups (--rows, or --json for all)")
    if args.out:
        bad = [w for w in written if not w.ok]
        for w in bad:
            print(f"kevolve: error: {w.error}", file=sys.stderr)
        print(f"wrote {len(written) - len(bad)} specs to {args.out} (ranking in {Path(args.out) / 'ops.json'})")
        return 2 if bad else 0
    return 0


def tune_cmd(args) -> int:
    from flows.tune_model import PREFECT, tune_model, tune_model_without_prefect
    from kevolve.errors import KevolveError
    from kevolve.models.source import parse_overrides
    from kevolve.models.tuning import report_markdown

    search = {k: v for k, v in (("budget", args.budget), ("policy", args.policy)) if v is not None}
    options = dict(target=args.target, out=args.out, top=args.top, batch=args.batch, seq=args.seq,
                   dtype=args.dtype, overrides=parse_overrides(args.set), attn=args.attn, llm=args.llm,
                   offline=args.offline, search=search, knowledge=not args.no_knowledge)
    if args.no_prefect:
        report = tune_model_without_prefect(args.config, **options)
    elif not PREFECT:
        raise KevolveError("prefect is not installed; run with --no-prefect for the same steps without it")
    else:
        report = tune_model(args.config, **options)
    print(report_markdown(report))
    print(f"specs and report in {report['specs_dir']}; `kevolve library list` shows the kernels")
    return 0 if any(row["library"] for row in report["tuned"]) else 1


MODEL_REGISTERED = "kevolve.model.registered"


def register_cmd(args) -> int:
    import importlib.util
    import re
    from pathlib import Path

    from kevolve.errors import KevolveError

    if importlib.util.find_spec("prefect") is None:
        raise KevolveError("`kevolve model register` tells a Prefect server: pip install 'prefect==3.8.8'")
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise KevolveError("no Prefect server to tell: set PREFECT_API_URL (for example "
                           "http://127.0.0.1:4200/api; `make ui` starts a server there)")
    # The event is sent in the background: a server that is down would lose it after we said it went.
    with get_client(sync_client=True) as client:
        unreachable = client.api_healthcheck()
    if unreachable is not None:
        raise KevolveError(f"no Prefect server answers at PREFECT_API_URL={PREFECT_API_URL.value()} ({unreachable}); "
                           "start one (`make ui`) or point PREFECT_API_URL at yours")
    config = str(Path(args.config).resolve()) if Path(args.config).exists() else args.config
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(config.split(":")[0]).stem or config)
    event = emit_event(MODEL_REGISTERED, resource={"prefect.resource.id": f"kevolve.model.{name}",
                                                   "prefect.resource.name": name},
                       payload={"config": config, "target": args.target, "top": args.top})
    EventsWorker.drain_all(timeout=30)
    if event is None:
        raise KevolveError(f"Prefect did not send the event (events are off in this Prefect profile); "
                           f"check `prefect config view` at {PREFECT_API_URL.value()}")
    print(f"{MODEL_REGISTERED}: {config} (event {event.id}); tune-on-new-architecture starts a tune_model run")
    return 0
