"""One problem as the paper draws it: structure graph, dependency graph, text and solution.

``python -m igsm show`` prints :func:`describe` (text only) or saves :func:`draw_problem`'s figure.
The figure is drawn with matplotlib's Agg canvas directly (no pyplot, no GUI backend), so it
works headless; the layered layouts use networkx. No torch here.

Picture conventions (the legend repeats them):

* structure graph: one row per layer, the category on the left, one box per item; an edge
  (A above, B below) is the instance parameter "A's B" (each A contains some B), drawn thick and
  orange when the solution needs it;
* dependency graph: one box per parameter, arrows from the inputs to the parameter they define,
  columns by depth (a parameter sits right of all its inputs); orange = necessary, grey =
  unnecessary, dashed border = abstract ("A's <category>", never stated), thick red border = the
  question. Each box shows the value and, for necessary parameters, the solution's letter.
  Literal numbers (the paper's RNG node) are written in the box rather than drawn as a node.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass

from .problem import ABS, INST, Param, Problem

NECESSARY_FILL = "#f6b26b"
UNNECESSARY_FILL = "#e8e8e8"
QUESTION_EDGE = "#c0392b"
NECESSARY_EDGE = "#d9822b"


@dataclass
class ShownProblem:
    """What the figure and the text describe: the problem object and the text it came with."""

    problem: Problem
    problem_text: str
    solution: str
    answer: object
    title: str


# ----------------------------------------------------------------------------------------------
# text
# ----------------------------------------------------------------------------------------------
def formula(problem: Problem, p: Param) -> str:
    """How p is computed, with parameter names: ``3 + (A's B - C's D)``, ``sum over children``."""
    eq = problem.equations[p]
    names = [problem.param_name(q) for q in eq.inputs]
    if eq.abstract:
        if not names:
            return "0 (no children)"
        if eq.products:
            pairs = [f"{names[i]} * {names[i + 1]}" for i in range(0, len(names), 2)]
            return " + ".join(pairs)
        return " + ".join(names)
    if not names:
        return str(eq.literal)
    base = (" - " if eq.combine == "diff" else " + ").join(names)
    if eq.literal is None:
        return base
    if len(names) > 1:
        base = f"({base})"
    return f"{eq.literal} {'*' if eq.literal_op == 'times' else '+'} {base}"


def describe(shown: ShownProblem, width: int = 100) -> str:
    """The problem, its solution, and both graphs as plain text (``show`` without ``--out``)."""
    p = shown.problem

    def wrap(text: str) -> str:
        return textwrap.fill(text, width, initial_indent="  ", subsequent_indent="  ")

    lines = [shown.title, "", "Problem:", wrap(shown.problem_text), "", "Solution:"]
    lines += [wrap(s) for s in solution_sentences(shown.solution)]
    lines += [f"Answer: {shown.answer}", ""]
    lines.append("Structure graph (layers of items; an edge A -> B is the instance parameter \"A's B\"):")
    for i, names in enumerate(p.names):
        lines.append(f"  layer {i} ({p.categories[i]}): {', '.join(names)}")
    for i, layer in enumerate(p.children):
        for j, kids in enumerate(layer):
            if kids:
                lines.append(f"  {p.names[i][j]} -> {', '.join(p.names[i + 1][k] for k in kids)}")
    lines += ["", "Dependency graph (in definition order; N = necessary, Q = the question, "
                  "letter = the solution's; abstract parameters are marked):"]
    necessary = p.necessary
    for q in p.definition_order:
        mark = "Q" if q == p.question else ("N" if q in necessary else ".")
        letter = p.letters.get(q, "")
        kind = " [abstract]" if q.kind == ABS else ""
        lines.append(f"  {mark} {letter:>1}  {p.param_name(q)}{kind} = {p.values[q]}  <- {formula(p, q)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# layouts
# ----------------------------------------------------------------------------------------------
def dependency_graph(problem: Problem):
    """``networkx.DiGraph`` over Param keys, edge input -> parameter (no RNG node)."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(problem.definition_order)
    for p in problem.definition_order:
        for q in problem.equations[p].inputs:
            g.add_edge(q, p)
    return g


def dependency_layout(problem: Problem) -> dict[Param, tuple[float, float]]:
    """Columns by depth (networkx topological generations: every input left of its user); in a
    column the necessary parameters first, then by the mean row of their inputs (fewer crossings)."""
    import networkx as nx

    g = dependency_graph(problem)
    columns = [list(c) for c in nx.topological_generations(g)]
    order = {p: i for i, p in enumerate(problem.definition_order)}
    necessary = problem.necessary
    row: dict[Param, float] = {}
    pos: dict[Param, tuple[float, float]] = {}
    for x, column in enumerate(columns):
        def key(p: Param) -> tuple:  # necessary parameters on top, then by their inputs' rows
            preds = [row[q] for q in g.predecessors(p) if q in row]
            return (p not in necessary, sum(preds) / len(preds) if preds else float(order[p]), order[p])
        column.sort(key=key)
        for r, p in enumerate(column):
            row[p] = float(r)
            pos[p] = (float(x), -row[p])
    return pos


def structure_layout(problem: Problem) -> dict[tuple[int, int], tuple[float, float]]:
    """Item (layer, index) -> (x, y): one row per layer, items spread evenly and centred."""
    widest = max(len(layer) for layer in problem.names)
    pos = {}
    for i, layer in enumerate(problem.names):
        n = len(layer)
        for j in range(n):
            pos[(i, j)] = ((j - (n - 1) / 2) * widest / max(n, 1), -float(i))
    return pos


# ----------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------
def _box(ax, xy, w, h, text, *, fill, edge, lw=1.0, ls="-", fontsize=7.0, weight="normal"):
    from matplotlib.patches import FancyBboxPatch

    x, y = xy
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.06",
                                facecolor=fill, edgecolor=edge, linewidth=lw, linestyle=ls, zorder=3))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight=weight, zorder=4, wrap=False)


def _clip_to_box(a, b, w, h):
    """The point where the segment from box centre a towards b leaves a's w x h box."""
    (ax_, ay), (bx, by) = a, b
    dx, dy = bx - ax_, by - ay
    scale = min(w / 2 / abs(dx) if dx else float("inf"), h / 2 / abs(dy) if dy else float("inf"))
    return (ax_ + dx * scale, ay + dy * scale)


def _two_lines(name: str, width: int = 17) -> str:
    """``A's B`` as ``A's`` / ``B`` (each wrapped at ``width``) so boxes stay narrow."""
    owner, sep, rest = name.partition("'s ")
    parts = [owner + "'s", rest] if sep else [name]
    return "\n".join(textwrap.fill(part, width) for part in parts)


def draw_structure(ax, problem: Problem) -> None:
    pos = structure_layout(problem)
    widest = max(len(layer) for layer in problem.names)
    necessary = problem.necessary
    w, h = 0.85, 0.34  # items sit at least 1 apart (structure_layout)
    for i, layer in enumerate(problem.children):
        for j, kids in enumerate(layer):
            for k in kids:
                used = Param(INST, i, j, k) in necessary
                (x0, y0), (x1, y1) = pos[(i, j)], pos[(i + 1, k)]
                ax.plot([x0, x1], [y0 - h / 2, y1 + h / 2], color=NECESSARY_EDGE if used else "#9a9a9a",
                        linewidth=2.6 if used else 1.0, zorder=1)
    question_owner = (problem.question.layer, problem.question.item)
    for (i, j), xy in pos.items():
        is_owner = (i, j) == question_owner
        _box(ax, xy, w, h, textwrap.fill(problem.names[i][j], 16), fill="white",
             edge=QUESTION_EDGE if is_owner else "black", lw=2.0 if is_owner else 0.8, fontsize=7.5)
    half = widest / 2
    for i, category in enumerate(problem.categories):
        ax.text(-half - 0.1, -i, category, ha="right", va="center", fontsize=9, weight="bold", color="#444444")
    ax.set_xlim(-half - 1.4, half + 0.1)
    ax.set_ylim(-(problem.d - 1) - 0.45, 0.45)
    ax.set_title("Structure graph: items by layer; an edge is an instance parameter (orange: needed)",
                 fontsize=9.5, loc="left")
    ax.axis("off")


def draw_dependency(ax, problem: Problem, min_columns: float = 0.0) -> None:
    """``min_columns``: the panel's width in columns, so boxes keep their shape in a wide figure."""
    from matplotlib.patches import FancyArrowPatch, Patch

    pos = dependency_layout(problem)
    g = dependency_graph(problem)
    necessary = problem.necessary
    w, h = 0.74, 0.7
    for q, p in g.edges:
        start = _clip_to_box(pos[q], pos[p], w, h)
        end = _clip_to_box(pos[p], pos[q], w, h)
        used = p in necessary
        # Bend edges that skip a column so they pass around the boxes between. On one row the arc
        # joins the tops of the two boxes and rises about half a row (rad x length / 2).
        span = pos[p][0] - pos[q][0]
        rad = 0.0 if span <= 1 else -0.12
        if span > 1 and pos[p][1] == pos[q][1]:
            start, end = (pos[q][0], pos[q][1] + h / 2), (pos[p][0], pos[p][1] + h / 2)
            rad = -0.3 / span
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, shrinkA=0, shrinkB=0,
                                     connectionstyle=f"arc3,rad={rad}",
                                     color="#333333" if used else "#a0a0a0", linewidth=1.1 if used else 0.7,
                                     zorder=2, clip_on=False))
    for p, xy in pos.items():
        eq = problem.equations[p]
        value = f"= {problem.values[p]}"
        if p in problem.letters:
            value = f"{problem.letters[p]} {value}"
        if eq.literal is not None and eq.inputs:  # without inputs the value is the literal
            value += f"  (literal {eq.literal})"
        question = p == problem.question
        _box(ax, xy, w, h, f"{_two_lines(problem.param_name(p))}\n{value}",
             fill=NECESSARY_FILL if p in necessary else UNNECESSARY_FILL,
             edge=QUESTION_EDGE if question else "#333333", lw=2.4 if question else 0.8,
             ls="--" if p.kind == ABS else "-", fontsize=6.3, weight="bold" if question else "normal")
    xs = [x for x, _ in pos.values()]
    ys = [y for _, y in pos.values()]
    ax.set_xlim(min(xs) - 0.55, max(max(xs) + 0.55, min(xs) - 0.55 + min_columns))
    ax.set_ylim(min(ys) - 0.5, max(ys) + 0.9)  # room for the arcs above the top row
    ax.set_title("Dependency graph: arrows from inputs to the parameter they define", fontsize=9.5, loc="left")
    handles = [Patch(facecolor=NECESSARY_FILL, edgecolor="#333333", label="necessary"),
               Patch(facecolor=UNNECESSARY_FILL, edgecolor="#333333", label="unnecessary"),
               Patch(facecolor="white", edgecolor="#333333", linestyle="--", label="abstract (A's category)"),
               Patch(facecolor="white", edgecolor=QUESTION_EDGE, linewidth=2.4, label="the question")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 0.0), ncol=4, fontsize=7.5, frameon=False)
    ax.axis("off")


def _text_lines(shown: ShownProblem, width: int = 92) -> list[str]:
    body = ["Problem:", *textwrap.wrap(shown.problem_text, width), "", "Solution:"]
    for sentence in solution_sentences(shown.solution):
        body += textwrap.wrap(sentence, width, subsequent_indent="    ")
    return body + ["", f"Answer: {shown.answer}"]


def solution_sentences(solution: str) -> list[str]:
    """The solution's ``Define ...`` sentences (each ends with "."), for one-per-line display."""
    parts = [s.strip() for s in solution.split(". ") if s.strip()]
    return [s if s.endswith(".") else s + "." for s in parts]


def draw_text(ax, shown: ShownProblem) -> None:
    ax.text(0.0, 1.0, "\n".join(_text_lines(shown)), ha="left", va="top", fontsize=7.4,
            transform=ax.transAxes, linespacing=1.3)
    ax.axis("off")


def draw_problem(shown: ShownProblem):
    """The figure (a matplotlib ``Figure`` on an Agg canvas): graphs on the left, text on the right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p = shown.problem
    pos = dependency_layout(p)
    columns = 1 + max(x for x, _ in pos.values())
    rows = 1 + max(y for _, y in pos.values()) - min(y for _, y in pos.values())
    struct_w = 1.7 * max(len(layer) for layer in p.names) + 1.6
    text_w = 7.2
    inches_per_column = 1.45
    width = max(struct_w + text_w, inches_per_column * columns + 0.4)
    text_h = 0.16 * (len(_text_lines(shown)) + 1)
    top_h = max(0.8 * p.d + 0.4, text_h)
    dep_h = max(2.5, 0.92 * rows + 0.7)
    fig = Figure(figsize=(width, top_h + dep_h + 0.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, width_ratios=[struct_w, width - struct_w], height_ratios=[top_h, dep_h])
    draw_structure(fig.add_subplot(grid[0, 0]), p)
    draw_text(fig.add_subplot(grid[0, 1]), shown)
    draw_dependency(fig.add_subplot(grid[1, :]), p, min_columns=(width - 0.4) / inches_per_column)
    fig.suptitle(shown.title, fontsize=11, x=0.01, ha="left")
    return fig


def save_figure(fig, out):
    """Save ``fig`` to a path (format by suffix: png, svg, pdf) or a binary file object (PNG), then
    free it (pyplot holds every figure it made until it is closed). Returns ``out``."""
    try:
        fig.savefig(out, format="png" if hasattr(out, "write") else None)
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")  # loaded only if a figure came from pyplot
        if pyplot is not None:
            pyplot.close(fig)
    return out


__all__ = ["ShownProblem", "describe", "formula", "dependency_graph", "dependency_layout", "structure_layout",
           "draw_problem", "save_figure"]
