"""A killed launcher takes its DDP ranks with it (igsm/orphans.py; docs/faults.md): SIGKILL of the
process the user started, at start-up (the second rank exists, the process group is still
forming) and mid-training, leaves no process of the run 30 s later. Each run has its own session,
so its processes are found by process group in /proc; the tests poll, they never sleep idly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from igsm.orphans import LAUNCHER_ENV
from test_train import FAST

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc (Linux)")
GRACE_S = 30  # the promise: every rank is gone this long after the launcher


def group_members(pgid: int) -> list[int]:
    """PIDs of the live (non-zombie) processes in process group ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):  # fields: state, ppid, pgrp, ...
            out.append(int(entry))
    return out


def wait_until(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the launcher ended (status {proc.returncode}) before {what}")
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def kill_launcher_and_check(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher alone; every other process of its group must be gone within GRACE_S."""
    proc.kill()
    proc.wait()
    try:
        wait_until(lambda: not group_members(proc.pid), GRACE_S, "every rank exits after its launcher died")
    finally:
        if group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def env(subprocess_env) -> dict:
    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    for key in ("LOCAL_RANK", LAUNCHER_ENV, "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR", "NODE_RANK"):
        env.pop(key, None)
    return env


RANK_SCRIPT = """
import os, sys, time
from igsm.orphans import exit_with_launcher
exit_with_launcher()
if os.environ.get("LOCAL_RANK", "0") == "0":  # the launcher: start rank 1 (this script again) and wait
    import subprocess
    subprocess.Popen([sys.executable, __file__], env=dict(os.environ, LOCAL_RANK="1"))
while True:
    time.sleep(0.05)
"""


def test_a_rank_exits_when_its_launcher_is_killed(env, tmp_path) -> None:
    """The mechanism alone, on two plain Python processes (fast)."""
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(group_members(proc.pid)) == 2, 60, "the second rank starts", proc)
        kill_launcher_and_check(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_process_not_started_by_the_launcher_is_left_alone(env, tmp_path) -> None:
    """A stale IGSM_LAUNCHER_PID naming a live process that is not the parent (a rank started by
    torchrun or SLURM, say) does not end the rank."""
    code = ("import os; from igsm.orphans import exit_with_launcher; exit_with_launcher(); "
            "import igsm.orphans as o; print(o._watching)")
    other = subprocess.Popen(["sleep", "120"])  # alive, and not the parent of the "rank" below
    try:
        r = subprocess.run([sys.executable, "-c", code],
                           env=dict(env, LOCAL_RANK="1", **{LAUNCHER_ENV: str(other.pid)}),
                           capture_output=True, text=True, timeout=60)
    finally:
        other.kill()
        other.wait()
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


DDP = FAST + ["trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=1000", "trainer.checkpoint_every=1",
              "eval.final=false", "trainer.eval_every=null"]


PROBE = ["probe.tasks=[nece]", "probe.test_problems=4", "probe.batch_size=6", "probe.draws=3", "trainer.max_steps=1000",
         "trainer.checkpoint_every=1", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.strategy=ddp"]


@pytest.mark.slow
@pytest.mark.parametrize("script,moment",
                         [("train.py", "start-up"), ("train.py", "training"), ("probe.py", "start-up")])
def test_killing_the_launcher_of_a_ddp_run_ends_every_rank(script, moment, repo_root, env, tmp_path, request) -> None:
    """SIGKILL of ``python train.py`` / ``python probe.py`` (rank 0) as soon as rank 1 exists, or
    once training has saved a checkpoint: 30 s later no process of the run is left."""
    if script == "train.py":
        args = DDP
    else:
        args = PROBE + [f"ckpt={request.getfixturevalue('tiny_train_run')[1]}"]
    args = args + [f"log_root={tmp_path}", "name=run"]
    proc = subprocess.Popen([sys.executable, str(repo_root / script), *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if moment == "start-up":
            wait_until(lambda: len(group_members(proc.pid)) >= 2, 240, "rank 1 starts", proc)
        else:
            last = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
            wait_until(last.is_file, 240, "a checkpoint is written", proc)
        kill_launcher_and_check(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
