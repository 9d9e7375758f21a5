"""The layers of docs/architecture.md hold: every module in one layer, imports one way, no circle.

The layer map is the table under "## The layer map" in docs/architecture.md (the one place it is
written); these tests read it and walk every import of every module with ``ast``, the ones inside
functions too.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
CORE, CONFIG = 1, 2  # the torch-free layers
# Not in the torch-free core at all, nor at the top of a config module.
HEAVY = ("torch", "lightning", "torchmetrics", "omegaconf")


def read_layer_map(text: str) -> list[tuple[int, str, list[str]]]:
    """``[(layer, name, patterns), ...]`` from the table under "## The layer map"."""
    section = text.split("## The layer map", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            rows.append((int(cells[0]), cells[1], re.findall(r"`([^`]+)`", cells[2])))
    return rows


def source_files(root: Path) -> list[str]:
    """Every module the layers must place, as repository-relative paths."""
    found = [*root.glob("igsm/**/*.py"), *root.glob("probing/**/*.py"), *root.glob("scripts/*.py"),
             *root.glob("benchmarks/*.py"), root / "train.py", root / "probe.py"]
    return sorted(str(p.relative_to(root)) for p in found if p.is_file())


def module_name(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path, path: str, modules: dict[str, str]) -> list[tuple[str, int, bool]]:
    """``(module imported, line, at module level)`` for every import of a repository module or a
    third-party top-level name in ``path``; relative imports and script siblings resolved."""
    name = module_name(path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    tree = ast.parse((root / path).read_text(encoding="utf-8"), filename=path)
    top_level = {id(node) for node in tree.body}
    out = []

    def resolve(target: str) -> str:
        sibling = f"{package}.{target}" if package else target  # scripts/, benchmarks/: `from _common import`
        if target not in modules and sibling in modules and package in ("scripts", "benchmarks"):
            return sibling
        return target

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [resolve(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = resolve(node.module)
            # `from igsm import verify` imports the module igsm.verify, not the package's names
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
        else:
            continue
        out += [(t, node.lineno, id(node) in top_level) for t in dict.fromkeys(targets)]
    return out


@pytest.fixture(scope="module")
def house() -> tuple[dict[str, int], dict[str, str], list[tuple[str, str, int, bool]]]:
    """(layer of each module, its path, every import edge ``(importer, imported, line, top)``)."""
    rows = read_layer_map(ARCHITECTURE.read_text(encoding="utf-8"))
    files = source_files(ROOT)
    layer_of_file = {}
    for path in files:
        hits = [layer for layer, _, patterns in rows for pattern in patterns if fnmatch.fnmatch(path, pattern)]
        assert len(hits) == 1, (f"{path} is in layers {hits} of docs/architecture.md's layer map: add it to "
                                "exactly one (the lowest whose modules it needs)")
        layer_of_file[path] = hits[0]
    modules = {module_name(p): p for p in files}
    layers = {m: layer_of_file[p] for m, p in modules.items()}
    edges = []
    for m, path in modules.items():
        for target, line, top in imports_of(ROOT, path, modules):
            edges.append((m, target, line, top))
    return layers, modules, edges


def test_the_layer_map_names_only_files_that_exist() -> None:
    rows = read_layer_map(ARCHITECTURE.read_text(encoding="utf-8"))
    assert [layer for layer, _, _ in rows] == [1, 2, 3, 4, 5, 6]
    files = source_files(ROOT)
    stale = [p for _, _, patterns in rows for p in patterns if not fnmatch.filter(files, p)]
    assert not stale, f"docs/architecture.md's layer map names modules that do not exist: {stale}"


def test_imports_go_one_way(house) -> None:
    """A module imports its own layer and the layers above it in the table, never one below."""
    layers, modules, edges = house
    against = [f"{modules[a]}:{line} imports {b} (layer {layers[a]} -> {layers[b]})"
               for a, b, line, _ in edges if b in layers and layers[b] > layers[a]]
    assert not against, "imports against the layers of docs/architecture.md:\n" + "\n".join(against)


def test_no_import_circle(house) -> None:
    _, modules, edges = house
    graph = nx.DiGraph((a, b) for a, b, _, _ in edges if b in modules and a != b)
    circles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not circles, f"modules that import each other in a circle: {circles}"


def test_core_and_config_import_nothing_heavy(house) -> None:
    """Layer 1 never imports torch (or Lightning, torchmetrics, OmegaConf), not even inside a
    function; layer 2 may only inside a function (the Muon check asks torch for torch.optim.Muon)."""
    layers, modules, edges = house
    bad = [f"{modules[a]}:{line} imports {b}" for a, b, line, top in edges
           if b.split(".")[0] in HEAVY and (layers[a] == CORE or (layers[a] == CONFIG and top))]
    assert not bad, "torch-free layers importing heavy packages:\n" + "\n".join(bad)


def test_core_and_config_load_no_torch_when_used(house, subprocess_env) -> None:
    """At run time too: import every module of layers 1 and 2, generate, tokenize, verify, parse."""
    layers, _, _ = house
    light = sorted(m for m, layer in layers.items() if layer in (CORE, CONFIG))
    code = ("import sys, random, importlib\n"
            f"for m in {light!r}: importlib.import_module(m)\n"
            "import igsm\n"
            "from igsm.tokenizer import build_tokenizer\n"
            "p = igsm.generate_problem(igsm.generator_preset('med'), random.Random(0))\n"
            "build_tokenizer('word').encode_example(p.problem_text, p.solution, p.answer)\n"
            "assert igsm.verify_solution(p, p.solution, p.answer).correct\n"
            "assert igsm.verify_text(p.problem_text, p.solution, p.answer).correct\n"
            "print(sorted(h for h in " + repr(HEAVY) + " if h in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_the_walk_sees_late_imports_and_circles(tmp_path) -> None:
    """The checks above can fail: a function-level import is an edge, and a circle is found."""
    (tmp_path / "igsm").mkdir()
    (tmp_path / "igsm" / "__init__.py").write_text("")
    (tmp_path / "igsm" / "a.py").write_text("from .b import x\n")
    (tmp_path / "igsm" / "b.py").write_text("def f():\n    from igsm import a\n    import torch\n")
    files = source_files(tmp_path)
    modules = {module_name(p): p for p in files}
    edges = {(module_name(p), t, top) for p in files for t, _, top in imports_of(tmp_path, p, modules)}
    assert ("igsm.a", "igsm.b", True) in edges and ("igsm.b", "igsm.a", False) in edges
    assert ("igsm.b", "torch", False) in edges
    graph = nx.DiGraph((a, b) for a, b, _ in edges if b in modules)
    assert [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1] == [["igsm.a", "igsm.b"]]
