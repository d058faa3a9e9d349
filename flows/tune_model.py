"""The `tune_model` flow: a model's operators to tuned kernels in the library.

    extract the operators (fake tensors, no weights) -> write a spec per recognised group ->
    tune the specs with the most to win (eager time above the fused floor), each a
    `tune_operator` sub-flow -> register each run's best kernel

The sequence is kevolve.models.tuning.tune_model_steps; this flow hands it Prefect tasks for
its steps and the `tune_operator` flow for the search, so each spec's run shows in the UI under
the model's. `tune_model_without_prefect` runs the same sequence with the search's plain loop,
for machines without Prefect.
"""

from __future__ import annotations

import importlib.util
from datetime import datetime
from pathlib import Path
from typing import Any

from kevolve.errors import KevolveError
from kevolve.models.tuning import ModelSteps, TuneOne, tune_model_steps


def _search():
    """flows.tune_operator, or a one-line error where the search is not installed."""
    try:
        from flows import tune_operator
    except ImportError as exc:
        raise KevolveError(f"the search (flows/tune_operator.py) cannot be imported: {exc}; "
                           "`kevolve model ops` still extracts and writes the specs") from None
    return tune_operator


def _setup(config: str, target: str | None, out: str | None, batch: int, seq: int, dtype: str | None,
           overrides: dict[str, Any] | None, attn: str):
    from kevolve.hardware import detect_target, load_target
    from kevolve.models.source import resolve_model
    from kevolve.paths import state_dir

    target_obj = load_target(target) if target else detect_target()
    case = resolve_model(config, batch=batch, seq=seq, dtype=dtype, overrides=overrides or {}, attn=attn)
    stamp = f"{case.name}-{target_obj.name}-{datetime.now():%Y%m%d-%H%M%S}"
    return case, target_obj, Path(out) if out else state_dir() / "models" / stamp


def tune_model_without_prefect(config: str, *, target: str | None = None, out: str | None = None, top: int = 3,
                               batch: int = 1, seq: int = 2048, dtype: str | None = None,
                               overrides: dict[str, Any] | None = None, attn: str = "eager",
                               llm: str | None = None, offline: bool = False,
                               search: dict[str, Any] | None = None, knowledge: bool = True) -> dict[str, Any]:
    """The flow's sequence with no orchestration; the same arguments as `tune_model`."""
    search_module = _search()
    case, target_obj, out_dir = _setup(config, target, out, batch, seq, dtype, overrides, attn)

    def tune_one(spec: str) -> dict[str, Any]:
        return search_module.tune_without_prefect(spec, target=target_obj.name, llm=llm, offline=offline,
                                                  search=search, knowledge=knowledge).to_dict()

    return tune_model_steps(case, target_obj, out_dir, tune_one, top=top)


PREFECT = importlib.util.find_spec("prefect") is not None

if PREFECT:
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from kevolve.models.ops import extract_ops
    from kevolve.models.specgen import write_specs
    from kevolve.models.tuning import measured_eager_s, register_run_outputs

    _TASKS = ModelSteps(
        extract=task(name="extract-model-ops", cache_policy=NO_CACHE)(extract_ops),
        write=task(name="write-specs", cache_policy=NO_CACHE)(write_specs),
        register=task(name="register-kernel", cache_policy=NO_CACHE)(register_run_outputs),
        measure=task(name="measure-eager", cache_policy=NO_CACHE)(measured_eager_s),
    )

    @flow(name="tune-model", persist_result=False)
    def tune_model(config: str, target: str | None = None, out: str | None = None, top: int = 3,
                   batch: int = 1, seq: int = 2048, dtype: str | None = None,
                   overrides: dict[str, Any] | None = None, attn: str = "eager", llm: str | None = None,
                   offline: bool = False, search: dict[str, Any] | None = None,
                   knowledge: bool = True) -> dict[str, Any]:
        """Tune the `top` operators of a model with the most to win (CONFIG as `kevolve model ops`
        takes it; groups already at the roofline are skipped) and put the kernels that pay into
        the library; `search` holds tune_operator's search settings (budget, policy, ...)."""
        from prefect.artifacts import create_markdown_artifact

        from kevolve.models.tuning import report_markdown

        sub_flow = _search().tune_operator
        case, target_obj, out_dir = _setup(config, target, out, batch, seq, dtype, overrides, attn)
        tune_one: TuneOne = lambda spec: sub_flow(spec=spec, target=target_obj.name, llm=llm,  # noqa: E731
                                                  offline=offline, search=search, knowledge=knowledge)
        report = tune_model_steps(case, target_obj, out_dir, tune_one, top=top, steps=_TASKS)
        create_markdown_artifact(markdown=report_markdown(report), key="tune-model",
                                 description=f"kevolve model tune {config}")
        return report
else:  # the engine runs without orchestration too: see tune_model_without_prefect
    tune_model = None
