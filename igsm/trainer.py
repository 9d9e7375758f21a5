"""One Trainer factory for train.py and probe.py: the same run folders, checkpoints and logging.

Run folder: ``<log_root>/<name>/version_<N>/`` (TensorBoardLogger) holding the TensorBoard
events, ``config.yaml`` (the resolved config, with library versions and the git commit as
comments at the top; loadable again with ``config=...``), ``run_info.json`` (the same facts for
scripts), ``checkpoints/`` and whatever the module writes there (``eval.json``).

Checkpoints: ``checkpoints/step_<step>.ckpt`` every ``checkpoint_every`` optimizer steps, all kept,
and ``checkpoints/last.ckpt`` refreshed with each of them and once more when training ends.
Writes are atomic. Lightning's own save (``_atomic_save``) writes through an fsspec transaction,
which for local files writes a temp file in the system temp dir and then ``shutil.move``s it:
atomic only when that temp dir is on the same filesystem as the logs (on clusters it rarely is,
and a full copy of the checkpoint lands in /tmp). :func:`atomic_write` (used by
:class:`AtomicCheckpointIO`, for config.yaml, run_info.json and eval.json) instead writes
``.<name>.tmp`` next to the target, fsyncs it and ``os.replace``s it over the target, so a
killed run leaves either the old or the new ``last.ckpt``, never a truncated one.

SLURM: Lightning detects it (SLURMEnvironment: ranks, world size, master address) and, on the
``--signal=SIGUSR1@<seconds>`` warning before a time limit, saves ``hpc_ckpt_<k>.ckpt`` into the
Trainer's ``default_root_dir`` -- here the run folder -- and requeues the job
(scripts/slurm_example.sh).

Resume: pass ``version=N`` to write into the existing folder (train.py's ``ckpt_path=last``).
Rank 0 writes every file; other ranks' loggers are no-ops and the checkpoint folder is broadcast
from rank 0 by Lightning, so ranks started by SLURM or by Lightning agree on the folder.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Optional

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from igsm.config import TrainerConfig


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, fsync: bool = False) -> Iterator[IO]:
    """Open a temp file beside ``path`` for writing; when the block ends without an error,
    (fsync it and) rename it over ``path``, else remove it. A reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temp file in the target's folder, fsync, then rename over the target."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        with atomic_write(path, "wb", fsync=True) as f:
            torch.save(checkpoint, f)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also refreshes last.ckpt when training ends between two periodic saves
    (Lightning's only does so if no last.ckpt was written in this run), so resuming or probing
    from last.ckpt always starts from the final weights.

    Nothing logged before a checkpoint is lost when the run is killed after it: the loggers are
    flushed before each save, and at a step that is also evaluated the save waits for the end of
    the evaluation (a kill during it then redoes the evaluation instead of skipping it).
    ``eval_every``: the steps between periodic evaluations (None = none)."""

    def __init__(self, *args: Any, eval_every: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_every = eval_every
        self._step_seen = -1  # global_step at the previous batch end: a change marks an optimizer step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._step_seen = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step, stepped = trainer.global_step, trainer.global_step != self._step_seen
        self._step_seen = step
        if not stepped:
            # Inside a gradient accumulation. Lightning would save here on the first micro-batch
            # after a resume (global_step still a multiple of checkpoint_every, and it forgets
            # which step it saved last): a checkpoint in mid-accumulation, from which a second
            # resume shifts every later accumulation window by the micro-batches already done.
            return
        if (self.eval_every is not None and step % self.eval_every == 0 and step < trainer.max_steps
                and self._every_n_train_steps >= 1 and step % self._every_n_train_steps == 0):
            self._defer_save_until_validation = True  # ModelCheckpoint.on_validation_end saves
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def save_on_stop(self, trainer: L.Trainer) -> None:
        """Write last.ckpt now, at the end of the step a stop signal ends the run with
        (igsm.faults.GracefulStop), unless this callback saves at this step anyway (it runs after
        GracefulStop: Lightning puts checkpoint callbacks last). Saved here, the loop state is that
        of a periodic checkpoint; saved when training ends, it says "epoch finished", and a resumed
        probe run (whose data has a length) would count an epoch too many."""
        step = trainer.global_step
        if (self._every_n_train_steps >= 1 and step % self._every_n_train_steps == 0) \
                or self._should_skip_saving_checkpoint(trainer):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if trainer.is_global_zero and hasattr(experiment, "flush"):
                experiment.flush()
        super()._save_checkpoint(trainer, filepath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and getattr(self, "_last_global_step_saved", None) != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


_process_start_counted = False  # RunInfoWriter: whether a run of this process has counted its start-up


class RunInfoWriter(Callback):
    """Writes config.yaml and run_info.json into the run folder on rank 0 when a stage starts, and
    ``run_time.json``, the wall time of each session of the run (a resumed run adds one), at every
    evaluation, checkpoint and stage end: ``{"wall_s": total, "sessions": [{"started", "wall_s",
    "first_step", "last_step"}]}``."""

    def __init__(self, config_yaml: str, extra_info: Optional[dict] = None) -> None:
        self.config_yaml = config_yaml
        self.extra_info = extra_info or {}
        global _process_start_counted
        from .record import process_start_time

        # The first run of a process counts its start-up too (imports, data); a later one (a
        # notebook, a test session) counts from its Trainer's creation.
        self.started = time.time() if _process_start_counted else process_start_time()
        _process_start_counted = True
        self.run_dir: Optional[Path] = None  # rank 0, once the run folder is known
        self.sessions: list[dict] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        run_dir = Path(trainer.log_dir)  # a broadcast from rank 0: every rank must ask
        if not trainer.is_global_zero:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        info = {**run_info(), "precision": str(trainer.precision), "world_size": trainer.world_size,
                **self.extra_info}
        header = "".join(f"# {k}: {v}\n" for k, v in info.items())
        with atomic_write(run_dir / "config.yaml") as f:
            f.write(header + self.config_yaml)
        with atomic_write(run_dir / "run_info.json") as f:
            f.write(json.dumps(info, indent=2) + "\n")
        if self.run_dir is None:  # one session per process, however many fit calls
            try:
                self.sessions = list(json.loads((run_dir / "run_time.json").read_text())["sessions"])
            except (OSError, ValueError, KeyError, TypeError):
                self.sessions = []
            started = datetime.datetime.fromtimestamp(self.started, datetime.timezone.utc)
            # the steps are known once a resumed run's checkpoint is loaded (on_train_start)
            self.sessions.append({"started": started.isoformat(timespec="seconds"), "wall_s": 0.0,
                                  "first_step": None, "last_step": None})
            self.run_dir = run_dir
        self._write_time(trainer)

    def _write_time(self, trainer: L.Trainer) -> None:
        if self.run_dir is None or not trainer.is_global_zero:
            return
        session = self.sessions[-1]
        session["wall_s"] = round(time.time() - self.started, 1)
        if session["first_step"] is not None:
            session["last_step"] = max(session["last_step"], trainer.global_step)
        total = round(sum(s["wall_s"] for s in self.sessions), 1)
        try:
            with atomic_write(self.run_dir / "run_time.json") as f:
                f.write(json.dumps({"wall_s": total, "sessions": self.sessions}, indent=2) + "\n")
        except OSError:  # the folder went away (a test's temporary folder): nothing to keep
            pass

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.run_dir is not None and self.sessions[-1]["first_step"] is None:
            self.sessions[-1]["first_step"] = self.sessions[-1]["last_step"] = trainer.global_step
        self._write_time(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_time(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._write_time(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._write_time(trainer)


def build_trainer(
    cfg: TrainerConfig,
    name: str,
    *,
    log_root: str = "logs",
    version: Optional[int] = None,
    accumulate_grad_batches: int = 1,
    config_yaml: Optional[str] = None,
    extra_info: Optional[dict] = None,
    extra_callbacks: Iterable[Callback] = (),
    purge_step: Optional[int] = None,
    keep_periodic: bool = True,
    **trainer_kwargs: Any,
) -> L.Trainer:
    """The Lightning Trainer of a run.

    ``version``: None = a new ``version_N`` folder, an int = reuse that folder (resume).
    ``config_yaml``: the resolved config, written to ``config.yaml`` by rank 0.
    ``purge_step``: TensorBoard hides the events of this folder logged at that step or later (a
    resumed run logs them again).
    ``keep_periodic``: keep every ``step_<N>.ckpt`` (False: only ``last.ckpt`` is written, refreshed
    every ``checkpoint_every`` steps; probe.py, whose checkpoints only serve to resume).
    ``trainer_kwargs`` go to ``L.Trainer`` last (probe.py sets e.g. ``max_epochs`` there).
    """
    tb_kwargs = {} if purge_step is None else {"purge_step": purge_step}
    logger = TensorBoardLogger(save_dir=log_root, name=name, version=version, default_hp_metric=False, **tb_kwargs)
    if version is not None:  # resuming into the run's own folder: its checkpoints are expected there
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    callbacks: list[Callback] = [
        RunCheckpoint(filename="step_{step:07d}", auto_insert_metric_name=False,
                      every_n_train_steps=cfg.checkpoint_every, save_top_k=-1 if keep_periodic else 0, save_last=True,
                      eval_every=cfg.eval_every),
        LearningRateMonitor(logging_interval="step"),
    ]
    if cfg.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, min(cfg.log_every_n_steps, 20))))
    if config_yaml is not None:
        callbacks.append(RunInfoWriter(config_yaml, extra_info))
    callbacks.extend(extra_callbacks)

    # Evaluation runs every eval_every optimizer steps; Lightning counts batches. None: no
    # periodic evaluation (an interval past the end of training), train.py evaluates at the end.
    eval_every = cfg.eval_every if cfg.eval_every is not None else cfg.max_steps + 1
    kwargs = dict(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=resolve_strategy(cfg),
        precision=resolve_precision(cfg),
        max_steps=cfg.max_steps,
        accumulate_grad_batches=accumulate_grad_batches,
        log_every_n_steps=cfg.log_every_n_steps,
        val_check_interval=eval_every * accumulate_grad_batches,
        check_val_every_n_epoch=None,  # the training stream is endless: count batches, not epochs
        num_sanity_val_steps=0,  # a sanity "evaluation" would decode before training; pointless here
        use_distributed_sampler=False,  # igsm.data shards both the training stream and the eval sets
        enable_progress_bar=cfg.enable_progress_bar,
        logger=logger,
        # The run folder, not the working directory: Lightning's SLURM auto-requeue saves
        # hpc_ckpt_<k>.ckpt here (train.py's ckpt_path=last finds it), and a stale hpc_ckpt in
        # the working directory can never hijack a new run (Lightning resumes from one silently).
        default_root_dir=logger.log_dir,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )
    kwargs.update(trainer_kwargs)
    atexit.unregister(destroy_process_group)  # registered once, however many trainers a process builds
    atexit.register(destroy_process_group)
    return L.Trainer(**kwargs)


def destroy_process_group() -> None:
    """End this process's torch.distributed group, if any, while the interpreter is still whole.
    Left to interpreter shutdown, gloo's worker threads can outlive it and abort the process
    ("terminate called without an active exception", exit status -6) after a run that finished:
    a sweep would count that run as failed. Registered with atexit by :func:`build_trainer`."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_strategy(cfg: TrainerConfig):
    """``trainer.strategy`` as Lightning gets it: the DDP names become a DDPStrategy with
    ``broadcast_buffers=False``. The model's only buffers are the RoPE tables (constants), and
    DDP's default broadcasts buffers before every forward: a collective that hangs when one rank
    runs a forward the others do not (an evaluation with fewer batches than ranks)."""
    from lightning.pytorch.strategies import DDPStrategy

    ddp = {"ddp": {}, "ddp_spawn": {"start_method": "spawn"}, "ddp_fork": {"start_method": "fork"},
           "ddp_find_unused_parameters_true": {"find_unused_parameters": True}}
    if cfg.strategy not in ddp:
        return cfg.strategy
    return DDPStrategy(**no_buffer_sync(), **ddp[cfg.strategy])


def no_buffer_sync() -> dict:
    """DDP's keyword for "no buffer broadcast before each forward": ``forward_sync_buffers=False``
    where torch has it (it deprecates ``broadcast_buffers``, with a warning at every start), else
    ``broadcast_buffers=False``. The one sync at start-up that the new keyword keeps is harmless:
    the RoPE tables are the same on every rank."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def wants_gpu(cfg: TrainerConfig) -> bool:
    """Whether the run will be on CUDA GPUs (``trainer.accelerator``, auto = if one is visible)."""
    return cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). Without it oneDNN
    emulates bf16 through fp32: a 4096 x 128 x 512 bf16 matmul took 8x the time of fp32 on an
    AVX2-only AMD EPYC (docs/measurements.md, "CPU precision")."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def gpu_has_bf16_tensor_cores() -> bool:
    """Whether the first visible CUDA GPU computes bf16 on tensor cores (compute capability 8.0 or
    more: A100, H100, H200, RTX 30xx and later). Not ``torch.cuda.is_bf16_supported()``, which by
    default also says yes where bf16 is only emulated (V100, T4), at a fraction of fp16's speed."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability(0) >= (8, 0)


def resolve_precision(cfg: TrainerConfig) -> str:
    """``trainer.precision``, or when null (auto): on a GPU bf16-mixed where it has bf16 tensor
    cores (compute capability >= 8.0), else 16-mixed (fp16 tensor cores with a loss scaler: V100,
    T4); on a CPU bf16-mixed where it has native bf16 (AVX512-BF16 or AMX: 1.38x the tokens/s of
    fp32 with AMX), else 32-true. train.py and probe.py both resolve it here."""
    if cfg.precision is not None:
        return cfg.precision
    if wants_gpu(cfg):
        return "bf16-mixed" if gpu_has_bf16_tensor_cores() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def run_info() -> dict:
    """Library versions, the git commit of the code (read from .git, no git process) and the CPU."""
    import lightning
    import omegaconf
    import torchmetrics

    from .record import cpu_info

    return {
        "igsm_commit": git_commit(Path(__file__).resolve().parent.parent),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torchmetrics": torchmetrics.__version__,
        "omegaconf": omegaconf.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "cpu": cpu_info(),
    }


def git_commit(repo: Path) -> Optional[str]:
    """The commit HEAD points to, read from the .git folder (or, in a linked worktree, from the
    folder its ``.git`` file names); None outside a git checkout."""
    try:
        git = repo / ".git"
        if git.is_file():  # a worktree: "gitdir: <main>/.git/worktrees/<name>"; refs live in the common dir
            git = (repo / git.read_text().strip().removeprefix("gitdir: ")).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        common = (git / (git / "commondir").read_text().strip()).resolve() if (git / "commondir").is_file() else git
        if (common / ref).is_file():
            return (common / ref).read_text().strip()
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return None


__all__ = ["build_trainer", "destroy_process_group", "resolve_strategy", "resolve_precision", "cpu_has_native_bf16",
           "gpu_has_bf16_tensor_cores", "wants_gpu", "atomic_write", "AtomicCheckpointIO", "RunCheckpoint",
           "RunInfoWriter", "run_info", "git_commit"]
