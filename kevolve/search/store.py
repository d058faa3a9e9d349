"""The search state in SQLite: runs, nodes, their evaluations, expansions, what was retrieved
for each expansion, and LLM usage.

One process writes a run at a time (it claims the run; a second one is refused while the first is
alive). A node is written before its candidate is evaluated and its evaluation the moment that
ends, each in its own transaction, so a killed run loses nothing and resumes where it stopped:
nodes without an evaluation were in flight and are evaluated again, once. A candidate's
normalised code hash is unique within a run, so a duplicate is never evaluated twice.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from kevolve.candidate import Candidate, Origin, Transform
from kevolve.errors import KevolveError
from kevolve.evaluate.result import Evaluation
from kevolve.paths import state_dir
from kevolve.synth.llm.client import Usage

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    spec_name TEXT NOT NULL,
    target TEXT NOT NULL,
    settings_json TEXT NOT NULL,      -- everything needed to resume the run
    status TEXT NOT NULL,             -- running | finished | stopped
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    sessions INTEGER NOT NULL DEFAULT 0,  -- how many processes have worked on it
    owner_pid INTEGER,                -- the process writing it now
    elapsed_s REAL NOT NULL DEFAULT 0,
    rounds INTEGER NOT NULL DEFAULT 0,
    finished_reason TEXT NOT NULL DEFAULT '',
    best_node_id INTEGER
);
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(id),
    parent_id INTEGER REFERENCES nodes(id),
    code_hash TEXT NOT NULL,
    code TEXT NOT NULL,
    spec_name TEXT NOT NULL,
    language TEXT NOT NULL,
    origin_json TEXT NOT NULL,
    memory_mode TEXT NOT NULL,
    grp INTEGER NOT NULL DEFAULT 0,   -- the policy's group (an island)
    round INTEGER NOT NULL,
    eval_attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    UNIQUE (run_id, code_hash)
);
CREATE TABLE IF NOT EXISTS evaluations (
    node_id INTEGER NOT NULL REFERENCES nodes(id),
    kind TEXT NOT NULL,               -- first | remeasure
    run_id TEXT NOT NULL,
    session INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    fitness REAL NOT NULL,
    evaluation_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (node_id, kind)
);
CREATE TABLE IF NOT EXISTS expansions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    parent_id INTEGER,
    memory_mode TEXT NOT NULL,
    grp INTEGER NOT NULL DEFAULT 0,
    requested INTEGER NOT NULL,
    proposed INTEGER NOT NULL,
    added INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS retrievals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    parent_id INTEGER,                -- the expanded node (None: the reference)
    memory_mode TEXT NOT NULL,
    documents_json TEXT NOT NULL,     -- [[source, title, score], ...] handed to the synthesizer
    skills_json TEXT NOT NULL,        -- [[skill id, one-line description], ...]
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS llm_usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    session INTEGER NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS nodes_by_run ON nodes (run_id);
CREATE INDEX IF NOT EXISTS evaluations_by_run ON evaluations (run_id);
CREATE INDEX IF NOT EXISTS expansions_by_run ON expansions (run_id);
CREATE INDEX IF NOT EXISTS retrievals_by_run ON retrievals (run_id);
"""


class RunNotFound(KevolveError):
    exit_code = 2


class RunBusy(KevolveError):
    exit_code = 2


@dataclass(frozen=True)
class RunRecord:
    id: str
    spec_name: str
    target: str
    settings: Mapping[str, Any]
    status: str
    created_at: str
    updated_at: str
    sessions: int
    elapsed_s: float
    rounds: int
    finished_reason: str
    best_node_id: int | None


@dataclass(frozen=True)
class NodeRow:
    id: int
    parent_id: int | None
    candidate: Candidate
    memory_mode: str
    group: int
    round: int
    eval_attempts: int


@dataclass(frozen=True)
class EvaluationRow:
    node_id: int
    kind: str
    session: int
    fitness: float
    evaluation: Evaluation


@dataclass(frozen=True)
class ExpansionRow:
    round: int
    parent_id: int | None
    memory_mode: str
    group: int
    requested: int
    proposed: int
    added: int


@dataclass(frozen=True)
class RetrievalRow:
    """What the knowledge base handed the synthesizer for one expansion."""

    round: int
    parent_id: int | None
    memory_mode: str
    documents: tuple[tuple[str, str, float], ...]  # (source, title, similarity)
    skills: tuple[tuple[str, str], ...]  # (skill id, one-line description)

    @property
    def attaches_to(self) -> int | None:
        """Where the expansion's children hang: restarts start at the root."""
        return None if self.memory_mode == "restart" else self.parent_id


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_db_path() -> Path:
    return state_dir() / "kevolve.db"


class SearchStore:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, used under a lock: stage functions may run in threads, writes never race.
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "SearchStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(sql, params)
                self._db.execute("COMMIT")
                return cursor
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # Runs -------------------------------------------------------------------------------------
    def create_run(self, run_id: str, spec_name: str, target: str, settings: Mapping[str, Any]) -> RunRecord:
        stamp = now()
        try:
            self._write("INSERT INTO runs (id, spec_name, target, settings_json, status, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, 'running', ?, ?)",
                        (run_id, spec_name, target, json.dumps(dict(settings)), stamp, stamp))
        except sqlite3.IntegrityError:
            raise RunBusy(f"a run named {run_id!r} exists already; resume it with `kevolve tune --resume "
                          f"{run_id}` or choose another --run-name") from None
        return self.run(run_id)

    def find_run(self, run_id: str) -> RunRecord | None:
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _run(rows[0]) if rows else None

    def run(self, run_id: str) -> RunRecord:
        found = self.find_run(run_id)
        if found is None:
            raise RunNotFound(f"no run {run_id!r} in {self.path}; `kevolve tune --list` shows the runs")
        return found

    def runs(self) -> list[RunRecord]:
        return [_run(r) for r in self._read("SELECT * FROM runs ORDER BY created_at, id")]

    def claim(self, run_id: str) -> int:
        """Make this process the run's only writer; returns the session number (1 for a new run)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT owner_pid, sessions FROM runs WHERE id = ?", (run_id,)).fetchone()
                if row is None:
                    raise RunNotFound(f"no run {run_id!r} in {self.path}")
                owner = row["owner_pid"]
                if owner and owner != os.getpid() and _alive(owner):
                    raise RunBusy(f"run {run_id!r} is being written by process {owner}; wait for it "
                                  f"or stop it, then resume")
                session = row["sessions"] + 1
                self._db.execute("UPDATE runs SET owner_pid = ?, sessions = ?, status = 'running', "
                                 "updated_at = ? WHERE id = ?", (os.getpid(), session, now(), run_id))
                self._db.execute("COMMIT")
                return session
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def release(self, run_id: str, status: str, reason: str = "") -> None:
        self._write("UPDATE runs SET owner_pid = NULL, status = ?, finished_reason = ?, updated_at = ? "
                    "WHERE id = ?", (status, reason, now(), run_id))

    def update_settings(self, run_id: str, settings: Mapping[str, Any]) -> None:
        self._write("UPDATE runs SET settings_json = ?, updated_at = ? WHERE id = ?",
                    (json.dumps(dict(settings)), now(), run_id))

    def update_progress(self, run_id: str, *, elapsed_s: float, rounds: int, best_node_id: int | None) -> None:
        self._write("UPDATE runs SET elapsed_s = ?, rounds = ?, best_node_id = ?, updated_at = ? WHERE id = ?",
                    (elapsed_s, rounds, best_node_id, now(), run_id))

    # Nodes and evaluations --------------------------------------------------------------------
    def add_node(self, run_id: str, candidate: Candidate, *, parent_id: int | None, memory_mode: str,
                 group: int, round: int) -> int | None:
        """The new node's id, or None when the run has this code already (a duplicate)."""
        try:
            cursor = self._write(
                "INSERT INTO nodes (run_id, parent_id, code_hash, code, spec_name, language, origin_json, "
                "memory_mode, grp, round, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, parent_id, candidate.code_hash, candidate.code, candidate.spec_name,
                 candidate.language, json.dumps(origin_to_dict(candidate.origin)), memory_mode, group,
                 round, now()))
        except sqlite3.IntegrityError:
            return None
        return int(cursor.lastrowid)

    def has_code(self, run_id: str, code_hash: str) -> bool:
        return bool(self._read("SELECT 1 FROM nodes WHERE run_id = ? AND code_hash = ?", (run_id, code_hash)))

    def mark_evaluating(self, node_id: int) -> None:
        """Count an evaluation as started: a node started twice was in flight when a process died."""
        self._write("UPDATE nodes SET eval_attempts = eval_attempts + 1 WHERE id = ?", (node_id,))

    def record_evaluation(self, run_id: str, node_id: int, kind: str, session: int, evaluation: Evaluation,
                          fitness: float) -> None:
        self._write("INSERT INTO evaluations (node_id, kind, run_id, session, outcome, fitness, evaluation_json,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (node_id, kind, run_id, session, evaluation.outcome.value, fitness,
                     json.dumps(evaluation.to_dict()), now()))

    def nodes(self, run_id: str) -> list[NodeRow]:
        return [_node(r) for r in self._read("SELECT * FROM nodes WHERE run_id = ? ORDER BY id", (run_id,))]

    def evaluations(self, run_id: str) -> list[EvaluationRow]:
        rows = self._read("SELECT * FROM evaluations WHERE run_id = ? ORDER BY node_id, kind", (run_id,))
        return [EvaluationRow(r["node_id"], r["kind"], r["session"], r["fitness"],
                              Evaluation.from_json(r["evaluation_json"])) for r in rows]

    # Expansions and LLM usage -----------------------------------------------------------------
    def record_expansion(self, run_id: str, row: ExpansionRow) -> None:
        self._write("INSERT INTO expansions (run_id, round, parent_id, memory_mode, grp, requested, proposed, "
                    "added, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, row.round, row.parent_id, row.memory_mode, row.group, row.requested,
                     row.proposed, row.added, now()))

    def expansions(self, run_id: str) -> list[ExpansionRow]:
        rows = self._read("SELECT * FROM expansions WHERE run_id = ? ORDER BY id", (run_id,))
        return [ExpansionRow(r["round"], r["parent_id"], r["memory_mode"], r["grp"], r["requested"],
                             r["proposed"], r["added"]) for r in rows]

    def record_retrieval(self, run_id: str, row: RetrievalRow) -> None:
        self._write("INSERT INTO retrievals (run_id, round, parent_id, memory_mode, documents_json, skills_json, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (run_id, row.round, row.parent_id, row.memory_mode, json.dumps(row.documents),
                     json.dumps(row.skills), now()))

    def retrievals(self, run_id: str) -> list[RetrievalRow]:
        rows = self._read("SELECT * FROM retrievals WHERE run_id = ? ORDER BY id", (run_id,))
        return [RetrievalRow(r["round"], r["parent_id"], r["memory_mode"],
                             tuple((s, t, float(x)) for s, t, x in json.loads(r["documents_json"])),
                             tuple((i, d) for i, d in json.loads(r["skills_json"]))) for r in rows]

    def record_llm_usage(self, run_id: str, session: int, model: str, usage: Usage) -> None:
        if usage.requests == 0:
            return
        self._write("INSERT INTO llm_usage (run_id, session, model, requests, failures, prompt_tokens, "
                    "completion_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, session, model, usage.requests, usage.failures, usage.prompt_tokens,
                     usage.completion_tokens, now()))

    def llm_usage(self, run_id: str) -> Usage:
        row = self._read("SELECT COALESCE(SUM(requests), 0) r, COALESCE(SUM(failures), 0) f, "
                         "COALESCE(SUM(prompt_tokens), 0) p, COALESCE(SUM(completion_tokens), 0) c "
                         "FROM llm_usage WHERE run_id = ?", (run_id,))[0]
        return Usage(row["r"], row["f"], row["p"], row["c"])


def origin_to_dict(origin: Origin) -> dict[str, Any]:
    return {
        "synthesizer": origin.synthesizer, "family": origin.family, "config": dict(origin.config),
        "transforms": [[t.name, t.value] for t in origin.transforms], "prompt_hash": origin.prompt_hash,
        "model": origin.model, "memory_mode": origin.memory_mode, "note": origin.note,
        "skill_id": origin.skill_id,
    }


def origin_from_dict(d: Mapping[str, Any]) -> Origin:
    return Origin(
        synthesizer=d["synthesizer"], family=d.get("family"), config=d.get("config") or {},
        transforms=tuple(Transform(name, value) for name, value in d.get("transforms") or ()),
        prompt_hash=d.get("prompt_hash"), model=d.get("model"), memory_mode=d.get("memory_mode"),
        note=d.get("note", ""), skill_id=d.get("skill_id"),
    )


def _run(r: sqlite3.Row) -> RunRecord:
    return RunRecord(r["id"], r["spec_name"], r["target"], json.loads(r["settings_json"]), r["status"],
                     r["created_at"], r["updated_at"], r["sessions"], r["elapsed_s"], r["rounds"],
                     r["finished_reason"], r["best_node_id"])


def _node(r: sqlite3.Row) -> NodeRow:
    candidate = Candidate(code=r["code"], spec_name=r["spec_name"], language=r["language"],
                          origin=origin_from_dict(json.loads(r["origin_json"])))
    return NodeRow(r["id"], r["parent_id"], candidate, r["memory_mode"], r["grp"], r["round"], r["eval_attempts"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) is not a writer.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True

