"""The Problem: one iGSM problem as data, the single source of truth.

Everything else (text, tokens, the verifier's expectations, probe labels) is derived from it.
No torch here: this module is usable in any data pipeline.

Parameters are small named tuples so they hash fast and print readably:

* instance parameter ``Param(INST, i, j, k)``: "the number of item (i+1, k) in each item (i, j)",
  one per structure-graph edge (i, j) -> (i+1, k);
* abstract parameter ``Param(ABS, i, j, k)``: "how many units of layer k's category one item
  (i, j) holds", k > i.

Layers are indexed 0..d-1 inside a problem (the problem's window of its family's 4 layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

MOD = 23
INST = 0
ABS = 1
RETRACTION = "BACK"  # the retraction word of retry data (Part 2.2): "Define A as BACK."


def retraction_sentence(name: str) -> str:
    """The wrong step of retry data: ``Define <name> as BACK.``"""
    return f"Define {name} as {RETRACTION}."


class Param(NamedTuple):
    kind: int  # INST or ABS
    layer: int  # layer of the owner item
    item: int  # index of the owner item within its layer
    target: int  # INST: index of the child item in layer+1; ABS: the deeper layer k > layer


@dataclass(frozen=True, slots=True)
class Equation:
    """How a parameter is computed from its inputs (all values mod 23).

    Instance parameters: ``value = literal_op(literal, combine(inputs))`` where
      * ``combine`` is "sum" (any number of inputs) or "diff" (exactly two, in order, X - Y);
        None with zero or one input;
      * ``literal_op`` is "more" (N + ...) or "times" (N * ...) when there is a literal and at
        least one input; with no inputs the literal is the value ("equals N").
    Abstract parameters (``abstract=True``) have fixed inputs from the structure graph:
      * span 1: inputs are the owner's instance parameters, summed (empty sum = 0);
      * longer span: inputs are pairs (A's x, x's C) flattened, the value is sum of products.
    """

    inputs: tuple[Param, ...]
    literal: Optional[int] = None
    combine: Optional[str] = None  # "sum" | "diff" | None
    literal_op: Optional[str] = None  # "more" | "times" | None
    abstract: bool = False
    products: bool = False  # abstract, span > 1: inputs are (count, value) pairs

    @property
    def n_operands(self) -> int:
        """Inputs counting the literal (RNG) as one: t of docs/spec.md#4-op-and-ip."""
        return len(self.inputs) + (self.literal is not None)

    @property
    def op(self) -> int:
        """Number of small solution steps this parameter costs (docs/spec.md#4-op-and-ip)."""
        if self.abstract:
            if self.products:
                return max(1, len(self.inputs) - 1)  # c children: 2c - 1 (= 2c inputs - 1)
            return max(1, len(self.inputs) - 1)
        return max(1, self.n_operands - 1)

    def evaluate(self, values: dict) -> int:
        xs = [values[p] for p in self.inputs]
        if self.abstract:
            if self.products:
                return sum(xs[i] * xs[i + 1] for i in range(0, len(xs), 2)) % MOD
            return sum(xs) % MOD
        if not xs:
            return self.literal % MOD
        if self.combine == "diff":
            base = xs[0] - xs[1]
        else:
            base = sum(xs)
        if self.literal is None:
            return base % MOD
        if self.literal_op == "times":
            return (self.literal * base) % MOD
        return (self.literal + base) % MOD


@dataclass(slots=True)
class Problem:
    """One iGSM problem: structure graph, dependency graph, values, question, solution, text.

    ``names[i][j]`` is item j of layer i; ``categories[i]`` the category name of layer i.
    ``children[i][j]`` lists the child indices (in layer i+1) of item (i, j), sorted.
    ``equations`` holds every parameter that appears (all instance parameters, and the abstract
    ones that are necessary or used by some other parameter); ``definition_order`` is a
    topological order of all of them (necessary ones first, in solution order).
    """

    family: int
    layer_offset: int  # first of the family's 4 layers used (window start)
    categories: list[str]
    names: list[list[str]]
    children: list[list[list[int]]]
    equations: dict[Param, Equation]
    definition_order: list[Param]
    values: dict[Param, int]
    question: Param
    solution_order: list[Param]
    statement_order: list[Param]  # instance parameters in the order their sentences appear
    letters: dict[Param, str]  # letter of each necessary parameter in the solution
    fmt: str = "pq"  # "pq" (question last) or "qp" (question first)
    reask: bool = False
    # text, filled by igsm.render
    statements: list[str] = field(default_factory=list)
    question_text: str = ""
    solution_sentences: list[str] = field(default_factory=list)
    template_hash: int = 0  # stable hash of the solution template (docs/spec.md#10-the-template-hash-and-the-split)
    # retry data (igsm.retry): (k, A) = the wrong step "Define A as BACK." before solution sentence k,
    # in text order; ``solution_sentences`` and the template stay retry-free
    retries: list[tuple[int, Param]] = field(default_factory=list)

    # ----- derived quantities -------------------------------------------------------------
    @property
    def d(self) -> int:
        return len(self.names)

    @property
    def ip(self) -> int:
        """Number of instance parameters = edges = statement sentences."""
        return sum(len(c) for layer in self.children for c in layer)

    @property
    def op(self) -> int:
        return sum(self.equations[p].op for p in self.solution_order)

    @property
    def necessary(self) -> frozenset:
        return frozenset(self.solution_order)

    @property
    def answer(self) -> int:
        return self.values[self.question]

    @property
    def solution(self) -> str:
        """The solution text, with the retry data's wrong steps when there are any."""
        if not self.retries:
            return " ".join(self.solution_sentences)
        return " ".join(self.solution_with_retries())

    @property
    def clean_solution(self) -> str:
        """The solution without retries (what the template and the probes' boundaries use)."""
        return " ".join(self.solution_sentences)

    def solution_with_retries(self) -> list[str]:
        """The sentences in text order, each retraction ``Define A as BACK.`` before its sentence."""
        return [s for s, _ in self.solution_parts()]

    def solution_parts(self) -> list[tuple[str, bool]]:
        """``(sentence, is_retraction)`` in text order."""
        out: list[tuple[str, bool]] = []
        r = 0
        for k, s in enumerate(self.solution_sentences):
            while r < len(self.retries) and self.retries[r][0] == k:
                out.append((retraction_sentence(self.param_name(self.retries[r][1])), True))
                r += 1
            out.append((s, False))
        return out

    @property
    def statement(self) -> str:
        return " ".join(self.statements)

    @property
    def problem_text(self) -> str:
        """The full text shown to the model: statements and question in the chosen order."""
        if self.fmt == "qp":
            return " ".join([self.question_text, *self.statements])
        return " ".join([*self.statements, self.question_text])

    def bucket(self, n_buckets: int = 23) -> int:
        return self.template_hash % n_buckets

    def param_name(self, p: Param) -> str:
        """`A's B` (instance) or `A's C` (abstract, C a category name), without "each"."""
        owner = self.names[p.layer][p.item]
        if p.kind == INST:
            return f"{owner}'s {self.names[p.layer + 1][p.target]}"
        return f"{owner}'s {self.categories[p.target]}"

    def instance_params(self) -> list[Param]:
        return [
            Param(INST, i, j, k)
            for i, layer in enumerate(self.children)
            for j, kids in enumerate(layer)
            for k in kids
        ]

    def ancestors(self, p: Param) -> set[Param]:
        """Every parameter p depends on, directly or transitively (excluding p)."""
        seen: set[Param] = set()
        stack = list(self.equations[p].inputs)
        while stack:
            q = stack.pop()
            if q not in seen:
                seen.add(q)
                stack.extend(self.equations[q].inputs)
        return seen

    # ----- export -----------------------------------------------------------------------
    def to_networkx(self):
        """The dependency graph as a ``networkx.DiGraph`` (edge input -> parameter).

        Nodes are parameter names (``Param`` tuples as keys would not survive JSON); each node
        carries ``param``, ``kind``, ``value``, ``necessary`` and ``op``; the RNG pseudo-node
        ``"RNG"`` feeds every parameter with a literal, the edge carrying the literal.
        """
        import networkx as nx

        g = nx.DiGraph()
        necessary = self.necessary
        for p, eq in self.equations.items():
            g.add_node(
                self.param_name(p),
                param=tuple(p),
                kind="abstract" if p.kind == ABS else "instance",
                value=self.values[p],
                necessary=p in necessary,
                question=p == self.question,
                op=eq.op,
            )
        for p, eq in self.equations.items():
            for q in eq.inputs:
                g.add_edge(self.param_name(q), self.param_name(p))
            if eq.literal is not None:
                g.add_node("RNG", kind="rng")
                g.add_edge("RNG", self.param_name(p), literal=eq.literal)
        return g

    def graph_json(self) -> dict:
        """The documented JSON form of the problem's graphs (the ``graph`` field of exports).

        ``{"categories": [...], "names": [[...]], "children": [[[k, ...], ...], ...],
           "params": [{"param": [kind, layer, item, target], "name": str, "inputs": [[...]],
                       "literal": int|null, "combine": str|null, "literal_op": str|null,
                       "abstract": bool, "products": bool, "value": int}, ...],
           "question": [...], "solution_order": [[...]], "letters": {"name": letter}}``
        kind 0 = instance, 1 = abstract. ``params`` are in definition (topological) order.
        Retry data adds ``"retries": [[k, [kind, layer, item, target]], ...]`` (the wrong step
        ``Define A as BACK.`` before solution sentence k), only when there are any.
        """
        params = []
        for p in self.definition_order:
            eq = self.equations[p]
            params.append(
                {
                    "param": list(p),
                    "name": self.param_name(p),
                    "inputs": [list(q) for q in eq.inputs],
                    "literal": eq.literal,
                    "combine": eq.combine,
                    "literal_op": eq.literal_op,
                    "abstract": eq.abstract,
                    "products": eq.products,
                    "value": self.values[p],
                }
            )
        return {
            "family": self.family,
            "layer_offset": self.layer_offset,
            "categories": self.categories,
            "names": self.names,
            "children": self.children,
            "params": params,
            "question": list(self.question),
            "solution_order": [list(p) for p in self.solution_order],
            "statement_order": [list(p) for p in self.statement_order],
            "letters": {self.param_name(p): ch for p, ch in self.letters.items()},
            "fmt": self.fmt,
            "reask": self.reask,
            **({"retries": [[k, list(a)] for k, a in self.retries]} if self.retries else {}),
        }

    @classmethod
    def from_graph_json(cls, g: dict) -> Problem:
        """Rebuild a Problem (without text) from :meth:`graph_json`; ``igsm.render`` adds text."""
        equations: dict[Param, Equation] = {}
        values: dict[Param, int] = {}
        order: list[Param] = []
        by_name: dict[str, Param] = {}
        for e in g["params"]:
            p = Param(*e["param"])
            equations[p] = Equation(
                inputs=tuple(Param(*q) for q in e["inputs"]),
                literal=e["literal"],
                combine=e["combine"],
                literal_op=e["literal_op"],
                abstract=e["abstract"],
                products=e["products"],
            )
            values[p] = e["value"]
            order.append(p)
            by_name[e["name"]] = p
        return cls(
            family=g.get("family", 0),
            layer_offset=g.get("layer_offset", 0),
            categories=list(g["categories"]),
            names=[list(x) for x in g["names"]],
            children=[[list(k) for k in layer] for layer in g["children"]],
            equations=equations,
            definition_order=order,
            values=values,
            question=Param(*g["question"]),
            solution_order=[Param(*p) for p in g["solution_order"]],
            statement_order=[Param(*p) for p in g.get("statement_order", [])],
            letters={by_name[n]: ch for n, ch in g.get("letters", {}).items()},
            fmt=g.get("fmt", "pq"),
            reask=g.get("reask", False),
            retries=[(k, Param(*a)) for k, a in g.get("retries", [])],
        )
