"""The parts a run is built from, chosen by its settings: the synthesizer (LLM or offline), the
evaluator (the harness), and the knowledge base where one is available."""

from __future__ import annotations

from typing import Any

from kevolve.candidate import Candidate, Origin
from kevolve.errors import KevolveError
from kevolve.hardware.target import HardwareTarget
from kevolve.search.config import TuneSettings
from kevolve.specs.model import OperatorSpec


def make_synthesizer(settings: TuneSettings) -> Any:
    if settings.synthesizer == "offline":
        from kevolve.synth.offline import OfflineSynthesizer

        return OfflineSynthesizer(rng_seed=settings.search.rng_seed)
    from kevolve.synth.llm import LLMClient, LLMSynthesizer

    client = LLMClient(settings.llm_url, settings.llm_model, timeout_s=settings.llm_timeout_s,
                       retries=settings.llm_retries, parallel=settings.llm_parallel)
    return LLMSynthesizer(client)


def make_evaluator(spec: OperatorSpec, target: HardwareTarget, settings: TuneSettings,
                   timing_guard: Any = None) -> Any:
    """The harness, with the recipe that builds the same one in another process or host."""
    from kevolve.evaluate.shared import EvaluatorRecipe

    # Under the interpreter there is no speed to compare with: no baselines to time.
    recipe = EvaluatorRecipe(str(spec.path), target.name, workers=settings.eval_workers,
                             timeout_s=settings.eval_timeout_s, baselines=not target.interpreter,
                             timing_guard=timing_guard)
    evaluator = recipe.build()
    evaluator.recipe = recipe
    return evaluator


def llm_answers(url: str, timeout_s: float = 3.0) -> list[str] | None:
    """The models an endpoint serves, or None when nothing answers there (no retries: a probe)."""
    try:
        from kevolve.synth.llm import LLMClient

        return LLMClient(url, timeout_s=timeout_s, retries=0).models()
    except KevolveError:
        return None


def open_knowledge(settings: TuneSettings) -> tuple[Any | None, str]:
    """The knowledge base and a note for the run summary when there is none."""
    if not settings.knowledge:
        return None, "knowledge base off: prompts carry no retrieved notes or skills"
    try:
        from kevolve.knowledge.base import KnowledgeBase
    except ImportError:
        return None, "knowledge base not installed in this checkout: no retrieval, no skills"
    try:
        return KnowledgeBase.open(), ""
    except KevolveError as exc:
        return None, f"knowledge base unavailable ({exc.message}): no retrieval, no skills"


def prior_kernel(context: Any) -> Candidate | None:
    """The best kernel of a solved request close to this one, as a seed: its code for the same
    operator, or for another of its family the offline template re-rendered with its knobs."""
    kb = context.knowledge
    if kb is None:
        return None
    prior = kb.best_prior_kernel(context.spec, context.target, context.dims)
    if prior is None:
        return None
    code = prior.code
    if prior.operator != context.spec.name:
        try:
            from kevolve.synth.offline import render

            code = render(context.spec, prior.family, prior.config)
        except (ImportError, KevolveError, KeyError, ValueError):
            return None
    origin = Origin(synthesizer="library", family=prior.family or None, config=dict(prior.config),
                    note=f"best prior kernel ({prior.relation}, {prior.operator} at "
                         f"{','.join(f'{k}={v}' for k, v in prior.dims.items())}, {prior.speedup:.2f}x)")
    return Candidate(code=code, spec_name=context.spec.name, origin=origin)
