"""`kevolve llm check [--llm URL]` and `kevolve llm serve MODEL`."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time

from kevolve.errors import KevolveError

INSTALL_HINT = ("vLLM is not installed here. On a machine with a CUDA GPU: pip install 'kernel-evolve[vllm]', "
                "then `kevolve llm serve MODEL`; or point `kevolve tune --llm URL` at any OpenAI-compatible "
                "endpoint, or tune with --offline")


class VLLMMissing(KevolveError):
    exit_code = 3


def register(sub) -> None:
    from kevolve.synth.llm.client import default_llm_url

    p = sub.add_parser("llm", help="the LLM endpoint: check it, or serve a model with vLLM")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    check = verbs.add_parser("check", help="list the endpoint's models and make one tiny chat round trip")
    check.add_argument("--llm", metavar="URL", default=default_llm_url(),
                       help="endpoint (default $KEVOLVE_LLM_URL, else http://127.0.0.1:8000/v1)")
    check.add_argument("--model", help="the model to chat with (default: the first listed)")
    check.set_defaults(func=check_cmd)
    serve = verbs.add_parser("serve", help="start `vllm serve MODEL` (needs vLLM and a GPU)")
    serve.add_argument("model", help="a model name or local path, as vLLM takes it")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("vllm_args", nargs="*", help="more arguments for vllm serve, after --")
    serve.set_defaults(func=serve_cmd)


def check_cmd(args) -> int:
    from kevolve.synth.llm.client import LLMClient

    client = LLMClient(args.llm, args.model, timeout_s=60.0, retries=1, parallel=1)
    print(f"endpoint   {client.base_url}")
    served = client.models()
    print(f"models     {', '.join(served) if served else '(none)'}")
    print(f"model      {client.model}")
    start = time.perf_counter()
    reply = client.chat([{"role": "user", "content": "Reply with the single word: ready"}],
                        temperature=0.0, max_tokens=8)
    seconds = time.perf_counter() - start
    if reply.error:
        raise KevolveError(f"the LLM at {client.base_url} answered, but not usably: {reply.error}")
    print(f"chat       ok in {seconds:.2f} s: {reply.text.strip()[:60]!r}")
    print(f"tokens     {reply.prompt_tokens} prompt + {reply.completion_tokens} completion")
    return 0


def serve_command(model: str, host: str, port: int, extra: list[str]) -> list[str]:
    """The command that starts vLLM's OpenAI-compatible server, or VLLMMissing saying how to get it."""
    if importlib.util.find_spec("vllm") is None:
        raise VLLMMissing(INSTALL_HINT)
    exe = shutil.which("vllm")
    head = [exe] if exe else [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    return [*head, "serve", model, "--host", host, "--port", str(port), *extra]


def serve_cmd(args) -> int:
    command = serve_command(args.model, args.host, args.port, args.vllm_args)
    print(f"starting: {' '.join(command)}", flush=True)
    print(f"then: kevolve tune SPEC --llm http://{args.host}:{args.port}/v1", flush=True)
    os.execv(command[0], command)  # vLLM takes over this process; Ctrl-C stops it
    return 0
