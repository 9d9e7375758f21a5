"""The all-false baselines of the binary probe tasks: the share of label-0 pairs among the pairs a
probe is tested on, per training preset (docs/probing.md, "Reading the results").

    python scripts/probe_baselines.py                               # tiny, small_cpu, med; dep and nece_next
    python scripts/probe_baselines.py --presets tiny --tasks dep nece can_next --problems 512

The pairs are those of ``probe.py``'s test set: the problems of ``probing.data.probe_problem`` (the
preset's generator, ``--split`` templates, seed ``--seed``), ``--draws`` (position, A[, B]) draws
each from ``probing.labels.draw_queries`` with the rng ``ProbeDataset`` uses, labelled by
``probing.labels.ProblemLabels``. Tokens are not needed for labels, so none are built. The defaults
are ``ProbeConfig``'s (512 test problems, 10 draws, seed 0, test templates).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from igsm.cli_config import load_config  # noqa: E402  (after the path insert: runs from a checkout)
from igsm.config import TrainConfig, generator_config  # noqa: E402
from igsm.generator import GenerationError, problem_rng  # noqa: E402
from probing.data import HELDOUT_STREAM, PROBE_STREAM, probe_problem  # noqa: E402
from probing.labels import ProblemLabels, draw_queries  # noqa: E402


def probe_labels(preset: str, task: str, split: str = "test", n_problems: int = 512, seed: int = 0,
                 draws: int = 10) -> list[int]:
    """The labels of the test pairs ``probe.py`` draws for ``task`` on the training preset ``preset``."""
    gen_cfg = generator_config(load_config(TrainConfig, [f"preset={preset}"]).data)
    stream = PROBE_STREAM if split == "test" else HELDOUT_STREAM  # ProbeDataModule.test_split_stream
    labels = []
    for index in range(n_problems):
        try:
            problem = probe_problem(gen_cfg, seed, split, index, stream)
        except GenerationError:
            continue
        rng = problem_rng(seed, stream, split, index, task)  # as ProbeDataset.__getitem__
        truth = ProblemLabels(problem)
        labels += [truth.label(task, a, b, pos) for pos, a, b in draw_queries(problem, task, rng, draws)]
    return labels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small_cpu", "med"], help="training presets (configs/)")
    p.add_argument("--tasks", nargs="+", default=["dep", "nece_next"], help="binary probe tasks")
    p.add_argument("--split", default="test", choices=["test", "train"], help="probe.test_split")
    p.add_argument("--problems", type=int, default=512, help="probe.test_problems")
    p.add_argument("--draws", type=int, default=10, help="probe.draws")
    p.add_argument("--seed", type=int, default=0, help="seed (probe.py's)")
    args = p.parse_args(argv)
    print(f"all-false baseline (share of label 0) over {args.problems} {args.split}-template problems, "
          f"{args.draws} draws each, seed {args.seed}")
    for preset in args.presets:
        cells = []
        for task in args.tasks:
            labels = probe_labels(preset, task, args.split, args.problems, args.seed, args.draws)
            cells.append(f"{task} {100 * labels.count(0) / len(labels):.1f}% of {len(labels)} pairs")
        print(f"{preset:<10} " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
