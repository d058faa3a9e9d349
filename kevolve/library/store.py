"""The kernel library: the best kernel per (operator, target), versioned, with its evaluation.

Files live under state_dir()/library/<operator>/<target>/v<N>/ (kernel.py, evaluation.json,
and a copy of the spec with its reference, so an entry stays usable when the spec it came from
moves); an index sits in the project database state_dir()/kevolve.db, table `library_entries`.
Registering a faster kernel for the same key adds a version and keeps the old ones; a slower
one is refused. On the interpreter target there are no speeds, so the newest version wins.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from kevolve.candidate import code_hash
from kevolve.errors import KevolveError
from kevolve.evaluate.result import Evaluation, Outcome
from kevolve.hardware.target import HardwareTarget
from kevolve.paths import state_dir
from kevolve.specs.model import Dims, OperatorSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS library_entries (
    operator TEXT NOT NULL,
    target TEXT NOT NULL,
    version INTEGER NOT NULL,
    pattern TEXT NOT NULL DEFAULT '',
    semantics TEXT NOT NULL DEFAULT '',
    validated_dims TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    speedup REAL,
    path TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (operator, target, version)
)"""


class LibraryError(KevolveError):
    exit_code = 2


class NotAnImprovement(LibraryError):
    """The kernel is not faster than the one the library holds; nothing was added."""


@dataclass(frozen=True)
class LibraryEntry:
    operator: str
    target: str
    version: int
    pattern: str  # the recognised pattern a model-op spec came from ("" for hand-written specs)
    semantics: str  # equal for interchangeable kernels (same computation, any shape)
    validated_dims: tuple[Mapping[str, int], ...]
    code_hash: str
    speedup: float | None
    path: Path
    created_at: str

    @property
    def ref(self) -> str:
        return f"{self.operator}@{self.version}"

    @property
    def kernel_path(self) -> Path:
        return self.path / "kernel.py"

    @property
    def evaluation_path(self) -> Path:
        return self.path / "evaluation.json"

    def evaluation(self) -> Evaluation:
        return Evaluation.from_json(self.evaluation_path.read_text())

    def spec(self) -> OperatorSpec:
        from kevolve.specs import load_spec

        return load_spec(next(p for p in (self.path / "spec.yaml", self.path / "spec.py") if p.is_file()))

    @property
    def shape_min(self) -> dict[str, int]:
        return {k: min(d[k] for d in self.validated_dims) for k in self.validated_dims[0]}

    @property
    def shape_max(self) -> dict[str, int]:
        return {k: max(d[k] for d in self.validated_dims) for k in self.validated_dims[0]}

    def covers(self, dims: Mapping[str, int], mode: str = "range") -> bool:
        """Inside the validated shapes: within each dimension's validated min..max ("range"),
        or one of the validated shapes exactly ("exact")."""
        if mode == "exact":
            return any(dict(d) == dict(dims) for d in self.validated_dims)
        lo, hi = self.shape_min, self.shape_max
        return set(dims) == set(lo) and all(lo[k] <= dims[k] <= hi[k] for k in lo)


def library_dir() -> Path:
    return state_dir() / "library"


def _connect() -> sqlite3.Connection:
    conn = sqlite3.connect(state_dir() / "kevolve.db", timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(_SCHEMA)
    return conn


def _entry(row: sqlite3.Row | tuple) -> LibraryEntry:
    operator, target, version, pattern, semantics, dims, chash, speedup, path, created = row
    return LibraryEntry(operator=operator, target=target, version=version, pattern=pattern,
                        semantics=semantics, validated_dims=tuple(json.loads(dims)), code_hash=chash,
                        speedup=speedup, path=Path(path), created_at=created)


_COLUMNS = "operator, target, version, pattern, semantics, validated_dims, code_hash, speedup, path, created_at"


def _target_name(target: HardwareTarget | str) -> str:
    return target if isinstance(target, str) else target.name


def _tag(spec: OperatorSpec, key: str) -> str:
    prefix = f"{key}="
    return next((t[len(prefix):] for t in spec.tags if t.startswith(prefix)), "")


def register(spec: OperatorSpec, target: HardwareTarget | str, code: str, evaluation: Evaluation,
             validated_dims: Sequence[Dims]) -> LibraryEntry:
    """Add a kernel that passed the harness; a new version when it beats the current one."""
    target_name = _target_name(target)
    if evaluation.outcome is not Outcome.CORRECT:
        raise LibraryError(f"{spec.name}: only kernels that passed every check can be registered "
                           f"(this one is {evaluation.outcome.value})")
    if evaluation.spec_name != spec.name:
        raise LibraryError(f"the evaluation is of {evaluation.spec_name!r}, not of {spec.name!r}")
    if evaluation.target != target_name:
        raise LibraryError(f"{spec.name}: the evaluation ran on {evaluation.target!r}, not on {target_name!r}")
    dims = [dict(d) for d in validated_dims]
    if not dims or any(set(d) != set(spec.tune_dims) for d in dims):
        raise LibraryError(f"{spec.name}: validated shapes must name the spec's dimensions "
                           f"{sorted(spec.tune_dims)}")
    speedup = evaluation.speedup()
    with closing(_connect()) as conn:
        conn.execute("BEGIN IMMEDIATE")  # one writer picks the version number
        try:
            current = conn.execute(f"SELECT {_COLUMNS} FROM library_entries WHERE operator=? AND target=? "
                                   "ORDER BY version DESC LIMIT 1", (spec.name, target_name)).fetchone()
            if current is not None:
                best = _entry(current)
                if best.speedup is not None and speedup is not None and speedup <= best.speedup:
                    raise NotAnImprovement(f"{spec.name} on {target_name}: {speedup:.2f}x is not faster "
                                           f"than {best.ref} ({best.speedup:.2f}x); kept {best.ref}")
            version = (current[2] if current else 0) + 1
            path = library_dir() / spec.name / target_name / f"v{version}"
            _write_files(path, spec, code, evaluation)
            created = datetime.now(timezone.utc).isoformat(timespec="seconds")
            row = (spec.name, target_name, version, _tag(spec, "pattern"), _tag(spec, "semantics"),
                   json.dumps(dims), code_hash(code), speedup, str(path), created)
            conn.execute(f"INSERT INTO library_entries ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", row)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return _entry(row)


def _write_files(path: Path, spec: OperatorSpec, code: str, evaluation: Evaluation) -> None:
    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "ref").mkdir(parents=True)
    (staging / "kernel.py").write_text(code)
    (staging / "evaluation.json").write_text(evaluation.to_json())
    if spec.format == "yaml":
        doc = yaml.safe_load(spec.path.read_text())
        shutil.copy2(spec.reference_path, staging / "ref" / spec.reference_path.name)
        doc["reference"] = f"ref/{spec.reference_path.name}:{spec.reference_name}"
        (staging / "spec.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
    else:
        shutil.copy2(spec.path, staging / "spec.py")
    if path.exists():  # left by a registration that died before its row was committed
        shutil.rmtree(path)
    staging.rename(path)


def entries(operator: str | None = None, target: str | None = None, *,
            all_versions: bool = False) -> list[LibraryEntry]:
    """Library entries, the current version of each (operator, target) unless all_versions."""
    query = f"SELECT {_COLUMNS} FROM library_entries"
    where, params = [], []
    for column, value in (("operator", operator), ("target", target)):
        if value is not None:
            where.append(f"{column}=?")
            params.append(value)
    if where:
        query += " WHERE " + " AND ".join(where)
    with closing(_connect()) as conn:
        rows = [_entry(r) for r in conn.execute(query + " ORDER BY operator, target, version", params)]
    if all_versions:
        return rows
    current: dict[tuple[str, str], LibraryEntry] = {}
    for e in rows:
        current[(e.operator, e.target)] = e
    return list(current.values())


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`NAME` or `NAME@VERSION`."""
    name, sep, version = ref.partition("@")
    if sep and not version.isdigit():
        raise LibraryError(f"{ref!r}: expected NAME or NAME@VERSION with a number, e.g. softmax@2")
    return name, int(version) if sep else None


def get(ref: str, target: str | None = None) -> LibraryEntry:
    """An entry by `NAME[@VERSION]`; the current version when none is given. With several
    targets holding the name, `target` picks one."""
    name, version = parse_ref(ref)
    found = entries(name, target, all_versions=True)
    if version is not None:
        found = [e for e in found if e.version == version]
    if not found:
        known = sorted({e.operator for e in entries()})
        hint = f"; the library holds {', '.join(known[:8])}" if known else "; the library is empty"
        where = f" for target {target}" if target else ""
        raise LibraryError(f"no library entry {ref!r}{where}{hint}")
    targets = sorted({e.target for e in found})
    if len(targets) > 1:
        raise LibraryError(f"{ref!r} exists for targets {', '.join(targets)}; choose one with --target")
    return max(found, key=lambda e: e.version)


def export(entry: LibraryEntry, out_dir: Path) -> list[Path]:
    """A standalone module (the kernel, with where it came from) and its evaluation JSON."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluation = entry.evaluation()
    speed = f"{entry.speedup:.2f}x over the fastest baseline" if entry.speedup else "no speedup measured (interpreter)"
    header = (f"# {entry.ref} for {entry.target}: exported from the Kernel Evolve library.\n"
              f"# Validated shapes: {', '.join(_dims_text(d) for d in entry.validated_dims)}.\n"
              f"# Evaluation: {evaluation.outcome.value} on {evaluation.device}; {speed}.\n")
    module = out_dir / f"{entry.operator}.py"
    module.write_text(header + entry.kernel_path.read_text())
    record = out_dir / f"{entry.operator}.evaluation.json"
    record.write_text(entry.evaluation_path.read_text())
    return [module, record]


def _dims_text(dims: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in dims.items())
