"""Solving problems with a model: greedy decoding -> parse -> verify -> counts and error kinds.

One path for every place that asks "does the model solve these problems?": evaluation
(:class:`igsm.lit.GPTLitModule`, eval.json), the probe's solved split (:func:`probing.controls.solved_flags`)
and the error analysis (:func:`probing.analysis.run_analysis`); ``igsm verify`` grades solutions
written elsewhere and counts them the same way (:class:`igsm.verify.Tally`).

- :func:`solve`: greedy-decode the problems' prompts (in batches that fit in memory,
  :func:`igsm.decode.greedy_decode_fitting`) and :func:`grade` the generations.
- :func:`grade`: read each generation as solution and answer (:meth:`Tokenizer.parse_generation`)
  and verify it strictly (:func:`igsm.verify.verify_solution`): one :class:`Attempt` each.
- :func:`tally`: the counts of a list of attempts (:class:`igsm.verify.Tally`).

Decoding runs in the caller's precision: wrap the call in the autocast the run uses. Evaluation
decodes each batch with :meth:`GPTLitModule.decode` (its budget, and the hook tests replace) in
chunks of the batch's own order (:func:`igsm.decode.decode_in_chunks`, so an out-of-memory halving
equals a smaller ``eval.batch_size``), then grades and counts with :func:`grade` and :func:`tally`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Optional

from igsm.decode import greedy_decode_fitting
from igsm.model import GPT
from igsm.problem import Problem
from igsm.tokenizer import Tokenizer
from igsm.verify import Report, Tally, verify_solution


@dataclass(frozen=True)
class Attempt:
    """One problem, the solution and answer the model wrote for it, and the verifier's verdict."""

    problem: Problem
    solution: str
    answer: Optional[str]
    report: Report


def grade(tokenizer: Tokenizer, problems: Iterable[Problem], generations: Iterable[list[int]]) -> list[Attempt]:
    """Per problem, its generation (the ids after the prompt) parsed and verified."""
    attempts = []
    for problem, generated in zip(problems, generations):
        solution, answer = tokenizer.parse_generation(generated)
        attempts.append(Attempt(problem, solution, answer, verify_solution(problem, solution, answer)))
    return attempts


def tally(attempts: Iterable[Attempt]) -> Tally:
    """Counts, error kinds and retractions over ``attempts``."""
    counts = Tally()
    for attempt in attempts:
        counts.add(attempt.report)
    return counts


def solve(model: GPT, tokenizer: Tokenizer, problems: list[Problem], prompts: Optional[list[list[int]]] = None, *,
          max_new_tokens: int, batch_size: int, fresh_letters: bool = False,
          on_halve: Optional[Callable[[int, int], None]] = None) -> tuple[list[Attempt], int]:
    """Greedy solutions of ``problems`` graded by the verifier: (one :class:`Attempt` per problem,
    in order; the decoding batch size that fitted in memory, to start from next time).

    ``prompts``: the problems' encoded prompts when the caller has them already. At most
    ``max_new_tokens`` per solution (below 1: nothing is generated, every attempt is empty).
    ``fresh_letters``: ``eval.fresh_letters`` (right after "as", skip letters already defined).
    ``on_halve(old, new)`` is told when a batch runs out of memory and is decoded in halves.
    """
    if prompts is None:
        prompts = [tokenizer.encode_prompt(p.problem_text) for p in problems]
    if max_new_tokens < 1 or not prompts:
        return grade(tokenizer, problems, [[] for _ in problems]), batch_size
    generations, fitted = greedy_decode_fitting(
        model, prompts, batch_size=batch_size, on_halve=on_halve, max_new_tokens=max_new_tokens,
        stop_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id,
        fresh_letters=tokenizer.letter_slot_ids() if fresh_letters else None)
    return grade(tokenizer, problems, generations), fitted


__all__ = ["Attempt", "grade", "solve", "tally"]
