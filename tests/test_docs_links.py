"""Every reference to a document or a section of one resolves inside the repository.

Code comments, configs and docs point at definitions with links such as ``docs/spec.md#4-op-and-ip``
(a heading's anchor, by GitHub's rules) and at other docs by name. These tests fail on a link to a
file or a heading that does not exist, and on a bare numbered reference ("spec 7", "design 3.2")
to a document that is not in the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("igsm", "probing", "tests", "scripts", "benchmarks", "configs", "docs", ".ci")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt"}

# a file name ending in .md, optionally with #anchor: docs/spec.md#4-op-and-ip, gpu.md, ../README.md
MD_REF = re.compile(r"(?<![\w/.-])((?:\.{1,2}/)*[\w./-]*?[\w-]+\.md)(?:#([\w-]+))?")
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)
# "spec 7", "Spec 8:", "spec section 10", "spec sections 2-6", "design 3.2", "design §4", "spec-7 formats"
BARE_NUMBERED = re.compile(r"\b(?:spec|design)(?:'s)?[\s§-]*(?:sections?\s*)?[0-9]|\bspec\s+appendix\b", re.I)
FENCE = re.compile(r"^\s*(```|~~~)")
SELF = Path(__file__).resolve()  # its own patterns and examples are not references


def scanned_files(root: Path) -> list[Path]:
    files = [p for d in SCANNED_DIRS for p in (root / d).rglob("*") if p.is_file() and p.suffix in SUFFIXES]
    files += [p for p in root.iterdir() if p.is_file() and p.suffix in SUFFIXES]
    return sorted(p for p in files if "__pycache__" not in p.parts and p.resolve() != SELF)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(md_file: Path) -> set[str]:
    """The anchors of every heading of a markdown file (repeats get -1, -2, ...; code blocks skipped)."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in md_file.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not in_code:
            base = github_anchor(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def resolve(name: str, source: Path, root: Path) -> Path | None:
    """A referenced file or folder (a link to ``records/<study>`` shows its runs): relative to the
    referring file, the repository root, or docs/."""
    for base in (source.parent, root, root / "docs"):
        candidate = (base / name).resolve()
        if (candidate.is_file() or (candidate.is_dir() and not name.endswith(".md"))) and root in candidate.parents:
            return candidate
    return None


def broken_references(root: Path) -> list[str]:
    """Every ``X.md`` / ``X.md#anchor`` mention, and every relative markdown link, that does not resolve."""
    problems = []
    for path in scanned_files(root):
        where = path.relative_to(root)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            refs = [(m.group(1), m.group(2)) for m in MD_REF.finditer(line) if "://" not in line[:m.start()][-12:]]
            if path.suffix == ".md":
                for target in MD_LINK.findall(line):
                    if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                        continue
                    file_part, _, anchor = target.partition("#")
                    refs.append((file_part or str(path.relative_to(root)), anchor or None))
            for name, anchor in refs:
                if not name.endswith(".md"):
                    if resolve(name, path, root) is None:
                        problems.append(f"{where}:{number}: {name} does not exist")
                    continue
                target = resolve(name, path, root) if name != str(where) else path
                if target is None:
                    problems.append(f"{where}:{number}: {name} does not exist in the repository")
                elif anchor and anchor not in anchors(target):
                    problems.append(f"{where}:{number}: {name} has no heading #{anchor}")
    return problems


def bare_references(root: Path) -> list[str]:
    return [f"{path.relative_to(root)}:{number}: {line.strip()}"
            for path in scanned_files(root)
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if BARE_NUMBERED.search(line)]


def test_every_document_and_section_reference_resolves() -> None:
    problems = broken_references(ROOT)
    assert not problems, "references to documents or headings that do not exist:\n" + "\n".join(problems)


def test_no_bare_numbered_reference_to_an_outside_document() -> None:
    """Link to a section that exists instead, e.g. docs/spec.md#10-the-template-hash-and-the-split."""
    found = bare_references(ROOT)
    assert not found, "bare 'spec N' / 'design N' references (link a section instead):\n" + "\n".join(found)


def test_the_spec_has_one_numbered_section_per_definition() -> None:
    headings = [line[3:] for line in (ROOT / "docs" / "spec.md").read_text(encoding="utf-8").splitlines()
                if line.startswith("## ")]
    numbers = [int(h.split(".", 1)[0]) for h in headings]
    assert numbers == list(range(1, len(headings) + 1)), headings


def test_github_anchors() -> None:
    assert github_anchor("4. op and ip") == "4-op-and-ip"
    assert github_anchor("16. The paper's recipe") == "16-the-papers-recipe"
    assert github_anchor("The regret probe (Part 2.2): `probe.tasks=[regret]`") == \
        "the-regret-probe-part-22-probetasksregret"
    assert github_anchor("Killed (`kill -9`, a node)") == "killed-kill--9-a-node"


def test_the_checks_catch_a_missing_file_a_missing_heading_and_a_bare_reference(tmp_path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## 1. World\n\n```\n# not a heading\n```\n")
    (tmp_path / "docs" / "b.md").write_text(
        "[ok](a.md#1-world) [gone](a.md#2-graph) [none](c.md) [code](a.md#not-a-heading)\n")
    (tmp_path / "igsm").mkdir()
    (tmp_path / "igsm" / "m.py").write_text("# see docs/a.md#1-world and docs/a.md#9-x, not spec 7\n")
    problems = broken_references(tmp_path)
    assert any("a.md has no heading #2-graph" in p for p in problems)
    assert any("c.md does not exist" in p for p in problems)
    assert any("#not-a-heading" in p for p in problems)
    assert any("igsm/m.py:1: docs/a.md has no heading #9-x" in p for p in problems)
    assert not any("#1-world" in p for p in problems)
    assert bare_references(tmp_path) == ["igsm/m.py:1: # see docs/a.md#1-world and docs/a.md#9-x, not spec 7"]
