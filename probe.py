"""V-probe a trained iGSM model (docs/probing.md; docs/spec.md#13-the-probe-labels-and-regret).

    python probe.py                                  # newest last.ckpt under logs/, CPU default
    python probe.py ckpt=logs/tiny/version_0/checkpoints/last.ckpt
    python probe.py ckpt=... probe.tasks=[nece,dep] probe.layers=all probe.control=random_init
    python probe.py ckpt=... preset=probe_med trainer.devices=8 trainer.strategy=ddp
    python probe.py ckpt=... probe.analysis=true     # also the error analysis (analysis.json)
    python probe.py ckpt=... probe.positive_control=true    # + a backbone that holds each label
    python probe.py ckpt=... probe.shuffle_labels=true      # negative control: labels nothing holds
    python probe.py ckpt=... probe.test_split=train probe.split_by_solved=true  # where the model is competent
    python probe.py print_config=true                # resolved config, then exit
    python probe.py <the same arguments> ckpt_path=last   # resume an interrupted probe run, same folder

SIGTERM or Ctrl-C saves a checkpoint after the current step and exits (status 128 + signal), naming
the command that resumes; checkpoints (probes, optimizer, step; never the backbone) every
trainer.checkpoint_every steps; a damaged checkpoint ends with one line (status 2). docs/faults.md.

Trains one probe per (task, backbone) at once (the trained backbone and/or the random-init
control), tests them on template-test problems and writes ``logs/<name>/version_N/`` with
TensorBoard scalars ``probe/<task>/...`` and ``probe.json``. Defaults live in igsm/probe_config.py
(``ProbeConfig``); presets are configs/probe_*.yaml. docs/probing.md explains tasks, panels and probe.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

from igsm.cli_config import config_to_dict, config_to_yaml, load_config, presets_help
from igsm.config import ConfigError, ProbeConfig
from igsm.orphans import exit_with_launcher
from probing.run import find_checkpoint, find_probe_resume, summary_lines


def main(argv: Optional[list[str]] = None) -> int:
    exit_with_launcher()  # a DDP rank started by this process must not outlive it (igsm/orphans.py)
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(presets_help(ProbeConfig))
        return 0
    try:
        cfg = load_config(ProbeConfig, argv)
        ckpt = None if cfg.print_config else find_checkpoint(cfg)
        resume_file, version, ckpt = (None, None, ckpt) if cfg.print_config else find_probe_resume(cfg, ckpt)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.print_config:
        print(config_to_yaml(cfg), end="")
        return 0

    import os

    # CPU: idle OpenMP threads sleep instead of spinning. With spinning, a 2-thread run on 2 cores
    # that shares them with anything else (a data worker, another job) runs ~10x slower; must be
    # set before torch loads its OpenMP runtime. An explicit setting in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from igsm.quiet import silence_harmless_noise

    silence_harmless_noise()  # Lightning's tips and known-harmless warnings (igsm/quiet.py)
    import lightning as L

    from igsm.faults import GracefulStop, resume_args
    from probing.run import add_analysis, build_probe, build_probe_trainer, probe_results, silence_probe_warnings
    from probing.vprobe import load_backbone

    if cfg.trainer.cpu_threads is not None:
        import torch

        torch.set_num_threads(cfg.trainer.cpu_threads)
    silence_probe_warnings()
    start = time.time()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    backbone = load_backbone(ckpt)
    datamodule, module, solved = build_probe(cfg, backbone, ckpt)
    stopper = GracefulStop()
    trainer = build_probe_trainer(cfg, backbone, ckpt, resume_file, version, callbacks=[stopper])
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_file)
    if stopper.signum is not None:
        last = Path(trainer.log_dir) / "checkpoints" / "last.ckpt"  # a collective under DDP: every rank asks
        if trainer.is_global_zero:
            import signal

            pin = [] if any(a.startswith("ckpt=") for a in argv) else [f"ckpt={ckpt}"]
            print(f"{signal.Signals(stopper.signum).name}: stopped after step {trainer.global_step}, checkpoint "
                  f"{last}; resume with: python probe.py {' '.join(resume_args(argv, *pin))}", file=sys.stderr)
        return 128 + stopper.signum
    trainer.test(module, datamodule=datamodule, verbose=False)
    run_dir = Path(trainer.log_dir)  # a collective under DDP: every rank asks
    if not trainer.is_global_zero:
        return 0

    results = probe_results(cfg, ckpt, backbone, module, datamodule, trainer, solved)
    if "nece_by_distance" in results:
        from igsm.report import nece_by_distance_figure
        from igsm.show import save_figure

        save_figure(nece_by_distance_figure(results["nece_by_distance"]), run_dir / "nece_by_distance.png")
    add_analysis(results, cfg, backbone, module, trainer, run_dir)
    results["time_s"] = round(time.time() - start, 1)
    from igsm.report_tb import log_probe_figures

    log_probe_figures(trainer.logger.experiment, results, trainer.global_step, config=config_to_dict(cfg))
    (run_dir / "probe.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"run folder: {run_dir}")
    for line in summary_lines(results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
