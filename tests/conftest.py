"""Shared fixtures and helpers (``from conftest import tiny_gpt, draw_problems``). Tests run on CPU in
seconds; GPU tests skip without CUDA."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clone without installing too
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def subprocess_env() -> dict:
    """Environment for child processes that must import the repo's packages."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="session")
def tiny_train_run(tmp_path_factory) -> tuple[Path, Path]:
    """One short train.py run shared by the probe tests (2 steps, no evaluation, one process):
    its log root and checkpoint. Read it; write elsewhere."""
    import train

    root = tmp_path_factory.mktemp("logs")
    rc = train.main([f"log_root={root}", "name=tiny", "model.n_layer=2", "model.n_head=2", "trainer.max_steps=2",
                     "eval.final=false", "data.batch_size=2", "data.num_workers=0", "trainer.enable_progress_bar=false",
                     "trainer.devices=1", "trainer.strategy=auto"])
    assert rc == 0
    ckpt = root / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return root, ckpt


def tiny_gpt(tok, *, seed: int = 0, n_embd: int = 32, dropout: float = 0.0):
    """A small random GPT for the tokenizer ``tok`` (2 layers, 2 heads, block 512), its init seeded."""
    import torch

    from igsm.config import ModelConfig
    from igsm.model import GPT

    torch.manual_seed(seed)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=n_embd, block_size=512, dropout=dropout), tok.vocab_size)


def draw_problems(cfg, n: int, *stream, start: int = 0, **overrides) -> list:
    """Problems ``start .. start + n - 1`` of ``cfg`` (a GeneratorConfig, or a preset name), with
    ``overrides`` of its fields; problem ``i`` is drawn with ``problem_rng(*stream, i)``, so the same
    arguments give the same problems in every test and process."""
    from dataclasses import replace

    from igsm.config import generator_preset
    from igsm.generator import generate_problem, problem_rng

    cfg = generator_preset(cfg, **overrides) if isinstance(cfg, str) else replace(cfg, **overrides)
    return [generate_problem(cfg, problem_rng(*stream, i)) for i in range(start, start + n)]


try:  # one intra-op thread: tests are tiny, and extra threads only fight the other test processes
    import torch

    torch.set_num_threads(1)
except ImportError:  # the data-layer tests need no torch
    pass
