"""Write a spec (YAML + reference module) for each recognised operator group.

The tuned shape is the model's; the check shapes are derived (odd sizes, not multiples of any
block, and a small batch so that decode-sized calls stay inside the validated range); the
interpreter shapes are small enough for Triton's interpreter. Every written spec is checked
with `validate_spec` before it is reported as written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import yaml

from kevolve.errors import SpecError
from kevolve.models.ops import Extraction, OpGroup, semantics_key
from kevolve.models.references import PATTERNS, reference_source


@dataclass(frozen=True)
class WrittenSpec:
    group: OpGroup
    path: Path
    error: str = ""  # the validation failure, if any (the files are kept for inspection)

    @property
    def ok(self) -> bool:
        return not self.error


def check_dims(pattern: str, tune: Mapping[str, int]) -> list[dict[str, int]]:
    specs = PATTERNS[pattern]
    odd = {}
    for k, v in tune.items():
        n = v - v // 7 if v >= 8 else v
        odd[k] = max(2, n - n % 2) if k in specs.even else (n | 1 if v >= 8 else n)
    small_batch = {k: (3 if k in specs.batch_dims and v > 3 else v) for k, v in tune.items()}
    batch = next((tune[k] for k in specs.batch_dims if k in tune), 0)
    if batch > 3:  # a jagged total shrinks with the batch: bags keep the model's lengths
        small_batch.update({k: max(1, -(-tune[k] * 3 // batch)) for k in specs.ragged if k in tune})
    out = []
    for dims in (odd, small_batch):
        if dims != dict(tune) and dims not in out:
            out.append(dims)
    return out


def interpreter_dims(pattern: str, tune: Mapping[str, int]) -> list[dict[str, int]]:
    specs = PATTERNS[pattern]
    out: list[dict[str, int]] = []
    for which in (0, 1):
        dims = {}
        for k, v in tune.items():
            cap = specs.small.get(k, (7, 5))[which]
            n = min(v, cap)
            dims[k] = max(2, n - n % 2) if k in specs.even and v >= 2 else n
        if dims not in out:
            out.append(dims)
    return out


def spec_document(group: OpGroup, model: str) -> tuple[dict, str]:
    """The spec's YAML document and its reference module's source."""
    m = group.match
    specs = PATTERNS[m.pattern]
    variant = m.variant_dict
    tune = dict(group.dims)
    names = tuple(i.name for i in m.inputs)
    where = f" in {', '.join(group.modules)}" if group.modules else ""
    doc = {
        "name": group.name,
        "family": specs.family,
        "description": f"{specs.describe(variant)}, {m.inputs[0].dtype}; from {model}{where} "
                       f"({group.count} call{'s' if group.count != 1 else ''} per pass, "
                       f"{group.share:.1%} of the estimated time).",
        "reference": f"ref/{group.name}.py:{specs.function}",
        "shapes": {"tune": dict(tune), "check": check_dims(m.pattern, tune),
                   "interpreter": interpreter_dims(m.pattern, tune)},
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype,
                    "dist": specs.dists(i.name, tune, variant)} for i in m.inputs],
        "params": specs.params(variant),
        "tags": ["model-op", f"pattern={m.pattern}", f"semantics={semantics_key(m)}", f"model={model}"],
    }
    tolerance = specs.tolerance(variant, m.inputs[0].dtype)
    if tolerance:
        doc["tolerance"] = tolerance
    if not doc["shapes"]["check"]:
        del doc["shapes"]["check"]
    return doc, reference_source(m.pattern, variant, names)


def write_specs(extraction: Extraction, out_dir: Path, *, top: int | None = None,
                validate: bool = True) -> list[WrittenSpec]:
    """One spec per recognised group, plus ops.json; with `top`, only the `top` groups with the
    most to win (estimated time above the fused floor), none already at the roofline."""
    from kevolve.specs import load_spec
    from kevolve.specs.validate import validate_spec

    out_dir = Path(out_dir)
    (out_dir / "ref").mkdir(parents=True, exist_ok=True)
    written: list[WrittenSpec] = []
    groups = extraction.with_specs() if top is None else \
        [g for g in extraction.by_gain() if not g.at_roofline()][:top]
    for group in groups:
        doc, source = spec_document(group, extraction.model)
        path = out_dir / f"{group.name}.yaml"
        (out_dir / "ref" / f"{group.name}.py").write_text(source)
        path.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100))
        error = ""
        if validate:
            try:
                validate_spec(load_spec(path))
            except SpecError as exc:
                error = exc.message
        written.append(WrittenSpec(group=group, path=path, error=error))
    (out_dir / "ops.json").write_text(json.dumps(extraction_summary(extraction, written), indent=2))
    return written


def extraction_summary(extraction: Extraction, written: list[WrittenSpec] = ()) -> dict:
    files = {w.group.name: str(w.path) for w in written if w.ok}
    return {
        "model": extraction.model,
        "target": extraction.target,
        "ceilings": extraction.ceilings_source,
        "backward": extraction.backward,
        "aten_calls": extraction.calls,
        "estimated_total_ms": extraction.total_s * 1e3,
        "groups": [{
            "rank": i + 1, "name": g.name, "pattern": g.pattern, "count": g.count, "dtype": g.dtype,
            "shape": g.shape, "ops": list(g.ops), "flops": g.flops, "bytes": g.bytes,
            "estimated_ms": g.est_s * 1e3, "fused_floor_ms": g.fused_floor_s * 1e3,
            "gain_ms": g.gain_s() * 1e3, "at_roofline": bool(g.at_roofline()), "share": g.share,
            "modules": list(g.modules), "phases": list(g.phases),
            "spec": files.get(g.name) or (None if g.has_spec else g.note),
        } for i, g in enumerate(extraction.groups)],
    }
