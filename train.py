"""Train a GPT on iGSM and evaluate it (design 3.2).

    python train.py                              # tiny preset, CPU, a few minutes, ends with an evaluation
    python train.py preset=med trainer.devices=8 trainer.strategy=ddp   # the paper's iGSM-med recipe
    python train.py preset=med model.n_layer=16 model.n_head=10 data.max_op=21 trainer.max_steps=2000
    python train.py print_config=true            # resolved config, then exit
    python train.py ckpt_path=last               # resume the latest run of this name, same folder
    python train.py ckpt_path=logs/tiny/version_0/checkpoints/step_0000500.ckpt

Every key is listed by ``print_config=true``; defaults live in igsm/config.py, presets in
configs/. A bad key or value exits with status 2 and one line on stderr, before anything runs.
Multi-node: see scripts/slurm_example.sh (Lightning reads the SLURM environment).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Iterable, Optional

from igsm.cli_config import config_to_dict, config_to_yaml, load_config, presets_help
from igsm.config import ConfigError, TrainConfig, accumulation

# CPU: idle OpenMP threads sleep instead of spinning (spinning threads that share 2 cores with a
# data worker or another job slow training many times over). Before torch loads; the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Keys that may change between a run and its resumption without changing what it computes.
RESUME_MAY_CHANGE = {"ckpt_path", "config", "print_config", "trainer.max_steps", "trainer.eval_every",
                     "trainer.checkpoint_every", "trainer.log_every_n_steps", "trainer.enable_progress_bar",
                     "data.num_workers", "data.prefetch_batches", "eval.final", "eval.examples"}


def find_resume(cfg: TrainConfig) -> tuple[Optional[str], Optional[int]]:
    """(checkpoint file, version folder to reuse) for ``ckpt_path``; ConfigError when missing."""
    if cfg.ckpt_path is None:
        return None, None
    run_root = Path(cfg.log_root) / cfg.name
    if cfg.ckpt_path == "last":
        # The newest version folder with a checkpoint; in it, the newest of last.ckpt and the
        # hpc_ckpt_<k>.ckpt Lightning writes when SLURM warns of the time limit.
        for version, folder in sorted(_version_folders(run_root), reverse=True):
            candidates = [p for p in (folder / "checkpoints" / "last.ckpt", *folder.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
            if candidates:
                return str(max(candidates, key=lambda p: p.stat().st_mtime)), version
        raise ConfigError(f"ckpt_path='last' is not allowed: no {run_root}/version_*/checkpoints/last.ckpt "
                          "(a run of this name has not saved a checkpoint yet)")
    path = Path(cfg.ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path!r} is not allowed: no such file ('last' or a .ckpt file)")
    # A checkpoint inside one of this run's version folders continues in that folder.
    for version, folder in _version_folders(run_root):
        if folder.resolve() in path.resolve().parents:
            return str(path), version
    return str(path), None


def _version_folders(run_root: Path) -> list[tuple[int, Path]]:
    return [(int(m.group(1)), d) for d in run_root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", d.name))]


def warn_config_changes(cfg: TrainConfig, ckpt_file: str) -> None:
    """Say which keys differ from the run that wrote the checkpoint (except harmless ones)."""
    import torch

    saved = torch.load(ckpt_file, map_location="cpu", mmap=True, weights_only=False)
    old = _flat(saved.get("hyper_parameters", {}).get("config", {}))
    new = _flat(config_to_dict(cfg))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUME_MAY_CHANGE)
    if changed:
        print("warning: resuming with settings that differ from the checkpoint's run: "
              + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed), file=sys.stderr)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def summary_lines(entries: list[dict]) -> list[str]:
    lines = []
    for e in entries:
        unnecessary = e["unnecessary_params_per_correct"]
        lines.append(f"eval {e['bucket']:>14}: accuracy {100 * e['accuracy']:5.1f}%  answer {100 * e['answer_accuracy']:5.1f}%"
                     f"  unnecessary/correct {'-' if unnecessary is None else f'{unnecessary:.2f}'}  n={e['n']}")
    return lines


def main(argv: Optional[list[str]] = None, extra_callbacks: Iterable = ()) -> int:
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
    from igsm.lit import GPTLitModule
    from igsm.report_tb import ReportFigures
    from igsm.trainer import build_trainer

    if cfg.trainer.cpu_threads is not None:
        import torch

        torch.set_num_threads(cfg.trainer.cpu_threads)
    if ckpt_file is not None:
        warn_config_changes(cfg, ckpt_file)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # model init; the data never reads global RNGs
    datamodule = IGSMDataModule(cfg.data, cfg.eval, seed=cfg.seed)
    module = GPTLitModule(config=config_to_dict(cfg), tokenizer=datamodule.tokenizer.to_dict())
    accumulate = accumulation(cfg)
    trainer = build_trainer(
        cfg.trainer, cfg.name, log_root=cfg.log_root, version=version, accumulate_grad_batches=accumulate,
        config_yaml=config_to_yaml(cfg),
        extra_info={"accumulate_grad_batches": accumulate, "parameters": module.model.num_params(),
                    "vocab_size": datamodule.tokenizer.vocab_size, "resumed_from": ckpt_file},
        extra_callbacks=[ReportFigures(config_to_dict(cfg)), *extra_callbacks],  # TensorBoard figures, hparams
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_file)
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
