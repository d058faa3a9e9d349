"""The search tree drawn as SVG: the reference at the top, each node a circle coloured by its
outcome, and the path from the reference to the best kernel drawn thick. Each node links to its
row in the page (#node-N) and says what it was in a tooltip."""

from __future__ import annotations

from html import escape
from typing import Callable

from kevolve.search.tree import Node, SearchTree

OUTCOME_COLORS = {
    "correct": "#2ca02c", "wrong": "#ff7f0e", "rejected": "#9e9e9e", "compile_error": "#9467bd",
    "crashed": "#d62728", "timed_out": "#8c564b", "pending": "#ffffff",
}
PATH_COLOR = "#1f5fbf"
STEP_X, STEP_Y, RADIUS, MARGIN = 26, 54, 9, 20


def outcome_of(node: Node) -> str:
    return node.evaluation.outcome.value if node.evaluation else "pending"


def layout(tree: SearchTree) -> tuple[dict[int | None, tuple[float, int]], int, int]:
    """(x slot, depth) of every node and of the root (None); leaves take the slots in depth-first
    order and a parent sits over the middle of its children. Also the slot count and the depth."""
    where: dict[int | None, tuple[float, int]] = {}
    next_slot = 0
    deepest = 0
    # An explicit stack: a long line of children must not hit Python's recursion limit.
    stack: list[tuple[int | None, int, bool]] = [(None, 0, False)]
    while stack:
        node_id, depth, done = stack.pop()
        kids = [c.id for c in tree.children(node_id)]
        deepest = max(deepest, depth)
        if not kids:
            where[node_id] = (float(next_slot), depth)
            next_slot += 1
        elif done:
            xs = [where[k][0] for k in kids]
            where[node_id] = ((min(xs) + max(xs)) / 2, depth)
        else:
            stack.append((node_id, depth, True))
            stack.extend((k, depth + 1, False) for k in reversed(kids))
    return where, max(next_slot, 1), deepest


def tree_svg(tree: SearchTree, best: Node | None, describe: Callable[[Node], str]) -> str:
    where, slots, deepest = layout(tree)
    on_path = {n.id for n in tree.path(best.id)} if best is not None else set()
    width = 2 * MARGIN + (slots - 1) * STEP_X
    height = 2 * MARGIN + deepest * STEP_Y

    def xy(node_id: int | None) -> tuple[float, float]:
        slot, depth = where[node_id]
        return MARGIN + slot * STEP_X, MARGIN + depth * STEP_Y

    edges, circles = [], []
    for node in tree:
        (x1, y1), (x2, y2) = xy(node.parent_id), xy(node.id)
        thick = node.id in on_path
        edges.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                     f'stroke="{PATH_COLOR if thick else "#b0b0b0"}" stroke-width="{3 if thick else 1}"/>')
        outcome = outcome_of(node)
        ring = (f'<circle cx="{x2:.1f}" cy="{y2:.1f}" r="{RADIUS + 4}" fill="none" stroke="{PATH_COLOR}" '
                f'stroke-width="2"/>' if best is not None and node.id == best.id else "")
        circles.append(
            f'<a href="#node-{node.id}" class="tree-node" data-node="{node.id}" data-outcome="{outcome}">'
            f'<title>{escape(describe(node))}</title>{ring}'
            f'<circle cx="{x2:.1f}" cy="{y2:.1f}" r="{RADIUS}" fill="{OUTCOME_COLORS[outcome]}" '
            f'stroke="{PATH_COLOR if node.id in on_path else "#444444"}" stroke-width="{2 if node.id in on_path else 1}"/>'
            f'<text x="{x2:.1f}" y="{y2 + 3:.1f}" text-anchor="middle" font-size="8">{node.id}</text></a>')
    rx, ry = xy(None)
    root = (f'<rect x="{rx - 11:.1f}" y="{ry - 9:.1f}" width="22" height="18" rx="3" fill="#f4f4f4" '
            f'stroke="#444444"><title>the PyTorch reference</title></rect>'
            f'<text x="{rx:.1f}" y="{ry + 3:.1f}" text-anchor="middle" font-size="8">ref</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="search tree" font-family="sans-serif">'
            + "".join(edges) + root + "".join(circles) + "</svg>")


def legend_html() -> str:
    items = "".join(f'<span class="key"><svg width="12" height="12"><circle cx="6" cy="6" r="5" fill="{c}" '
                    f'stroke="#444444"/></svg> {escape(o.replace("_", " "))}</span>'
                    for o, c in OUTCOME_COLORS.items())
    return (f'<p class="legend">{items}<span class="key"><svg width="22" height="12"><line x1="0" y1="6" x2="22" '
            f'y2="6" stroke="{PATH_COLOR}" stroke-width="3"/></svg> path to the best kernel</span></p>')
