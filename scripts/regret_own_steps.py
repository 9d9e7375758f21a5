"""At the model's own steps, does the backbone itself expect a retraction? (issue 21, Part 2.2)

For a regret probe run (``probe.py probe.tasks=[regret]``) and its backbone, greedily solve
``--n`` reask and ``--n`` test problems (as ``probe.analysis=true`` does), take the same cases as
the analysis (``Define A as`` of each correct step, and of the first wrong step when the verifier
calls it ``not_ready``) and print, per kind of case, how often the regret probe says "mistake" and
the backbone's own probability that the next token is the retraction word (``BACK``). A model
trained on retry data that "knows" a step is wrong would put weight on BACK there.

    python scripts/regret_own_steps.py logs/tiny_study/regret-probe-retry0.2-seed1/version_0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from igsm.config import AnalysisConfig  # noqa: E402
from igsm.data import generator_config  # noqa: E402
from igsm.solve import solve  # noqa: E402
from probing.analysis import analysis_problems, regret_cases  # noqa: E402
from probing.vprobe import VProbe, load_backbone  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("probe_run", help="a probe.py run folder whose tasks include regret")
    ap.add_argument("--n", type=int, default=None, help="problems per set (reask, test); default: the run's analysis.n")
    args = ap.parse_args()
    torch.set_num_threads(1)
    checkpoint = torch.load(Path(args.probe_run) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    backbone = load_backbone(checkpoint["backbone_ckpt"])
    tok, p = backbone.tokenizer, checkpoint["probe_config"]["probe"]
    analysis = AnalysisConfig(**checkpoint["probe_config"]["analysis"])  # the probe run's own settings
    module = VProbe(backbone.model, p["tasks"], rank=p["rank"], layers=p["layers"], control=p["control"],
                    v_init_std=p["v_init_std"], seed=checkpoint["probe_config"]["seed"])
    module.load_state_dict(checkpoint["state_dict"], strict=False)  # the probes; the backbones are the module's
    module.eval()
    model = module.backbones["trained"]
    (back,) = tok.encode(" BACK")
    cases: dict[int, list[tuple[int, float]]] = {0: [], 1: []}  # mistake -> [(probe says mistake, P(BACK))]
    gen_cfg = generator_config(backbone.train_config.data)
    for kind in ("reask", "test"):
        problems = analysis_problems(gen_cfg, kind, args.n or analysis.n, checkpoint["probe_config"]["seed"],
                                     analysis.reask_op)
        attempts, _ = solve(model, tok, problems, max_new_tokens=analysis.max_new_tokens,
                            batch_size=analysis.batch_size)  # the analysis's batches
        for attempt in attempts:
            for ids, mistake in regret_cases(tok, attempt.problem, attempt.solution, attempt.report):
                x = torch.tensor([ids])  # [1, T]
                with torch.no_grad():
                    said = int(module.predict("regret", x, torch.tensor([len(ids) - 1]), backbone="trained"))
                    p_back = torch.softmax(model(x).logits[0, -1].float(), -1)[back].item()
                cases[mistake].append((said, p_back))
    for mistake, name in ((1, "not_ready steps (the model's mistakes)"), (0, "correct steps")):
        rows = cases[mistake]
        if rows:
            mean_back = sum(b for _, b in rows) / len(rows)
            print(f"{name}: {len(rows)}; probe says mistake {sum(s for s, _ in rows)}; mean P(BACK) {mean_back:.3f}; "
                  f"P(BACK) > 0.5: {sum(b > 0.5 for _, b in rows)}")


if __name__ == "__main__":
    main()
