"""Generator invariants: structure, op, determinism, split, distributions, purity, errors."""

import json
import random
import subprocess
import sys

import pytest

from igsm import INST, ConfigError, GenerationError, generate_problem, generator_preset
from igsm.generator import generate, problem_rng, sample_op
from igsm.marginals import chi_square_op, compare, marginals, solution_steps
from igsm.problem import MOD, Problem
from igsm.render import solution_template, template_hash

PRESETS = ["tiny", "med", "hard"]


def sample(preset, n, seed=0, **kw):
    cfg = generator_preset(preset, **kw)
    return [generate_problem(cfg, problem_rng(seed, preset, i)) for i in range(n)]


@pytest.mark.parametrize("preset", PRESETS)
def test_structure_and_dependency_invariants(preset):
    for p in sample(preset, 300, seed=1):
        # structure: edges join adjacent layers; every lower item has a parent
        for i in range(1, p.d):
            assert all(any(k in kids for kids in p.children[i - 1]) for k in range(len(p.names[i])))
        assert p.ip == len(p.statements) <= generator_preset(preset).max_ip
        # dependency graph: topological definition order, 1..4 operands per instance parameter
        seen = set()
        for q in p.definition_order:
            eq = p.equations[q]
            assert all(x in seen for x in eq.inputs), "input defined after its user"
            if q.kind == INST:
                assert 1 <= eq.n_operands <= 4
            seen.add(q)
        assert set(p.instance_params()) <= set(p.equations)
        # the necessary set is exactly the question and its ancestors, in solution order
        assert set(p.solution_order) == p.ancestors(p.question) | {p.question}
        assert p.solution_order[-1] == p.question
        # nothing necessary depends on an unnecessary parameter
        nec = p.necessary
        assert all(x in nec for q in nec for x in p.equations[q].inputs)
        # the first solution step is a constant
        first = p.equations[p.solution_order[0]]
        assert not first.inputs
        # values are consistent and in range
        for q in p.definition_order:
            assert 0 <= p.values[q] < MOD
            assert p.values[q] == p.equations[q].evaluate(p.values)


@pytest.mark.parametrize("preset", PRESETS)
def test_op_is_solution_step_count_and_one_letter_per_step(preset):
    for p in sample(preset, 300, seed=2):
        assert p.op == solution_steps(p.solution) == len(p.solution_sentences) + sum(
            p.equations[q].op - 1 for q in p.solution_order)
        letters = [s.split(" as ")[-1].split(";")[0] for s in p.solution_sentences]
        assert len(set(letters)) == len(letters)


@pytest.mark.parametrize("preset,op", [("med", 1), ("med", 15), ("med", 23), ("hard", 21), ("hard", 32)])
def test_forced_op_is_exact(preset, op):
    for p in sample(preset, 40, seed=3, op=op, split="any"):
        assert p.op == op


def test_reask_changes_the_question_and_keeps_the_graph():
    for p in sample("med", 100, seed=4, op=20, reask=True):
        assert p.reask
        assert set(p.solution_order) == p.ancestors(p.question) | {p.question}
        assert p.op == solution_steps(p.solution)


def test_same_seed_same_problem_in_another_process(subprocess_env):
    code = ("import json; from igsm.generator import generate; from igsm.config import generator_preset;"
            "print(json.dumps([generate(generator_preset('med'), 7, i).graph_json() for i in range(5)]))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env,
                           check=True).stdout for _ in range(2)]
    here = [generate(generator_preset("med"), 7, i).graph_json() for i in range(5)]
    assert json.loads(runs[0]) == json.loads(runs[1]) == json.loads(json.dumps(here))
    assert generate(generator_preset("med"), 7, 0).problem_text != generate(generator_preset("med"), 8, 0).problem_text


def test_train_and_test_buckets_are_disjoint():
    train = sample("tiny", 300, seed=5, split="train")
    test = sample("tiny", 300, seed=5, split="test")
    assert all(p.bucket() < 17 for p in train) and all(p.bucket() >= 17 for p in test)
    templates = lambda ps: {solution_template(p.equations, p.solution_order, p.values) for p in ps}  # noqa
    assert not templates(train) & templates(test)
    custom = sample("tiny", 100, seed=5, split="train", split_boundary=10)
    assert all(p.bucket() < 10 for p in custom)


def test_template_hash_is_the_template_sha256():
    p = sample("med", 1, seed=6)[0]
    t = solution_template(p.equations, p.solution_order, p.values)
    assert p.template_hash == template_hash(t)
    assert "Inst" in t or "Abs" in t
    assert not any(ch.isdigit() and ch != "0" for ch in t)


def test_op_histogram_matches_training_distribution():
    ops = [p.op for p in sample("med", 4000, seed=8)]
    _, pvalue = chi_square_op(ops, 15)
    assert pvalue > 0.001


def test_default_op_sampling_is_the_min_of_two_draws_unchanged():
    """op_sampling=min2 (the default) draws exactly what the generator always drew: existing
    streams stay bit-identical."""
    cfg = generator_preset("med")
    assert cfg.op_sampling == "min2"
    a, b = random.Random(5), random.Random(5)
    assert [sample_op(cfg, a) for _ in range(2000)] == [min(b.randint(1, 15), b.randint(1, 15)) for _ in range(2000)]


@pytest.mark.parametrize("op_sampling, max_op", [("min2", 4), ("min2", 15), ("uniform", 4), ("uniform", 15)])
def test_op_sampling_distributions(op_sampling, max_op):
    """min2: P(op = k) = (2(max_op - k) + 1) / max_op^2; uniform: 1 / max_op (chi-square, 40,000 draws)."""
    from scipy.stats import chisquare

    cfg = generator_preset("med", max_op=max_op, op_sampling=op_sampling)
    rng, n = random.Random(11), 40_000
    ops = [sample_op(cfg, rng) for _ in range(n)]
    observed = [ops.count(k) for k in range(1, max_op + 1)]
    p = {"min2": lambda k: (2 * (max_op - k) + 1) / max_op**2, "uniform": lambda k: 1 / max_op}[op_sampling]
    assert sum(observed) == n and chisquare(observed, [n * p(k) for k in range(1, max_op + 1)])[1] > 0.001
    other = {"min2": lambda k: 1 / max_op, "uniform": lambda k: (2 * (max_op - k) + 1) / max_op**2}[op_sampling]
    assert chisquare(observed, [n * other(k) for k in range(1, max_op + 1)])[1] < 1e-6  # the test can fail


def test_uniform_op_sampling_generates_a_flat_op_histogram():
    ops = [p.op for p in sample("tiny", 800, seed=12, op_sampling="uniform")]
    from scipy.stats import chisquare

    observed = [ops.count(k) for k in range(1, 5)]
    assert chisquare(observed)[1] > 0.001, observed  # flat: op = 4 is 1 in 4, not 1 in 16
    assert observed[3] > 800 / 8


def test_uniform_op_sampling_still_redraws_ops_without_test_templates():
    """The test split: op = 1 has no test template; its draws are redrawn after REDRAW_OP_AFTER misses."""
    cfg = generator_preset("tiny", split="test", op_sampling="uniform")
    ops = [generate_problem(cfg, problem_rng(0, "redraw", i)).op for i in range(60)]
    assert 1 not in ops and set(ops) == {2, 3, 4}


@pytest.mark.parametrize("preset", ["med", "hard"])
def test_reference_marginals(preset):
    # 3,000 problems: the tolerances are wide enough for this sample (the acceptance run uses 20,000)
    rows = compare(preset, marginals(sample(preset, 3000, seed=9)))
    bad = [r for r in rows if not r[3]]
    assert not bad, bad


def test_text_forms():
    for p in sample("med", 200, seed=10):
        for s in p.statements:
            assert s.startswith("The number of each ") and s.endswith(".") and " equals " in s
        assert p.question_text.startswith("How many ") and p.question_text.endswith(" have?")
        assert p.problem_text.endswith(p.question_text)
        for s in p.solution_sentences:
            assert s.startswith("Define ") and "; so " in s and s.endswith(".")
    qp = sample("med", 20, seed=10, fmt="qp")
    assert all(p.problem_text.startswith(p.question_text) for p in qp)


def test_graph_json_round_trip_and_networkx_export():
    for p in sample("hard", 50, seed=11):
        q = Problem.from_graph_json(json.loads(json.dumps(p.graph_json())))
        assert q.values == p.values and q.solution_order == p.solution_order and q.question == p.question
        g = p.to_networkx()
        import networkx as nx
        assert nx.is_directed_acyclic_graph(g)
        assert set(nx.ancestors(g, p.param_name(p.question))) - {"RNG"} == {
            p.param_name(x) for x in p.ancestors(p.question)}


@pytest.mark.parametrize("overrides,key", [
    ({"max_op": 0}, "max_op"), ({"max_ip": 1}, "max_ip"), ({"fmt": "xy"}, "fmt"), ({"split": "dev"}, "split"),
    ({"min_width": 1}, "min_width"), ({"max_layers": 5}, "max_layers"), ({"op": 99}, "op"),
    ({"group_size": 2}, "group_size"), ({"split_boundary": 0}, "split_boundary"),
    ({"op_sampling": "flat"}, "op_sampling"),
])
def test_bad_generator_configs_are_rejected_by_name(overrides, key):
    with pytest.raises(ConfigError, match=key):
        generator_preset("med", **overrides)
    with pytest.raises(ConfigError, match="allowed"):
        generator_preset("nope")


def test_impossible_op_fails_clearly():
    with pytest.raises(GenerationError, match="op=1"):
        generate_problem(generator_preset("tiny", op=1, split="test"), random.Random(0))
