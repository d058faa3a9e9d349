"""A tuning run as one self-contained HTML page (report.html beside the run's other outputs):
the summary, the search tree drawn with the path to the best kernel, the speedup curve, the best
kernel's code, the diagnosis and the retrieved knowledge behind each step, and the cost.

Everything is read from the search store, so the page can be rebuilt for any run, finished or
stopped (`kevolve report RUN`). Under Triton's interpreter no time is a kernel speed: the page
says so at the top, and its curve counts correct kernels instead of a speedup.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Sequence

from kevolve.evaluate.result import BASELINE_NAMES, Baselines, Evaluation
from kevolve.report.tree_svg import legend_html, outcome_of, tree_svg
from kevolve.search.config import TuneSettings
from kevolve.search.fitness import speedup
from kevolve.search.store import RetrievalRow, RunRecord, SearchStore
from kevolve.search.tree import Node, SearchTree
from kevolve.synth.llm.client import Usage

INTERPRETER_BANNER = ("Kernels ran under Triton's interpreter on the CPU: every time on this page is interpreter "
                      "wall clock, never kernel speed, and no speedup is claimed. Fitness is correctness only.")


@dataclass(frozen=True)
class RunData:
    run: RunRecord
    settings: TuneSettings | None
    tree: SearchTree
    retrievals: tuple[RetrievalRow, ...]
    llm: Usage
    interpreter: bool
    notes: tuple[str, ...] = ()

    @property
    def best(self) -> Node | None:
        return self.tree.best(confirmed_only=True) or self.tree.best()

    def evaluation_seconds(self) -> float:
        return sum(ev.wall_s for n in self.tree for ev in (n.evaluation, n.remeasure) if ev is not None)

    def baselines(self) -> Baselines | None:
        for n in [self.best] + self.tree.evaluated():
            ev = n.remeasure or n.evaluation if n is not None else None
            if ev is not None and ev.baselines is not None:
                return ev.baselines
        return self.tree.baselines


def load_run(store: SearchStore, run_id: str, notes: Sequence[str] = ()) -> RunData:
    run = store.run(run_id)
    try:
        settings = TuneSettings.from_dict(run.settings)
    except Exception:  # settings written by another version: the page does without them
        settings = None
    baseline = settings.search.baseline if settings else "fastest"
    tree = SearchTree.from_rows(store.nodes(run_id), store.evaluations(run_id), store.expansions(run_id), baseline)
    return RunData(run, settings, tree, tuple(store.retrievals(run_id)), store.llm_usage(run_id),
                   _interpreter(run.target, tree), tuple(notes))


def _interpreter(target_name: str, tree: SearchTree) -> bool:
    try:
        from kevolve.hardware import load_target

        return load_target(target_name).interpreter
    except Exception:  # a target file this checkout lacks: the timings tell
        return any(n.evaluation and n.evaluation.timing and n.evaluation.timing.interpreter for n in tree)


# The curve ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Curve:
    """Over the run's evaluations (in the order they were made): the best speedup so far and each
    evaluation's own, or, with no kernel speed (the interpreter), the correct kernels so far."""

    timed: bool
    xs: tuple[int, ...]
    ys: tuple[float, ...]
    points: tuple[tuple[int, float], ...]


def curve(tree: SearchTree) -> Curve:
    evaluated = tree.evaluated()
    speeds = [speedup(n.evaluation, tree.baseline, tree.baselines) for n in evaluated]
    if any(s is not None for s in speeds):
        xs, ys, points, best = [], [], [], None
        for i, s in enumerate(speeds, 1):
            if s is not None:
                points.append((i, s))
                best = s if best is None else max(best, s)
            if best is not None:
                xs.append(i)
                ys.append(best)
        return Curve(True, tuple(xs), tuple(ys), tuple(points))
    counts, correct = [], 0
    for n in evaluated:
        correct += n.correct
        counts.append(float(correct))
    return Curve(False, tuple(range(1, len(counts) + 1)), tuple(counts), ())


def curve_svg(data: Curve) -> str:
    from kevolve.report.plots import Series, line_svg

    if data.timed:
        return line_svg([Series("best so far", data.xs, data.ys, points=data.points)],
                        title="Speedup over the evaluations", xlabel="evaluations",
                        ylabel="speedup over the baseline (x)", reference=1.0,
                        note="dots: each correct kernel; line: the best so far")
    return line_svg([Series("correct kernels", data.xs, data.ys)], title="Correct kernels over the evaluations",
                    xlabel="evaluations", ylabel="correct kernels so far",
                    note="interpreter: no kernel speed, so no speedup curve")


# The page -------------------------------------------------------------------------------------
def write(directory: Path, store: SearchStore, run_id: str, notes: Sequence[str] = ()) -> Path:
    path = directory / "report.html"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(render(load_run(store, run_id, notes)))
    return path


def render(data: RunData) -> str:
    run, tree, best = data.run, data.tree, data.best
    title = f"{run.spec_name} on {run.target}: run {run.id}"
    parts = [f"<h1>{escape(title)}</h1>"]
    if data.interpreter:
        parts.append(f'<p class="banner" id="interpreter-banner">{escape(INTERPRETER_BANNER)}</p>')
    parts += [_summary(data), _cost(data)]
    if data.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in data.notes) + "</ul>")
    parts += ['<h2 id="tree">Search tree</h2>',
              "<p>Each circle is a candidate, hung under the node it was made from; the box is the PyTorch "
              "reference. Click a node for its row below.</p>", legend_html(),
              f'<div class="scroll">{tree_svg(tree, best, lambda n: _describe(data, n))}</div>']
    parts += ['<h2 id="curve">Progress</h2>', f'<div class="plot">{curve_svg(curve(tree))}</div>']
    if best is not None:
        parts += [f'<h2 id="best-kernel">Best kernel: node #{best.id}</h2>',
                  f"<p>{escape(_result(data, best))}</p>",
                  f'<pre class="code"><code>{escape(best.candidate.code)}</code></pre>']
    else:
        parts.append('<h2 id="best-kernel">Best kernel</h2><p>No kernel passed every check; the table below '
                     "says why each failed.</p>")
    parts.append(_steps(data))
    parts.append(_nodes_table(data))
    parts.append(_retrieved(data))
    return PAGE.format(title=escape(title), style=STYLE, body="\n".join(parts), script=SCRIPT)


def _summary(data: RunData) -> str:
    run, best, s = data.run, data.best, data.settings
    rows = [("operator", run.spec_name + (f" ({s.spec})" if s else "")), ("target", run.target),
            ("status", f"{run.status}: {run.finished_reason or 'no reason recorded'}"),
            ("started", run.created_at), ("last written", run.updated_at)]
    if s is not None:
        c = s.search
        rows += [("policy", c.policy), ("synthesizer", s.synthesizer + (f" ({s.llm_model} at {s.llm_url})"
                                                                         if s.synthesizer == "llm" else "")),
                 ("budget", f"{c.budget} evaluations" + (f", {c.wall_time_s:g} s" if c.wall_time_s else "")),
                 ("speedup over", c.baseline)]
    evaluated = data.tree.evaluated()
    outcomes = sorted(Counter(map(outcome_of, data.tree)).items())
    rows += [("evaluated", f"{len(evaluated)} candidates, {sum(n.correct for n in evaluated)} correct"),
             ("outcomes", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in outcomes))]
    rows.append(("best", f"node #{best.id}: {_result(data, best)}" if best else "none passed every check"))
    base = data.baselines()
    if base is not None and not data.interpreter:
        rows.append(("baselines", ", ".join(f"{n.replace('_', ' ')} {t.median_ms:.4g} ms" for n in BASELINE_NAMES
                                             if (t := base.get(n)) is not None) or "none timed"))
    ev = (best.remeasure or best.evaluation) if best else None
    if ev is not None and ev.diagnosis is not None and ev.diagnosis.fraction_of_floor is not None \
            and not data.interpreter:
        rows.append(("roofline", f"{ev.diagnosis.fraction_of_floor:.0%} of the floor "
                                 f"({ev.diagnosis.floor_ms:.4g} ms, {ev.diagnosis.bound}-bound)"))
    return '<h2 id="summary">Summary</h2>' + _table(rows, "summary")


def _cost(data: RunData) -> str:
    u = data.llm
    seconds = "interpreter seconds" if data.interpreter else "GPU seconds"
    rows = [("wall time", f"{data.run.elapsed_s:.1f} s over {data.run.sessions} session(s), "
                          f"{data.run.rounds} round(s)"),
            ("evaluations", f"{len(data.tree.evaluated())} + "
                            f"{sum(1 for n in data.tree if n.remeasure is not None)} re-measures"),
            (f"evaluation {seconds}", f"{data.evaluation_seconds():.1f} s (worker wall clock: compile, check, time)"),
            ("LLM", f"{u.requests} requests ({u.failures} unusable), {u.prompt_tokens} prompt + "
                    f"{u.completion_tokens} completion tokens" if u.requests else "none (no LLM was asked)")]
    return '<h2 id="cost">Cost</h2>' + _table(rows, "cost")


def _steps(data: RunData) -> str:
    best = data.best
    if best is None:
        return ""
    out = ['<h2 id="path">From the reference to the best kernel</h2><ol class="steps">',
           "<li><b>the PyTorch reference</b></li>"]
    for node in data.tree.path(best.id):
        o = node.candidate.origin
        items = [f"made by: {escape(node.candidate.origin.made_by())}"]
        if o.note:
            items.append(f"change: {escape(o.note)}")
        items.append(f"result: {escape(_result(data, node))}")
        ev = node.remeasure or node.evaluation
        if ev is not None and ev.diagnosis is not None:
            d = ev.diagnosis
            text = f"diagnosis: <b>{escape(d.bound)}-bound</b>. {escape(d.summary)}"
            if d.suggestions:
                text += "<br>suggested next: " + escape("; ".join(d.suggestions[:4]))
            items.append(text)
        retrieval = _retrieval_for(data, node)
        if retrieval is not None:
            items.append("retrieved for its prompt: " + _retrieval_html(retrieval))
        out.append(f'<li class="step" id="step-{node.id}"><b>node #{node.id}</b> ({escape(node.memory_mode)})<ul>'
                   + "".join(f"<li>{i}</li>" for i in items) + "</ul></li>")
    return "".join(out) + "</ol>"


def _nodes_table(data: RunData) -> str:
    head = ("<tr><th>node</th><th>parent</th><th>round</th><th>memory</th><th>made by</th><th>outcome</th>"
            f"<th>{'interpreter ms' if data.interpreter else 'ms'}</th><th>speedup</th><th>bound</th>"
            "<th>diagnosis / error</th><th>retrieved</th></tr>")
    rows = []
    for n in data.tree:
        ev = n.evaluation
        s = speedup(ev, data.tree.baseline, data.tree.baselines) if ev else None
        detail = ""
        if ev is not None and ev.error:
            detail = ev.error.strip().splitlines()[0][:300]
        elif ev is not None and not ev.correct and ev.failed_checks():
            c = ev.failed_checks()[0]
            detail = f"{c.name}: {c.detail}"[:300]
        elif ev is not None and ev.diagnosis is not None:
            detail = ev.diagnosis.summary[:300]
        retrieval = _retrieval_for(data, n)
        docs = ", ".join(src for src, _, _ in retrieval.documents) if retrieval else ""
        cls = "best" if data.best is not None and n.id == data.best.id else ""
        outcome = outcome_of(n)
        rows.append(
            f'<tr id="node-{n.id}" class="{cls}"><td>#{n.id}</td><td>{"#" + str(n.parent_id) if n.parent_id else "ref"}'
            f"</td><td>{n.round}</td><td>{escape(n.memory_mode)}</td><td>{escape(n.candidate.origin.made_by())}</td>"
            f'<td class="o-{outcome}">{outcome.replace("_", " ")}</td>'
            f"<td>{_ms(ev)}</td><td>{f'{s:.2f}x' if s is not None else '-'}</td>"
            f"<td>{escape(ev.diagnosis.bound) if ev and ev.diagnosis else '-'}</td><td>{escape(detail)}</td>"
            f"<td>{escape(docs)}</td></tr>")
    return '<h2 id="nodes">Every candidate</h2><div class="scroll"><table class="nodes">' + head + "".join(rows) \
        + "</table></div>"


def _retrieved(data: RunData) -> str:
    if not data.retrievals:
        return ('<h2 id="knowledge">Retrieved knowledge</h2><p>Nothing was retrieved for this run (no knowledge '
                "base, or it held nothing for this operator and target).</p>")
    counts: dict[str, tuple[str, int]] = {}
    skills: dict[str, str] = {}
    for r in data.retrievals:
        for source, title, _ in r.documents:
            counts[source] = (title, counts.get(source, ("", 0))[1] + 1)
        skills.update(dict(r.skills))
    rows = "".join(f"<tr><td>{escape(s)}</td><td>{escape(t)}</td><td>{k}</td></tr>"
                   for s, (t, k) in sorted(counts.items(), key=lambda kv: -kv[1][1]))
    out = ('<h2 id="knowledge">Retrieved knowledge</h2><table class="knowledge"><tr><th>document</th><th>title</th>'
           f"<th>expansions</th></tr>{rows}</table>")
    if skills:
        out += "<h3>Skills offered</h3><ul>" + "".join(f"<li>{escape(d)}</li>" for d in skills.values()) + "</ul>"
    return out


# Pieces ---------------------------------------------------------------------------------------
def _retrieval_for(data: RunData, node: Node) -> RetrievalRow | None:
    return next((r for r in data.retrievals if r.round == node.round and r.attaches_to == node.parent_id
                 and r.memory_mode == node.memory_mode), None)


def _retrieval_html(r: RetrievalRow) -> str:
    docs = [f"{escape(source)} ({escape(title)}, similarity {score:.2f})" for source, title, score in r.documents]
    skills = [f"skill {escape(d)}" for _, d in r.skills]
    return "<ul>" + "".join(f"<li>{x}</li>" for x in docs + skills) + "</ul>"


def _result(data: RunData, node: Node) -> str:
    ev = node.remeasure or node.evaluation
    if ev is None:
        return "not evaluated (in flight when the run stopped)"
    if not ev.correct:
        return ev.outcome.value.replace("_", " ")
    s = speedup(ev, data.tree.baseline, data.tree.baselines)
    if s is not None:
        return f"correct, {ev.timing.median_ms:.4g} ms, {s:.2f}x over the {data.tree.baseline} baseline"
    if ev.timing is not None and ev.timing.interpreter:
        return "correct (interpreter: no kernel speed)"
    return "correct"


def _describe(data: RunData, node: Node) -> str:
    made = node.candidate.origin.made_by()
    return f"#{node.id} ({node.memory_mode}, round {node.round}): {_result(data, node)}; made by {made}"


def _ms(ev: Evaluation | None) -> str:
    if ev is None or ev.timing is None:
        return "-"
    return f"{ev.timing.median_ms:.4g}" + (" (interp.)" if ev.timing.interpreter else "")


def _table(rows: Sequence[tuple[str, str]], cls: str) -> str:
    return f'<table class="{cls}">' + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
                                              for k, v in rows) + "</table>"


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{style}</style></head>
<body>
{body}
<script>{script}</script>
</body></html>
"""

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; line-height: 1.4; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.88em; } th, td { border: 1px solid #ddd; padding: 3px 6px;
text-align: left; vertical-align: top; } table.summary th, table.cost th { background: #f6f6f6; width: 12em; }
table.nodes tr.best { background: #e8f0fc; } tr.focus { outline: 2px solid #1f5fbf; }
.banner { background: #fff3cd; border: 1px solid #e0c060; padding: 0.6em; }
.scroll { overflow-x: auto; } .plot svg { max-width: 100%; height: auto; }
pre.code { background: #f7f7f7; border: 1px solid #ddd; padding: 0.8em; overflow-x: auto; font-size: 0.82em; }
.legend .key { margin-right: 1em; font-size: 0.85em; white-space: nowrap; }
.o-correct { color: #1a7a1a; } .o-wrong, .o-crashed, .o-timed_out { color: #b02020; }
ol.steps > li { margin-bottom: 0.6em; }
"""

# Clicking a node of the tree marks its row; the last line says the script ran to its end.
SCRIPT = """
document.querySelectorAll('a.tree-node').forEach(function (link) {
  link.addEventListener('click', function () {
    document.querySelectorAll('tr.focus').forEach(function (row) { row.classList.remove('focus'); });
    var row = document.getElementById('node-' + link.dataset.node);
    if (row) { row.classList.add('focus'); }
  });
});
document.body.dataset.nodes = String(document.querySelectorAll('a.tree-node').length);
document.body.dataset.ready = 'yes';
"""
