"""Faults (docs/faults.md): SIGKILL at any moment, SIGTERM/SIGINT, damaged checkpoints, non-finite
steps, out of memory in evaluation. Runs that get killed are subprocesses; the moment of each kill
is a test hook (tests/hang_run.py) that the test waits for by polling a marker file."""

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

import lightning as L
import pytest
import torch

import probe
import train
from hang_run import HANG_ENV, HANG_MARKER_ENV
from igsm.cli_config import config_to_dict, load_config
from igsm.config import TrainConfig
from igsm.data import IGSMDataModule
from igsm.faults import read_checkpoint
from igsm.lit import GPTLitModule
from test_train import FAST

# 10 steps of 2 micro-batches; a checkpoint every 2 steps, an evaluation every 3 (so step 6 has both).
RUN = FAST + ["trainer.max_steps=10", "trainer.checkpoint_every=2", "trainer.eval_every=3",
              "trainer.accumulate_grad_batches=2", "optim.lr=1e-2", "optim.warmup_steps=2",
              "eval.n=2", "eval.batch_size=2", "eval.max_new_tokens=4"]
CHECKPOINT_EVERY, ACCUMULATE = 2, 2


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted run of RUN (in this process): the reference for every interrupted one."""
    root = tmp_path_factory.mktemp("straight")
    assert train.main(RUN + [f"log_root={root}", "name=run"]) == 0
    return root / "run" / "version_0"


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run folder as TensorBoard shows it (purged events hidden)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
            if not tag.startswith("train/tokens_per_s")}  # wall-clock speed differs between runs


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def kill_leftovers():
    """A failing test must not leave a run waiting at its hook forever (it has its own session)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start(repo_root: Path, args: list[str], env: dict, hang: str, marker: Path,
          script: str = "train.py") -> subprocess.Popen:
    """train.py (or ``script``) in its own process group, with the test hooks of tests/hang_run.py, waiting at
    ``hang``; stderr goes to ``<marker>.err``."""
    env = dict(env, **{HANG_ENV: hang, HANG_MARKER_ENV: str(marker)})
    with open(f"{marker}.err", "w") as err:
        proc = subprocess.Popen([sys.executable, str(repo_root / "tests" / "hang_run.py"), script, *args], env=env,
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
    STARTED.append(proc)
    return proc


def stderr_of(marker: Path) -> str:
    return Path(f"{marker}.err").read_text()


def wait_for(marker: Path, text: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Poll until ``text`` is a line of ``marker`` (the run reached the hook); fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while not (marker.is_file() and text in marker.read_text().splitlines()):
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before reaching {text}:\n"
                        + stderr_of(marker)[-3000:])
        assert time.monotonic() < deadline, f"{text} not reached in {timeout} s"
        time.sleep(0.05)


# -- 1. SIGKILL at any moment --------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_at_any_moment_resumes_bit_exactly(straight, repo_root, subprocess_env, tmp_path) -> None:
    """Killed while writing a checkpoint, during an evaluation, and inside an optimizer step drawn
    from a seeded RNG (after its first micro-batch), resumed with ckpt_path=last each time: the same losses,
    evaluations and final weights as the uninterrupted run, each step in TensorBoard exactly once,
    and at most checkpoint_every steps redone per kill."""
    n = 2 * random.Random(12).randint(6, 8) + 1  # micro-batch 13, 15 or 17 of 20: inside step 7, 8 or 9
    kills = [("save", 4, 4),  # while step_0000004.ckpt / last.ckpt is being written
             ("eval", 6, 6),  # during the evaluation at step 6, whose checkpoint follows it
             ("batch", n, n // ACCUMULATE)]
    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    args = RUN + [f"log_root={tmp_path}", "name=run"]
    ckpt = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
    for i, (where, n, steps_done) in enumerate(kills):
        marker = tmp_path / f"marker{i}"
        proc = start(repo_root, args + (["ckpt_path=last"] if i else []), env, f"{where}:{n}", marker)
        wait_for(marker, f"{where}:{n}", proc)
        proc.kill()
        proc.wait()
        resumes_at = read_checkpoint(ckpt)["global_step"]
        assert steps_done - CHECKPOINT_EVERY <= resumes_at <= steps_done, (where, n, resumes_at)
    last = subprocess.run([sys.executable, str(repo_root / "train.py"), *args, "ckpt_path=last"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert last.returncode == 0, last.stderr[-3000:]

    run = tmp_path / "run" / "version_0"
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["version_0"]
    assert sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) == [
        "last.ckpt", *(f"step_{s:07d}.ckpt" for s in (2, 4, 6, 8, 10))]
    expected, got = weights(straight / "checkpoints" / "last.ckpt"), weights(run / "checkpoints" / "last.ckpt")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    ref, resumed = scalars(straight), scalars(run)
    assert len(ref["train/loss"]) == 10 and any(t.startswith("eval/") for t in ref)
    assert resumed == ref  # same steps (none lost, none twice) and bit-identical values
    assert json.loads((run / "eval.json").read_text()) == json.loads((straight / "eval.json").read_text())


# -- 2. SIGTERM / SIGINT -------------------------------------------------------------------------

@pytest.mark.slow
def test_sigint_and_sigterm_checkpoint_and_exit_and_a_second_signal_exits_at_once(
        repo_root, subprocess_env, tmp_path) -> None:
    """Signals go to the whole process group, as Ctrl-C does (a data worker included)."""
    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    args = RUN + [f"log_root={tmp_path}", "name=run", "data.num_workers=1"]
    ckpt = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"

    # Ctrl-C in the middle of step 3: step 3 is finished, saved, and the run exits 130.
    proc = start(repo_root, args, env, "batch:5", tmp_path / "m1")
    wait_for(tmp_path / "m1", "batch:5", proc)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=240)
    err = stderr_of(tmp_path / "m1")
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert read_checkpoint(ckpt, resume=True)["global_step"] == 3
    resume_line = [line for line in err.splitlines() if "resume with:" in line]
    assert len(resume_line) == 1 and resume_line[0].endswith(" ckpt_path=last") and "stopped after step 3" in err
    assert "Traceback" not in err

    # Resumed with that line's arguments, then SIGTERM right after step 6: saved at 6, exit 143.
    proc = start(repo_root, resume_line[0].split("python train.py ")[1].split(), env, "batch:12", tmp_path / "m2")
    wait_for(tmp_path / "m2", "batch:12", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=240)
    err = stderr_of(tmp_path / "m2")
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert read_checkpoint(ckpt, resume=True)["global_step"] == 6 and "Traceback" not in err

    # Stuck while writing the step-8 checkpoint: the first SIGTERM asks, the second exits at once,
    # and last.ckpt stays the intact step-6 one.
    proc = start(repo_root, args + ["ckpt_path=last"], env, "save:8", tmp_path / "m3")
    wait_for(tmp_path / "m3", "save:8", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while "SIGTERM received" not in stderr_of(tmp_path / "m3"):
        assert proc.poll() is None and time.monotonic() < deadline, stderr_of(tmp_path / "m3")[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    err = stderr_of(tmp_path / "m3")
    assert proc.returncode == 128 + signal.SIGTERM and "SIGTERM again: exiting at once" in err, err[-3000:]
    assert read_checkpoint(ckpt, resume=True)["global_step"] == 6


# -- 3. damaged checkpoints ----------------------------------------------------------------------

def damaged_copies(good: Path, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    files = {"truncated": data[: len(data) // 3], "empty": b"", "foreign": b"just some text\n",
             "bit flip": bytes(flipped)}
    paths = {}
    for what, content in files.items():
        paths[what] = folder / f"{what.replace(' ', '_')}.ckpt"
        paths[what].write_bytes(content)
    paths["torch, not Lightning"] = folder / "plain.ckpt"
    torch.save({"weights": torch.zeros(2)}, paths["torch, not Lightning"])
    return paths


def test_damaged_checkpoints_end_with_one_line_naming_the_file(straight, tmp_path, capsys) -> None:
    for what, path in damaged_copies(straight / "checkpoints" / "last.ckpt", tmp_path / "bad").items():
        for main, key in ((train.main, "ckpt_path"), (probe.main, "ckpt")):
            assert main([f"{key}={path}", f"log_root={tmp_path}"]) == 2, (what, key)
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith(f"error: {key}={str(path)!r}: "), (what, err)


def test_ckpt_path_last_skips_an_unreadable_newest_checkpoint(straight, tmp_path, capsys) -> None:
    folder = tmp_path / "run" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    for step in (8, 10):
        shutil.copy(straight / "checkpoints" / f"step_{step:07d}.ckpt", folder)
    data = (straight / "checkpoints" / "last.ckpt").read_bytes()
    (folder / "step_0000010.ckpt").write_bytes(data[:1000])  # damaged, like last.ckpt below
    (folder / "last.ckpt").write_bytes(data[: len(data) // 2])
    now = time.time()
    for age, name in enumerate(("last.ckpt", "step_0000010.ckpt", "step_0000008.ckpt")):
        os.utime(folder / name, (now - age, now - age))
    cfg = load_config(TrainConfig, RUN + [f"log_root={tmp_path}", "name=run", "ckpt_path=last"])
    assert train.find_resume(cfg) == (str(folder / "step_0000008.ckpt"), 0)
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: ckpt_path='last' skips ") for w in warnings)
    assert "last.ckpt: truncated" in warnings[0] and "step_0000010.ckpt: truncated" in warnings[1]


# -- 4. divergence -------------------------------------------------------------------------------

def poison_steps(monkeypatch, steps: set[int]) -> None:
    """Make the loss of the given optimizer steps (1-based) NaN, as a diverging run would."""
    real = GPTLitModule.training_step

    def training_step(self, batch, batch_idx):
        loss = real(self, batch, batch_idx)
        return loss * float("nan") if self.global_step + 1 in steps else loss
    monkeypatch.setattr(GPTLitModule, "training_step", training_step)


DIVERGE = FAST + ["trainer.max_steps=4", "trainer.checkpoint_every=2", "eval.final=false", "name=run"]


def test_a_nonfinite_loss_stops_the_run_naming_the_step(tmp_path, monkeypatch, capsys) -> None:
    poison_steps(monkeypatch, {3})
    assert train.main(DIVERGE + [f"log_root={tmp_path}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite loss or gradient norm (nan) at optimizer step 3" in err[0], err
    folder = tmp_path / "run" / "version_0" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step_0000002.ckpt"]
    saved = read_checkpoint(folder / "last.ckpt", resume=True)
    assert saved["global_step"] == 2 and all(torch.isfinite(t).all() for t in saved["state_dict"].values())


def test_skip_mode_drops_nonfinite_updates_up_to_the_limit(tmp_path, monkeypatch, capsys) -> None:
    poison_steps(monkeypatch, {2, 3})
    args = DIVERGE + [f"log_root={tmp_path}", "optim.on_nonfinite=skip"]
    assert train.main(args + ["optim.max_nonfinite_skips=2"]) == 0
    assert capsys.readouterr().err.count("update skipped") == 2
    saved = torch.load(tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 4 and saved["nonfinite_skips"] == 2
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
    adam_steps = {float(s["step"]) for s in saved["optimizer_states"][0]["state"].values()}
    assert adam_steps == {2.0}  # 4 steps taken, the updates of 2 of them skipped

    assert train.main(args + ["optim.max_nonfinite_skips=1", "name=limit"]) == 1
    err = capsys.readouterr().err
    assert "at optimizer step 3 after skipping 1 such steps" in err


# -- 5. out of memory in evaluation --------------------------------------------------------------

def evaluate(args: list[str], monkeypatch, fits: int | None, out_dir: Path) -> tuple[list, dict, list]:
    """The eval.json entries and every generation of one evaluation of an untrained model; with
    ``fits``, decoding more than that many prompts at once raises torch.OutOfMemoryError."""
    cfg = load_config(TrainConfig, FAST + args)
    real = GPTLitModule.decode
    generations, sizes = {}, []

    def decode(self, prompts):
        sizes.append(len(prompts))
        if fits is not None and len(prompts) > fits:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by the test)")
        out = real(self, prompts)
        generations.update(zip(map(tuple, prompts), map(tuple, out)))
        return out
    monkeypatch.setattr(GPTLitModule, "decode", decode)
    dm = IGSMDataModule(cfg.data, cfg.eval, seed=cfg.seed)
    L.seed_everything(0, verbose=False)
    module = GPTLitModule(config_to_dict(cfg), dm.tokenizer.to_dict())
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=out_dir)
    trainer.validate(module, datamodule=dm, verbose=False)
    return module.last_eval, generations, sizes


def test_an_evaluation_batch_out_of_memory_halves_and_matches_the_smaller_batch(monkeypatch, capsys,
                                                                              tmp_path) -> None:
    eval_args = ["eval.n=8", "eval.max_new_tokens=12"]
    halved, halved_generations, sizes = evaluate(eval_args + ["eval.batch_size=8"], monkeypatch, fits=4,
                                                 out_dir=tmp_path / "a")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "out of memory" in line]
    assert len(warnings) == 1 and "decoding 8 evaluation prompts" in warnings[0] and "going on with 4" in warnings[0]
    assert sizes[:2] == [8, 4] and set(sizes[2:]) == {4}  # the smaller size is kept for the rest
    small, small_generations, _ = evaluate(eval_args + ["eval.batch_size=4"], monkeypatch, fits=None,
                                           out_dir=tmp_path / "b")
    assert halved == small and halved_generations == small_generations
    assert len(small_generations) == 16


def analyse(monkeypatch, batch_size: int, fits: int | None) -> tuple[dict, list[int]]:
    """run_analysis of an untrained 1-layer model on 8 + 8 tiny problems; with ``fits``, decoding
    more than that many prompts at once raises torch.OutOfMemoryError."""
    from types import SimpleNamespace

    import igsm.decode
    import probing.analysis as analysis
    from igsm.config import AnalysisConfig, ModelConfig, generator_config
    from igsm.data_setup import build_data_tokenizer
    from igsm.model import GPT

    real, sizes = igsm.decode.greedy_decode, []

    def decode(model, prompts, **kw):
        sizes.append(len(prompts))
        if fits is not None and len(prompts) > fits:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by the test)")
        return real(model, prompts, **kw)
    monkeypatch.setattr(igsm.decode, "greedy_decode", decode)  # what igsm.solve decodes with
    data = load_config(TrainConfig, []).data
    tok = build_data_tokenizer(data)
    torch.manual_seed(0)
    backbone = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=512), tok.vocab_size)
    module = SimpleNamespace(backbones={"trained": backbone}, tasks=["nece"])
    cfg = AnalysisConfig(n=8, batch_size=batch_size, max_new_tokens=12)
    return analysis.run_analysis(module, tok, generator_config(data), cfg), sizes


def test_an_analysis_batch_out_of_memory_halves_and_matches_the_smaller_batch(monkeypatch, capsys) -> None:
    """The error analysis decodes as evaluation does: a batch that runs out of memory is retried in
    halves, the smaller size kept for the rest (the test set too), with the results of that size."""
    halved, sizes = analyse(monkeypatch, batch_size=8, fits=4)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "out of memory" in line]
    assert len(warnings) == 1 and "decoding 8 analysis prompts" in warnings[0] and "going on with 4" in warnings[0]
    assert sizes[:2] == [8, 4] and set(sizes[2:]) == {4} and sum(sizes[1:]) == 16
    small, _ = analyse(monkeypatch, batch_size=4, fits=None)
    assert halved == small and halved["sets"]["reask"]["n"] == halved["sets"]["test"]["n"] == 8
