"""Distribution checks against the reference generator's marginals (docs/spec.md#5-sampling-a-problem).

Used by ``tests/test_generator.py`` (small samples) and ``benchmarks/generator.py --check``
(the acceptance run over 20,000 problems per preset).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Optional

from .problem import ABS, Problem

# docs/spec.md#5-sampling-a-problem: the reference marginals (5,000 problems each, pq)
REFERENCE = {
    "med": {"op_max": 15, "ip_median": 9, "abstract_question": 40.6, "answer_zero": 12.6,
            "d_shares": (37, 34, 28), "gpt2_median": 327},
    "hard": {"op_max": 21, "ip_median": 10, "abstract_question": 39.6, "answer_zero": 10.7,
             "d_shares": (37, 34, 29), "gpt2_median": 410},
}
# Acceptance tolerances (issue: iGSM data layer).
TOLERANCE = {"ip_median": 1, "abstract_question": 5.0, "answer_zero": 3.0, "d_shares": 6.0,
             "gpt2_median": 0.15}


def op_probability(k: int, op_max: int) -> float:
    """P(op = k) = (2(op_max - k) + 1) / op_max^2: the min of two uniform draws on 1..op_max."""
    return (2 * (op_max - k) + 1) / op_max**2


def chi_square_op(ops: Sequence[int], op_max: int) -> tuple[float, float]:
    """Chi-square statistic and p-value of an op sample against the training distribution."""
    from scipy.stats import chisquare

    n = len(ops)
    observed = [sum(1 for o in ops if o == k) for k in range(1, op_max + 1)]
    expected = [n * op_probability(k, op_max) for k in range(1, op_max + 1)]
    stat, p = chisquare(observed, expected)
    return float(stat), float(p)


def marginals(problems: Sequence[Problem], gpt2_lengths: Optional[Sequence[int]] = None) -> dict:
    n = len(problems)
    out = {
        "n": n,
        "op_mean": statistics.mean(p.op for p in problems),
        "op_median": statistics.median(p.op for p in problems),
        "ip_median": statistics.median(p.ip for p in problems),
        "ip_mean": statistics.mean(p.ip for p in problems),
        "solution_sentences_median": statistics.median(len(p.solution_order) for p in problems),
        "abstract_question": 100 * sum(p.question.kind == ABS for p in problems) / n,
        "answer_zero": 100 * sum(p.answer == 0 for p in problems) / n,
        "d_shares": tuple(100 * sum(p.d == d for p in problems) / n for d in (2, 3, 4)),
    }
    for sym, key in (("+", "plus"), (" - ", "minus"), ("*", "times")):
        out[f"step_{key}"] = 100 * sum(sym in p.solution for p in problems) / n
    if gpt2_lengths is not None:
        out["gpt2_median"] = statistics.median(gpt2_lengths)
    return out


def compare(preset: str, measured: dict) -> list[tuple[str, object, object, bool]]:
    """(name, measured, reference, within tolerance) for each checked marginal."""
    ref = REFERENCE[preset]
    rows = []
    rows.append(("ip_median", measured["ip_median"], ref["ip_median"],
                 abs(measured["ip_median"] - ref["ip_median"]) <= TOLERANCE["ip_median"]))
    for key in ("abstract_question", "answer_zero"):
        rows.append((key, round(measured[key], 1), ref[key], abs(measured[key] - ref[key]) <= TOLERANCE[key]))
    shares = tuple(round(x, 1) for x in measured["d_shares"])
    ok = all(abs(a - b) <= TOLERANCE["d_shares"] for a, b in zip(measured["d_shares"], ref["d_shares"]))
    rows.append(("d_shares", shares, ref["d_shares"], ok))
    if "gpt2_median" in measured:
        rel = abs(measured["gpt2_median"] - ref["gpt2_median"]) / ref["gpt2_median"]
        rows.append(("gpt2_median", measured["gpt2_median"], ref["gpt2_median"], rel <= TOLERANCE["gpt2_median"]))
    return rows


def solution_steps(solution: str) -> int:
    """Number of small steps in a solution text: one per `<letter> = ...` assignment."""
    steps = 0
    for sentence in solution.split(". "):
        _, _, body = sentence.partition("; ")
        for step in body.split("; "):
            step = step[3:] if step.startswith("so ") else step
            if len(step) > 2 and step[1:4] == " = " and step[0].isalpha():
                steps += 1
    return steps
