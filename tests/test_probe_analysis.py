"""Error analysis pieces: sentence splitting as the verifier reads it, and the truth at the first
wrong parameter of corrupted solutions."""

import re

import pytest

from igsm.config import generator_preset
from igsm.generator import generate_problem, problem_rng
from igsm.tokenizer import build_tokenizer
from igsm.verify import verify_solution
from probing.analysis import first_wrong_case, split_sentences
from probing.data import ProblemTokens, name_ids
from probing.labels import ProblemLabels


def med_problems(n, **kw):
    cfg = generator_preset("med", split="any", **kw)
    return [generate_problem(cfg, problem_rng(7, "test_probe_analysis", i)) for i in range(n)]


def test_split_sentences():
    for p in med_problems(10):
        assert split_sentences(p.solution) == p.solution_sentences
        cut = p.solution[: len(p.solution) - 3]  # an unfinished last sentence is not a sentence
        assert split_sentences(cut) == p.solution_sentences[:-1]
    assert split_sentences("") == [] and split_sentences("  ") == []


@pytest.mark.parametrize("tok_name", ["word", "gpt2"])
def test_first_wrong_case_wrong_value(tok_name):
    """A wrong number in sentence k: A = that sentence's parameter, which was ready (can_next = 1)."""
    tok = build_tokenizer(tok_name)
    for p in med_problems(12):
        labels = ProblemLabels(p)
        k = len(p.solution_sentences) - 1
        last = p.solution_sentences[k]
        result = p.values[p.solution_order[k]]
        wrong = re.sub(r"= (\d+)\.$", f"= {(result + 1) % 23}.", last)
        solution = " ".join(p.solution_sentences[:k] + [wrong])
        report = verify_solution(p, solution, None)
        assert not report.correct and report.first_wrong_sentence == k
        ids, truth = first_wrong_case(tok, p, solution, report)
        a = p.solution_order[k]
        assert truth == {"can_next": labels.label("can_next", a, position=k),
                         "nece_next": labels.label("nece_next", a, position=k)} == {"can_next": 1, "nece_next": 1}
        # the probe input is the training cut at boundary k, then [START] A [END]
        t = ProblemTokens(tok, p)
        cut = t.boundaries[k]
        assert ids[:cut] == t.ids[:cut]
        assert ids[cut:] == [tok.start_id] + name_ids(tok, p.param_name(a)) + [tok.end_id]


def test_first_wrong_case_not_ready():
    """Skipping a needed sentence: the first wrong parameter's inputs are not all known."""
    tok = build_tokenizer("word")
    checked = 0
    for p in med_problems(40):
        order = p.solution_order
        # a sentence j > 0 whose parameter uses the parameter of sentence j - 1
        js = [j for j in range(1, len(order)) if order[j - 1] in p.equations[order[j]].inputs]
        if not js:
            continue
        j = js[0]
        solution = " ".join(p.solution_sentences[: j - 1] + p.solution_sentences[j:])
        report = verify_solution(p, solution, None)
        if report.first_wrong_param != p.param_name(order[j]):
            continue
        ids, truth = first_wrong_case(tok, p, solution, report)
        assert truth == {"can_next": 0, "nece_next": 0}
        checked += 1
    assert checked >= 5


def test_first_wrong_case_without_parameter():
    p = med_problems(1)[0]
    report = verify_solution(p, "Define nonsense", None)
    assert first_wrong_case(build_tokenizer("word"), p, "Define nonsense", report) is None
