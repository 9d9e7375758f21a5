"""Generator throughput (one core), and with --check the data-layer acceptance run.

    python benchmarks/generator.py                 # problems/s for med and hard, with text and tokens
    python benchmarks/generator.py --check --n 20000
        # every own solution verifies (from the Problem and text-only), op == solution steps,
        # op histogram chi-square, reference marginals of docs/spec.md#5-sampling-a-problem

Prints numbers; asserts nothing (tests do that on small samples).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from igsm.config import generator_preset  # noqa: E402
from igsm.generator import generate_problem, problem_rng  # noqa: E402
from igsm.marginals import chi_square_op, compare, marginals, solution_steps  # noqa: E402
from igsm.tokenizer import build_tokenizer  # noqa: E402


def throughput(preset: str, n: int, tokenizer) -> float:
    cfg = generator_preset(preset)
    start = time.perf_counter()
    for i in range(n):
        p = generate_problem(cfg, problem_rng(0, "bench", i))
        tokenizer.encode_example(p.problem_text, p.solution, p.answer)
    return n / (time.perf_counter() - start)


def check(preset: str, n: int) -> None:
    from igsm.generator import world_for
    from igsm.parse import verify_text
    from igsm.verify import verify_solution

    cfg = generator_preset(preset)
    world = world_for(cfg)
    gpt2 = build_tokenizer("gpt2")
    problems, lengths = [], []
    bad_problem = bad_text = bad_steps = 0
    start = time.perf_counter()
    for i in range(n):
        p = generate_problem(cfg, problem_rng(0, "check", i))
        problems.append(p)
        lengths.append(len(gpt2.encode_example(p.problem_text, p.solution, p.answer)))
        r = verify_solution(p, p.solution, p.answer)
        bad_problem += not (r.correct and not r.unnecessary_params and not r.missing_params)
        t = verify_text(p.problem_text, p.solution, str(p.answer), world)
        bad_text += not (t.correct and not t.unnecessary_params)
        bad_steps += p.op != solution_steps(p.solution)
    elapsed = time.perf_counter() - start
    stat, pvalue = chi_square_op([p.op for p in problems], cfg.max_op)
    m = marginals(problems, lengths)
    print(f"\n== {preset}: {n} training problems ({elapsed:.0f} s incl. both verifications)")
    print(f"own solution wrong (from Problem): {bad_problem}   (text-only): {bad_text}   op != steps: {bad_steps}")
    print(f"op histogram vs (2(op_max-k)+1)/op_max^2: chi2 = {stat:.1f}, p = {pvalue:.3f}")
    print(f"op mean/median {m['op_mean']:.2f}/{m['op_median']}, ip mean {m['ip_mean']:.1f}, "
          f"solution sentences median {m['solution_sentences_median']}, "
          f"+/-/x steps {m['step_plus']:.0f}/{m['step_minus']:.0f}/{m['step_times']:.0f}%")
    for name, got, ref, ok in compare(preset, m):
        print(f"  {name:<18} {str(got):<22} reference {str(ref):<16} {'ok' if ok else 'OUT OF TOLERANCE'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the target says
    except (AttributeError, OSError):
        pass
    if a.check:
        for preset in ("med", "hard"):
            check(preset, a.n)
        return
    word, gpt2 = build_tokenizer("word"), build_tokenizer("gpt2")
    throughput("med", 200, word)  # warm caches (world, tokenizer memo)
    print(f"one core, whole problems (structure, graph, text, template split) + tokens, n={a.n}")
    for preset in ("med", "hard"):
        for tok in (word, gpt2):
            print(f"  {preset:<5} + {tok.name:<5} tokens: {throughput(preset, a.n, tok):8.0f} problems/s")


if __name__ == "__main__":
    main()
