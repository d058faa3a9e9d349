"""Skills and best kernels: distillation, near-duplicate merging, reuse counts, ranking, the
closest prior kernel, persistence in the project's database, and the Chroma skills index."""

import dataclasses
import json
import logging
import sqlite3
import sys

import pytest

from conftest import run_cli
from kevolve.candidate import Origin, Transform
from kevolve.evaluate.result import Diagnosis
from kevolve.hardware import load_target
from kevolve.knowledge import KnowledgeBase, KnowledgeError
from kevolve.knowledge.skills import shape_class, shape_distance, transforms_by_preference
from kevolve.specs import resolve_spec
from kevolve.synth.base import Attempt

H100 = load_target("h100-sxm")
CPU = load_target("cpu-interpreter")
SOFTMAX = resolve_spec("softmax")
LOG_SOFTMAX = resolve_spec("log_softmax")
LAYERNORM = resolve_spec("layernorm")
DIMS = {"M": 8192, "N": 8192}
MEMORY_BOUND = Diagnosis(bound="memory", summary="Reaches 55% of copy bandwidth; loads are 4 bytes wide.")


def attempt(time_ms, *transforms, config=None, note="", outcome="correct", diagnosis=None) -> Attempt:
    origin = Origin(synthesizer="offline", family="softmax", config=config or {}, transforms=tuple(transforms),
                    note=note)
    return Attempt(code="# kernel", origin=origin, outcome=outcome, time_ms=time_ms, diagnosis=diagnosis)


@pytest.fixture
def kb(tmp_path):
    base = KnowledgeBase.open(state=tmp_path, embedding="hashing")
    yield base
    base.close()


def test_a_win_by_the_margin_is_distilled_with_what_changed_and_why(kb):
    parent = attempt(0.20, diagnosis=MEMORY_BOUND)
    child = attempt(0.15, Transform("num_warps", 8), Transform("rows_per_program", 2), note="8 warps, 2 rows")
    skill = kb.record_improvement(SOFTMAX, H100, DIMS, parent, child)
    assert skill is not None and skill.id
    assert (skill.operator, skill.family, skill.target) == ("softmax", "softmax", "h100-sxm")
    assert skill.shape_class == "M~8192,N~8192"
    assert skill.transforms == (Transform("num_warps", 8), Transform("rows_per_program", 2))
    assert skill.change == "8 warps, 2 rows"
    assert skill.motivation == "memory-bound: Reaches 55% of copy bandwidth; loads are 4 bytes wide."
    assert (skill.before_ms, skill.after_ms) == (0.20, 0.15) and skill.gain == pytest.approx(4 / 3)
    assert (skill.successes, skill.failures) == (1, 0)
    assert "0.2 ms -> 0.15 ms (1.33x)" in skill.describe()


def test_no_skill_without_a_real_win(kb):
    parent = attempt(0.20)
    assert kb.record_improvement(SOFTMAX, H100, DIMS, parent, attempt(0.195, Transform("num_warps", 8))) is None
    assert kb.record_improvement(SOFTMAX, H100, DIMS, parent, attempt(0.15, Transform("num_warps", 8)),
                                 margin=1.5) is None
    assert kb.record_improvement(SOFTMAX, H100, DIMS, parent,
                                 attempt(0.10, Transform("num_warps", 8), outcome="wrong")) is None
    assert kb.record_improvement(SOFTMAX, H100, DIMS, attempt(None), attempt(0.1, Transform("x", 1))) is None
    assert kb.record_improvement(SOFTMAX, H100, DIMS, parent, attempt(0.10)) is None  # nothing says what changed
    assert kb.skills() == []


def test_without_transforms_the_config_difference_is_the_change(kb):
    parent = attempt(0.30, config={"BLOCK_N": 8192, "num_warps": 4, "num_stages": 1})
    child = attempt(0.20, config={"BLOCK_N": 8192, "num_warps": 16, "num_stages": 2})
    skill = kb.record_improvement(SOFTMAX, H100, DIMS, parent, child)
    assert skill.transforms == (Transform("num_warps", 16), Transform("num_stages", 2))
    assert skill.change == "num_warps=16, num_stages=2"


def test_near_duplicates_merge_across_operators_of_a_family(kb):
    first = kb.record_improvement(SOFTMAX, H100, DIMS, attempt(0.20), attempt(0.16, Transform("num_warps", 8)))
    # the same change, found again on log_softmax at a close shape (same power-of-two class), paying more
    again = kb.record_improvement(LOG_SOFTMAX, H100, {"M": 8000, "N": 8192}, attempt(0.20),
                                  attempt(0.10, Transform("num_warps", 8)))
    assert again.id == first.id
    assert again.successes == 2 and again.operators == ("softmax", "log_softmax")
    assert (again.before_ms, again.after_ms) == (0.20, 0.10)  # the best measurement is kept
    # a different change, or the same change at another shape class, is another skill
    other = kb.record_improvement(SOFTMAX, H100, DIMS, attempt(0.2), attempt(0.1, Transform("num_warps", 16)))
    small = kb.record_improvement(SOFTMAX, H100, {"M": 64, "N": 97}, attempt(0.2), attempt(0.1, Transform("num_warps", 8)))
    assert len({first.id, other.id, small.id}) == 3
    assert len(kb.skills()) == 3


def test_a_merge_reembeds_a_skill_only_when_its_text_changes(kb, embedded):
    first = kb.record_improvement(SOFTMAX, H100, DIMS, attempt(0.20), attempt(0.16, Transform("num_warps", 8)))
    embedded.clear()
    # found again on softmax: only the counts change
    kb.record_improvement(SOFTMAX, H100, DIMS, attempt(0.20), attempt(0.12, Transform("num_warps", 8)))
    assert embedded == []
    # found on log_softmax: the skill's text now names both operators
    kb.record_improvement(LOG_SOFTMAX, H100, DIMS, attempt(0.20), attempt(0.15, Transform("num_warps", 8)))
    assert len(embedded) == 1 and embedded[0].startswith("softmax, log_softmax (softmax) on h100-sxm")
    stored = kb.index.skills.get(include=["documents"])
    assert stored["ids"] == [first.id] and stored["documents"] == embedded


def test_changes_in_words_merge_when_they_say_the_same_thing(kb):
    llm = dict(note="Load two rows per program and use 8 warps to keep more bytes in flight")
    a = kb.record_improvement(SOFTMAX, H100, DIMS, attempt(0.2), attempt(0.15, **llm))
    b = kb.record_improvement(SOFTMAX, H100, DIMS, attempt(0.2), attempt(
        0.15, note="load two rows per program and use 8 warps, keeping more bytes in flight"))
    c = kb.record_improvement(SOFTMAX, H100, DIMS, attempt(0.2), attempt(0.15, note="Switch to an online softmax"))
    assert a.id == b.id != c.id and b.successes == 2


def test_reuse_counts_and_usefulness(kb):
    skill = kb.record_improvement(SOFTMAX, H100, DIMS, attempt(0.2), attempt(0.1, Transform("num_warps", 8)))
    kb.record_reuse(skill.id, True)
    kb.record_reuse(skill.id, False)
    kb.record_reuse(skill.id, False)
    stored = kb.skills()[0]
    assert (stored.successes, stored.failures) == (2, 2)
    assert stored.success_rate == pytest.approx(0.5) and stored.usefulness == pytest.approx(1.5)
    with pytest.raises(KnowledgeError, match="no skill with id 'nope'"):
        kb.record_reuse("nope", True)


def test_ranking_operator_first_then_shape_then_usefulness(kb):
    def record(spec, dims, gain, name):
        return kb.record_improvement(spec, H100, dims, attempt(1.0), attempt(1.0 / gain, Transform(name, 1)))

    family_same_shape = record(SOFTMAX, DIMS, 3.0, "a")
    own_far_shape = record(LOG_SOFTMAX, {"M": 64, "N": 64}, 1.2, "b")
    own_same_shape_small_gain = record(LOG_SOFTMAX, DIMS, 1.2, "c")
    own_same_shape_big_gain = record(LOG_SOFTMAX, DIMS, 1.5, "d")
    record(LAYERNORM, {"M": 8192, "N": 8192}, 4.0, "e")  # another family
    kb.record_improvement(LOG_SOFTMAX, load_target("a100"), DIMS, attempt(1.0), attempt(0.5, Transform("f", 1)))

    ranked = kb.skills_for(LOG_SOFTMAX, H100, k=10)
    assert [s.id for s in ranked] == [own_same_shape_big_gain.id, own_same_shape_small_gain.id, own_far_shape.id,
                                      family_same_shape.id]
    assert [s.id for s in kb.skills_for(LOG_SOFTMAX, H100, k=2)] == [own_same_shape_big_gain.id,
                                                                     own_same_shape_small_gain.id]
    # a skill that keeps failing drops below one that pays: 1.5x paid 1 time in 7 is worth less than
    # 1.2x paid once
    for _ in range(6):
        kb.record_reuse(own_same_shape_big_gain.id, False)
    assert kb.skills_for(LOG_SOFTMAX, H100, k=1)[0].id == own_same_shape_small_gain.id


def test_skills_from_softmax_are_tried_first_for_log_softmax(kb):
    """The part of the cross-run behaviour that needs no search: what one run distilled on softmax is
    what the offline synthesizer is told to try first on log_softmax."""
    dims = SOFTMAX.shapes_for(True)[0]
    assert kb.skills_for(LOG_SOFTMAX, CPU) == [] and transforms_by_preference([]) == ()
    kb.record_improvement(SOFTMAX, CPU, dims, attempt(1.0), attempt(0.8, Transform("rows_per_program", 4)))
    kb.record_improvement(SOFTMAX, CPU, dims, attempt(0.8), attempt(0.5, Transform("num_warps", 2),
                                                                    Transform("rows_per_program", 4)))
    kb.record_improvement(LAYERNORM, CPU, dims, attempt(1.0), attempt(0.1, Transform("persistent", True)))
    skills = kb.skills_for(LOG_SOFTMAX, CPU)
    assert {s.operator for s in skills} == {"softmax"}
    assert transforms_by_preference(skills) == (Transform("num_warps", 2), Transform("rows_per_program", 4))


def test_best_prior_kernel_is_the_closest_solved_request(kb):
    def keep(spec, dims, speedup, target=H100, code=None):
        kb.record_best_kernel(spec, target, dims, code or f"# {spec.name} {dims} {speedup}",
                              {"BLOCK_N": dims["N"]}, speedup, '{"outcome": "correct"}')

    assert kb.best_prior_kernel(LOG_SOFTMAX, H100, DIMS) is None
    keep(SOFTMAX, {"M": 8192, "N": 8192}, 1.4)
    prior = kb.best_prior_kernel(LOG_SOFTMAX, H100, DIMS)
    assert (prior.operator, prior.relation, prior.shape_distance) == ("softmax", "same family", 0.0)
    assert prior.config == {"BLOCK_N": 8192} and prior.evaluation_json == '{"outcome": "correct"}'

    keep(LOG_SOFTMAX, {"M": 1024, "N": 1024}, 1.1)
    keep(LOG_SOFTMAX, {"M": 4096, "N": 8192}, 1.2)
    keep(LOG_SOFTMAX, {"M": 8192, "N": 8192}, 1.3, target=load_target("a100"))
    prior = kb.best_prior_kernel(LOG_SOFTMAX, H100, DIMS)
    assert (prior.operator, prior.dims, prior.relation) == ("log_softmax", {"M": 4096, "N": 8192}, "same operator")
    assert prior.shape_distance == pytest.approx(1.0)

    # only a faster kernel replaces the one kept for the same operator, target and shape
    keep(LOG_SOFTMAX, {"M": 4096, "N": 8192}, 1.05, code="# slower")
    assert kb.best_prior_kernel(LOG_SOFTMAX, H100, DIMS).speedup == 1.2
    keep(LOG_SOFTMAX, {"M": 4096, "N": 8192}, 1.6, code="# faster")
    assert kb.best_prior_kernel(LOG_SOFTMAX, H100, DIMS).code == "# faster"
    # another family is never offered
    assert kb.best_prior_kernel(LAYERNORM, H100, {"M": 8192, "N": 8192}) is None


def test_skills_live_in_the_project_database_and_rebuild_reindexes_them(tmp_path):
    kb = KnowledgeBase.open(state=tmp_path, embedding="hashing")
    skill = kb.record_improvement(SOFTMAX, H100, DIMS, attempt(0.2), attempt(0.1, Transform("num_warps", 8)))
    kb.record_best_kernel(SOFTMAX, H100, DIMS, "# best", {}, 1.3, "{}")
    assert kb.index.skills.count() == 1
    kb.close()

    with sqlite3.connect(tmp_path / "kevolve.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT id FROM kb_skills").fetchall() == [(skill.id,)]
        assert conn.execute("SELECT code FROM kb_best_kernels").fetchall() == [("# best",)]

    reopened = KnowledgeBase.open(state=tmp_path, embedding="hashing")
    assert [s.id for s in reopened.skills()] == [skill.id]
    reopened.index.reset()
    assert reopened.index.skills.count() == 0
    reopened.rebuild()
    assert reopened.index.skills.count() == 1 and reopened.index.corpus_size() > 100


def test_a_spec_without_a_family_finds_skills_by_similarity(kb):
    kb.record_improvement(SOFTMAX, H100, DIMS, attempt(0.2),
                          attempt(0.1, Transform("num_warps", 8), note="softmax rows: 8 warps per row"))
    kb.record_improvement(LAYERNORM, H100, DIMS, attempt(0.2),
                          attempt(0.1, Transform("persistent", True), note="layernorm: persistent over rows"))
    problem = dataclasses.replace(SOFTMAX, name="23_Softmax", family=None,
                                  description="KernelBench level 1: softmax over dim 1 of a batch of rows")
    found = kb.skills_for(problem, H100)
    assert found and found[0].operator == "softmax"
    unrelated = dataclasses.replace(SOFTMAX, name="conv3d_transposed", family=None,
                                    description="3D transposed convolution with dilation")
    assert kb.skills_for(unrelated, H100) == []


def test_shape_classes_and_distances():
    assert shape_class({"M": 7, "N": 97}) == "M~8,N~128"
    assert shape_class({"M": 3000, "N": 50001}) == "M~4096,N~65536"
    assert shape_distance({"M": 1024, "N": 4096}, {"M": 2048, "N": 1024}) == pytest.approx(3.0)
    assert shape_distance({"M": 8}, {"M": 8, "K": 4}) == pytest.approx(4.0)


def test_skills_and_best_kernels_work_without_chromadb(tmp_path, monkeypatch, caplog):
    """The GPU machine may lack chromadb: a run there still learns and reuses skills."""
    for name in [m for m in sys.modules if m == "chromadb" or m.startswith("chromadb.")] + ["chromadb"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import chromadb...` now raises ImportError
    for name in ("kevolve.knowledge.index", "kevolve.knowledge.embedding"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # imported afresh, and failing
    kb = KnowledgeBase.open(state=tmp_path)  # the default (minilm) embedding, never loaded
    skill = kb.record_improvement(SOFTMAX, H100, DIMS, attempt(0.2), attempt(0.1, Transform("num_warps", 8)))
    assert [s.id for s in kb.skills_for(LOG_SOFTMAX, H100)] == [skill.id]
    kb.record_best_kernel(SOFTMAX, H100, DIMS, "# best", {}, 1.3, "{}")
    assert kb.best_prior_kernel(LOG_SOFTMAX, H100, DIMS).code == "# best"
    with caplog.at_level(logging.WARNING, logger="kevolve.knowledge.base"):
        assert kb.retrieve(SOFTMAX, H100) == [] and kb.retrieve(SOFTMAX, H100) == []
    assert [r.message for r in caplog.records].count(
        "no retrieval: retrieval needs chromadb, which is not installed here; pip install "
        "'chromadb>=1.5,<1.6' (skills and best kernels work without it)") == 1
    with pytest.raises(KnowledgeError, match="retrieval needs chromadb"):
        kb.query("warp size")


def test_cli_lists_skills_most_useful_first(monkeypatch):
    kb = KnowledgeBase.open(embedding="hashing")  # the test's own KEVOLVE_HOME, as the CLI sees it
    small = kb.record_improvement(SOFTMAX, H100, DIMS, attempt(0.2), attempt(0.18, Transform("num_warps", 8)))
    big = kb.record_improvement(SOFTMAX, H100, DIMS, attempt(0.2, diagnosis=MEMORY_BOUND),
                                attempt(0.1, Transform("rows_per_program", 2), note="two rows per program"))
    kb.close()
    listed = run_cli("kb", "skills", "--embedding", "hashing")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith(f"{big.id}  softmax (softmax) on h100-sxm, M~8192,N~8192: two rows per program; "
                               "0.2 ms -> 0.1 ms (2.00x), paid 1 of 1 times; motivated by: memory-bound")
    assert lines[1].startswith(f"{small.id}  ")
    as_json = json.loads(run_cli("kb", "skills", "--json", "--target", "a100", "--embedding", "hashing").stdout)
    assert as_json == []
