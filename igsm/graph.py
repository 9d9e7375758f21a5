"""Sampling the structure graph and the dependency graph of one problem (docs/spec.md#5-sampling-a-problem).

Pure functions of a ``random.Random``: no global random state, no I/O, no torch.

The dependency graph is *constructed to the target op* ``s``: choose the necessary parameters
with a base cost <= s, place them backwards from the question so that every one of them is an
ancestor of it, then hand out extra operands until the op count is exactly ``s``. An attempt
that cannot reach ``s`` exactly (rare) returns None and the caller samples again.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Protocol

from .problem import ABS, INST, MOD, Equation, Param

LAYER_CHOICES = (2, 3, 4)
# Centres of the mild preference over d = 2, 3, 4 (docs/spec.md#2-the-structure-graph): bigger ops prefer deeper.
LAYER_CENTRES = (0.2, 0.5, 0.8)
MAX_OPERANDS = 4  # an instance parameter has 1..4 inputs, the literal (RNG) counting as one
ABSTRACT_QUESTION_BIAS = 0.25  # P(question is abstract | both kinds are possible sinks)
# Abstract parameters of childless items cost one step and are worth 0, so a greedy budget fill
# picks them far too often (answer = 0 in 22% of problems instead of the reference's 12.6%).
# Keep a candidate that pulls in such an empty parameter only with this probability.
KEEP_EMPTY_ABSTRACT = 0.3


class SizeBounds(Protocol):
    """The size knobs sample_structure reads; a GeneratorConfig has them. A protocol, not the config
    class, keeps the graphs below every config: the generator config imports igsm.retry, which may
    build on this module (docs/architecture.md)."""

    max_ip: int
    min_layers: int
    max_layers: int
    min_width: int
    max_width: int


@dataclass
class Structure:
    """The structure graph: per layer the item count, and the children of each item."""

    widths: list[int]
    children: list[list[list[int]]]  # children[i][j] = sorted child indices in layer i+1

    def __post_init__(self) -> None:
        # Every abstract parameter's fixed equation and everything it pulls in, computed once:
        # the necessary-set search and the unnecessary parameters both ask for them often.
        self.abstract: dict[Param, Equation] = {}
        self.pulls: dict[Param, frozenset] = {}
        for i in range(self.d - 2, -1, -1):  # deeper owners first, so pulls[] can be reused
            for j in range(self.widths[i]):
                for k in range(i + 1, self.d):
                    p = Param(ABS, i, j, k)
                    eq = abstract_equation(self.children, p)
                    self.abstract[p] = eq
                    pulled = {p}
                    for q in eq.inputs:
                        pulled.update(self.pulls[q] if q.kind == ABS else (q,))
                    self.pulls[p] = frozenset(pulled)

    @property
    def d(self) -> int:
        return len(self.widths)

    def instance_params(self) -> list[Param]:
        return [Param(INST, i, j, k) for i, layer in enumerate(self.children)
                for j, kids in enumerate(layer) for k in kids]


@dataclass
class Dependencies:
    """The dependency graph: equations of necessary and unnecessary parameters, values."""

    equations: dict[Param, Equation]
    definition_order: list[Param]  # topological; the necessary ones first, in solution order
    solution_order: list[Param]
    question: Param
    values: dict[Param, int]


# --------------------------------------------------------------------------------------------
# Structure graph
# --------------------------------------------------------------------------------------------
def _softmax_draw(rng: random.Random, choices: Sequence, scores: list[float]):
    """One of ``choices`` with probability proportional to exp(score)."""
    top = max(scores)
    return rng.choices(choices, [math.exp(x - top) for x in scores])[0]


def sample_structure(cfg: SizeBounds, s: int, rng: random.Random) -> Structure:
    """Layer count, widths and edges (docs/spec.md#2-the-structure-graph), clipped to the config's bounds."""
    r = min(1.0, (s - 1) / max(1, cfg.max_ip - 1))
    scores = [-(r - c) ** 2 for c in LAYER_CENTRES]

    def draw(lo: int, hi: int) -> int:
        allowed = [(v, sc) for v, sc in zip(LAYER_CHOICES, scores) if lo <= v <= hi]
        return _softmax_draw(rng, tuple(v for v, _ in allowed), [sc for _, sc in allowed])

    d = draw(cfg.min_layers, cfg.max_layers)
    a, b = draw(cfg.min_width, cfg.max_width), draw(cfg.min_width, cfg.max_width)
    w0, w1 = min(a, b), max(a, b)
    grow = rng.random()
    widths = []
    for _ in range(d):
        w = w0
        while w < w1 and rng.random() < grow:
            w += 1
        widths.append(w)
    lo = (d - 1) * w0
    e = min(rng.randint(lo, max(lo, cfg.max_ip)), rng.randint(lo, max(lo, cfg.max_ip)))
    e = max(lo, min(e, (d - 1) * w1 * w1))
    # Add nodes while the edges cannot fit, then clip to what the widths allow.
    capacity = lambda ws: sum(ws[i] * ws[i + 1] for i in range(d - 1))  # noqa: E731
    while capacity(widths) < e and min(widths) < w1:
        i = rng.choice([i for i, w in enumerate(widths) if w < w1])
        widths[i] += 1
    e = min(e, capacity(widths))
    e = max(e, sum(widths[1:]))  # every lower item needs a parent

    children: list[list[list[int]]] = [[[] for _ in range(widths[i])] for i in range(d - 1)]
    used = set()
    for i in range(1, d):  # one uniform parent for every item below the top layer
        for k in range(widths[i]):
            j = rng.randrange(widths[i - 1])
            children[i - 1][j].append(k)
            used.add((i - 1, j, k))
    free = [(i, j, k) for i in range(d - 1) for j in range(widths[i]) for k in range(widths[i + 1])
            if (i, j, k) not in used]
    for i, j, k in rng.sample(free, e - len(used)):
        children[i][j].append(k)
    for layer in children:
        for kids in layer:
            kids.sort()
    return Structure(widths, children)


# --------------------------------------------------------------------------------------------
# Dependency graph
# --------------------------------------------------------------------------------------------
def abstract_equation(children: list[list[list[int]]], p: Param) -> Equation:
    """The fixed computation of an abstract parameter from the structure graph
    (docs/spec.md#3-parameters-and-the-dependency-graph)."""
    kids = children[p.layer][p.item] if p.layer < len(children) else []
    if p.target == p.layer + 1:
        return Equation(tuple(Param(INST, p.layer, p.item, x) for x in kids), abstract=True)
    inputs: list[Param] = []
    for x in kids:
        inputs.append(Param(INST, p.layer, p.item, x))
        inputs.append(Param(ABS, p.layer + 1, x, p.target))
    return Equation(tuple(inputs), abstract=True, products=True)


class _Attempt:
    """One attempt at building the dependency graph of op exactly ``s`` on a structure."""

    def __init__(self, structure: Structure, s: int, rng: random.Random):
        self.st = structure
        self.s = s
        self.rng = rng
        self.necessary: dict[Param, Optional[Equation]] = {}  # abstract: fixed eq; instance: None
        self.cost = 0

    # 1-2. the necessary set ------------------------------------------------------------------
    def choose_necessary(self) -> None:
        rng, s, st = self.rng, self.s, self.st
        n = max(rng.randint(1, s), rng.randint(1, s))
        m = rng.randint(n, s)
        candidates = list(st.abstract)
        rng.shuffle(candidates)
        candidates.sort(key=lambda p: p.layer - p.target)  # larger spans first (stable)
        for p in candidates:
            if p in self.necessary:
                continue
            new = {q: st.abstract.get(q) for q in st.pulls[p] if q not in self.necessary}
            # an instance parameter costs at least one step; an abstract one its fixed op
            cost = sum(1 if eq is None else eq.op for eq in new.values())
            if any(eq is not None and not eq.inputs for eq in new.values()) \
                    and rng.random() >= KEEP_EMPTY_ABSTRACT:
                continue
            if self.cost + cost <= n:
                self.necessary.update(new)
                self.cost += cost
        spare = [p for p in self.st.instance_params() if p not in self.necessary]
        rng.shuffle(spare)
        while self.cost < m and spare:
            self.necessary[spare.pop()] = None
            self.cost += 1

    # 3. the question and the backward placement ---------------------------------------------
    def place(self) -> tuple[Param, list[Param], dict[Param, list[Param]]]:
        rng = self.rng
        nec = self.necessary
        consumers: dict[Param, list[Param]] = {p: [] for p in nec}  # fixed (abstract) consumers
        for p, eq in nec.items():
            if eq is not None:
                for q in eq.inputs:
                    consumers[q].append(p)
        sinks = [p for p in nec if not consumers[p]]
        abstract_sinks = [p for p in sinks if p.kind == ABS]
        instance_sinks = [p for p in sinks if p.kind == INST]
        if abstract_sinks and (not instance_sinks or rng.random() < ABSTRACT_QUESTION_BIAS):
            question = rng.choice(abstract_sinks)
        else:
            question = rng.choice(instance_sinks)

        take_input = rng.random()  # p0: chance a placed instance parameter takes a new input
        bias = abs(rng.gauss(0.0, 1.0))  # p1: preference for abstract / not-yet-needed inputs
        deepen = rng.random()  # chance to continue from the newest needed parameter
        inputs: dict[Param, list[Param]] = {p: [] for p in nec if nec[p] is None}
        placed: set[Param] = set()
        reverse: list[Param] = []
        needed: list[Param] = [question]  # needed but not yet placed, in the order they arose
        needed_set = {question}

        def placeable(p: Param) -> bool:
            return p not in placed and all(c in placed for c in consumers[p])

        def draw_input(pool: list[Param]) -> Param:
            scores = [bias * ((p.kind == ABS) + (p not in needed_set)) for p in pool]
            return pool[0] if len(pool) == 1 else _softmax_draw(rng, pool, scores)

        def need(p: Param) -> None:
            if p not in needed_set:
                needed_set.add(p)
                needed.append(p)

        while len(placed) < len(nec):
            ready = [p for p in needed if placeable(p)]
            if not ready:
                # Everything still needed waits on an unplaced consumer, or nothing is needed:
                # give a placed instance parameter a new input so the rest stays connected.
                pool = [p for p in nec if placeable(p)]
                hosts = [x for x in reverse if x in inputs and len(inputs[x]) < 2]
                hosts = hosts or [x for x in reverse if x in inputs and len(inputs[x]) < MAX_OPERANDS]
                if not hosts:
                    return None  # type: ignore[return-value]
                p = draw_input(pool)
                inputs[rng.choice(hosts)].append(p)
                need(p)
                continue
            x = ready[-1] if rng.random() < deepen else rng.choice(ready)
            placed.add(x)
            reverse.append(x)
            needed.remove(x)
            eq = nec[x]
            if eq is not None:
                for q in eq.inputs:
                    need(q)
            elif rng.random() < take_input or not needed:
                pool = [p for p in nec if placeable(p)]
                if pool:
                    p = draw_input(pool)
                    inputs[x].append(p)
                    need(p)
        reverse.reverse()
        return question, reverse, inputs

    # 4. operands and literals so that op == s exactly ------------------------------------------
    def finish(self, order: list[Param], inputs: dict[Param, list[Param]]) -> Optional[dict]:
        rng, nec = self.rng, self.necessary
        position = {p: i for i, p in enumerate(order)}
        rng_slot = {x: (not ins) or rng.random() < 0.5 for x, ins in inputs.items()}
        for x, ins in inputs.items():
            if len(ins) + rng_slot[x] > MAX_OPERANDS:
                rng_slot[x] = False

        def operands(x: Param) -> int:
            return len(inputs[x]) + rng_slot[x]

        def room(x: Param) -> int:
            """How many more operands x can take: earlier parameters, and the literal slot."""
            free = (position[x] - len(inputs[x])) + (not rng_slot[x])
            return min(MAX_OPERANDS - operands(x), free)

        def add_operand(x: Param) -> None:
            earlier = [p for p in order[: position[x]] if p not in inputs[x]]
            if not rng_slot[x] and (not earlier or rng.random() < 0.5):
                rng_slot[x] = True
            else:
                inputs[x].append(rng.choice(earlier))

        # Free operands: 1 or 2 operands cost the same single step.
        for x in inputs:
            if operands(x) == 1 and rng.random() < 0.5 and room(x) >= 1:
                add_operand(x)
        total = sum(nec[p].op if nec[p] is not None else max(1, operands(p) - 1) for p in order)
        if total > self.s:
            return None
        for _ in range(self.s - total):
            # a unit of op is one operand past the second: a 1-operand host takes two
            hosts = [x for x in inputs if room(x) >= (1 if operands(x) >= 2 else 2)]
            if not hosts:
                return None
            x = rng.choice(hosts)
            if operands(x) < 2:
                add_operand(x)
            add_operand(x)
        equations: dict[Param, Equation] = {}
        for p in order:
            equations[p] = nec[p] if nec[p] is not None else make_instance_equation(
                rng, inputs[p], rng_slot[p])
        return equations

    def build(self) -> Optional[tuple[Param, list[Param], dict[Param, Equation]]]:
        self.choose_necessary()
        if self.cost > self.s or not self.necessary:
            return None
        placed = self.place()
        if placed is None:
            return None
        question, order, inputs = placed
        equations = self.finish(order, inputs)
        if equations is None:
            return None
        return question, order, equations


def make_instance_equation(rng: random.Random, inputs: list[Param], has_literal: bool) -> Equation:
    """Turn chosen operands into one of the sentence forms of docs/spec.md#7-the-text (random form and order)."""
    ins = list(inputs)
    rng.shuffle(ins)
    k = len(ins)
    if k == 0:
        return Equation((), literal=rng.randrange(MOD))
    combine = None
    if k == 2:
        combine = "sum" if rng.random() < 0.5 else "diff"
    elif k >= 3:
        combine = "sum"
    if not has_literal:
        return Equation(tuple(ins), combine=combine)
    if rng.random() < 0.5:
        return Equation(tuple(ins), literal=rng.randrange(MOD), combine=combine, literal_op="more")
    return Equation(tuple(ins), literal=rng.randint(1, MOD - 1), combine=combine, literal_op="times")


def _geometric_half(rng: random.Random) -> int:
    n = 0
    while rng.random() < 0.5:
        n += 1
    return n


def evaluate(equations: dict[Param, Equation], order: list[Param]) -> dict[Param, int]:
    values: dict[Param, int] = {}
    for p in order:
        values[p] = equations[p].evaluate(values)
    return values


def add_unnecessary(structure: Structure, equations: dict[Param, Equation], order: list[Param],
                    rng: random.Random) -> list[Param]:
    """Step 5: every remaining edge becomes a stated (unnecessary) instance parameter.

    Each takes 1 + geometric(1/2) operands (at most 4, the literal with probability 1/2), from
    earlier unnecessary parameters only (probability 1/2) or from anything defined so far. An
    abstract parameter whose fixed inputs are all defined may be drawn too; it then joins the
    problem. Returns the definition order of all parameters (the necessary ones first).
    Nothing necessary depends on what is added here: necessary equations are already fixed.
    """
    order = list(order)
    defined = set(order)
    unnecessary: list[Param] = []
    # Abstract parameters that could join, with what they need.
    pending_abstract = {p: (eq, structure.pulls[p] - {p})
                        for p, eq in structure.abstract.items() if p not in defined}
    rest = [p for p in structure.instance_params() if p not in defined]
    rng.shuffle(rest)
    for x in rest:
        wanted = min(MAX_OPERANDS, 1 + _geometric_half(rng))
        literal = rng.random() < 0.5
        ready_abstract = [p for p, (_, deps) in pending_abstract.items() if deps <= defined]
        if rng.random() < 0.5:
            pool = unnecessary + ready_abstract
        else:
            pool = order + ready_abstract
        n_inputs = min(len(pool), wanted - literal)
        chosen = rng.sample(pool, n_inputs) if n_inputs > 0 else []
        if not chosen:
            literal = True
        for p in chosen:
            if p not in defined:  # an abstract parameter joins, with its abstract inputs
                _join_abstract(p, pending_abstract, equations, order, defined, unnecessary)
        equations[x] = make_instance_equation(rng, chosen, literal)
        order.append(x)
        defined.add(x)
        unnecessary.append(x)
    return order


def _join_abstract(p, pending, equations, order, defined, unnecessary) -> None:
    eq, _ = pending.pop(p)
    for q in eq.inputs:
        if q not in defined:
            _join_abstract(q, pending, equations, order, defined, unnecessary)
    equations[p] = eq
    order.append(p)
    defined.add(p)
    unnecessary.append(p)


def sample_dependencies(structure: Structure, s: int, rng: random.Random,
                        max_tries: int = 8) -> Optional[Dependencies]:
    """The full dependency graph with op exactly ``s``, or None if this structure can't host it."""
    for _ in range(max_tries):
        built = _Attempt(structure, s, rng).build()
        if built is not None:
            break
    else:
        return None
    question, solution_order, equations = built
    definition_order = add_unnecessary(structure, equations, solution_order, rng)
    values = evaluate(equations, definition_order)
    return Dependencies(equations, definition_order, solution_order, question, values)


def reask(deps: Dependencies, rng: random.Random, max_op: int = 52) -> Dependencies:
    """Re-draw the question among all parameters; the solution becomes its ancestors (docs/spec.md#9-reask).

    Abstract parameters that no longer appear anywhere (the old abstract question, and what only
    it used) leave the dependency graph: the text never mentions them.
    """
    params = deps.definition_order
    for _ in range(100):
        q = rng.choice(params)
        need = {q}
        stack = [q]
        while stack:
            for x in deps.equations[stack.pop()].inputs:
                if x not in need:
                    need.add(x)
                    stack.append(x)
        solution = [p for p in params if p in need]
        if sum(deps.equations[p].op for p in solution) <= max_op:
            break
    users = {p: 0 for p in params}
    for p in params:
        for x in deps.equations[p].inputs:
            users[x] += 1
    kept = set(params)
    for p in reversed(params):  # users come after their inputs: one backward pass suffices
        if p.kind == ABS and p not in need and users[p] == 0:
            kept.discard(p)
            for x in deps.equations[p].inputs:
                users[x] -= 1
    order = [p for p in params if p in kept]
    return Dependencies({p: deps.equations[p] for p in order}, order, solution, q,
                        {p: deps.values[p] for p in order})
