"""Ranks that would outlive their launcher (docs/faults.md, "The run was killed").

Lightning starts the ranks > 0 of a one-node DDP run (``trainer.strategy=ddp``) as child processes
of the one the user started (rank 0, the launcher), each running the same script again. When the
launcher dies without a goodbye (``kill -9``, an OOM kill, a crash), a rank that is still starting
or waiting at the rendezvous never notices: it lives on with parent PID 1, holding memory and a
core. :func:`exit_with_launcher`, called first thing in ``train.main`` and ``probe.main``, ends such
a rank when its launcher goes, at any moment of the run:

* the launcher records its PID in the environment (``IGSM_LAUNCHER_PID``), which Lightning copies
  into every rank it starts;
* a rank (``LOCAL_RANK`` > 0) whose launcher is already gone exits at once; otherwise it asks the
  kernel to SIGKILL it when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``), and a daemon
  thread checks every second that its parent is still the launcher (other systems, and a
  fallback) and exits the process when it is not.

Ranks started by SLURM, torchrun or any launcher other than Lightning's own have no
``IGSM_LAUNCHER_PID`` of a live parent and are left alone: their launcher handles them. Only the
standard library is used, so it costs nothing before torch loads.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

LAUNCHER_ENV = "IGSM_LAUNCHER_PID"
POLL_S = 1.0  # how often the watch thread looks at the parent
PR_SET_PDEATHSIG = 1

_watching = False


def exit_with_launcher() -> None:
    """Rank 0 / a single process: record this process as the launcher. A rank > 0 started by it:
    exit now if it is gone, else die with it (see the module docstring). Idempotent."""
    if os.environ.get("LOCAL_RANK", "0") in ("", "0"):
        os.environ[LAUNCHER_ENV] = str(os.getpid())
        return
    launcher = os.environ.get(LAUNCHER_ENV, "")
    if launcher.isdigit() and int(launcher) != os.getpid():
        watch_parent(int(launcher))


def watch_parent(launcher: int) -> None:
    """Exit this process when ``launcher``, its parent, dies; at once if it already has."""
    global _watching
    if _watching:
        return
    if os.getppid() != launcher:
        if _alive(launcher):  # a stale variable (this process was started by someone else): not ours to watch
            return
        _exit(launcher)  # the launcher died before this rank got here
    _set_parent_death_signal()
    if os.getppid() != launcher:  # it died between the check and the prctl
        _exit(launcher)
    _watching = True
    threading.Thread(target=_poll, args=(launcher,), name="igsm-launcher-watch", daemon=True).start()


def _poll(launcher: int) -> None:
    while os.getppid() == launcher:
        time.sleep(POLL_S)
    _exit(launcher)


def _exit(launcher: int) -> None:
    rank = os.environ.get("LOCAL_RANK", "?")
    try:
        print(f"rank {rank} (pid {os.getpid()}): its launcher (pid {launcher}) is gone; exiting",
              file=sys.stderr, flush=True)
    finally:
        os._exit(128 + signal.SIGHUP)


def _set_parent_death_signal() -> None:
    """SIGKILL this process when its parent dies (Linux); a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the watch thread alone
        pass


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, killed but not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["exit_with_launcher", "watch_parent", "LAUNCHER_ENV"]
