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


try:  # one intra-op thread: tests are tiny, and extra threads only fight the other test processes
    import torch

    torch.set_num_threads(1)
except ImportError:  # the data-layer tests need no torch
    pass
