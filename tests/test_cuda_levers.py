"""The newer options on the GPU path (issue 28): the compile, cached-decoding and resume checks of
tests/test_cuda.py once more with Canon layers (ABCD), partial RoPE (a quarter of each head), Muon,
retry data (masked retractions) and the uniform op mix, and a probe run killed with SIGTERM and
resumed with ``ckpt_path=last`` under ``trainer.precision`` null (auto).

As in tests/test_cuda.py every test runs on ``cuda`` (marker ``gpu``: skipped without CUDA;
``scripts/device_check.py`` runs them) and on ``cpu`` at toy sizes. The CPU twins that take more
than a few seconds are marked slow: ``scripts/device_check.py --smoke`` runs them.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys

import pytest
import torch

import train
from igsm.config import ModelConfig
from igsm.decode import greedy_decode
from igsm.model import GPT
from test_cuda import (
    COMMON,
    CUDA,
    SIZES,
    LossRecorder,
    _compile_backend,
    _prompts,
    _uncached_argmax_agreement,
    fit_compiled_beside_eager,
)
from test_faults import kill_leftovers, start, stderr_of, wait_for  # noqa: F401

CPU_SLOW = pytest.param("cpu", marks=pytest.mark.slow)
DEVICES_SLOW_ON_CPU = [CPU_SLOW, CUDA]
HEAD_DIM = {"cpu": 32 // 2, "cuda": 256 // 4}  # SIZES' n_embd / n_head


def levers(device: str) -> list[str]:
    """Every new option at once; RoPE on a quarter of each head's dims."""
    return ["model.canon=ABCD", f"model.rope_dim={HEAD_DIM[device] // 4}", "optim.name=muon",
            "data.retry_rate=0.2", "data.retry_loss=mask", "data.op_sampling=uniform"]


def levers_config(device: str, *extra: str):
    from igsm.cli_config import load_config
    from igsm.config import TrainConfig

    return load_config(TrainConfig, COMMON + SIZES[device] + levers(device) + [f"trainer.accelerator={device}",
                                                                                 *extra])


@pytest.mark.parametrize("device", DEVICES_SLOW_ON_CPU)
def test_levers_compile_matches_eager_and_evaluates(device, tmp_path, monkeypatch) -> None:
    """Canon + partial RoPE + Muon + retry data + op mix under torch.compile (inductor on CUDA, in
    bf16-mixed): the first compiled loss matches eager, 3 finite steps, at most 2 graphs, and an
    evaluation (Canon's cached decoding) of every bucket."""
    from torch._dynamo.utils import counters


    _compile_backend(device, monkeypatch)
    torch._dynamo.reset()
    counters.clear()
    precision = "bf16-mixed" if device == "cuda" else "32-true"
    cfg = levers_config(device, "model.compile=true", "trainer.max_steps=3", f"trainer.precision={precision}")
    module, dm, trainer, losses, eager_loss = fit_compiled_beside_eager(cfg, device, tmp_path, "levers")
    assert module._compiled_forward is not None and losses.devices == {device}
    tolerance = 0.01 if device == "cuda" else 1e-4
    assert abs(losses.losses[0] - eager_loss) / eager_loss < tolerance, (losses.losses[0], eager_loss)
    assert all(math.isfinite(x) for x in losses.losses) and len(losses.losses) == 3
    assert 1 <= counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])
    trainer.validate(module, datamodule=dm, verbose=False)
    assert module.last_eval and all(e["n"] == 8 for e in module.last_eval)
    torch._dynamo.reset()


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_levers_cached_decoding_in_bf16_matches_the_uncached_argmax(device) -> None:
    """Canon ABCD with partial RoPE: greedy decoding with the KV cache and Canon's convolution state,
    in bf16 autocast, picks the argmax of a full uncached forward at >= 99% of positions."""
    torch.manual_seed(0)
    size = dict(n_layer=2, n_head=2, n_embd=64) if device == "cpu" else dict(n_layer=4, n_head=4, n_embd=256)
    head_dim = size["n_embd"] // size["n_head"]
    model = GPT(ModelConfig(block_size=512, canon="ABCD", rope_dim=head_dim // 4, **size),
                vocab_size=200).to(device).eval()
    prompts = _prompts(32)
    never = model.padded_vocab
    with torch.autocast(device, dtype=torch.bfloat16):
        generated = greedy_decode(model, prompts, max_new_tokens=24, stop_ids={never}, pad_id=0, batch_size=32)
        agreement = _uncached_argmax_agreement(model, prompts, generated)
    assert all(len(g) == 24 for g in generated)
    assert agreement >= 0.99, agreement


@pytest.mark.parametrize("device", DEVICES_SLOW_ON_CPU)
def test_levers_checkpoint_resumes(device, tmp_path) -> None:
    """3 steps with every new option, ``ckpt_path=last`` for 3 more on the same device: finite
    losses, global step 6, Muon's and AdamW's state continued, the same version folder."""
    common = COMMON + SIZES[device] + levers(device) + [
        f"log_root={tmp_path}", "name=run", "eval.final=false", "trainer.checkpoint_every=3",
        f"trainer.accelerator={device}"]
    before, after = LossRecorder(), LossRecorder()
    assert train.main(common + ["trainer.max_steps=3"], extra_callbacks=[before]) == 0
    assert train.main(common + ["trainer.max_steps=6", "ckpt_path=last"], extra_callbacks=[after]) == 0
    assert len(before.losses) == 3 and len(after.losses) == 3
    assert all(math.isfinite(x) for x in before.losses + after.losses)
    last = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6 and ckpt["hyper_parameters"]["config"]["optim"]["name"] == "muon"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["version_0"]
    assert ckpt["optimizer_states"][0]["state"]  # Muon's momentum and AdamW's moments went on


@pytest.mark.parametrize("device", DEVICES_SLOW_ON_CPU)
def test_probe_killed_and_resumed_under_auto_precision(device, tmp_path, repo_root, subprocess_env) -> None:
    """probe.py on a levers backbone with trainer.precision null: SIGTERM at step 2 of 4 exits 143
    with last.ckpt, ``ckpt_path=last`` finishes it; the run used the precision train.py resolves."""
    from igsm.trainer import resolve_precision

    backbone = COMMON + SIZES[device] + levers(device) + [
        f"log_root={tmp_path}", "name=bb", "eval.final=false", "trainer.max_steps=2", f"trainer.accelerator={device}"]
    assert train.main(backbone) == 0
    ckpt = tmp_path / "bb" / "version_0" / "checkpoints" / "last.ckpt"
    args = ["probe.tasks=[nece,value]", "probe.test_problems=4", "probe.batch_size=6", "probe.draws=3",
            "trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", f"trainer.accelerator={device}", "trainer.devices=1",
            "trainer.strategy=auto", f"ckpt={ckpt}", f"log_root={tmp_path}", "name=p"]
    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    marker = tmp_path / "m"
    proc = start(repo_root, args, env, "batch:2", marker, script="probe.py")
    wait_for(marker, "batch:2", proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, stderr_of(marker)[-3000:]
    resumed = subprocess.run([sys.executable, str(repo_root / "probe.py"), *args, "ckpt_path=last"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = tmp_path / "p" / "version_0"
    assert (run / "probe.json").is_file()
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 4
    from igsm.cli_config import load_config
    from igsm.config import ProbeConfig

    expected = resolve_precision(load_config(ProbeConfig, args).trainer)
    assert f"# precision: {expected}\n" in (run / "config.yaml").read_text()
