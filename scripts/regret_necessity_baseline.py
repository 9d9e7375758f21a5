"""The regret probe's necessity-only baseline: how well ``nece(A)`` alone predicts the regret label on
the test queries ``probe.py`` draws, today (stratified by necessity) and with issue 21's draw
(docs/probing.md, "The regret probe").

    python scripts/regret_necessity_baseline.py                      # tiny, small_cpu, med
    python scripts/regret_necessity_baseline.py --presets tiny --problems 400

Issue 21's draw took every ready query (label 0) from the necessary parameters (``nece_next``) and
the wrong ones (label 1) from all of G, so "regret = not necessary" scored far above the 50% majority
without any notion of readiness. The queries are those of ``probe.py``'s test set: the problems of
``probing.data.probe_problem`` (the preset's generator, test templates, seed ``--seed``),
``--draws`` draws each with the rng ``ProbeDataset`` uses. Labels only: no tokens are built. The
defaults are ``ProbeConfig``'s (512 test problems, 10 draws, seed 0).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from igsm.cli_config import load_config  # noqa: E402  (after the path insert: runs from a checkout)
from igsm.config import TrainConfig, generator_config  # noqa: E402
from igsm.generator import GenerationError, problem_rng  # noqa: E402
from igsm.problem import Problem  # noqa: E402
from probing.data import PROBE_STREAM, probe_problem  # noqa: E402
from probing.labels import ProblemLabels, draw_queries, n_positions, necessity_baseline  # noqa: E402


def issue21_regret_queries(problem: Problem, rng: random.Random, n: int = 10) -> list[tuple]:
    """The regret draw before issue 29: ``min(n // 2, wrong, right)`` wrong steps (A not computable
    yet, over G) and as many correct next steps (A ``nece_next``: necessary only); shuffled."""
    labels = ProblemLabels(problem)
    pools: tuple[list, list] = ([], [])
    for j in range(n_positions(problem, "regret")):
        wrong, ready = labels.regret_candidates(j)
        pools[0].extend((j, a, None) for a in wrong)
        pools[1].extend((j, a, None) for a in ready if a in problem.necessary)
    m = min(n // 2, len(pools[0]), len(pools[1]))
    out = rng.sample(pools[0], m) + rng.sample(pools[1], m)
    rng.shuffle(out)
    return out


def nece_and_labels(preset: str, draw: str = "stratified", n_problems: int = 512, seed: int = 0,
                    draws: int = 10) -> list[tuple[int, int]]:
    """``(nece(A), regret label)`` of the regret test queries ``probe.py`` draws on the training
    preset ``preset`` (``draw="issue21"``: with the draw before issue 29)."""
    gen_cfg = generator_config(load_config(TrainConfig, [f"preset={preset}"]).data)
    out = []
    for index in range(n_problems):
        try:
            problem = probe_problem(gen_cfg, seed, "test", index, PROBE_STREAM)
        except GenerationError:
            continue
        rng = problem_rng(seed, PROBE_STREAM, "test", index, "regret")  # as ProbeDataset.__getitem__
        queries = (draw_queries(problem, "regret", rng, draws) if draw == "stratified"
                   else issue21_regret_queries(problem, rng, draws))
        truth = ProblemLabels(problem)
        out += [(int(a in problem.necessary), truth.label("regret", a, position=pos)) for pos, a, _ in queries]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small_cpu", "med"], help="training presets (configs/)")
    p.add_argument("--problems", type=int, default=512, help="probe.test_problems")
    p.add_argument("--draws", type=int, default=10, help="probe.draws")
    p.add_argument("--seed", type=int, default=0, help="seed (probe.py's)")
    args = p.parse_args(argv)
    print(f"necessity-only baseline of the regret probe over {args.problems} test-template problems, "
          f"{args.draws} draws each, seed {args.seed}")
    for preset in args.presets:
        cells = []
        for draw in ("stratified", "issue21"):
            pairs = nece_and_labels(preset, draw, args.problems, args.seed, args.draws)
            b = necessity_baseline(pairs)
            unnecessary_pos = sum(1 for nece, label in pairs if label == 1 and not nece)
            positives = sum(label for _, label in pairs)
            cells.append(f"{draw} {100 * b['acc']:.1f}% ({b['mapping']}; {b['n']} queries, "
                         f"{unnecessary_pos} of {positives} positives unnecessary)")
        print(f"{preset:<10} " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
