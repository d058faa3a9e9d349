"""Skills and best kernels: what runs learn, kept in the project's database.

A skill is distilled when a child beats its parent by a margin: the change (as words and as
transforms), the shapes, the times before and after, and the diagnosis that motivated it. A skill is
keyed by family, target and shape class; a second skill with the same change there is the same
skill seen again, so the two merge. The best kernel of each (operator, target, shape) is kept too,
so a new request close to a solved one can start from it.

SQLite in WAL mode, one short transaction per write: the search store writes the same file.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from kevolve.candidate import Origin, Transform
from kevolve.knowledge.types import KnowledgeError, PriorKernel, Skill

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kb_skills (
    id TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    operators TEXT NOT NULL,          -- JSON list: every operator it paid for
    family TEXT NOT NULL,             -- '' when the spec has none
    target TEXT NOT NULL,
    shape_class TEXT NOT NULL,
    dims TEXT NOT NULL,               -- JSON: the shape it was found at
    change TEXT NOT NULL,
    transforms TEXT NOT NULL,         -- JSON list of [name, value]
    transforms_key TEXT NOT NULL,     -- the transforms as a sorted set, for merging
    motivation TEXT NOT NULL,
    before_ms REAL NOT NULL,
    after_ms REAL NOT NULL,
    successes INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS kb_skills_by_place ON kb_skills (target, family, shape_class);
CREATE TABLE IF NOT EXISTS kb_best_kernels (
    operator TEXT NOT NULL,
    family TEXT NOT NULL,
    target TEXT NOT NULL,
    dims_key TEXT NOT NULL,
    dims TEXT NOT NULL,
    code TEXT NOT NULL,
    config TEXT NOT NULL,
    speedup REAL NOT NULL,
    evaluation TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (operator, target, dims_key)
);
"""
MISSING_DIM_DISTANCE = 4.0  # a dimension one shape has and the other lacks counts as 16x apart
MERGE_TEXT_SIMILARITY = 0.8  # word overlap above which two changes without transforms are one


def shape_class(dims: Mapping[str, int]) -> str:
    """Each dimension rounded to the nearest power of two: `M~8192,N~8192`."""
    return ",".join(f"{k}~{_pow2(v)}" for k, v in dims.items())


def shape_distance(a: Mapping[str, int], b: Mapping[str, int]) -> float:
    """Doublings or halvings between two shapes, summed over their dimensions."""
    total = 0.0
    for name in set(a) | set(b):
        if name in a and name in b:
            total += abs(math.log2(max(int(a[name]), 1)) - math.log2(max(int(b[name]), 1)))
        else:
            total += MISSING_DIM_DISTANCE
    return total


def distill(operator: str, family: str, target: str, dims: Mapping[str, int], parent_time_ms: float | None,
            child_time_ms: float | None, parent_origin: Origin, child_origin: Origin, motivation: str,
            margin: float) -> Skill | None:
    """The skill a child's win over its parent teaches, or None when it did not win by the margin
    or nothing says what changed."""
    if not parent_time_ms or not child_time_ms or parent_time_ms <= 0 or child_time_ms <= 0:
        return None
    if parent_time_ms / child_time_ms < margin:
        return None
    transforms = tuple(child_origin.transforms) or _config_changes(parent_origin.config, child_origin.config)
    change = child_origin.note.strip() or ", ".join(str(t) for t in transforms)
    if not change:
        return None
    return Skill(id="", operator=operator, family=family, target=target, shape_class=shape_class(dims),
                 change=change, transforms=transforms, motivation=motivation, before_ms=float(parent_time_ms),
                 after_ms=float(child_time_ms), successes=1, failures=0, operators=(operator,))


def transforms_by_preference(skills: Sequence[Skill]) -> tuple[Transform, ...]:
    """The skills' transforms, most useful skill first, each transform once: what an offline
    synthesizer should try first."""
    seen: dict[tuple[str, str], Transform] = {}
    for skill in skills:
        for t in skill.transforms:
            seen.setdefault((t.name, json.dumps(t.value, sort_keys=True, default=str)), t)
    return tuple(seen.values())


class SkillStore:
    def __init__(self, db_path: Path):
        db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(db_path), timeout=30.0, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise KnowledgeError(f"cannot open the project database {db_path} ({exc}); "
                                 f"move the file aside and run again") from None
        self.conn.row_factory = sqlite3.Row

    def close(self) -> None:
        self.conn.close()

    # -- skills ---------------------------------------------------------------------------------

    def merge(self, skill: Skill, dims: Mapping[str, int]) -> Skill:
        """Store a freshly distilled skill, or fold it into the near-duplicate already there."""
        now = _now()
        with _transaction(self.conn):
            same_place = self.conn.execute(
                "SELECT * FROM kb_skills WHERE target = ? AND family = ? AND shape_class = ?",
                (skill.target, skill.family, skill.shape_class)).fetchall()
            twin = next((row for row in same_place if _near_duplicate(row, skill)), None)
            if twin is None:
                new_id = uuid.uuid4().hex[:12]
                self.conn.execute(
                    "INSERT INTO kb_skills VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (new_id, skill.operator, json.dumps([skill.operator]), skill.family, skill.target,
                     skill.shape_class, json.dumps(dict(dims)), skill.change, _dump_transforms(skill.transforms),
                     _transforms_key(skill.transforms), skill.motivation, skill.before_ms, skill.after_ms,
                     skill.successes, skill.failures, now, now))
                return self._get(new_id)
            operators = json.loads(twin["operators"])
            if skill.operator not in operators:
                operators.append(skill.operator)
            better = skill.gain > twin["before_ms"] / twin["after_ms"]
            self.conn.execute(
                "UPDATE kb_skills SET operators = ?, successes = successes + ?, before_ms = ?, after_ms = ?, "
                "motivation = ?, updated_at = ? WHERE id = ?",
                (json.dumps(operators), skill.successes,
                 skill.before_ms if better else twin["before_ms"], skill.after_ms if better else twin["after_ms"],
                 twin["motivation"] or skill.motivation, now, twin["id"]))
            return self._get(twin["id"])

    def record_reuse(self, skill_id: str, success: bool) -> Skill:
        column = "successes" if success else "failures"
        with _transaction(self.conn):
            cur = self.conn.execute(f"UPDATE kb_skills SET {column} = {column} + 1, updated_at = ? WHERE id = ?",
                                    (_now(), skill_id))
        if cur.rowcount == 0:
            raise KnowledgeError(f"no skill with id {skill_id!r}; `kevolve kb skills` lists them")
        return self._get(skill_id)

    def get(self, skill_id: str) -> Skill | None:
        row = self.conn.execute("SELECT * FROM kb_skills WHERE id = ?", (skill_id,)).fetchone()
        return _skill(row) if row else None

    def _get(self, skill_id: str) -> Skill:
        skill = self.get(skill_id)
        assert skill is not None
        return skill

    def all(self, *, target: str | None = None, family: str | None = None) -> list[Skill]:
        """Every skill, most useful first, optionally of one target and family."""
        rows = self.conn.execute(
            "SELECT * FROM kb_skills WHERE (? IS NULL OR target = ?) AND (? IS NULL OR family = ?)",
            (target, target, family, family)).fetchall()
        return sorted((_skill(r) for r in rows), key=lambda s: (-s.usefulness, s.id))

    def ranked_for(self, operator: str, family: str, target: str, dims: Mapping[str, int]) -> list[Skill]:
        """The target's skills for this operator or its family: the operator's own first, then the
        closest shapes, then the most useful."""
        rows = self.conn.execute("SELECT * FROM kb_skills WHERE target = ?", (target,)).fetchall()
        ranked = []
        for row in rows:
            operators = json.loads(row["operators"])
            exact = operator in operators
            if not exact and not (family and row["family"] == family):
                continue
            skill = _skill(row)
            distance = shape_distance(_bucketed(json.loads(row["dims"])), _bucketed(dims))
            ranked.append(((not exact, distance, -skill.usefulness, skill.id), skill))
        return [skill for _, skill in sorted(ranked, key=lambda pair: pair[0])]

    # -- best kernels ---------------------------------------------------------------------------

    def put_best_kernel(self, operator: str, family: str, target: str, dims: Mapping[str, int], code: str,
                        config: Mapping[str, Any], speedup: float, evaluation_json: str) -> bool:
        """Keep the kernel if it is the first or the fastest for its operator, target and shape."""
        key = ",".join(f"{k}={int(v)}" for k, v in dims.items())
        with _transaction(self.conn):
            row = self.conn.execute(
                "SELECT speedup FROM kb_best_kernels WHERE operator = ? AND target = ? AND dims_key = ?",
                (operator, target, key)).fetchone()
            if row is not None and row["speedup"] >= speedup:
                return False
            self.conn.execute(
                "INSERT OR REPLACE INTO kb_best_kernels VALUES (?,?,?,?,?,?,?,?,?,?)",
                (operator, family, target, key, json.dumps(dict(dims)), code, json.dumps(dict(config), default=str),
                 float(speedup), evaluation_json, _now()))
        return True

    def best_prior_kernel(self, operator: str, family: str, target: str,
                          dims: Mapping[str, int]) -> PriorKernel | None:
        """The kept kernel closest to the request on the same target: the same operator before the
        same family, then the nearest shape, then the fastest."""
        rows = self.conn.execute(
            "SELECT * FROM kb_best_kernels WHERE target = ? AND (operator = ? OR (family != '' AND family = ?))",
            (target, operator, family)).fetchall()
        best = None
        for row in rows:
            kept_dims = json.loads(row["dims"])
            key = (row["operator"] != operator, shape_distance(kept_dims, dims), -row["speedup"])
            if best is None or key < best[0]:
                best = (key, row, kept_dims)
        if best is None:
            return None
        (other_operator, distance, _), row, kept_dims = best
        return PriorKernel(operator=row["operator"], family=row["family"], target=row["target"], dims=kept_dims,
                           code=row["code"], config=json.loads(row["config"]), speedup=row["speedup"],
                           evaluation_json=row["evaluation"],
                           relation="same family" if other_operator else "same operator", shape_distance=distance)


def _near_duplicate(row: sqlite3.Row, skill: Skill) -> bool:
    if skill.transforms or row["transforms_key"] != "[]":
        return row["transforms_key"] == _transforms_key(skill.transforms)
    return _word_overlap(row["change"], skill.change) >= MERGE_TEXT_SIMILARITY


def _word_overlap(a: str, b: str) -> float:
    wa, wb = set(re.findall(r"\w+", a.lower())), set(re.findall(r"\w+", b.lower()))
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


def _config_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[Transform, ...]:
    return tuple(Transform(k, v) for k, v in after.items() if before.get(k, _MISSING) != v)


_MISSING = object()


def _dump_transforms(transforms: Iterable[Transform]) -> str:
    return json.dumps([[t.name, t.value] for t in transforms], default=str)


def _transforms_key(transforms: Iterable[Transform]) -> str:
    return json.dumps(sorted(json.loads(_dump_transforms(transforms)), key=lambda p: json.dumps(p, sort_keys=True)),
                      sort_keys=True)


def _skill(row: sqlite3.Row) -> Skill:
    operators = tuple(json.loads(row["operators"]))
    return Skill(id=row["id"], operator=row["operator"], family=row["family"], target=row["target"],
                 shape_class=row["shape_class"], change=row["change"],
                 transforms=tuple(Transform(name, value) for name, value in json.loads(row["transforms"])),
                 motivation=row["motivation"], before_ms=row["before_ms"], after_ms=row["after_ms"],
                 successes=row["successes"], failures=row["failures"], operators=operators)


def _pow2(value: int) -> int:
    return 1 << max(0, round(math.log2(max(int(value), 1))))


def _bucketed(dims: Mapping[str, int]) -> dict[str, int]:
    return {k: _pow2(v) for k, v in dims.items()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: the write lock is taken up front, so two writers wait, not fail."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
