"""From what a user asked for (`kevolve tune SPEC ...`, or the flow's parameters) to a run's
settings: which spec file, which target, which synthesizer, new run or resumed one."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from kevolve.errors import LLMUnavailable
from kevolve.search.components import llm_answers
from kevolve.search.config import ConfigError, SearchConfig, TuneSettings
from kevolve.search.store import SearchStore
from kevolve.synth.llm.client import default_llm_url, unreachable_message


@dataclass(frozen=True)
class Plan:
    settings: TuneSettings | None  # None: resume with the run's stored settings
    run_id: str | None  # None: a new run with a generated id
    overrides: Mapping[str, Any] = field(default_factory=dict)  # search settings changed on resume
    notes: tuple[str, ...] = ()
    spec_name: str = ""  # what the run tunes, and where: for names and keys that watchers see
    target: str = ""


def plan_run(spec: str | None, *, target: str | None = None, llm: str | None = None, llm_model: str | None = None,
             offline: bool = False, run_name: str | None = None, resume: str | None = None,
             search: Mapping[str, Any] | None = None, knowledge: bool = True,
             options: Mapping[str, Any] | None = None) -> Plan:
    """`search` holds SearchConfig fields (policy, budget, ...); `options` other TuneSettings fields.
    Resuming (by --resume, or a --run-name that exists) keeps the run's settings; `search` then
    only overrides limits such as the budget."""
    search = dict(search or {})
    existing = resume or run_name
    if existing:
        with SearchStore() as store:
            found = store.find_run(existing)
            if resume and found is None:
                store.run(resume)  # raises RunNotFound, saying how to list the runs
        if found is not None:
            _interpreter_env(found.target)
            return Plan(None, found.id, search, spec_name=found.spec_name, target=found.target)
    if spec is None:
        raise ConfigError("name a spec to tune (a path, or an example such as `softmax`), or --resume RUN_ID")
    from kevolve.hardware import detect_target, load_target
    from kevolve.hardware.calibrate import calibrate_if_needed
    from kevolve.specs import resolve_spec

    spec_obj = resolve_spec(spec)
    target_obj = load_target(target) if target else detect_target()
    _interpreter_env(target_obj.name, target_obj.interpreter)
    notes: list[str] = []
    if measured := calibrate_if_needed(target_obj):
        notes.append(measured)
    synthesizer, model = "offline", None
    url = llm or default_llm_url()
    if offline:
        notes.append("offline synthesizer (templates + transformations), as asked by --offline")
    elif importlib.util.find_spec("openai") is None:
        if llm:
            raise ConfigError("the LLM synthesizer needs the openai package: pip install 'openai>=1.40' "
                              "(or run with --offline)")
        notes.append("the openai package is not installed: using the offline synthesizer (templates + "
                     "transformations); pip install 'openai>=1.40' to use an LLM")
    else:
        served = llm_answers(url)
        if served:
            synthesizer, model = "llm", llm_model or served[0]
        elif llm:
            raise LLMUnavailable(unreachable_message(url, "no answer to GET /models"))
        else:
            notes.append(f"no LLM answering at {url}: using the offline synthesizer (templates + "
                         f"transformations); start an LLM with `kevolve llm serve MODEL`")
    settings = TuneSettings(spec=str(spec_obj.path), target=target_obj.name,
                            search=SearchConfig.from_dict(search), synthesizer=synthesizer, llm_url=url,
                            llm_model=model, knowledge=knowledge, **dict(options or {}))
    return Plan(settings, run_name, {}, tuple(notes), spec_name=spec_obj.name, target=target_obj.name)


def request_label(spec: str | None, target: str | None = None, resume: str | None = None) -> str:
    """`softmax on h100-sxm` for a request, before it is planned (the spec file's name stands
    for the operator)."""
    if spec is None:
        return f"resume {resume}" if resume else "tune"
    return f"{Path(spec).stem} on {target_name(target)}"


def target_name(target: str | None) -> str:
    """The target asked for, else this machine's."""
    if target is not None:
        return target
    from kevolve.hardware import detect_target

    return detect_target().name


def _interpreter_env(target_name: str, interpreter: bool | None = None) -> None:
    """Kernels for the interpreter target run under TRITON_INTERPRET=1, in every worker."""
    if interpreter is None:
        from kevolve.hardware import load_target

        interpreter = load_target(target_name).interpreter
    if interpreter:
        os.environ.setdefault("TRITON_INTERPRET", "1")
