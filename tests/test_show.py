"""python -m igsm show: one problem as a figure (structure + dependency graph + text) or as text."""

import json

import pytest

from igsm import cli
from igsm.config import generator_preset
from igsm.generator import generate_problem, problem_rng
from igsm.problem import ABS
from igsm.show import (
    NECESSARY_FILL,
    QUESTION_EDGE,
    ShownProblem,
    dependency_graph,
    dependency_layout,
    describe,
    draw_problem,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def med_problem(op=6, seed=3):
    p = generate_problem(generator_preset("med", op=op), problem_rng(seed, "train", 0))
    return ShownProblem(p, p.problem_text, p.solution, p.answer, "test")


@pytest.mark.parametrize("seed", range(5))
def test_dependency_layout_puts_every_input_left_of_its_user(seed):
    p = med_problem(seed=seed).problem
    pos = dependency_layout(p)
    assert set(pos) == set(p.equations)
    assert len(set(pos.values())) == len(pos)  # no two boxes on one spot
    for q, target in dependency_graph(p).edges:
        assert pos[q][0] < pos[target][0]


def test_text_lists_both_graphs_with_necessary_and_question_marked():
    shown = med_problem()
    p = shown.problem
    text = describe(shown)
    assert shown.problem_text[:60] in text.replace("\n  ", " ")
    edges = [line for line in text.splitlines() if line.startswith("  ") and " -> " in line]
    assert sum(len(line.split(" -> ")[1].split(", ")) for line in edges) == p.ip  # one edge per instance parameter
    marks = [line.split()[0] for line in text.split("Dependency graph")[1].splitlines()[1:]]
    assert len(marks) == len(p.equations)
    assert marks.count("Q") == 1 and marks.count("N") + 1 == len(p.solution_order)
    assert text.count("[abstract]") == sum(q.kind == ABS for q in p.equations)


def test_figure_draws_one_box_per_parameter_in_the_papers_style():
    from matplotlib.colors import to_hex
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    shown = med_problem()
    p = shown.problem
    fig = draw_problem(shown)
    structure, text, dependency = fig.axes
    boxes = [b for b in dependency.patches if isinstance(b, FancyBboxPatch)]
    assert len(boxes) == len(p.equations)
    assert sum(to_hex(b.get_facecolor()) == NECESSARY_FILL for b in boxes) == len(p.solution_order)
    assert sum(to_hex(b.get_edgecolor()) == QUESTION_EDGE for b in boxes) == 1
    assert sum(b.get_linestyle() == "--" for b in boxes) == sum(q.kind == ABS for q in p.equations)
    arrows = [a for a in dependency.patches if isinstance(a, FancyArrowPatch)]
    assert len(arrows) == dependency_graph(p).number_of_edges()
    items = [b for b in structure.patches if isinstance(b, FancyBboxPatch)]
    assert len(items) == sum(len(layer) for layer in p.names) and len(structure.lines) == p.ip


def test_show_writes_a_png_and_prints_text_without_out(tmp_path, capsys):
    out = tmp_path / "p.png"
    assert cli.main(["show", "--preset", "tiny", "--seed", "2", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 10_000
    assert "wrote the figure" in capsys.readouterr().err
    assert cli.main(["show", "--preset", "tiny", "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("iGSM-tiny problem 0 of seed 2") and "Dependency graph" in text


def test_show_draws_problem_i_of_the_generate_stream_and_records_of_a_file(tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    assert cli.main(["generate", "--preset", "tiny", "--seed", "5", "--n", "4", "--out", str(data)]) == 0
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    capsys.readouterr()
    assert cli.main(["show", "--preset", "tiny", "--seed", "5", "--index", "3"]) == 0
    assert rows[3]["solution"].split(". ")[0] in capsys.readouterr().out
    assert cli.main(["show", "--in", str(data), "--index", "3"]) == 0
    assert rows[3]["solution"].split(". ")[0] in capsys.readouterr().out
    # a record without "graph" (the reference format): the graphs are rebuilt from the text
    rows[1].pop("graph")
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert cli.main(["show", "--in", str(data), "--index", "1", "--world", "tiny"]) == 0
    out = capsys.readouterr().out
    assert f"answer {rows[1]['answer']}" in out and "Structure graph" in out


@pytest.mark.parametrize("args,fragment", [
    (["show", "--out", "{tmp}/x.txt"], ".png"),
    (["show", "--in", "{tmp}/p.jsonl", "--index", "9"], "only 2 records"),
    (["show", "--in", "{tmp}/p.jsonl", "--op", "3"], "--op"),
    (["show", "--index", "-1"], "--index"),
    (["show", "--preset", "med", "--op", "0"], "op=0"),
])
def test_show_errors_are_one_line(tmp_path, capsys, args, fragment):
    (tmp_path / "p.jsonl").write_text('{"problem": "a", "solution": "b"}\n{"problem": "a", "solution": "b"}\n')
    assert cli.main([a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]
