"""Train a GPT on iGSM and evaluate it (docs/training.md).

    python train.py                              # tiny preset, CPU, a few minutes, ends with an evaluation
    python train.py preset=med trainer.devices=8 trainer.strategy=ddp   # the paper's iGSM-med recipe
    python train.py preset=med model.n_layer=16 model.n_head=10 data.max_op=21 trainer.max_steps=2000
    python train.py print_config=true            # resolved config, then exit
    python train.py ckpt_path=last               # resume the latest run of this name, same folder
    python train.py ckpt_path=logs/tiny/version_0/checkpoints/step_0000500.ckpt

SIGTERM or Ctrl-C saves a checkpoint after the current step and exits (status 128 + signal);
a damaged checkpoint ends with one line (status 2); a non-finite loss ends naming the step
(status 1; optim.on_nonfinite=skip skips such steps). docs/faults.md.

Every key is listed by ``print_config=true``; defaults live in igsm/train_config.py, presets in
configs/. A bad key or value exits with status 2 and one line on stderr, before anything runs.
Multi-node: see scripts/slurm_example.sh (Lightning reads the SLURM environment).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from igsm.cli_config import config_to_dict, config_to_yaml, load_config, presets_help
from igsm.config import ConfigError, TrainConfig, accumulation
from igsm.orphans import exit_with_launcher

# CPU: idle OpenMP threads sleep instead of spinning (spinning threads that share 2 cores with a
# data worker or another job slow training many times over). Before torch loads; the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Keys that may change between a run and its resumption without changing what it computes.
RESUME_MAY_CHANGE = {"ckpt_path", "config", "print_config", "trainer.max_steps", "trainer.eval_every",
                     "trainer.checkpoint_every", "trainer.log_every_n_steps", "trainer.enable_progress_bar",
                     "data.num_workers", "data.prefetch_batches", "eval.final", "eval.examples",
                     "optim.on_nonfinite", "optim.max_nonfinite_skips"}


def find_resume(cfg: TrainConfig) -> tuple[Optional[str], Optional[int]]:
    """(checkpoint file, version folder to reuse) for ``ckpt_path``; ConfigError when missing,
    igsm.faults.CheckpointError (one line) when the file given is damaged or foreign."""
    if cfg.ckpt_path is None:
        return None, None
    from igsm.faults import find_resume_checkpoint  # loads torch: only when resuming

    return find_resume_checkpoint(cfg.ckpt_path, Path(cfg.log_root) / cfg.name)


def warn_config_changes(cfg: TrainConfig, saved: dict) -> None:
    """Say which keys differ from the run that wrote the checkpoint ``saved`` (except harmless ones)."""
    from igsm.faults import warn_changed_settings

    warn_changed_settings(config_to_dict(cfg), saved.get("hyper_parameters", {}).get("config", {}), RESUME_MAY_CHANGE)


def summary_lines(entries: list[dict]) -> list[str]:
    lines = []
    for e in entries:
        unnecessary = e["unnecessary_params_per_correct"]
        lines.append(f"eval {e['bucket']:>14}: accuracy {100 * e['accuracy']:5.1f}%"
                     f"  answer {100 * e['answer_accuracy']:5.1f}%"
                     f"  unnecessary/correct {'-' if unnecessary is None else f'{unnecessary:.2f}'}  n={e['n']}")
    return lines


def main(argv: Optional[list[str]] = None, extra_callbacks: Iterable = ()) -> int:
    exit_with_launcher()  # a DDP rank started by this process must not outlive it (igsm/orphans.py)
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(presets_help(TrainConfig))
        return 0
    try:
        cfg = load_config(TrainConfig, argv)
        ckpt_file, version = find_resume(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    if cfg.model.compile:  # a missing C compiler would otherwise fail minutes in, deep in a traceback
        from igsm.compile_check import compile_error

        if (error := compile_error("model.compile")) is not None:
            print(f"error: {error}", file=sys.stderr)
            return 2

    from igsm.quiet import silence_harmless_noise

    silence_harmless_noise()  # Lightning's tips and known-harmless warnings (igsm/quiet.py)
    import lightning as L

    from igsm.data import IGSMDataModule
    from igsm.faults import GracefulStop, NonFiniteError, read_checkpoint, resume_args
    from igsm.lit import GPTLitModule
    from igsm.report_tb import ReportFigures
    from igsm.trainer import build_trainer

    if cfg.trainer.cpu_threads is not None:
        import torch

        torch.set_num_threads(cfg.trainer.cpu_threads)
    resumed_step = None
    if ckpt_file is not None:
        saved = read_checkpoint(ckpt_file)
        resumed_step = saved.get("global_step")
        warn_config_changes(cfg, saved)
        del saved
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # model init; the data never reads global RNGs
    datamodule = IGSMDataModule(cfg.data, cfg.eval, seed=cfg.seed)
    module = GPTLitModule(config=config_to_dict(cfg), tokenizer=datamodule.tokenizer.to_dict())
    accumulate = accumulation(cfg)
    stopper = GracefulStop(cfg.trainer.eval_every)
    trainer = build_trainer(
        cfg.trainer, cfg.name, log_root=cfg.log_root, version=version, accumulate_grad_batches=accumulate,
        config_yaml=config_to_yaml(cfg),
        extra_info={"accumulate_grad_batches": accumulate, "parameters": module.model.num_params(),
                    "vocab_size": datamodule.tokenizer.vocab_size, "resumed_from": ckpt_file},
        extra_callbacks=[ReportFigures(config_to_dict(cfg)), stopper, *extra_callbacks],  # TensorBoard figures, hparams
        # Resuming in the run's folder: TensorBoard hides what the killed run logged after the
        # checkpoint (this run logs those steps again), so no step appears twice.
        purge_step=resumed_step if version is not None else None,
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_file)
    except NonFiniteError as e:
        last = Path(trainer.log_dir or ".") / "checkpoints" / "last.ckpt"
        kept = f"last good checkpoint {last} is untouched" if last.is_file() else "no checkpoint was written"
        print(f"error: {e}; stopped ({kept}). Lower optim.lr, or set optim.on_nonfinite=skip", file=sys.stderr)
        return 1
    if stopper.signum is not None:
        last = Path(trainer.log_dir) / "checkpoints" / "last.ckpt"  # a collective under DDP: every rank asks
        if trainer.is_global_zero:
            import signal

            print(f"{signal.Signals(stopper.signum).name}: stopped after step {trainer.global_step}, checkpoint "
                  f"{last}; resume with: python train.py {' '.join(resume_args(argv))}", file=sys.stderr)
        return 128 + stopper.signum
    if cfg.eval.final and module.last_eval_step != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    run_dir = trainer.log_dir  # a broadcast from rank 0: every rank must ask
    if trainer.is_global_zero:
        print(f"run folder: {run_dir}")
        for line in summary_lines(module.last_eval):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
