"""The `tune_suite` flow: many specs, one `tune_operator` sub-flow each (the nightly job).

A spec whose search fails is reported and the suite goes on; the suite's table (one row per
spec: status, evaluations, best speedup, run id) is an artifact under `tune-suite-TARGET`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.tune_operator import tune_operator
from kevolve.hardware.calibrate import slug
from kevolve.search.launch import target_name


def example_specs() -> list[str]:
    from kevolve.paths import specs_dir
    from kevolve.specs import discover

    return [str(p) for p in discover([specs_dir()])]


def _run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"suite of {len(p.get('specs') or example_specs())} specs on {target_name(p.get('target'))}"


@flow(name="tune-suite", flow_run_name=_run_name, persist_result=False)
def tune_suite(specs: list[str] | None = None, target: str | None = None, llm: str | None = None,
               offline: bool = False, search: dict[str, Any] | None = None,
               knowledge: bool = True) -> list[dict[str, Any]]:
    """Tune each spec (paths or example names; default: every example spec) in turn."""
    rows = []
    for spec in specs or example_specs():
        state = tune_operator(spec=spec, target=target, llm=llm, offline=offline, search=search,
                              knowledge=knowledge, return_state=True)
        row: dict[str, Any] = {"spec": spec, "status": state.type.value.lower()}
        if state.is_completed():
            s = state.result()
            row.update(operator=s["spec"], target=s["target"], evaluations=s["evaluations"], correct=s["correct"],
                       best_speedup=s["best_speedup"], run_id=s["run_id"], ended=s["reason"])
        else:
            row["error"] = (state.message or "")[:300]
        rows.append(row)
    where = target_name(target)
    create_table_artifact(table=rows, key=f"tune-suite-{slug(where)}",
                          description=f"the nightly suite on {where}: one row per spec")
    return rows
