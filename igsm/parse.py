"""Text-only mode: rebuild a Problem from its problem text and a world (docs/spec.md#12-verification).

    problem = parse_problem(problem_text, world)        # raises ParseError
    report = verify_text(problem_text, solution, answer, world)   # never raises

What is read: the statement sentences (``The number of each A's B equals ...``, docs/spec.md#7-the-text) give the
structure graph's edges and the instance parameters' equations; the question (first or last, or
anywhere) gives the question parameter. Statements and question may come in any order, the text
may have leading spaces, and the answer may be a string (reference-format iGSM data).

How items get their layer. Every edge is stated, so an item that appears in no edge has neither
parent nor children, and an item without a parent sits in the problem's top layer (every lower
item has a parent: docs/spec.md#2-the-structure-graph). Hence the top item of every connected
piece of the structure graph is in the top layer, and the edges fix every other item's layer
relative to it. What is left to
choose is the family and the window's top layer: each choice is checked against the world (each
item must be a name of the category at its layer; a name may belong to several categories) and
against the abstract parameters mentioned (their category lies below the owner, inside the
window). When several choices fit (rare: only with names shared between categories), the one
whose layers each draw all names from one world group wins, then the first.

Names are matched against the world, so they may contain spaces, apostrophes (``Trader Joe's's
Cheese``), hyphens, digits, non-ASCII letters and the word "and". If an item name equals a category
name, ``A's X`` is the instance parameter when the edge A -> X is stated, else the abstract one.

The rebuilt Problem holds only the items the text mentions (a childless top-layer item that is
never mentioned is invisible, and changes no value), the stated equations, every abstract
parameter mentioned (with the ones it needs), values, the question, the necessary set and a
solution order (a topological order of the question's ancestors). It has no letters and no
rendered solution.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from .graph import abstract_equation
from .problem import ABS, INST, Equation, Param, Problem
from .verify import Report, verify_solution
from .world import World, load_world

_STATEMENT = "The number of each "
_QUESTION = "How many "
_SPLIT = re.compile(r"(?<=[.?])\s+")
_LITERAL = re.compile(r"(\d{1,6}) (more than|times as much as) ")


class ParseError(ValueError):
    """The problem text cannot be understood; the message says which sentence and why."""


# --------------------------------------------------------------------------------------------
# The world's names
# --------------------------------------------------------------------------------------------
class _WorldIndex:
    __slots__ = ("world", "items", "cats", "groups")

    def __init__(self, world: World):
        self.world = world
        items: dict[str, set[tuple[int, int]]] = {}  # name -> {(family, layer)}
        groups: dict[tuple[str, int, int], set[int]] = {}  # (name, family, layer) -> groups
        cats: dict[str, tuple[int, int]] = {}  # category -> (family, layer)
        for f, fam in enumerate(world.families):
            for li, layer in enumerate(fam.layers):
                cats[layer.category] = (f, li)
                for g, (_, names) in enumerate(layer.groups):
                    for n in names:
                        items.setdefault(n, set()).add((f, li))
                        groups.setdefault((n, f, li), set()).add(g)
        self.items, self.cats, self.groups = items, cats, groups


_INDEX: dict[int, _WorldIndex] = {}


def _index(world: World) -> _WorldIndex:
    ix = _INDEX.get(id(world))
    if ix is None or ix.world is not world:
        if len(_INDEX) > 16:
            _INDEX.clear()
        ix = _INDEX[id(world)] = _WorldIndex(world)
    return ix


# --------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------
def _sentences(text: str) -> list[str]:
    """Split after every '.' or '?' followed by whitespace (names contain neither)."""
    if not text.isprintable() or "  " in text:  # other whitespace than single spaces
        return _SPLIT.split(text)
    out = []
    chunks = text.split(". ")
    last = len(chunks) - 1
    for i, chunk in enumerate(chunks):
        if "? " in chunk:
            subs = chunk.split("? ")
            out.extend(s + "?" for s in subs[:-1])
            chunk = subs[-1]
        out.append(chunk + "." if i < last else chunk)
    return out


def _short(s: str) -> str:
    return repr(s if len(s) <= 100 else s[:97] + "...")


def _pairs(text: str, ix: _WorldIndex, need_item_target: bool) -> list[tuple[str, str]]:
    """Ways to read ``text`` as ``A's X`` with A an item of the world and X an item or category."""
    out = []
    start = 0
    while True:
        i = text.find("'s ", start)
        if i < 0:
            return out
        owner, target = text[:i], text[i + 3:]
        if owner in ix.items and (target in ix.items or (not need_item_target and target in ix.cats)):
            out.append((owner, target))
        start = i + 1


def _one_pair(text: str, ix: _WorldIndex, need_item_target: bool, where: str) -> tuple[str, str]:
    found = _pairs(text, ix, need_item_target)
    if len(found) == 1:
        return found[0]
    what = "two item names" if need_item_target else "an item name and an item or category name"
    if not found:
        raise ParseError(f"{where}: {_short(text)} is not \"A's B\" with {what} of the world")
    raise ParseError(f"{where}: {_short(text)} can be read in several ways: {found}")


def _operands(text: str, ix: _WorldIndex, where: str) -> list[tuple[str, str]]:
    """``each X, each Y and each Z`` (or ``each X and each Y``) -> [(owner, target), ...]."""
    pieces = text.split(", ")
    out = []
    for piece in pieces[:-1]:
        if not piece.startswith("each "):
            raise ParseError(f"{where}: operand {_short(piece)} does not start with 'each '")
        out.append(_one_pair(piece[5:], ix, False, where))
    last = pieces[-1]
    if not last.startswith("each "):
        raise ParseError(f"{where}: operand {_short(last)} does not start with 'each '")
    readings = []
    start = 0
    while True:
        i = last.find(" and each ", start)
        if i < 0:
            break
        a, b = _pairs(last[5:i], ix, False), _pairs(last[i + 10:], ix, False)
        if len(a) == 1 and len(b) == 1:
            readings.append((a[0], b[0]))
        start = i + 1
    if len(readings) != 1:
        if not readings:
            raise ParseError(f"{where}: {_short(last)} is not 'each A's X and each B's Y' with names of the world")
        raise ParseError(f"{where}: {_short(last)} can be split into two operands in several ways")
    out.extend(readings[0])
    return out


def _statement(s: str, ix: _WorldIndex, where: str):
    """-> ((owner, target), [operand pairs], literal, combine, literal_op)."""
    body = s[len(_STATEMENT):-1]
    head = rhs = None
    start = 0
    while True:  # a name could in principle contain " equals ": take the first split that reads
        i = body.find(" equals ", start)
        if i < 0:
            break
        found = _pairs(body[:i], ix, True)
        if len(found) == 1:
            head, rhs = found[0], body[i + 8:]
            break
        if len(found) > 1:
            raise ParseError(f"{where}: {_short(body[:i])} can be read in several ways: {found}")
        start = i + 1
    if head is None:
        raise ParseError(f"{where}: expected 'The number of each A's B equals ...' with item names of the world")
    if rhs.isascii() and rhs.isdigit() and len(rhs) <= 6:
        return head, [], int(rhs), None, None
    literal = literal_op = None
    m = _LITERAL.match(rhs)
    if m:
        literal = int(m.group(1))
        literal_op = "more" if m.group(2) == "more than" else "times"
        rhs = rhs[m.end():]
    if rhs.startswith("the sum of "):
        ops, combine = _operands(rhs[11:], ix, where), "sum"
    elif rhs.startswith("the difference of "):
        ops, combine = _operands(rhs[18:], ix, where), "diff"
        if len(ops) != 2:
            raise ParseError(f"{where}: a difference has exactly two operands, not {len(ops)}")
    elif rhs.startswith("each "):
        ops, combine = [_one_pair(rhs[5:], ix, False, where)], None
    else:
        raise ParseError(f"{where}: after 'equals' expected a number, 'N more than', 'N times as much as', "
                         f"'the sum of', 'the difference of' or 'each', got {_short(rhs)}")
    return head, ops, literal, combine, literal_op


def _question(s: str, ix: _WorldIndex, where: str) -> tuple[str, str]:
    if not (s.startswith(_QUESTION) and s.endswith(" have?")):
        raise ParseError(f"{where}: expected 'How many X does A have?', got {_short(s)}")
    middle = s[len(_QUESTION):-6]
    found = []
    start = 0
    while True:
        i = middle.find(" does ", start)
        if i < 0:
            break
        target, owner = middle[:i], middle[i + 6:]
        if owner in ix.items and (target in ix.items or target in ix.cats):
            found.append((owner, target))
        start = i + 1
    if len(found) != 1:
        raise ParseError(f"{where}: {_short(s)} does not name an item and an item or category of the world"
                         if not found else f"{where}: {_short(s)} can be read in several ways: {found}")
    return found[0]


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
def _relative_layers(items: list[str], edges: list[tuple[str, str]]) -> dict[str, int]:
    """Each item's layer relative to the top of its connected piece (edges go one layer down)."""
    adj: dict[str, list[tuple[str, int]]] = {x: [] for x in items}
    for a, b in edges:
        adj[a].append((b, 1))
        adj[b].append((a, -1))
    rel: dict[str, int] = {}
    for root in items:
        if root in rel:
            continue
        rel[root] = 0
        piece, stack = [root], [root]
        while stack:
            x = stack.pop()
            for y, step in adj[x]:
                if y not in rel:
                    rel[y] = rel[x] + step
                    piece.append(y)
                    stack.append(y)
                elif rel[y] != rel[x] + step:
                    raise ParseError(f"the edges around {x!r} and {y!r} put an item in two layers at once")
        top = min(rel[x] for x in piece)
        for x in piece:
            rel[x] -= top
    return rel


def _place(ix: _WorldIndex, items: list[str], rel: dict[str, int], abstract_refs: list[tuple[str, str]]):
    """Choose (family, top layer): -> (family, top, bottom)."""
    fams = None
    for x in items:
        f = {p[0] for p in ix.items[x]}
        fams = f if fams is None else fams & f
    for _, c in abstract_refs:
        fams &= {ix.cats[c][0]}
    if not fams:
        raise ParseError("the names do not all belong to one family of the world")
    depth = max(rel.values())
    if depth < 1:
        raise ParseError("the statements name no edge between two items")
    fits, reasons = [], []
    for f in sorted(fams):
        layers = ix.world.families[f].layers
        for top in range(len(layers) - depth):
            bottom = top + depth
            bad = next((x for x in items if (f, top + rel[x]) not in ix.items[x]), None)
            if bad is not None:
                reasons.append(f"{bad!r} is not a {layers[top + rel[bad]].category}")
                continue
            wrong = next(((a, c) for a, c in abstract_refs if not top + rel[a] < ix.cats[c][1] <= bottom), None)
            if wrong is not None:
                reasons.append(f"{wrong[1]} is not a layer below {wrong[0]!r} in the problem")
                continue
            fits.append((f, top, bottom))
    if not fits:
        raise ParseError("no family and layers of the world fit the names and edges: " + "; ".join(reasons[:3]))
    if len(fits) == 1:
        return fits[0]

    def score(fit) -> int:  # layers whose names all come from one group of the world
        f, top, bottom = fit
        n = 0
        for layer in range(top, bottom + 1):
            common = None
            for x in items:
                if top + rel[x] == layer:
                    g = ix.groups[x, f, layer]
                    common = g if common is None else common & g
            n += bool(common)
        return n

    return max(fits, key=score)  # the first of the best


# --------------------------------------------------------------------------------------------
# The problem
# --------------------------------------------------------------------------------------------
def parse_problem(problem_text: str, world: Optional[World] = None) -> Problem:
    """Rebuild the Problem (structure, equations, values, question, necessary set) from its text.

    ``world`` defaults to the world shipped with igsm. Raises :class:`ParseError`.
    """
    if isinstance(problem_text, (bytes, bytearray)):
        problem_text = bytes(problem_text).decode("utf-8", "replace")
    if not isinstance(problem_text, str):
        raise ParseError(f"the problem text is a {type(problem_text).__name__}, not a string")
    ix = _index(world if world is not None else load_world())
    text = problem_text.strip()
    if not text:
        raise ParseError("the problem text is empty")
    sentences = _sentences(text)

    statements: list[tuple[int, str, tuple]] = []  # (sentence index, text, parsed)
    question = None
    q_index = -1
    for n, s in enumerate(sentences):
        where = f"sentence {n + 1}"
        if s.startswith(_STATEMENT) and s.endswith("."):
            statements.append((n, s, _statement(s, ix, where)))
        elif s.startswith(_QUESTION) or s.endswith("?"):
            if question is not None:
                raise ParseError(f"{where} is a second question: {_short(s)}")
            question, q_index, q_text = _question(s, ix, where), n, s
        else:
            raise ParseError(f"{where} is neither 'The number of each ...' nor 'How many ...?': {_short(s)}")
    if question is None:
        raise ParseError("the text has no question 'How many X does A have?'")
    if not statements:
        raise ParseError("the text has no statement 'The number of each A's B equals ...'")

    # structure: edges from the statements' heads
    edges: list[tuple[str, str]] = []
    edge_set: set[tuple[str, str]] = set()
    for n, _, (head, *_rest) in statements:
        if head in edge_set:
            raise ParseError(f"sentence {n + 1}: {head[0]}'s {head[1]} is stated twice")
        edge_set.add(head)
        edges.append(head)
    refs = [pair for *_, parsed in statements for pair in parsed[1]] + [question]

    def is_instance(pair: tuple[str, str], where: str) -> bool:
        if pair in edge_set:
            return True
        if pair[1] in ix.cats:
            return False
        raise ParseError(f"{where}: {pair[0]}'s {pair[1]} is used but never stated "
                         f"(and {pair[1]!r} is not a category)")

    abstract_refs = []
    for n, _, (_, ops, *_r) in statements:
        abstract_refs += [pair for pair in ops if not is_instance(pair, f"sentence {n + 1}")]
    if not is_instance(question, f"sentence {q_index + 1} (the question)"):
        abstract_refs.append(question)

    items = list(dict.fromkeys([x for e in edges for x in e] + [a for a, _ in refs]))
    rel = _relative_layers(items, edges)
    f, top, bottom = _place(ix, items, rel, abstract_refs)
    family = ix.world.families[f]
    d = bottom - top + 1
    names: list[list[str]] = [[] for _ in range(d)]
    where_is: dict[str, tuple[int, int]] = {}
    for x in items:
        layer = rel[x]
        where_is[x] = (layer, len(names[layer]))
        names[layer].append(x)
    children: list[list[list[int]]] = [[[] for _ in names[i]] for i in range(d - 1)]
    for a, b in edges:
        i, j = where_is[a]
        children[i][j].append(where_is[b][1])
    for layer in children:
        for kids in layer:
            kids.sort()
    cat_layer = {family.layers[top + i].category: i for i in range(d)}

    def param(pair: tuple[str, str]) -> Param:
        i, j = where_is[pair[0]]
        if pair in edge_set:
            return Param(INST, i, j, where_is[pair[1]][1])
        return Param(ABS, i, j, cat_layer[pair[1]])

    equations: dict[Param, Equation] = {}
    statement_order = []
    for _, _, (head, ops, literal, combine, literal_op) in statements:
        p = param(head)
        statement_order.append(p)
        equations[p] = Equation(tuple(param(x) for x in ops), literal=literal,
                                combine=combine if len(ops) > 1 else None,
                                literal_op=literal_op if ops else None)
    stack = [param(pair) for pair in refs if pair not in edge_set]
    while stack:  # abstract parameters mentioned, and the ones they need
        p = stack.pop()
        if p not in equations:
            equations[p] = eq = abstract_equation(children, p)
            stack.extend(q for q in eq.inputs if q.kind == ABS)
    q_param = param(question)

    order = _topological(equations, list(equations), names, family.layers[top:bottom + 1])
    values: dict[Param, int] = {}
    for p in order:
        values[p] = equations[p].evaluate(values)
    necessary = {q_param}
    stack = [q_param]
    while stack:
        for x in equations[stack.pop()].inputs:
            if x not in necessary:
                necessary.add(x)
                stack.append(x)
    solution_order = [p for p in order if p in necessary]  # a topological order stays one
    problem = Problem(
        family=f,
        layer_offset=top,
        categories=[layer.category for layer in family.layers[top:bottom + 1]],
        names=names,
        children=children,
        equations=equations,
        definition_order=solution_order + [p for p in order if p not in necessary],
        values=values,
        question=q_param,
        solution_order=solution_order,
        statement_order=statement_order,
        letters={},
        fmt="qp" if q_index == 0 and len(sentences) > 1 else "pq",
        statements=[s for _, s, _ in statements],
        question_text=q_text,
    )
    return problem


def _topological(equations: dict, roots: list, names, layers) -> list[Param]:
    """Inputs before the parameters that use them (DFS post-order from ``roots``)."""
    state: dict[Param, int] = {}  # 1 visiting, 2 done
    out: list[Param] = []
    for root in roots:
        if root in state:
            continue
        stack = [(root, iter(equations[root].inputs))]
        state[root] = 1
        while stack:
            p, it = stack[-1]
            q = next(it, None)
            if q is None:
                stack.pop()
                state[p] = 2
                out.append(p)
            elif state.get(q) == 1:
                def nm(x: Param) -> str:
                    owner = names[x.layer][x.item]
                    return f"{owner}'s {names[x.layer + 1][x.target] if x.kind == INST else layers[x.target].category}"
                cycle = [nm(x) for x, _ in stack[[x for x, _ in stack].index(q):]]
                raise ParseError("the statements define parameters in a circle: " + " -> ".join(cycle + [nm(q)]))
            elif q not in state:
                state[q] = 1
                stack.append((q, iter(equations[q].inputs)))
    return out


def verify_text(problem_text: Any, solution: Any, answer: Any = None, world: Optional[World] = None) -> Report:
    """Parse the problem text, then :func:`igsm.verify.verify_solution`. Never raises.

    An unreadable problem gives ``error="problem_parse"`` with the parser's message.
    """
    try:
        problem = parse_problem(problem_text, world)
    except ParseError as e:
        return Report(False, False, "problem_parse", message=f"The problem text cannot be parsed: {e}.")
    except Exception as e:  # noqa: BLE001 - never raise; a bug in the parser
        return Report(False, False, "internal",
                      message=f"The problem parser failed ({type(e).__name__}: {str(e)[:300]}).")
    return verify_solution(problem, solution, answer)


__all__ = ["ParseError", "parse_problem", "verify_text"]
