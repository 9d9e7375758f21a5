"""English text of a problem: statements, question, solution, answer (docs/spec.md#7-the-text).

The solution renderer is written once over three small hooks (how to write a parameter name, a
letter, a number) and run twice: once for the real text and once for the *solution template*
(names -> Inst/Abs, numbers -> 0, letters renamed in order of appearance), whose stable hash
decides the train/test bucket (docs/spec.md#10-the-template-hash-and-the-split).
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable

from .problem import ABS, INST, MOD, Equation, Param, Problem

LETTERS = string.ascii_lowercase + string.ascii_uppercase  # 52 letters, the template order too
SYMBOL = {"sum": "+", "diff": "-", "more": "+", "times": "*"}


def statement_sentence(problem: Problem, p: Param) -> str:
    """`The number of each A's B equals ...` for one instance parameter."""
    eq = problem.equations[p]
    each = ["each " + problem.param_name(q) for q in eq.inputs]
    if not each:
        rhs = str(eq.literal)
    else:
        if len(each) == 1:
            base = each[0]
        elif len(each) == 2:
            base = f"the {'difference' if eq.combine == 'diff' else 'sum'} of {each[0]} and {each[1]}"
        else:
            base = f"the sum of {', '.join(each[:-1])} and {each[-1]}"
        if eq.literal is None:
            rhs = base
        elif eq.literal_op == "times":
            rhs = f"{eq.literal} times as much as {base}"
        else:
            rhs = f"{eq.literal} more than {base}"
    return f"The number of each {problem.param_name(p)} equals {rhs}."


def question_sentence(problem: Problem) -> str:
    q = problem.question
    what = problem.names[q.layer + 1][q.target] if q.kind == INST else problem.categories[q.target]
    return f"How many {what} does {problem.names[q.layer][q.item]} have?"


class _SolutionWriter:
    """Writes `Define ... as v; t = ...; so v = ... .` sentences through three hooks."""

    def __init__(self, name: Callable[[Param], str], letter: Callable[[], str],
                 number: Callable[[int], str]):
        self.name, self.new_letter, self.num = name, letter, number

    def sentence(self, p: Param, eq: Equation, letters: dict, values: dict) -> str:
        v = self.new_letter()
        letters[p] = v
        steps = self.steps(v, eq, letters, values)
        head = f"Define {self.name(p)} as {v}; "
        if len(steps) > 1:
            head += "; ".join(steps[:-1]) + "; "
        return f"{head}so {steps[-1]}."

    def binary(self, lhs: str, a: str, sym: str, b: str, x: int, y: int, res: int) -> str:
        n = self.num
        return f"{lhs} = {a} {sym} {b} = {n(x)} {sym} {n(y)} = {n(res)}"

    def chain(self, v: str, terms: list[tuple[str, int]], sym: str, last: bool) -> tuple[list[str], str, int]:
        """Running combination of terms left to right; the last step is named v if ``last``."""
        steps = []
        acc, acc_val = terms[0]
        for i, (t, t_val) in enumerate(terms[1:], start=2):
            res = (acc_val - t_val) % MOD if sym == "-" else (acc_val + t_val) % MOD
            lhs = v if (last and i == len(terms)) else self.new_letter()
            steps.append(self.binary(lhs, acc, sym, t, acc_val, t_val, res))
            acc, acc_val = lhs, res
        return steps, acc, acc_val

    def steps(self, v: str, eq: Equation, letters: dict, values: dict) -> list[str]:
        terms = [(letters[q], values[q]) for q in eq.inputs]
        n = self.num
        if eq.products:  # abstract, longer span: sum over children of count * value
            if not terms:
                return [f"{v} = {n(0)}"]
            pairs = [(terms[i], terms[i + 1]) for i in range(0, len(terms), 2)]
            steps, products = [], []
            for _idx, ((a, x), (b, y)) in enumerate(pairs):
                lhs = v if len(pairs) == 1 else self.new_letter()
                steps.append(self.binary(lhs, a, "*", b, x, y, (x * y) % MOD))
                products.append((lhs, (x * y) % MOD))
            if len(products) > 1:
                steps += self.chain(v, products, "+", last=True)[0]
            return steps
        if not terms:  # a constant, or an empty abstract sum
            return [f"{v} = {n(eq.literal if eq.literal is not None else 0)}"]
        if len(terms) == 1 and eq.literal is None:  # a copy
            return [f"{v} = {terms[0][0]} = {n(terms[0][1])}"]
        sym = "-" if eq.combine == "diff" else "+"
        steps, acc, acc_val = self.chain(v, terms, sym, last=eq.literal is None)
        if eq.literal is not None:
            sym = SYMBOL[eq.literal_op]
            res = (eq.literal * acc_val if sym == "*" else eq.literal + acc_val) % MOD
            steps.append(f"{v} = {n(eq.literal)} {sym} {acc} = {n(eq.literal)} {sym} {n(acc_val)} = {n(res)}")
        return steps


def render_solution(problem: Problem, rng: random.Random) -> None:
    """Draw the letters and write the solution sentences into ``problem``."""
    it = iter(rng.sample(LETTERS, len(LETTERS)))
    letters: dict[Param, str] = {}
    writer = _SolutionWriter(problem.param_name, lambda: next(it), str)
    problem.solution_sentences = [writer.sentence(p, problem.equations[p], letters, problem.values)
                                  for p in problem.solution_order]
    problem.letters = letters


def solution_template(equations: dict, solution_order: list, values: dict) -> str:
    """The solution with names -> Inst/Abs, numbers -> 0, letters a, b, ... in order
    (docs/spec.md#10-the-template-hash-and-the-split)."""
    canonical = iter(LETTERS)
    writer = _SolutionWriter(lambda p: "Abs" if p.kind == ABS else "Inst", lambda: next(canonical),
                             lambda x: "0")
    letters: dict[Param, str] = {}
    return " ".join(writer.sentence(p, equations[p], letters, values) for p in solution_order)


def template_hash(template_text: str) -> int:
    """Stable across processes and machines (SHA-256), unlike Python's ``hash``."""
    return int.from_bytes(hashlib.sha256(template_text.encode("utf-8")).digest()[:8], "big")


def render_problem(problem: Problem, rng: random.Random) -> None:
    """Fill in all text: statements in a random order, the question, the solution."""
    order = problem.instance_params()
    rng.shuffle(order)
    problem.statement_order = order
    problem.statements = [statement_sentence(problem, p) for p in order]
    problem.question_text = question_sentence(problem)
    render_solution(problem, rng)
    if not problem.template_hash:
        problem.template_hash = template_hash(
            solution_template(problem.equations, problem.solution_order, problem.values))
