"""Retry data (Part 2.2, "learning from mistakes"): wrong steps retracted with ``BACK``.

Before each correct solution sentence, with probability ``retry_rate`` (again and again, so a
geometric number of times), a wrong step ``Define A as BACK.`` is inserted, and the solution goes
on with the correct sentence. Which A:

* ``retry``: any parameter of the problem's *structure* that is not computable yet at that point:
  every instance parameter (edge) and every abstract parameter (an item and a deeper layer's
  category), whether the problem's dependency graph uses it or not, that the earlier sentences
  have not computed and that has some input they have not computed either. Part 2.2 draws from
  this set. In the dependency graph these are the verifier's ``not_ready`` mistakes; outside it
  (an abstract parameter no statement or question mentions) the verifier grades the retraction
  by the same rule, with the inputs the structure gives it.
* ``retry_weak``: a parameter that this solution still has to define; it may already be
  computable, so some of these retractions are not true regrets. ``retry_weak_from="next"``
  (Part 2.2's default) draws from the remaining steps including the very next one,
  ``"later"`` only from the steps after it.

Never the same A twice before one correct step. Retries are drawn from their own random stream,
derived from the problem's generator state without consuming it, so turning retries on does not
change the problem drawn for a given (seed, index), and the stream stays a pure function of it.
The template hash (train/test split) is that of the retry-free solution.
"""

from __future__ import annotations

import random

from .graph import abstract_equation
from .problem import ABS, Param, Problem

RETRY_KINDS = ("retry", "retry_weak")  # which A a wrong step names (module docstring); data.retry_kind
RETRY_WEAK_FROM = ("next", "later")  # retry_weak's pool starts at the next step, or after it


def retry_rng(rng: random.Random) -> random.Random:
    """A random stream derived from ``rng``'s state, leaving ``rng`` untouched: a copy of ``rng``
    draws 128 bits, which seed (hashed with SHA-512, like every igsm stream) the retry stream."""
    copy = random.Random(0)
    copy.setstate(rng.getstate())
    return random.Random(f"igsm:retry:{copy.getrandbits(128)}")


def structure_inputs(problem: Problem) -> dict[Param, tuple[Param, ...]]:
    """Every parameter of the problem's structure and its inputs, in a fixed order: the instance
    parameters (one per edge), then every abstract parameter (item (i, j), deeper layer k), those
    outside the dependency graph included (their inputs follow from the structure graph)."""
    out = {p: problem.equations[p].inputs for p in problem.instance_params()}
    for i, layer in enumerate(problem.names):
        for j in range(len(layer)):
            for k in range(i + 1, problem.d):
                p = Param(ABS, i, j, k)
                eq = problem.equations.get(p) or abstract_equation(problem.children, p)
                out[p] = eq.inputs
    return out


def _check(kind: str, weak_from: str) -> None:
    if kind not in RETRY_KINDS:
        raise ValueError(f"retry_kind={kind!r}: one of {list(RETRY_KINDS)}")
    if weak_from not in RETRY_WEAK_FROM:
        raise ValueError(f"retry_weak_from={weak_from!r}: one of {list(RETRY_WEAK_FROM)}")


def retry_candidates(problem: Problem, k: int, kind: str, weak_from: str,
                     inputs: dict[Param, tuple[Param, ...]] | None = None) -> list[Param]:
    """The parameters a wrong step before solution sentence ``k`` may name (in a fixed order).
    ``weak_from`` (``GeneratorConfig.retry_weak_from``) matters for ``retry_weak`` only;
    ``inputs``: :func:`structure_inputs` of the problem, when the caller already has it."""
    _check(kind, weak_from)
    order = problem.solution_order
    if kind == "retry_weak":
        return list(order[k if weak_from == "next" else k + 1:])
    known = set(order[:k])
    inputs = structure_inputs(problem) if inputs is None else inputs
    return [p for p, ins in inputs.items() if p not in known and any(q not in known for q in ins)]


def draw_retries(problem: Problem, rate: float, kind: str, rng: random.Random,
                 weak_from: str) -> list[tuple[int, Param]]:
    """``[(k, A), ...]``: the wrong steps to insert before solution sentence k, in text order."""
    _check(kind, weak_from)
    out: list[tuple[int, Param]] = []
    if rate <= 0:
        return out
    inputs = structure_inputs(problem) if kind == "retry" else None
    for k in range(len(problem.solution_order)):
        pool = retry_candidates(problem, k, kind, weak_from, inputs)
        while pool and rng.random() < rate:
            a = pool.pop(rng.randrange(len(pool)))  # never the same A twice before one correct step
            out.append((k, a))
    return out


def add_retries(problem: Problem, rate: float, kind: str, rng: random.Random, weak_from: str) -> None:
    """Fill ``problem.retries`` from a stream derived from ``rng`` (``rng`` is not advanced)."""
    problem.retries = draw_retries(problem, rate, kind, retry_rng(rng), weak_from) if rate > 0 else []


__all__ = ["RETRY_KINDS", "RETRY_WEAK_FROM", "retry_rng", "structure_inputs", "retry_candidates", "draw_retries",
           "add_retries"]
