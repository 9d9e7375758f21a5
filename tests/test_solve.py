"""The one path that solves problems (igsm.solve) and the small shared writers (atomic_write, save_figure)."""

from __future__ import annotations

import io

import pytest

from conftest import draw_problems, tiny_gpt
from igsm.config import generator_preset
from igsm.decode import greedy_decode
from igsm.generator import world_for
from igsm.solve import grade, solve, tally
from igsm.tokenizer import build_tokenizer
from igsm.verify import verify_solution

GEN = generator_preset("tiny")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("word", world_for(GEN))


def test_solve_is_greedy_decoding_parsed_and_verified(tok):
    problems = draw_problems(GEN, 6, 0, "solve")
    model = tiny_gpt(tok)
    attempts, fitted = solve(model, tok, problems, max_new_tokens=16, batch_size=4)
    prompts = [tok.encode_prompt(p.problem_text) for p in problems]
    generations = greedy_decode(model, prompts, max_new_tokens=16, stop_ids=[tok.eos_id], pad_id=tok.pad_id,
                                batch_size=4)
    assert fitted == 4 and [a.problem for a in attempts] == problems
    for attempt, generated in zip(attempts, generations):
        solution, answer = tok.parse_generation(generated)
        assert (attempt.solution, attempt.answer) == (solution, answer)
        assert attempt.report == verify_solution(attempt.problem, solution, answer)
    empty, _ = solve(model, tok, problems, max_new_tokens=0, batch_size=4)  # no room: nothing generated
    assert all(a.solution == "" and not a.report.correct for a in empty)


def test_tally_counts_what_the_verifier_says(tok):
    problems = draw_problems(GEN, 8, 1, "solve")
    right = [tok.encode_example(p.problem_text, p.solution, p.answer)[len(tok.encode_prompt(p.problem_text)) - 1:]
             for p in problems]
    wrong = [ids[: len(ids) // 2] for ids in right]  # cut short: never correct
    counts = tally(grade(tok, problems, right[:5] + wrong[5:]))
    assert (counts.n, counts.correct, counts.answer_correct) == (8, 5, 5)
    assert sum(counts.errors.values()) == 3 and None not in counts.errors
    assert counts.unnecessary == 0 and counts.retractions == 0


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path):
    from igsm.trainer import atomic_write

    path = tmp_path / "sub" / "eval.json"
    with atomic_write(path) as f:
        f.write("old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["eval.json"]


def test_save_figure_writes_png_and_frees_pyplot_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from igsm.show import save_figure

    fig = plt.figure()
    assert save_figure(fig, tmp_path / "a.png") == tmp_path / "a.png" and fig.number not in plt.get_fignums()
    buffer, fig = io.BytesIO(), plt.figure()
    save_figure(fig, buffer)
    assert buffer.getvalue()[:4] == b"\x89PNG" and fig.number not in plt.get_fignums()
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
