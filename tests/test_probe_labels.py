"""Probe labels against a brute-force recomputation from the networkx dependency graph, and the
probing cuts against independent encodings of the text prefixes (both tokenizers)."""

import random

import networkx as nx
import pytest

from conftest import draw_problems
from igsm.tokenizer import build_tokenizer
from probing.data import ProblemTokens, name_ids, problem_pairs, query_ids
from probing.labels import NUM_CLASSES, TASKS, UNKNOWN_VALUE, ProblemLabels, draw_queries, graph_params, n_positions

CASES = [(preset, fmt, reask) for preset in ("tiny", "med", "hard") for fmt in ("pq", "qp")
         for reask in (False, True)]


def problems(preset, fmt, reask, n, seed=0):
    overrides = {"fmt": fmt, "split": "any", "reask": reask}
    if reask:
        overrides["op"] = {"tiny": 4, "med": 12, "hard": 16}[preset]
    return draw_problems(preset, n, seed, "test_probe_labels", preset, fmt, reask, **overrides)


def brute_force(problem):
    """Every label of every parameter (pair) at every position, from networkx alone."""
    g = problem.to_networkx()
    if "RNG" in g:
        g.remove_node("RNG")
    name = problem.param_name
    q = name(problem.question)
    params = graph_params(problem)
    assert {name(p) for p in params} == set(g.nodes), "G must be exactly the networkx graph's parameters"
    nece = {p: nx.has_path(g, name(p), q) for p in params}
    dep = {(a, b): a != b and nx.has_path(g, name(b), name(a)) for a in params for b in params}
    dist = {p: nx.shortest_path_length(g, name(p), q) for p in params if nece[p]}
    by_pos = []
    order = problem.solution_order
    for j in range(len(order) + 1):
        known = {name(p) for p in order[:j]}
        row = {}
        for p in params:
            k = name(p) in known
            ready = all(u in known for u in g.predecessors(name(p)))
            row[p] = {"known": int(k), "value": problem.values[p] if k else UNKNOWN_VALUE,
                      "can_next": int(ready and not k), "nece_next": int(ready and not k and nece[p])}
        by_pos.append(row)
    return nece, dep, dist, by_pos


@pytest.mark.parametrize("preset,fmt,reask", CASES)
def test_labels_match_brute_force(preset, fmt, reask):
    for problem in problems(preset, fmt, reask, 12):
        labels = ProblemLabels(problem)
        nece, dep, dist, by_pos = brute_force(problem)
        params = graph_params(problem)
        for a in params:
            assert labels.label("nece", a) == int(nece[a])
            assert labels.distance(a) == dist.get(a, -1)
            for b in params:
                if a != b:
                    assert labels.label("dep", a, b) == int(dep[a, b])
            for j, row in enumerate(by_pos):
                for task in ("known", "value", "can_next", "nece_next"):
                    assert labels.label(task, a, position=j) == row[a][task], (task, a, j)
        assert n_positions(problem, "known") == len(by_pos)
        assert n_positions(problem, "nece") == n_positions(problem, "dep") == 1
        # the question is necessary, at distance 0; the first solution step is ready at once
        assert labels.label("nece", problem.question) == 1 and labels.distance(problem.question) == 0
        assert labels.label("can_next", problem.solution_order[0], position=0) == 1
        for j, p in enumerate(problem.solution_order):  # each solution step was ready when written
            assert labels.label("nece_next", p, position=j) == 1


def test_label_ranges_and_draws():
    rng = random.Random(0)
    for problem in problems("med", "pq", False, 20):
        labels = ProblemLabels(problem)
        for task in TASKS:
            draws = draw_queries(problem, task, rng, 10)
            assert 1 <= len(draws) <= 10 and len(set(draws)) == len(draws)
            for pos, a, b in draws:
                assert 0 <= pos < n_positions(problem, task)
                assert a in problem.equations
                assert (b is None) == (task != "dep") and a != b
                assert 0 <= labels.label(task, a, b, pos) < NUM_CLASSES[task]


def test_dep_draws_uniform_over_other_params():
    problem = problems("tiny", "pq", False, 1, seed=3)[0]
    params = graph_params(problem)
    rng = random.Random(1)
    counts = {}
    for _ in range(4000):
        (_, a, b), = draw_queries(problem, "dep", rng, 1)
        counts[b] = counts.get(b, 0) + 1
        assert a != b
    assert set(counts) == set(params)
    expected = 4000 / len(params)
    assert all(abs(c - expected) < 0.25 * expected for c in counts.values())


@pytest.mark.parametrize("tok_name", ["word", "gpt2"])
@pytest.mark.parametrize("fmt", ["pq", "qp"])
def test_cuts_are_token_boundaries(tok_name, fmt):
    tok = build_tokenizer(tok_name)
    for reask in (False, True):
        for problem in problems("med", fmt, reask, 15) + problems("tiny", fmt, reask, 5):
            t = ProblemTokens(tok, problem)
            full = [tok.eos_id] + tok.encode_example(problem.problem_text, problem.solution, problem.answer)
            assert t.ids == full
            # the problem part ends where the prompt's [solution] marker starts
            assert full[: t.problem_end] == tok.encode_prompt(problem.problem_text)[:-1]
            if fmt == "pq":  # dep: before the question, the prompt of the statements alone
                assert full[: t.statement_end] == tok.encode_prompt(problem.statement)[:-1]
                assert t.statement_end < t.problem_end
            else:
                assert t.statement_end == t.problem_end
            assert full[: t.boundaries[0]] == tok.encode_prompt(problem.problem_text)
            sents = problem.solution_sentences
            for j in range(1, len(sents) + 1):
                ex = tok.encode_example(problem.problem_text, " ".join(sents[:j]), problem.answer)
                assert full[1: t.boundaries[j]] == ex[: ex.index(tok.answer_id)]
            assert full[t.boundaries[-1]] == tok.answer_id
            # every instance parameter's name, encoded as probed, appears in the text's ids
            for p in problem.instance_params():
                assert _contains(full, name_ids(tok, problem.param_name(p))), problem.param_name(p)


def _contains(seq, sub):
    n = len(sub)
    return any(seq[i: i + n] == sub for i in range(len(seq) - n + 1))


@pytest.mark.parametrize("tok_name", ["word", "gpt2"])
def test_query_markup(tok_name):
    tok = build_tokenizer(tok_name)
    problem = problems("med", "pq", False, 1, seed=5)[0]
    t = ProblemTokens(tok, problem)
    for task in TASKS:
        for r in problem_pairs(tok, problem, task, random.Random(0), 10):
            cut = t.cut(task, r["position"])
            ids = r["ids"]
            assert ids[:cut] == t.ids[:cut]
            assert ids[cut] == tok.start_id and ids[-1] == tok.end_id
            a = name_ids(tok, problem.param_name(r["a"]))
            if task == "dep":
                b = name_ids(tok, problem.param_name(r["b"]))
                assert ids[cut + 1:] == a + [tok.mid_id] + b + [tok.end_id]
            else:
                assert ids[cut + 1:] == a + [tok.end_id]
            assert tok.decode(ids[cut:]).replace(" ", "").startswith("[START]")
    assert query_ids(tok, [1, 2], "x", "y")[-1] == tok.end_id
