"""The probe run of probe.py: which backbone and which resume, the controls, the V-probe module
and its Trainer, and the results written to ``probe.json`` (docs/probing.md).

probe.py parses the command line and calls these in order; the figures (layer 5, igsm.report)
stay with it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

from igsm.cli_config import config_to_dict, config_to_yaml
from igsm.config import ConfigError, ProbeConfig


def find_checkpoint(cfg: ProbeConfig) -> str:
    """``ckpt``, or the newest readable ``last.ckpt`` of a training run under ``log_root``;
    igsm.faults.CheckpointError (one line) when the file is damaged or not a train.py checkpoint."""
    from igsm.faults import CheckpointError, read_checkpoint  # loads torch

    if cfg.ckpt is not None:
        if Path(cfg.ckpt).is_dir():  # a transformers folder (python -m igsm export; docs/interop.md)
            check_transformers_folder(cfg.ckpt)
        elif not Path(cfg.ckpt).is_file():
            raise ConfigError(f"ckpt={cfg.ckpt!r} is not allowed: no such file "
                              "(a train.py checkpoint, or a folder written by python -m igsm export)")
        else:
            read_checkpoint(cfg.ckpt, "ckpt")
        return cfg.ckpt
    candidates = []
    for path in Path(cfg.log_root).glob("**/checkpoints/last.ckpt"):
        info = path.parent.parent / "run_info.json"
        try:
            if info.is_file() and json.loads(info.read_text()).get("kind") == "probe":
                continue  # a probe run's own checkpoint holds probes, not a backbone
        except (OSError, ValueError):
            pass
        candidates.append((path.stat().st_mtime, str(path)))
    if not candidates:
        raise ConfigError(f"ckpt=None is not allowed: no {cfg.log_root}/**/checkpoints/last.ckpt found "
                          "(train a model first: python train.py, or pass ckpt=PATH)")
    for _, path in sorted(candidates, reverse=True):
        try:
            read_checkpoint(path, "ckpt")
            return path
        except CheckpointError as e:
            print(f"warning: skipping {path}: {str(e).split(': ', 1)[1]}", file=sys.stderr)
    raise ConfigError(f"ckpt=None is not allowed: no readable {cfg.log_root}/**/checkpoints/last.ckpt "
                      "(see the warnings above; pass ckpt=PATH)")


# Keys that may change between a probe run and its resumption without changing what it computes
# (trainer.max_steps sizes the training set and the schedule: not one of them).
RESUME_MAY_CHANGE = {"ckpt_path", "ckpt", "config", "print_config", "log_root", "trainer.checkpoint_every",
                     "trainer.log_every_n_steps", "trainer.enable_progress_bar", "probe.num_workers", "probe.analysis",
                     "analysis.n", "analysis.reask_op", "analysis.batch_size", "analysis.max_new_tokens"}


def find_probe_resume(cfg: ProbeConfig, ckpt: str) -> tuple[Optional[str], Optional[int], str]:
    """(probe checkpoint, version folder to reuse, backbone) for ``ckpt_path`` (None: no resume).

    The run is ``<log_root>/<name>`` with the name this run gets (``name``, or the backbone's run
    name + ``_probe``). Without ``ckpt=``, the backbone is the one the resumed run probed (saved in
    its checkpoint) rather than the newest ``last.ckpt``. ConfigError / CheckpointError (one line)
    when there is nothing to resume or the file is damaged or not a probe.py checkpoint."""
    if cfg.ckpt_path is None:
        return None, None, ckpt
    from igsm.faults import find_resume_checkpoint, read_checkpoint

    name = cfg.name or f"{backbone_run_name(ckpt)}_probe"
    path, version = find_resume_checkpoint(cfg.ckpt_path, Path(cfg.log_root) / name, probe=True)
    checkpoint = read_checkpoint(path, probe=True)
    if checkpoint.get("probe_config") is not None:
        from igsm.faults import warn_changed_settings

        warn_changed_settings(config_to_dict(cfg), checkpoint["probe_config"], RESUME_MAY_CHANGE)
    saved = checkpoint.get("backbone_ckpt")
    if saved and saved != ckpt:
        if cfg.ckpt is None and Path(saved).exists():
            ckpt = saved  # the newest last.ckpt may be a later training run's
        else:
            from igsm.faults import warn_once

            warn_once(f"warning: resuming a probe run of the backbone {saved} with the backbone {ckpt}")
    return path, version, ckpt


def backbone_run_name(ckpt: str) -> str:
    """The ``name`` of the train.py run that wrote the backbone ``ckpt`` (file or transformers folder)."""
    if Path(ckpt).is_dir():
        from igsm.hf import load_pretrained

        return load_pretrained(ckpt).train_config.name
    from igsm.faults import read_checkpoint

    return read_checkpoint(ckpt, "ckpt")["hyper_parameters"]["config"]["name"]


GPU_LENGTH_CHUNKS = 4  # probe.length_chunks=null on a GPU (ProbeOptions)


def per_device_sizes(cfg: ProbeConfig) -> tuple[int, int]:
    """(pairs per task per device per step, length chunks): probe.batch_size is global, split
    evenly among trainer.devices * trainer.num_nodes; length_chunks null = 4 on GPU, 1 on CPU."""
    from igsm.trainer import wants_gpu

    world = cfg.trainer.devices * cfg.trainer.num_nodes
    chunks = cfg.probe.length_chunks
    if chunks is None:
        chunks = GPU_LENGTH_CHUNKS if wants_gpu(cfg.trainer) else 1
    return cfg.probe.batch_size // world, chunks


def check_transformers_folder(path: str) -> None:
    """ConfigError (one line) unless igsm.hf can load the folder: the extra [hf] and config.json."""
    try:
        from igsm.hf import InteropError, check_pretrained

        check_pretrained(path)
    except (ImportError, InteropError) as e:
        raise ConfigError(f"ckpt={path!r} is not allowed: {e}") from None


def summary_lines(results: dict) -> list[str]:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    positive = any("positive_acc" in e for e in results["tasks"].values())
    extra = f"  {'positive':>8}  {'fine-tuned':>10}" if positive else ""
    lines = [f"{'task':>10}  {'trained':>8}  {'balanced':>8}  {'random':>8}  {'majority':>8}{extra}  {'n':>6}"]
    for task, e in results["tasks"].items():
        extra = f"  {pct(e.get('positive_acc')):>8}  {pct(e.get('positive_finetuned_acc')):>10}" if positive else ""
        lines.append(f"{task:>10}  {pct(e.get('acc')):>8}  {pct(e.get('balanced_acc')):>8}  "
                     f"{pct(e.get('random_init_acc')):>8}  "
                     f"{pct(e.get('majority_acc')):>8}{extra}  {e['n_test_pairs']:>6}")
        for group, g in e.get("by_solved", {}).items():
            lines.append(f"{'  ' + group:>10}  {pct(g.get('acc')):>8}  {'':>8}  {pct(g.get('random_init_acc')):>8}  "
                         f"{pct(g.get('majority_acc')):>8}"
                         + (f"  {pct(g.get('positive_acc')):>8}  {'':>10}" if positive else "")
                         + f"  {g['n_test_pairs']:>6}")
    for task, e in results["tasks"].items():
        if "necessity" in e:  # the regret probe's necessity-only control (probing.labels.necessity_baseline)
            lines.append(f"{task}: necessity-only control {pct(e['necessity_acc'])} ({e['necessity']['mapping']})")
    return lines


def build_controls(cfg: ProbeConfig, backbone, gen_cfg, datamodule) -> tuple[Optional[dict], Optional[list]]:
    """The positive-control copies (per task) and the per-test-problem solved flags, as asked.

    Every rank computes both itself (deterministic, same result): no collective needed.
    """
    import torch

    from igsm.trainer import resolve_precision
    from probing.controls import finetune_positive, solved_flags

    p = cfg.probe
    # The precision the probes train with (null = auto, as in train.py): the controls follow it.
    bf16 = resolve_precision(cfg.trainer).startswith("bf16")
    device = "cpu"
    if cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        # under DDP every rank runs this on its own GPU (same seed: the same copies, up to GPU nondeterminism)
        import os

        device = f"cuda:{int(os.environ.get('LOCAL_RANK', os.environ.get('SLURM_LOCALID', 0)))}"
    solved = None
    if p.split_by_solved:
        t0 = time.time()
        split, stream = datamodule.test_split_stream()
        model = backbone.model.to(device)
        solved = solved_flags(model, backbone.tokenizer, gen_cfg, split=split, n=p.test_problems, seed=cfg.seed,
                              stream=stream, batch_size=cfg.analysis.batch_size,
                              fresh_letters=backbone.train_config.eval.fresh_letters, bf16=bf16)
        backbone.model.cpu()
        datamodule.solved = solved
        known = [s for s in solved if s is not None]
        print(f"solved split: the backbone solves {sum(known)}/{len(known)} {split}-template test problems "
              f"({time.time() - t0:.0f}s)")
    positive = None
    if p.positive_control:
        positive = {}
        for task in p.tasks:
            t0 = time.time()
            positive[task] = finetune_positive(
                backbone.model, backbone.tokenizer, gen_cfg, task, steps=p.positive_steps, lr=p.positive_lr,
                batch_size=p.batch_size, draws=p.draws, seed=cfg.seed, shuffle_labels=p.shuffle_labels,
                bf16=bf16, device=device, ops=datamodule.train_ops())
            print(f"positive control: fine-tuned a copy for {task} ({p.positive_steps} steps, {time.time() - t0:.0f}s)")
    return positive, solved


def silence_probe_warnings() -> None:
    """Lightning's warnings that a probe run triggers on purpose."""
    import warnings

    # The frozen backbones are in eval mode on purpose (docs/probing.md, "What is trained (and what is not)").
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # A resumed probe run starts its data where the checkpoint stopped (ProbeDataModule), which
    # Lightning cannot see (its loaders are not "resumable" in its sense).
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")


def run_name(cfg: ProbeConfig, backbone) -> str:
    """``name``, or the backbone's run name + ``_probe``."""
    return cfg.name or f"{backbone.train_config.name}_probe"


def build_probe(cfg: ProbeConfig, backbone, ckpt: str):
    """(data module, V-probe module, solved flags or None) for the backbone ``ckpt``, the controls
    (positive copies, solved split) built as ``cfg.probe`` asks."""
    from igsm.config import generator_config
    from probing.data import ProbeDataModule
    from probing.vprobe import VProbe

    gen_cfg = generator_config(backbone.train_config.data)
    p = cfg.probe
    device_batch, length_chunks = per_device_sizes(cfg)
    datamodule = ProbeDataModule(backbone.tokenizer, gen_cfg, p.tasks, batch_size=device_batch, draws=p.draws,
                                 train_problems=p.train_problems, test_problems=p.test_problems, seed=cfg.seed,
                                 num_workers=p.num_workers, test_split=p.test_split, shuffle_labels=p.shuffle_labels)
    positive, solved = build_controls(cfg, backbone, gen_cfg, datamodule)
    module = VProbe(backbone.model, p.tasks, rank=p.rank, layers=p.layers, control=p.control, lr=p.lr,
                    weight_decay=p.weight_decay, warmup_steps=p.warmup_steps, betas=tuple(p.betas),
                    v_init_std=p.v_init_std, seed=cfg.seed, checkpoint_activations=p.checkpoint_activations,
                    length_chunks=length_chunks, positive=positive, backbone_ckpt=ckpt,
                    probe_config=config_to_dict(cfg))  # saved in its checkpoints: a resume names changed settings
    return datamodule, module, solved


def build_probe_trainer(cfg: ProbeConfig, backbone, ckpt: str, resume_file: Optional[str], version: Optional[int],
                        callbacks: list):
    """The Trainer of a probe run: no periodic evaluation, ``last.ckpt`` alone, in the run's folder
    ``version`` when resuming there."""
    import dataclasses

    from igsm.faults import read_checkpoint
    from igsm.trainer import build_trainer

    resumed_step = read_checkpoint(resume_file, probe=True)["global_step"] if resume_file is not None else None
    return build_trainer(
        dataclasses.replace(cfg.trainer, eval_every=None),  # no periodic evaluation: the test follows training
        run_name(cfg, backbone), log_root=cfg.log_root, version=version, config_yaml=config_to_yaml(cfg),
        extra_info={"kind": "probe", "backbone_ckpt": ckpt, "backbone_run": backbone.train_config.name,
                    "resumed_from": resume_file},
        extra_callbacks=callbacks,
        # Resuming in the run's folder: TensorBoard hides what the killed run logged after the
        # checkpoint (this run logs those steps again), so no step appears twice.
        purge_step=resumed_step if version is not None else None,
        keep_periodic=False,  # probe checkpoints only serve to resume: last.ckpt alone
    )


def probe_results(cfg: ProbeConfig, ckpt: str, backbone, module, datamodule, trainer,
                  solved: Optional[list]) -> dict:
    """What ``probe.json`` holds after the test (rank 0): the backbone, the probe's sizes, the
    module's per-task results, and the controls and solved split as asked."""
    from probing.labels import NUM_CLASSES
    from probing.vprobe import expected_trainable

    p = cfg.probe
    device_batch, length_chunks = per_device_sizes(cfg)
    bb = backbone.model
    results = {
        "backbone_ckpt": ckpt,
        "config": config_to_dict(cfg),
        "backbone": {"run": backbone.train_config.name, "n_layer": bb.cfg.n_layer, "d_model": bb.cfg.d_model,
                     "vocab_size": bb.vocab_size, "padded_vocab": bb.padded_vocab,
                     "tokenizer": backbone.tokenizer.name},
        "probe": {"rank": p.rank, "layers": p.layers, "control": p.control, "steps": trainer.global_step,
                  "batch_size": p.batch_size, "batch_size_per_device": device_batch, "devices": trainer.world_size,
                  "length_chunks": length_chunks,
                  "trainable_params_per_probe": {
                      t: expected_trainable(bb.padded_vocab, bb.cfg.d_model, p.rank, NUM_CLASSES[t],
                                            len(module.head_layers))
                      for t in p.tasks}},
        **dict(module.results),
    }
    if "regret" in results["tasks"]:  # the necessity-only control, on the same test queries
        from probing.data import regret_necessity_control

        queries = datamodule.dataset("regret", "test", p.test_problems)
        results["tasks"]["regret"].update(regret_necessity_control(queries))
    if p.positive_control or p.shuffle_labels:
        results["controls"] = {"positive_control": p.positive_control, "shuffle_labels": p.shuffle_labels,
                               "positive_steps": p.positive_steps if p.positive_control else None,
                               "positive_lr": p.positive_lr if p.positive_control else None}
    if solved is not None:
        known = [s for s in solved if s is not None]
        results["solved"] = {"test_split": p.test_split, "n_problems": len(known), "n_solved": sum(known),
                             "rate": sum(known) / len(known) if known else None}
    nece = results["tasks"].get("nece", {}).get("trained", {}).get("by_distance")
    if nece is not None:
        results["nece_by_distance"] = nece
    return results


def add_analysis(results: dict, cfg: ProbeConfig, backbone, module, trainer, run_dir: Path) -> None:
    """``probe.analysis``: the error analysis of the trained backbone, into ``analysis.json``,
    TensorBoard and ``results["analysis"]`` (nothing without the trained backbone)."""
    if not (cfg.probe.analysis and "trained" in module.backbone_names):
        return
    from igsm.config import generator_config
    from probing.analysis import analysis_scalars, run_analysis

    module.to(trainer.strategy.root_device)
    analysis = run_analysis(module, backbone.tokenizer, generator_config(backbone.train_config.data), cfg.analysis,
                            seed=cfg.seed, precision=str(trainer.precision))
    (run_dir / "analysis.json").write_text(json.dumps(analysis, indent=2) + "\n")
    writer = trainer.logger.experiment
    for k, v in analysis_scalars(analysis).items():
        writer.add_scalar(k, v, global_step=trainer.global_step)
    writer.flush()
    results["analysis"] = analysis
