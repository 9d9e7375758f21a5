"""Surviving faults: damaged checkpoints, preemption signals, non-finite steps.

What each piece is for (docs/faults.md, "When things go wrong", tells users):

- :func:`read_checkpoint` opens a ``.ckpt`` file and says in one line what is wrong with it
  (truncated, not a torch file, not a ``train.py`` checkpoint) instead of a long traceback;
  :func:`find_resume_checkpoint` picks the checkpoint ``ckpt_path=last`` resumes (train.py and probe.py).
- :class:`GracefulStop` turns SIGTERM / SIGINT (Ctrl-C) during training into "finish this optimizer
  step, save ``last.ckpt``, exit"; a second signal exits at once. Under SLURM auto-requeue it also
  moves Lightning's hpc checkpoint + requeue from its signal handler to a step boundary.
- :class:`NonFiniteError` ends a run whose loss or gradient norm is not finite
  (``optim.on_nonfinite``), naming the step.

An evaluation batch that does not fit in memory is decoded in halves: :func:`igsm.decode.decode_in_chunks`.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import zipfile
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from igsm.config import ConfigError

# -- damaged checkpoints -------------------------------------------------------------------------

class CheckpointError(ConfigError):
    """A checkpoint file that cannot be used; the message is one line naming the file."""


def read_checkpoint(path: str | Path, key: str = "ckpt_path", *, resume: bool = False, probe: bool = False) -> dict:
    """The checkpoint at ``path`` (tensors memory-mapped, so cheap), or :class:`CheckpointError`
    saying what is wrong. ``resume``: it must also hold the optimizer and loop state of a run.
    ``probe``: it must be a probe.py checkpoint (probes only), not a train.py one."""
    where = f"{key}={str(path)!r}"
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise CheckpointError(f"{where}: cannot be read ({e.strerror})") from None
    if size == 0:
        raise CheckpointError(f"{where}: the file is empty (0 bytes): a copy or a write that was cut short")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise CheckpointError(f"{where}: not a checkpoint (not a file torch.save wrote; it starts with {head!r})")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every record and checks its CRC: ~1 s per GB
    except zipfile.BadZipFile:
        raise CheckpointError(f"{where}: truncated or damaged ({size} bytes, and the end of the zip archive "
                              "torch.save writes is missing)") from None
    except (OSError, EOFError) as e:
        raise CheckpointError(f"{where}: truncated or damaged ({size} bytes; {e})") from None
    if bad is not None:
        raise CheckpointError(f"{where}: damaged (record {bad} fails its checksum)")
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:  # torch raises many kinds here; each means the same thing to a user
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{where}: not a readable torch checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{where}: a torch file but not a Lightning checkpoint (no 'state_dict')")
    hparams = ckpt.get("hyper_parameters") or {}
    if probe:
        if "tasks" not in hparams:
            trained = {"config", "tokenizer"} <= set(hparams)
            what = "a train.py checkpoint" if trained else "a Lightning checkpoint of another model"
            raise CheckpointError(f"{where}: {what}, not one written by probe.py "
                                  "(no probe tasks in its hyper-parameters)")
    elif not {"config", "tokenizer"} <= set(hparams):
        what = "a probe run's checkpoint" if "tasks" in hparams else "a Lightning checkpoint of another model"
        raise CheckpointError(f"{where}: {what}, not one written by train.py (no config and tokenizer "
                              "in its hyper-parameters)")
    if resume and not {"optimizer_states", "loops"} <= set(ckpt):
        raise CheckpointError(f"{where}: holds weights only, without the optimizer and loop state needed "
                              "to resume a run")
    return ckpt


def find_resume_checkpoint(ckpt_path: Optional[str], run_root: Path, *, probe: bool = False
                           ) -> tuple[Optional[str], Optional[int]]:
    """(checkpoint file, version folder to reuse) for ``ckpt_path`` (None, "last" or a file) of the
    runs under ``run_root`` (``<log_root>/<name>``): train.py's and probe.py's ``ckpt_path``.
    ConfigError when missing, CheckpointError (one line) when the file given is damaged or foreign.

    "last": the newest version folder with a readable checkpoint; in it, the newest of last.ckpt, the
    hpc_ckpt_<k>.ckpt Lightning writes when SLURM warns of the time limit, and (when those are
    damaged) the periodic step_<N>.ckpt files. Unreadable ones are skipped with a warning."""
    if ckpt_path is None:
        return None, None
    if ckpt_path == "last":
        skipped = []
        for version, folder in sorted(version_folders(run_root), reverse=True):
            candidates = [p for p in (folder / "checkpoints" / "last.ckpt", *folder.glob("hpc_ckpt_*.ckpt"),
                                      *(folder / "checkpoints").glob("step_*.ckpt")) if p.is_file()]
            for path in sorted(candidates, key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True):
                try:
                    read_checkpoint(path, resume=True, probe=probe)
                except CheckpointError as e:
                    warn_once(f"warning: ckpt_path='last' skips {path}: {str(e).split(': ', 1)[1]}")
                    skipped.append(path)
                    continue
                return str(path), version
        if skipped:
            raise CheckpointError(f"ckpt_path='last': none of the {len(skipped)} checkpoints under {run_root} "
                                  "is readable (see the warnings above)")
        raise ConfigError(f"ckpt_path='last' is not allowed: no {run_root}/version_*/checkpoints/last.ckpt "
                          "(a run of this name has not saved a checkpoint yet)")
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path!r} is not allowed: no such file ('last' or a .ckpt file)")
    read_checkpoint(path, resume=True, probe=probe)
    # A checkpoint inside one of this run's version folders continues in that folder.
    for version, folder in version_folders(run_root):
        if folder.resolve() in path.resolve().parents:
            return str(path), version
    return str(path), None


def version_folders(run_root: Path) -> list[tuple[int, Path]]:
    """(N, folder) of every ``version_<N>`` folder under ``run_root``."""
    return [(int(m.group(1)), d) for d in run_root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", d.name))]


def warn_changed_settings(new: dict, old: dict, may_change: set[str]) -> None:
    """Say which keys of the resolved config ``new`` differ from ``old`` (the config of the run that
    wrote the checkpoint being resumed), except those in ``may_change``."""
    old, new = _flat(old or {}), _flat(new)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in may_change)
    if changed:
        warn_once("warning: resuming with settings that differ from the checkpoint's run: "
                  + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed))


def launch_rank() -> int:
    """This process's global rank as its launcher set it (Lightning's DDP children, torchrun, SLURM),
    before any process group exists; 0 for the process a user started."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):  # Lightning's order: LOCAL_RANK before SLURM_PROCID
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def warn_once(message: str) -> None:
    """``message`` on stderr from rank 0 only: every rank of a DDP run reads the same checkpoint and
    config before training (a resume on another device count would otherwise warn once per rank)."""
    if launch_rank() == 0:
        print(message, file=sys.stderr)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def resume_args(argv: list[str], *extra: str) -> list[str]:
    """The command line that continues a run: the same arguments with ckpt_path=last (and ``extra``)."""
    return [a for a in argv if not a.startswith("ckpt_path=")] + [*extra, "ckpt_path=last"]


# -- preemption: SIGTERM / SIGINT ----------------------------------------------------------------

STOP_CHECK_EVERY = 10  # under DDP, the most optimizer steps between two agreements on the signal flags


class GracefulStop(Callback):
    """On SIGTERM or SIGINT during training: finish the current optimizer step, stop, and let the
    checkpoint callback write ``last.ckpt`` (it does so when training ends). A second signal exits
    at once with status 128 + signal number, leaving the checkpoints already on disk as they are.

    Under SLURM with auto-requeue, SLURM's time-limit warning (``--signal=SIGUSR1@<s>``) writes
    ``hpc_ckpt_<k>.ckpt`` and requeues the job, as Lightning does, but at a step boundary: Lightning
    saves from inside its signal handler, wherever each rank happens to be, and the collectives of
    that save (a barrier, the probe's label-count sum) then pair with another rank's token-share,
    gradient or stop collectives (a hang, or wrong sums), and the checkpoint's counts and step
    disagree (it is taken mid-step). Here every handler only sets a flag. Lightning keeps SIGTERM
    there (it ignores it after a requeue); its handler's broadcast is replaced by the flag alone.

    Under DDP the ranks agree on the flags at the end of every ``check_every``-th optimizer step
    (default: every ``trainer.log_every_n_steps``-th, whose steps Lightning syncs anyway, or every
    ``STOP_CHECK_EVERY``-th if that is more often) and of the last one: one all-reduce of two
    integers and one host read, with no barrier; between those steps the check costs nothing.
    Every rank stops (or saves) after the same step. One process checks every step (no collective).
    """

    def __init__(self, eval_every: Optional[int] = None, check_every: Optional[int] = None) -> None:
        self.eval_every = eval_every  # an evaluation due at the stop step still runs (and is saved)
        self.check_every = check_every  # None: min(trainer.log_every_n_steps, STOP_CHECK_EVERY)
        self.signum: Optional[int] = None  # the first stop signal received
        self.requeue_signum: Optional[int] = None  # SLURM's requeue signal, received and not yet acted on
        self.stopped_at: Optional[int] = None  # the optimizer step training stopped after
        self.requeued_at: list[int] = []  # the steps after which an hpc_ckpt was written
        self._previous: dict[int, Any] = {}
        self._last_step = -1
        self._trainer: Optional[L.Trainer] = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = trainer
        self._last_step = trainer.global_step
        handlers = {signal.SIGINT: self._handle}
        env = trainer._accelerator_connector.cluster_environment
        if getattr(env, "auto_requeue", False) and type(env).__name__ == "SLURMEnvironment":
            handlers[getattr(env, "requeue_signal", None) or signal.SIGUSR1] = self._handle_requeue
            handlers[signal.SIGTERM] = self._handle_sigterm_after_requeue
        else:
            handlers[signal.SIGTERM] = self._handle
        for signum, handler in handlers.items():
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            print(f"\n{name} again: exiting at once, without a checkpoint of this step", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(f"\n{name} received: stopping after this optimizer step and saving a checkpoint "
              f"({name} again exits at once)", file=sys.stderr, flush=True)

    def _handle_requeue(self, signum: int, frame: Any) -> None:
        self.requeue_signum = signum
        print(f"\n{signal.Signals(signum).name} received: saving an hpc checkpoint and requeueing the job at the "
              "next agreed step boundary", file=sys.stderr, flush=True)

    def _handle_sigterm_after_requeue(self, signum: int, frame: Any) -> None:
        """Lightning's SIGTERM notifier without its broadcast: Lightning reads the flag at its own
        batch boundaries (and broadcasts rank 0's there, at the same point on every rank)."""
        if self._trainer is not None:
            self._trainer._signal_connector.received_sigterm = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._last_step:  # inside an accumulation: not a step boundary
            return
        self._last_step = step = trainer.global_step
        stop, requeue = self.signum is not None, self.requeue_signum is not None
        if trainer.world_size > 1:
            every = self.check_every or min(trainer.log_every_n_steps or 1, STOP_CHECK_EVERY)
            if step % every != 0 and not (0 < trainer.max_steps <= step):
                return  # the flags wait for the next agreed step (the same on every rank)
            stop, requeue = agree_any(trainer.strategy.root_device, stop, requeue)
        if requeue:
            self.requeue_signum = None
            self.requeued_at.append(step)
            save_hpc_checkpoint_and_requeue(trainer)
        if stop:
            self.signum = self.signum or signal.SIGTERM
            self.stopped_at = step
            trainer.should_stop = True
            if not (self.eval_every and step % self.eval_every == 0):
                # Lightning evaluates when a run stops early; a preempted run has no time for that.
                trainer.fit_loop.epoch_loop._skip_next_val = True
                save = getattr(trainer.checkpoint_callback, "save_on_stop", None)  # igsm.trainer.RunCheckpoint
                if save is not None:
                    save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        self._trainer = None


def agree_any(device: torch.device, *flags: bool) -> tuple[bool, ...]:
    """Each flag, true if it is true on any rank: one all-reduce (no barrier) and one host read.
    Every rank must call it at the same point of its code."""
    import torch.distributed as dist

    votes = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(votes)  # sum
    return tuple(v > 0 for v in votes.tolist())


def save_hpc_checkpoint_and_requeue(trainer: L.Trainer) -> None:
    """What Lightning does on SLURM's requeue signal (flush the loggers, write
    ``hpc_ckpt_<k>.ckpt`` into the run folder, ``scontrol requeue`` from rank 0), called by every
    rank at the same step boundary instead of from inside the signal handler."""
    env = trainer._accelerator_connector.cluster_environment
    trainer._signal_connector._slurm_sigusr_handler_fn(getattr(env, "requeue_signal", None) or signal.SIGUSR1, None)


# -- divergence ------------------------------------------------------------------------------------

class NonFiniteError(RuntimeError):
    """The loss or gradient norm of a step is not finite (``optim.on_nonfinite``)."""

    def __init__(self, step: int, value: float, skipped: int) -> None:
        self.step, self.value, self.skipped = step, value, skipped
        extra = f" after skipping {skipped} such steps (optim.max_nonfinite_skips)" if skipped else ""
        super().__init__(f"non-finite loss or gradient norm ({value}) at optimizer step {step}{extra}")


__all__ = ["CheckpointError", "read_checkpoint", "find_resume_checkpoint", "version_folders", "resume_args",
           "warn_changed_settings", "GracefulStop", "NonFiniteError", "agree_any",
           "save_hpc_checkpoint_and_requeue", "launch_rank", "warn_once"]
