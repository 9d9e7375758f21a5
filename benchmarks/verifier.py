"""Verifier throughput on one core: own solutions per second, from the Problem and text-only.

    python benchmarks/verifier.py [--n 3000] [--repeat 3]

"from Problem" counts the whole call on problems the verifier has not seen before (the per-problem
name lookups are built inside the timing); "text-only" parses the problem text with the world,
then verifies. CPU time of this process is measured (``time.process_time``), best of
``--repeat`` runs, so other load on the machine disturbs the numbers less. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from igsm.config import generator_preset  # noqa: E402
from igsm.generator import generate_problem, world_for  # noqa: E402
from igsm.parse import verify_text  # noqa: E402
from igsm.verify import _CACHE, verify_solution  # noqa: E402


def rate(fn, items, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        _CACHE.clear()
        start = time.process_time()
        for it in items:
            fn(*it)
        best = min(best, time.process_time() - start)
    return len(items) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    except (AttributeError, OSError):
        pass
    for preset in ("med", "hard"):
        cfg = generator_preset(preset)
        world = world_for(cfg)
        problems = [generate_problem(cfg, random.Random(f"bench:{i}")) for i in range(a.n)]
        own = [(p, p.solution, p.answer) for p in problems]
        text = [(p.problem_text, p.solution, str(p.answer), world) for p in problems]
        wrong = sum(not verify_solution(*x).correct for x in own)
        r_problem = rate(verify_solution, own, a.repeat)
        r_text = rate(verify_text, text, a.repeat)
        print(f"{preset:<5} from Problem: {r_problem:>8,.0f} solutions/s   text-only: {r_text:>7,.0f} /s   "
              f"({a.n} own solutions, {wrong} not verified)")


if __name__ == "__main__":
    main()
