"""Shared fixtures. Tests run on CPU in seconds; GPU tests skip without CUDA."""

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


try:  # one intra-op thread: tests are tiny, and extra threads only fight the other test processes
    import torch

    torch.set_num_threads(1)
except ImportError:  # the data-layer tests need no torch
    pass
