"""probe.py survives faults as train.py does (docs/faults.md): checkpoints every
trainer.checkpoint_every steps and on SIGTERM / SIGINT, ``ckpt_path=last`` resumes to the same
probe.json, TensorBoard curves and probe weights (bit-identical on CPU), damaged probe checkpoints
end with one line. Killed runs are subprocesses stopped at a test hook (tests/hang_run.py)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import probe
from igsm.cli_config import load_config
from igsm.config import ProbeConfig
from igsm.faults import read_checkpoint
from probing.data import ResumeSampler
from probing.run import find_probe_resume
from test_faults import damaged_copies, kill_leftovers, scalars, start, stderr_of, wait_for  # noqa: F401

# 8 steps, a checkpoint every 2; fp32 so that every CPU computes the same numbers in both runs.
STEPS, EVERY = 8, 2
PROBE = ["probe.tasks=[nece,value]", "probe.test_problems=4", "probe.batch_size=6", "probe.draws=3", "probe.lr=1e-2",
         f"trainer.max_steps={STEPS}", f"trainer.checkpoint_every={EVERY}", "trainer.log_every_n_steps=1",
         "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto",
         "trainer.precision=32-true"]


@pytest.fixture(scope="module")
def straight(tiny_train_run, tmp_path_factory) -> tuple[Path, list[str]]:
    """An uninterrupted probe run (in this process): (its folder, the arguments without log_root)."""
    _, backbone = tiny_train_run
    args = PROBE + [f"ckpt={backbone}", "name=p"]
    root = tmp_path_factory.mktemp("straight")
    assert probe.main(args + [f"log_root={root}"]) == 0
    return root / "p" / "version_0", args


def probe_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def comparable(run: Path) -> dict:
    """probe.json without what may differ between an interrupted run and a straight one."""
    res = json.loads((run / "probe.json").read_text())
    del res["time_s"]
    del res["config"]["ckpt_path"], res["config"]["log_root"]
    return res


def test_a_probe_checkpoint_holds_the_probes_optimizer_and_label_counts_not_the_backbone(straight) -> None:
    run, _ = straight
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]  # no step_*.ckpt pile-up
    saved = read_checkpoint(run / "checkpoints" / "last.ckpt", resume=True, probe=True)
    assert saved["global_step"] == STEPS and saved["optimizer_states"]
    assert saved["state_dict"] and all(k.startswith("probes.") for k in saved["state_dict"])
    assert set(saved["train_counts"]) == {"nece", "value"} and int(saved["train_counts"]["nece"].sum()) > 0


@pytest.mark.slow
def test_killed_and_preempted_probe_runs_resume_bit_exactly(straight, repo_root, subprocess_env, tmp_path) -> None:
    """SIGKILL at a step drawn from a seeded RNG, resume with ckpt_path=last, SIGTERM at step 7,
    resume with the command the run printed: the same probe.json, TensorBoard scalars and probe
    weights as the uninterrupted run, each step in TensorBoard once, in one run folder."""
    ref, args = straight
    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    args = args + [f"log_root={tmp_path}"]
    ckpt = tmp_path / "p" / "version_0" / "checkpoints" / "last.ckpt"

    n = random.Random(22).randint(3, 6)  # killed after step n, before its checkpoint: resumes from the one before
    proc = start(repo_root, args, env, f"batch:{n}", tmp_path / "m1", script="probe.py")
    wait_for(tmp_path / "m1", f"batch:{n}", proc)
    proc.kill()
    proc.wait()
    assert read_checkpoint(ckpt, resume=True, probe=True)["global_step"] == (n - 1) // EVERY * EVERY

    proc = start(repo_root, args + ["ckpt_path=last"], env, "batch:7", tmp_path / "m2", script="probe.py")
    wait_for(tmp_path / "m2", "batch:7", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=240)
    err = stderr_of(tmp_path / "m2")
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert read_checkpoint(ckpt, resume=True, probe=True)["global_step"] == 7 and "Traceback" not in err
    resume = [line for line in err.splitlines() if "resume with: python probe.py " in line]
    assert len(resume) == 1 and resume[0].endswith(" ckpt_path=last") and "stopped after step 7" in resume[0]

    assert probe.main(resume[0].split("resume with: python probe.py ")[1].split()) == 0
    run = tmp_path / "p" / "version_0"
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["version_0"]
    expected, got = probe_weights(ref / "checkpoints" / "last.ckpt"), probe_weights(run / "checkpoints" / "last.ckpt")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    want, have = scalars(ref), scalars(run)
    assert len(want["probe/nece/train_loss"]) == STEPS and "probe/nece/acc" in want
    assert have == want  # same steps (none lost, none twice) and bit-identical values
    assert comparable(run) == comparable(ref)


def test_damaged_or_foreign_probe_checkpoints_end_with_one_line(straight, tiny_train_run, tmp_path, capsys) -> None:
    ref, args = straight
    _, backbone = tiny_train_run
    bad = damaged_copies(ref / "checkpoints" / "last.ckpt", tmp_path / "bad")
    bad["a train.py checkpoint"] = backbone
    for what, path in bad.items():
        assert probe.main(args + [f"log_root={tmp_path}", f"ckpt_path={path}"]) == 2, what
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: ckpt_path={str(path)!r}: "), (what, err)
    assert "a train.py checkpoint, not one written by probe.py" in err
    assert probe.main(args + [f"log_root={tmp_path}", "ckpt_path=last"]) == 2  # nothing to resume
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ckpt_path='last' is not allowed: no "), err


def test_resume_sampler_skips_the_batches_done_in_this_pass_once() -> None:
    base = list(range(10))  # 4 batches of 3 per pass (the last one short)
    sampler = ResumeSampler(base, batches=5, per_batch=3)  # 5 batches done: 1 pass + 1 batch
    assert len(sampler) == 10 and list(sampler) == base[3:] and list(sampler) == base


def test_a_run_killed_after_training_only_tests_again(straight, tmp_path) -> None:
    """Resuming from the final last.ckpt (a kill during the test or the analysis) trains nothing
    and writes the same probe.json."""
    ref, args = straight
    shutil.copytree(ref.parent, tmp_path / "p")
    assert probe.main(args + [f"log_root={tmp_path}", "ckpt_path=last"]) == 0
    run = tmp_path / "p" / "version_0"
    assert read_checkpoint(run / "checkpoints" / "last.ckpt", probe=True)["global_step"] == STEPS
    assert comparable(run) == comparable(ref)


def test_resuming_with_other_settings_names_them(straight, capsys) -> None:
    ref, args = straight
    log_root = f"log_root={ref.parent.parent}"
    cfg = load_config(ProbeConfig, args + [log_root, "ckpt_path=last", "probe.lr=0.5", "trainer.log_every_n_steps=5"])
    assert find_probe_resume(cfg, cfg.ckpt) == (str(ref / "checkpoints" / "last.ckpt"), 0, cfg.ckpt)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: resuming with settings that differ") and "probe.lr" in err[0]
    assert "log_every_n_steps" not in err[0]  # harmless


@pytest.mark.slow
def test_a_preempted_two_process_probe_run_resumes_bit_exactly(tiny_train_run, repo_root, subprocess_env,
                                                               tmp_path) -> None:
    """The default probe run is two DDP processes: SIGTERM to both at step 3 of 4, resume: the same
    probe.json and scalars as an uninterrupted two-process run (each rank's data shard goes on where
    it stopped; the majority control's label counts, summed over the ranks, are kept)."""
    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    args = [a for a in PROBE if not a.startswith(("trainer.devices", "trainer.strategy", "trainer.max_steps"))] + [
        "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=4", f"ckpt={tiny_train_run[1]}", "name=p"]
    straight = subprocess.run([sys.executable, str(repo_root / "probe.py"), *args, f"log_root={tmp_path / 'a'}"],
                              env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    args = args + [f"log_root={tmp_path / 'b'}"]
    proc = start(repo_root, args, env, "batch:3", tmp_path / "m", script="probe.py")
    deadline = time.monotonic() + 240
    while not ((tmp_path / "m").is_file() and (tmp_path / "m").read_text().count("batch:3") == 2):  # both ranks
        assert proc.poll() is None and time.monotonic() < deadline, stderr_of(tmp_path / "m")[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, stderr_of(tmp_path / "m")[-3000:]
    resumed = subprocess.run([sys.executable, str(repo_root / "probe.py"), *args, "ckpt_path=last"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref, run = tmp_path / "a" / "p" / "version_0", tmp_path / "b" / "p" / "version_0"
    assert scalars(run) == scalars(ref) and comparable(run) == comparable(ref)
    counts = [torch.load(r / "checkpoints" / "last.ckpt", weights_only=False)["train_counts"] for r in (ref, run)]
    assert counts[0].keys() == counts[1].keys() and all(torch.equal(counts[0][t], counts[1][t]) for t in counts[0])
