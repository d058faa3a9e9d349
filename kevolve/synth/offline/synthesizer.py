"""The offline synthesizer: seeds from the reference's template family, children by
transformations chosen from the parent's diagnosis, the skills learnt so far and the memory
mode. No model is involved; every choice is data a later run can replay."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Iterable, Mapping

from kevolve.candidate import Candidate, Origin, Transform
from kevolve.synth.base import Attempt, SynthesisError, SynthesisRequest
from kevolve.synth.offline.families import FamilyMatch, match_family, template_for
from kevolve.synth.offline.template import Template
from kevolve.synth.offline.transforms import apply, ranked_moves

CORRECT = "correct"


def config_key(config: Mapping[str, Any]) -> str:
    return json.dumps(dict(config), sort_keys=True, default=str)


def _summary(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items() if k != "sm_count")


class OfflineSynthesizer:
    """Implements kevolve.synth.base.Synthesizer with template families and transformations."""

    name = "offline"

    def __init__(self, rng_seed: int = 0):
        self.rng_seed = rng_seed

    # The contract ----------------------------------------------------------------------------
    def propose(self, request: SynthesisRequest) -> list[Candidate]:
        found = match_family(request.spec)
        template = template_for(found.family)
        parent = request.parent
        if parent is None:
            return self._seeds(request, found, template)
        origin = parent.origin
        if origin.synthesizer != self.name or origin.family != found.family or not origin.config:
            # Not one of ours (an LLM's kernel, say): no knobs to turn, so start from our seeds.
            seeds = self._seeds(request, found, template, avoid={config_key(origin.config)} if origin.config else set())
            return [_renote(c, f"restart from a {found.family} seed: the parent has no offline config; "
                               + c.origin.note) for c in seeds]
        rng = random.Random(self._seed_for(request))
        mode = request.memory_mode
        if mode == "restart":
            plans = self._restart(request, found, template, rng)
        else:
            plans = self._moves(request, found, template, rng)
        return self._children(request, found, template, plans, rng)

    # Seeds -----------------------------------------------------------------------------------
    def _seeds(self, request: SynthesisRequest, found: FamilyMatch, template: Template,
               avoid: set[str] = frozenset()) -> list[Candidate]:
        configs, seen = [], set(avoid)
        for config in template.seeds(found.match, request.spec, request.target):
            why = template.check(config, found.match, request.target, request.spec)
            if why is None and config_key(config) not in seen:
                seen.add(config_key(config))
                configs.append(config)
        if not configs:
            raise SynthesisError(f"{request.spec.name}: no {found.family} seed config fits {request.target.name}")
        # More asked for than the seeds: their neighbours, in the template's knob order.
        frontier = list(configs)
        while len(configs) < request.n and frontier:
            base = frontier.pop(0)
            for t, _ in ranked_moves(template, base, None, request.target):
                moved = apply(base, [t])
                if config_key(moved) not in seen and template.check(moved, found.match, request.target, request.spec) is None:
                    seen.add(config_key(moved))
                    configs.append(moved)
                    frontier.append(moved)
                if len(configs) >= request.n:
                    break
        out = []
        for i, config in enumerate(configs[:max(1, request.n)]):
            note = f"seed {i + 1} of the {found.family} family ({found.reason}): {_summary(config)}"
            out.append(self._candidate(request, found, template, config, (), note))
        return out

    # Children --------------------------------------------------------------------------------
    def _moves(self, request: SynthesisRequest, found: FamilyMatch, template: Template,
               rng: random.Random) -> list[tuple[tuple[Transform, ...], str]]:
        parent = request.parent
        config = dict(parent.origin.config)
        plans: list[tuple[tuple[Transform, ...], str]] = []
        if request.memory_mode == "siblings":
            best = _best(request.siblings)
            if best is not None and best.origin.family == found.family:
                diff = tuple(Transform(k, v) for k, v in best.origin.config.items()
                             if config.get(k) != v and template.knob(k) is not None)
                for t in diff:  # one of the best sibling's knobs at a time (new when it changed several)
                    plans.append(((t,), f"toward the best sibling ({_time(best)}): {t.name} {config.get(t.name)} "
                                        f"-> {t.value}"))
                # the best sibling's change, and one step further from there
                there = apply(config, diff)
                for t, why in ranked_moves(template, there, parent.diagnosis, request.target)[:8]:
                    if t.name not in {d.name for d in diff}:
                        plans.append((diff + (t,), f"the best sibling's {', '.join(map(str, diff))} "
                                                   f"({_time(best)}), then {t}: {why}"))
        for skill in sorted(request.skills, key=lambda s: -s.gain):
            if skill.family != found.family or skill.target not in ("", request.target.name):
                continue
            if all(template.knob(t.name) is not None and t.name in config for t in skill.transforms):
                if apply(config, skill.transforms) != config:
                    plans.append((tuple(skill.transforms), f"skill {skill.id} ({skill.gain:.2f}x before): {skill.change}"))
        ranked = ranked_moves(template, config, parent.diagnosis, request.target)
        # Keep the diagnosis' order, but shuffle moves the diagnosis says nothing about.
        led = [r for r in ranked if not r[1].startswith("explore")]
        rest = [r for r in ranked if r[1].startswith("explore")]
        rng.shuffle(rest)
        for t, why in led + rest:
            plans.append(((t,), f"{t.name} {config.get(t.name)} -> {t.value}: {why}"))
        # Pairs of the leading moves, for when single steps are exhausted.
        singles = [p for p in plans if len(p[0]) == 1][:6]
        for i, (a, why_a) in enumerate(singles):
            for b, _ in singles[i + 1:]:
                if a[0].name != b[0].name:
                    plans.append((a + b, f"{why_a}; and {b[0]}"))
        return plans

    def _restart(self, request: SynthesisRequest, found: FamilyMatch, template: Template,
                 rng: random.Random) -> list[tuple[tuple[Transform, ...], str]]:
        """Configs away from the parent: the template's seeds, then random jumps of two or three
        knobs at once. Not of every knob: such draws land mostly on poor corners of the space
        (a tiny block on a persistent grid with one warp), and each costs a full evaluation."""
        parent = dict(request.parent.origin.config)
        plans = []
        for config in template.seeds(found.match, request.spec, request.target):
            changed = tuple(Transform(k, config[k]) for k in parent if config.get(k) != parent[k])
            if changed:
                plans.append((changed, f"restart from a seed ({len(changed)} knobs changed): " + _summary(config)))
        inert = template.inert(parent)
        free = [k for k in template.knobs if k.name in parent and k.name not in inert and len(k.values) > 1]
        for _ in range(48):
            draw = dict(parent)
            for knob in rng.sample(free, min(len(free), rng.choice((2, 3)))):
                draw[knob.name] = rng.choice([v for v in knob.values if v != parent[knob.name]])
            changed = tuple(Transform(k, draw[k]) for k in parent if draw[k] != parent[k])
            plans.append((changed, f"restart: a jump of {len(changed)} knobs from the parent: "
                                   + ", ".join(map(str, changed))))
        return plans

    def _children(self, request: SynthesisRequest, found: FamilyMatch, template: Template,
                  plans: list[tuple[tuple[Transform, ...], str]], rng: random.Random) -> list[Candidate]:
        parent_config = dict(request.parent.origin.config)
        # whatever the mode, a config already tried (on the path here or beside it) is not new
        avoid = {config_key(parent_config)}
        avoid |= {config_key(a.origin.config) for a in (*request.history, *request.siblings) if a.origin.config}
        by_skill = {tuple(skill.transforms): skill.id for skill in request.skills}
        out: list[Candidate] = []
        for transforms, note in plans:
            config = apply(parent_config, transforms)
            key = config_key(config)
            if key in avoid or template.check(config, found.match, request.target, request.spec) is not None:
                continue
            avoid.add(key)
            out.append(self._candidate(request, found, template, config, transforms, note,
                                       skill_id=by_skill.get(tuple(transforms))))
            if len(out) >= max(1, request.n):
                break
        if not out:
            raise SynthesisError(f"{request.spec.name}: every transformation of this {found.family} config was "
                                 "tried already; restart from a fresh seed (memory mode restart)")
        return out

    # Helpers ---------------------------------------------------------------------------------
    def _candidate(self, request: SynthesisRequest, found: FamilyMatch, template: Template,
                   config: Mapping[str, Any], transforms: tuple[Transform, ...], note: str,
                   skill_id: str | None = None) -> Candidate:
        code = template.render(request.spec, found.match, config)
        origin = Origin(synthesizer=self.name, family=found.family, config=dict(config), transforms=tuple(transforms),
                        memory_mode=request.memory_mode if request.parent is not None else None, note=note,
                        skill_id=skill_id)
        return Candidate(code=code, spec_name=request.spec.name, origin=origin)

    def _seed_for(self, request: SynthesisRequest) -> int:
        """Reproducible randomness: the same request gives the same children, whatever ran before."""
        text = "|".join([str(self.rng_seed), request.spec.name, request.memory_mode,
                         config_key(request.parent.origin.config), str(request.n)])
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _best(attempts: Iterable[Attempt]) -> Attempt | None:
    timed = [a for a in attempts if a.outcome == CORRECT and (a.time_ms is not None or a.speedup is not None)]
    if not timed:
        return None
    return min(timed, key=lambda a: a.time_ms if a.time_ms is not None else 1.0 / a.speedup)


def _time(a: Attempt) -> str:
    return f"{a.time_ms:.4g} ms" if a.time_ms is not None else f"{a.speedup:.2f}x"


def _renote(c: Candidate, note: str) -> Candidate:
    from dataclasses import replace

    return replace(c, origin=replace(c.origin, note=note))
