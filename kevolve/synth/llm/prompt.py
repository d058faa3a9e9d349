"""The prompt, assembled from a synthesis request and the templates shipped in templates/.

A system message holds the rules every candidate must keep; the user message holds the
operator (spec and reference code), the hardware's limits and measured ceilings, retrieved
notes and skills, then by memory mode: the parent with its result and diagnosis and its line of
ancestors (inherit), or its other children (siblings), or the kernel to get away from (restart).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources
from string import Template

from kevolve.evaluate.result import Diagnosis
from kevolve.specs.model import OperatorSpec, Tolerance, dims_key
from kevolve.synth.base import Attempt, SynthesisRequest

MAX_DOC_CHARS = 1500  # per retrieved note, so the prompt stays within a small model's context
MAX_ERROR_CHARS = 1200


@lru_cache(maxsize=None)
def template(name: str) -> Template:
    return Template(resources.files(__package__).joinpath("templates", f"{name}.md").read_text())


def render(template_name: str, /, **fields: object) -> str:
    return template(template_name).substitute({k: str(v) for k, v in fields.items()}).strip() + "\n"


def build_messages(request: SynthesisRequest, variant: int = 0) -> list[dict[str, str]]:
    """Chat messages for one candidate; `variant` numbers the requests for the same expansion."""
    spec = request.spec
    sections = [operator_section(spec), hardware_section(request)]
    if request.knowledge:
        sections.append(render("knowledge", docs="\n".join(
            f"### {d.title} ({d.source})\n{d.text.strip()[:MAX_DOC_CHARS]}\n" for d in request.knowledge)))
    if request.skills:
        sections.append(render("skills", skills="\n".join(
            f"- {s.change} (because: {s.motivation}); {s.before_ms:.4g} ms -> {s.after_ms:.4g} ms, "
            f"{s.gain:.2f}x, worked {s.successes} of {s.successes + s.failures} times" for s in request.skills)))
    variant_note = (f"This is request {variant + 1} of {request.n} for the same task: make it differ from "
                    f"the obvious first answer." if request.n > 1 else "")
    parent = request.parent
    if parent is None:
        sections.append(render("seed", variant=variant_note))
    elif request.memory_mode == "restart":
        sections.append(render("restart", summary=result_line(parent), code=parent.code.strip()))
        sections.append(render("seed", variant=variant_note))
    else:
        sections.append(parent_section(parent))
        if request.memory_mode == "inherit" and request.history:
            sections.append(render("inherit", lines="\n".join(attempt_line(a) for a in request.history)))
        if request.memory_mode == "siblings" and request.siblings:
            sections.append(render("siblings", lines="\n".join(attempt_line(a) for a in request.siblings)))
        sections.append(render("child", variant=variant_note))
    return [
        {"role": "system", "content": render("system", entry_rule=entry_rule(spec),
                                             tolerance=tolerance_text(spec))},
        {"role": "user", "content": "\n".join(sections)},
    ]


def prompt_hash(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


# Sections -------------------------------------------------------------------------------------
def operator_section(spec: OperatorSpec) -> str:
    if spec.format == "kernelbench":
        inputs = "Inputs: as `get_inputs()` in the reference builds them; `ModelNew(*get_init_inputs())`."
    else:
        inputs = "Inputs, positional, in this order:\n" + "\n".join(
            f"- `{i.name}`: shape [{', '.join(map(str, i.shape))}], {i.dtype}, values {i.dist.kind}"
            f"({', '.join(f'{k}={v}' for k, v in i.dist.params.items())})" for i in spec.inputs)
        if spec.params:
            inputs += "\nKeyword arguments: " + ", ".join(f"{k}={v!r}" for k, v in spec.params.items())
    others = [dims_key(d) for d in (*spec.check_dims, *spec.interpreter_dims)]
    return render("operator", name=spec.name, description=spec.description or "",
                  reference=spec.reference_source().strip(), inputs=inputs, tune_dims=dims_key(spec.tune_dims),
                  other_dims="; ".join(others) or "no other shapes")


def hardware_section(request: SynthesisRequest) -> str:
    t, c = request.target, request.ceilings
    return render(
        "hardware", display_name=t.display_name, sm_count=t.sm_count, warp_size=t.warp_size_threads,
        max_threads_per_sm=t.max_threads_per_sm, registers_per_sm=t.registers_per_sm,
        max_registers_per_thread=t.max_registers_per_thread, shared_per_sm=f"{t.shared_memory_per_sm_kib:g}",
        shared_per_block=f"{t.shared_memory_per_block_kib:g}", l2_mib=f"{t.l2_cache_mib:g}",
        dram_gbps=f"{t.dram_bandwidth_gbps:g}", copy_gbps=f"{c.copy_gbps:g}", ceilings_source=c.source,
        peaks=", ".join(f"{k} {v:g}" for k, v in t.peak_tflops.items()),
        matmul=", ".join(f"{k} {v:g} TFLOP/s" for k, v in c.matmul_tflops.items()) or "not measured",
        interpreter=("Kernels run under Triton's interpreter on the CPU here: correctness counts, speed "
                     "cannot be measured." if t.interpreter else ""))


def parent_section(parent: Attempt) -> str:
    return render("parent", code=parent.code.strip(), made_by=made_by(parent), result=result_line(parent),
                  diagnosis=diagnosis_text(parent.diagnosis, parent.error))


def entry_rule(spec: OperatorSpec) -> str:
    if spec.format == "kernelbench":
        return ("`class ModelNew(torch.nn.Module)` whose `__init__` takes the same arguments as the "
                "reference's `Model` and creates the same parameters in the same order, and whose `forward` "
                "takes the same inputs and launches your kernels (never a torch layer).")
    args = ", ".join(i.name for i in spec.inputs)
    kwargs = "".join(f", {k}={v!r}" for k, v in spec.params.items())
    return f"`def {spec.entry_point}({args}{kwargs})`, the reference's signature, returning what it returns."


def tolerance_text(spec: OperatorSpec) -> str:
    if spec.tolerance is not None:
        tol = spec.tolerance
        return f"atol {tol.atol:g}, rtol {tol.rtol:g}, relative L2 error at most {tol.max_rel_l2:g}"
    return ("by the output's dtype: " + "; ".join(
        f"{d} atol {t.atol:g} rtol {t.rtol:g}" for d in ("float32", "bfloat16", "float16")
        for t in [Tolerance.for_dtype(d)]) + "; integers exact")


def made_by(a: Attempt) -> str:
    o = a.origin
    parts = [o.synthesizer]
    if o.family:
        parts.append(f"template {o.family}")
    if o.transforms:
        parts.append("after " + ", ".join(map(str, o.transforms)))
    if o.note:
        parts.append(f"- {o.note}")
    return " ".join(parts)


def result_line(a: Attempt) -> str:
    if a.outcome != "correct":
        return f"{a.outcome.upper().replace('_', ' ')}"
    if a.speedup is not None:
        return f"correct, {a.time_ms:.4g} ms, {a.speedup:.2f}x the baseline"
    return "correct" + (f" (interpreter, {a.time_ms:.3g} ms wall clock: not a kernel speed)" if a.time_ms else "")


def diagnosis_text(d: Diagnosis | None, error: str) -> str:
    lines = []
    if error:
        lines.append(f"What went wrong:\n```\n{error.strip()[:MAX_ERROR_CHARS]}\n```")
    if d is not None:
        lines.append(f"Diagnosis: {d.bound}-bound. {d.summary}")
        if d.fraction_of_floor is not None:
            lines.append(f"It runs at {d.fraction_of_floor:.0%} of the roofline floor ({d.floor_ms:.4g} ms).")
        for k in d.kernels:
            lines.append(f"Kernel `{k.name}`: {k.num_regs} registers, {k.num_spills} spills, "
                         f"{k.shared_bytes} B shared memory, {k.num_warps} warps, {k.num_stages} stages"
                         + (f", occupancy limited by {k.occupancy_limiter}" if k.occupancy_limiter else ""))
        if d.suggestions:
            lines.append("Worth trying: " + "; ".join(d.suggestions))
    return "\n".join(lines)


def attempt_line(a: Attempt) -> str:
    what = a.origin.note or made_by(a)
    line = f"- {what}: {result_line(a)}"
    if a.error:
        line += f"; {a.error.strip().splitlines()[0][:200]}"
    elif a.diagnosis is not None:
        line += f"; {a.diagnosis.bound}-bound"
    return line
