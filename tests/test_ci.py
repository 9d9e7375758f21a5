"""CI (.ci/run) runs the README's set-up as written, in a fresh virtual environment, then ruff and
the README's commands; the code passes ruff (pyproject.toml [tool.ruff])."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys

import pytest


def readme_commands(repo_root) -> list[str]:
    """The Quickstart block's command lines, comments dropped."""
    text = (repo_root / "README.md").read_text()
    block = re.search(r"## Quickstart\n.*?```bash\n(.*?)```", text, flags=re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def ci_commands(repo_root) -> list[str]:
    lines = (repo_root / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith((" ", "#"))]


def test_ci_runs_the_readme_setup_in_a_fresh_venv(repo_root) -> None:
    readme, ci = readme_commands(repo_root), ci_commands(repo_root)
    install = [c for c in readme if c.startswith("pip install")]
    assert install == ["pip install torch==2.13.0", 'pip install -e ".[dev]"']
    venv = ci.index('python -m venv "$venv"')
    assert ci[venv + 1] == 'source "$venv/bin/activate"'
    assert ci[venv + 2: venv + 2 + len(install)] == install  # the README's set-up, nothing before it
    after_setup = ci[venv + 2 + len(install):]
    assert after_setup[0] == "ruff check ."
    assert after_setup[1].startswith("python train.py")  # the main job with only the README's install
    assert after_setup[-2:] == [readme[-1], "python -m pytest -q -m slow"]  # the README's tests, then the slow ones
    assert readme[-1] == "python -m pytest -q"
    assert not any(c.startswith(("pip", "python -m pip")) for c in ci[:venv])  # nothing installed outside


def test_ruff_is_in_the_dev_extra(repo_root) -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((repo_root / "pyproject.toml").read_text())
    assert any(d.startswith("ruff") for d in project["project"]["optional-dependencies"]["dev"])
    assert {"F", "E", "W", "I", "B", "UP"} <= set(project["tool"]["ruff"]["lint"]["select"])


def test_the_code_passes_ruff(repo_root) -> None:
    if importlib.util.find_spec("ruff") is not None:
        ruff = [sys.executable, "-m", "ruff"]
    elif shutil.which("ruff"):
        ruff = [shutil.which("ruff")]
    else:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([*ruff, "check", "--no-cache", "--output-format", "concise", "."], cwd=repo_root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
