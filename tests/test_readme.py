"""README: a first screen of at most 40 lines with the set-up, the main job and the tests; every
relative link in README and docs/ points at a file that exists."""

import re

import pytest

FIRST_SCREEN = 40


def test_first_screen_holds_setup_main_job_picture_and_where_to_go(repo_root):
    lines = (repo_root / "README.md").read_text().splitlines()
    start = lines.index("## Where to go next")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    screen = "\n".join(lines[:end]).rstrip()  # everything up to the section after "Where to go next"
    assert len(screen.splitlines()) <= FIRST_SCREEN, f"the first screen is {len(screen.splitlines())} lines"
    for command in ("pip install torch==2.13.0", 'pip install -e ".[dev]"', "python train.py", "python -m pytest -q",
                    "](docs/problem.png)"):
        assert command in screen


@pytest.mark.parametrize("doc", ["README.md", "docs/dataset.md", "docs/training.md", "docs/probing.md",
                                 "docs/measurements.md", "docs/contributing.md"])
def test_relative_links_resolve(repo_root, doc):
    path = repo_root / doc
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{doc}: {target}"
