"""The run report: a real search under Triton's interpreter (the offline synthesizer, the real
harness, the knowledge base with the light embedding) writes report.html; its content is checked
against the store, and the page is opened in headless Chromium, which must run its script with
no error. A timed tree (built by hand) checks the speedup curve and the figures a GPU run shows."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kevolve.candidate import Candidate, Origin
from kevolve.evaluate.result import Baselines, Diagnosis, Evaluation, Outcome, Timing
from kevolve.search.tree import Node, SearchTree

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real interpreter run for the whole module: (run id, state folder)."""
    home = tmp_path_factory.mktemp("kevolve-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KEVOLVE_HOME", str(home))
        mp.setenv("KEVOLVE_EMBEDDING", "hashing")  # no model weights
        from flows.tune_operator import tune_without_prefect

        summary = tune_without_prefect("softmax", target="cpu-interpreter", offline=True,
                                       search={"budget": 4, "seeds": 2, "children_per_expansion": 2})
    return summary.run_id, home


def thick_edges(html: str) -> int:
    """Edges of the drawn tree on the path to the best kernel."""
    drawn = html[html.index('aria-label="search tree"'):]
    return drawn[:drawn.index("</svg>")].count('stroke="#1f5fbf" stroke-width="3"')


def stored(run_id: str, home: Path):
    from kevolve.report.run_page import load_run
    from kevolve.search.store import SearchStore

    with SearchStore(home / "kevolve.db") as store:
        return load_run(store, run_id)


def test_a_real_run_writes_a_report_that_matches_its_store(run):
    run_id, home = run
    html = (home / "runs" / run_id / "report.html").read_text()
    data = stored(run_id, home)
    nodes = list(data.tree)
    best = data.best
    assert len(nodes) == 4 and best is not None
    assert f"run {run_id}" in html and "softmax on cpu-interpreter" in html
    assert 'id="interpreter-banner"' in html and "never kernel speed" in html
    assert "finished: evaluation budget spent" in html
    # the tree: one linked circle per node, the best ringed, the path to it drawn thick
    assert html.count('class="tree-node"') == len(nodes)
    assert thick_edges(html) == len(data.tree.path(best.id))
    for n in nodes:
        assert f'<tr id="node-{n.id}"' in html and f'href="#node-{n.id}"' in html
    # the best kernel's code, escaped; the diagnosis and the retrieved documents behind its step
    from html import escape

    assert escape(best.candidate.code) in html
    ev = best.remeasure or best.evaluation
    assert ev.diagnosis is not None and escape(ev.diagnosis.summary) in html
    assert data.retrievals, "the knowledge base handed the synthesizer nothing"
    step = html[html.index(f'id="step-{best.id}"'):]
    step = step[:step.index("</li></ul></li>") if "</li></ul></li>" in step else len(step)]
    assert "retrieved for its prompt" in step
    assert escape(data.retrievals[0].documents[0][0]) in html
    # cost and curve, never a speedup under the interpreter
    assert "evaluation interpreter seconds" in html and "Correct kernels over the evaluations" in html
    assert not re.search(r"\d\.\d\dx", html)
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=", html)
    assert "url(http" not in html


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); "
                                             ".ci/run installs it so CI runs this check")
def test_the_report_opens_in_headless_chromium_without_errors(run, tmp_path):
    run_id, home = run
    page = home / "runs" / run_id / "report.html"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "rror" in line or "Uncaught" in line], console
    # the page's script ran to its end and found every node of the tree
    assert 'data-ready="yes"' in result.stdout
    assert f'data-nodes="{len(list(stored(run_id, home).tree))}"' in result.stdout


def test_kevolve_report_prints_rebuilds_and_refuses_unknown_runs(run, monkeypatch, capsys):
    from kevolve.cli import main

    run_id, home = run
    monkeypatch.setenv("KEVOLVE_HOME", str(home))
    page = home / "runs" / run_id / "report.html"
    assert main(["report", run_id]) == 0
    assert capsys.readouterr().out.strip() == str(page)
    page.unlink()  # a run whose page is gone (or a stopped one): written from the store
    assert main(["report", "--html"]) == 0  # the latest run
    printed = capsys.readouterr().out
    assert printed.startswith("<!DOCTYPE html>") and page.read_text() == printed
    page.write_text("stale")  # a page there is shown as it is, unless --rebuild
    assert main(["report", run_id]) == 0 and page.read_text() == "stale"
    assert main(["report", run_id, "--rebuild"]) == 0 and page.read_text() == printed
    capsys.readouterr()
    assert main(["report", "no-such-run"]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err


def timed_node(i: int, parent: int | None, ms: float | None, outcome=Outcome.CORRECT) -> Node:
    base = Baselines(eager=Timing(4.0, 4, 4, 4, 10, "cuda events"), compile_default=Timing(2.0, 2, 2, 2, 10, "e"))
    timing = Timing(ms, ms, ms, ms, 100, "cuda events, L2 flushed") if ms else None
    diag = Diagnosis("memory", f"node {i} moves its bytes", floor_ms=0.5, fraction_of_floor=0.5 / ms if ms else None)
    ev = Evaluation(f"h{i}", "softmax", "h100-sxm", "H100", {"M": 8}, outcome, timing=timing, baselines=base,
                    diagnosis=diag if ms else None, wall_s=1.5, error="" if ms else "boom")
    fitness = 2.0 / ms if ms else 0.0
    code = f"# kernel {i}\nimport triton\n"
    return Node(i, parent, Candidate(code, "softmax", Origin("offline", "softmax")), "inherit", 0, i, ev, fitness,
                remeasure=ev if i == 3 else None)


def test_a_timed_tree_gives_a_best_so_far_speedup_curve_and_speedups_on_the_page():
    from kevolve.report.run_page import RunData, curve, render
    from kevolve.search.store import RunRecord
    from kevolve.synth.llm.client import Usage

    tree = SearchTree([timed_node(1, None, 2.0), timed_node(2, 1, None, Outcome.CRASHED), timed_node(3, 1, 1.0),
                       timed_node(4, 3, 1.6)], baseline="fastest")
    c = curve(tree)
    assert c.timed and c.xs == (1, 2, 3, 4) and c.ys == (1.0, 1.0, 2.0, 2.0)
    assert c.points == ((1, 1.0), (3, 2.0), (4, 1.25))  # the crashed one has no speed
    record = RunRecord("r1", "softmax", "h100-sxm", {}, "finished", "t0", "t1", 1, 12.0, 3, "budget spent", 3)
    html = render(RunData(record, None, tree, (), Usage(2, 0, 100, 50), interpreter=False))
    assert "interpreter-banner" not in html
    assert "1 ms, 2.00x over the fastest baseline" in html and "50% of the floor" in html
    assert "eager 4 ms, compile default 2 ms" in html and "150 completion tokens" not in html
    assert "100 prompt + 50 completion tokens" in html and "7.5 s" in html  # 4 evaluations + 1 re-measure, 1.5 s each
    assert "Speedup over the evaluations" in html
    assert "<th>outcomes</th><td>correct 3, crashed 1</td>" in html
    assert '<td class="o-crashed">crashed</td>' in html
    assert thick_edges(html) == 2  # nodes 1 and 3 lead to the best
