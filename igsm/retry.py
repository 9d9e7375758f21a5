"""Retry data (Part 2.2, "learning from mistakes"): wrong steps retracted with ``BACK``.

Before each correct solution sentence, with probability ``retry_rate`` (again and again, so a
geometric number of times), a wrong step ``Define A as BACK.`` is inserted, and the solution goes
on with the correct sentence. Which A:

* ``retry``: a parameter of G (``problem.equations``) that is not computable yet at that point:
  not computed by the earlier sentences and with some input not computed yet (``can_next`` false,
  ``known`` false). These are exactly the verifier's ``not_ready`` mistakes.
* ``retry_weak``: a parameter that this solution defines later (after the sentence that follows);
  it may already be computable, so some of these retractions are not true regrets.

Never the same A twice before one correct step. Retries are drawn from their own random stream,
derived from the problem's generator state without consuming it, so turning retries on does not
change the problem drawn for a given (seed, index), and the stream stays a pure function of it.
The template hash (train/test split) is that of the retry-free solution.
"""

from __future__ import annotations

import random

from .config import RETRY_KINDS
from .problem import Param, Problem


def retry_rng(rng: random.Random) -> random.Random:
    """A random stream derived from ``rng``'s state, leaving ``rng`` untouched: a copy of ``rng``
    draws 128 bits, which seed (hashed with SHA-512, like every igsm stream) the retry stream."""
    copy = random.Random(0)
    copy.setstate(rng.getstate())
    return random.Random(f"igsm:retry:{copy.getrandbits(128)}")


def retry_candidates(problem: Problem, k: int, kind: str) -> list[Param]:
    """The parameters a wrong step before solution sentence ``k`` may name (in a fixed order)."""
    order = problem.solution_order
    if kind == "retry_weak":
        return list(order[k + 1:])
    if kind != "retry":
        raise ValueError(f"retry_kind={kind!r}: one of {list(RETRY_KINDS)}")
    known = set(order[:k])
    return [p for p in problem.definition_order
            if p not in known and any(q not in known for q in problem.equations[p].inputs)]


def draw_retries(problem: Problem, rate: float, kind: str, rng: random.Random) -> list[tuple[int, Param]]:
    """``[(k, A), ...]``: the wrong steps to insert before solution sentence k, in text order."""
    out: list[tuple[int, Param]] = []
    if rate <= 0:
        return out
    for k in range(len(problem.solution_order)):
        pool = retry_candidates(problem, k, kind)
        while pool and rng.random() < rate:
            a = pool.pop(rng.randrange(len(pool)))  # never the same A twice before one correct step
            out.append((k, a))
    return out


def add_retries(problem: Problem, rate: float, kind: str, rng: random.Random) -> None:
    """Fill ``problem.retries`` from a stream derived from ``rng`` (``rng`` is not advanced)."""
    problem.retries = draw_retries(problem, rate, kind, retry_rng(rng)) if rate > 0 else []


__all__ = ["RETRY_KINDS", "retry_rng", "retry_candidates", "draw_retries", "add_retries"]
