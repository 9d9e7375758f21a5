"""Text-only mode: the Problem rebuilt from its text and a world matches the original."""

from __future__ import annotations

import json
import random

import pytest

from igsm import ABS, INST, Problem, generate_problem, generator_preset, load_world
from igsm.generator import world_for
from igsm.parse import ParseError, parse_problem, verify_text
from igsm.verify import ERROR_KINDS, verify_solution_strict
from test_verify import CONFIGS, _cfg, _mutate, problems


def by_name(p: Problem) -> dict[str, int]:
    return {p.param_name(x): v for x, v in p.values.items()}


def edges(p: Problem) -> set[tuple[str, str]]:
    return {(p.names[x.layer][x.item], p.names[x.layer + 1][x.target]) for x in p.instance_params()}


def assert_same(p: Problem, q: Problem) -> None:
    """q, parsed from p's text, has p's structure, values, question and necessary set (by name)."""
    assert edges(q) == edges(p)
    assert q.ip == p.ip
    assert q.answer == p.answer
    assert q.param_name(q.question) == p.param_name(p.question)
    assert {q.param_name(x) for x in q.necessary} == {p.param_name(x) for x in p.necessary}
    assert q.op == p.op
    mine, theirs = by_name(q), by_name(p)
    for name, v in mine.items():
        assert theirs[name] == v, name
    # what the original holds beyond the text: only abstract parameters no sentence mentions
    # (after reask the old question stays in ``equations``), never an instance parameter
    extra = [x for x in p.values if p.param_name(x) not in mine]
    assert all(x.kind == ABS and x not in p.necessary for x in extra)
    assert q.fmt == p.fmt
    assert q.problem_text == p.problem_text
    # solution order: topological over the necessary set, the question last
    pos = {x: i for i, x in enumerate(q.solution_order)}
    assert q.solution_order[-1] == q.question
    for x in q.solution_order:
        assert all(pos[y] < pos[x] for y in q.equations[x].inputs)


@pytest.fixture(scope="module")
def world():
    return load_world()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_own_problems_round_trip(name):
    world = world_for(_cfg(name))  # tiny draws from its own small world
    for p in problems(name, 100):
        q = parse_problem(p.problem_text, world)
        assert_same(p, q)
        for text in (" " + p.problem_text, p.problem_text + " ", "  " + p.problem_text + "\n"):
            assert edges(parse_problem(text, world)) == edges(p)
        for answer in (p.answer, str(p.answer), " " + str(p.answer), None):
            r = verify_text(p.problem_text, p.solution, answer, world)
            assert r.correct and r.error is None, r.message
            assert r.missing_params == [] and r.unnecessary_params == []
        r = verify_text(" " + p.problem_text, " " + p.solution, " " + str(p.answer), world)
        assert r.correct, r.message


def test_any_sentence_order(world):
    rng = random.Random(0)
    for p in problems("hard", 60):
        sents = list(p.statements)
        rng.shuffle(sents)
        sents.insert(rng.randrange(len(sents) + 1), p.question_text)  # question anywhere
        q = parse_problem(" ".join(sents), world)
        assert q.answer == p.answer and by_name(q).items() <= by_name(p).items()
        assert verify_text(" ".join(sents), p.solution, p.answer, world).correct


def test_reports_match_between_modes(world):
    """A mutated solution gets the same verdict from the Problem and from its text alone."""
    rng = random.Random(2)
    kinds = set()
    for p in problems("med", 40) + problems("hard_op28_reask", 15):
        q = parse_problem(p.problem_text, world)
        for _ in range(25):
            sol = _mutate(p.solution, rng)
            a, b = verify_solution_strict(p, sol, p.answer), verify_solution_strict(q, sol, p.answer)
            # (missing_params follow each Problem's solution order, which may differ: compare sets)
            assert (a.correct, a.error, a.first_wrong_param, a.first_wrong_sentence, sorted(a.missing_params),
                    a.unnecessary_params, a.answer_correct) == \
                   (b.correct, b.error, b.first_wrong_param, b.first_wrong_sentence, sorted(b.missing_params),
                    b.unnecessary_params, b.answer_correct), sol
            kinds.add(a.error)
    assert len(kinds) >= 6


# ---------------------------------------------------------------------------------------------
# a world full of hard names
# ---------------------------------------------------------------------------------------------
TRICKY = {
    # family 0: a name in two layers of the family (Popcorn), "and", apostrophes, possessive after s
    0: [["Trader Joe's", "Kum and Go", "Casey's", "Sainsbury's", "7-Eleven", "Aldi Süd"],
        ["Popcorn", "Salt and Pepper Chips", "Half and Half", "Crème Brûlée", "Room 101", "Good as New"],
        ["Popcorn", "Butter", "Kiwi", "Sea Salt", "Bob's Burgers", "Peanuts"],
        ["Cocoa Butter", "Gruyère", "Sunflower Seeds", "Éclairs", "2B Pencil", "Glow-in-the-Dark Dye"]],
    # family 1: shares Kiwi (another family) and Peanuts with family 0
    1: [["Wrocław Zoo", "Zoo Zürich", "Schönbrunn Zoo", "Lewis and Clark Zoo", "O'Malley's Farm", "Zoo 42"],
        ["Kiwi", "Aye-Aye", "Gray Wolf", "Peanuts", "Mac and Cheese", "Brown Bear"],
        ["Bones and Joints", "Skull", "Femur", "Rib 12", "Tibia", "Jaw"],
        ["Marrow", "Calcium", "Collagen", "Keratin", "Enamel", "Cartilage"]],
}
CATEGORIES = {0: ["District", "Supermarket", "Product", "Ingredient"], 1: ["Zoo", "Enclosure", "Animal", "Bone"]}


@pytest.fixture(scope="module")
def tricky_world(tmp_path_factory):
    families = []
    for f, layers in TRICKY.items():
        fam = []
        for li, names in enumerate(layers):
            # two groups per layer, sharing names, so a layer's group is not known from one name
            fam.append({"category": CATEGORIES[f][li],
                        "groups": {"first": names, "second": names[2:] + names[:2]}})
        families.append({"layers": fam})
    path = tmp_path_factory.mktemp("world") / "tricky.json"
    path.write_text(json.dumps({"families": families}, ensure_ascii=False), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("preset,kw", [("med", {}), ("hard", {"op": 25}), ("hard", {"op": 21, "reask": True}),
                                       ("med", {"fmt": "qp"})])
def test_tricky_names(tricky_world, preset, kw):
    cfg = generator_preset(preset, world=tricky_world, **kw)
    world = load_world(tricky_world)
    seen = {"'s's": 0, "and": 0, "Popcorn": 0, "Kiwi": 0, "as": 0, "non-ASCII": 0, "'s ": 0}
    for s in range(150):
        p = generate_problem(cfg, random.Random(s))
        text = p.problem_text
        names = [n for layer in p.names for n in layer]
        seen["'s's"] += "'s's " in text
        seen["and"] += any(" and " in n for n in names)
        seen["as"] += "Good as New" in names
        seen["Popcorn"] += "Popcorn" in names
        seen["Kiwi"] += "Kiwi" in names
        seen["non-ASCII"] += any(not n.isascii() for n in names)
        seen["'s "] += "Bob's Burgers" in names
        q = parse_problem(text, world)
        assert_same(p, q)
        r = verify_text(text, p.solution, str(p.answer), world)
        assert r.correct, (r.message, text, p.solution)
    assert all(seen.values()), seen  # every kind of hard name actually occurred


def test_edges_decide_the_layer_of_a_shared_name(world):
    fam = world.families[0]  # District -> Supermarket -> Product -> Ingredient; Popcorn is both of the last two
    shared = "Popcorn"
    layers_with_it = {li for li, layer in enumerate(fam.layers) for _, names in layer.groups if shared in names}
    assert layers_with_it == {2, 3}
    supermarket = fam.layers[1].groups[0][1][0]
    product = next(n for n in fam.layers[2].groups[0][1] if n != shared)
    ingredient = next(n for n in fam.layers[3].groups[0][1] if n != shared)
    # Popcorn under a supermarket is a Product (it has an ingredient): 3 * 2 = 6 ingredients
    text = (f"The number of each {supermarket}'s {shared} equals 3. The number of each {shared}'s {ingredient} "
            f"equals 2. How many Ingredient does {supermarket} have?")
    q = parse_problem(text, world)
    assert q.categories == ["Supermarket", "Product", "Ingredient"]
    assert shared in q.names[1] and q.answer == 6
    # Popcorn under a product is an Ingredient
    q = parse_problem(f"The number of each {product}'s {shared} equals 4. "
                      f"How many Ingredient does {product} have?", world)
    assert q.categories == ["Product", "Ingredient"] and q.names == [[product], [shared]] and q.answer == 4
    # a childless top-layer item that only the question mentions: its category is the top layer's
    other = fam.layers[1].groups[0][1][1]
    q = parse_problem(f"How many Ingredient does {other} have? The number of each {supermarket}'s {product} "
                      f"equals 5. The number of each {product}'s {ingredient} equals 6.", world)
    assert q.fmt == "qp" and q.answer == 0 and q.question.kind == ABS and other in q.names[0]
    assert q.param_name(q.question) == f"{other}'s Ingredient"


def test_group_consistency_breaks_a_tie(tmp_path):
    """Every name fits two windows of the family; the one whose layers each use one group wins.

    The question's category is two layers below the owner in one reading and one layer in the
    other, so the choice changes the answer.
    """
    layers = {
        "Top": {"a": ["P", "Q", "X1", "X2"]},
        "Upper": {"b": ["R", "S", "X3", "X4"], "b2": ["P", "Q", "X5", "X6"]},
        "Lower": {"c": ["T", "U", "X7", "X8"], "c2": ["R", "X9", "X10", "X11"], "c3": ["S", "X12", "X13", "X14"]},
        "Bottom": {"d": ["T", "Y1", "Y2", "Y3"], "d2": ["U", "Y4", "Y5", "Y6"]},
    }
    path = tmp_path / "shifted.json"
    path.write_text(json.dumps({"families": [{"layers": [{"category": c, "groups": g} for c, g in layers.items()]}]}))
    w = load_world(str(path))
    text = ("The number of each P's R equals 3. The number of each Q's S equals 4. The number of each R's T "
            "equals 5. The number of each S's U equals 6. How many Lower does P have?")
    q = parse_problem(text, w)
    assert q.categories == ["Top", "Upper", "Lower"]  # not ["Upper", "Lower", "Bottom"]
    assert q.answer == 3 * 5 % 23  # P's Lower = P's R * R's Lower (a two-layer span), not P's R = 3


def test_childless_items_mentioned_only_abstractly(world):
    """Items with no edges at all appear only in abstract operands or the question: value 0."""
    found_question = found_operand = 0
    for p in problems("med", 400):
        q = parse_problem(p.problem_text, world)
        assert_same(p, q)
        in_edges = {x for e in edges(p) for x in e}
        owner = p.names[p.question.layer][p.question.item]
        if owner not in in_edges:
            found_question += 1
            assert p.answer == 0 and q.answer == 0
        for x, eq in p.equations.items():
            if x.kind == INST:
                found_operand += any(p.names[y.layer][y.item] not in in_edges for y in eq.inputs)
    assert found_question >= 1 and found_operand >= 1, (found_question, found_operand)


# ---------------------------------------------------------------------------------------------
# texts that cannot be understood
# ---------------------------------------------------------------------------------------------
def test_parse_errors_are_precise(world):
    fam = world.families[2]  # School -> Classroom -> Backpack -> Stationery
    s1, s2 = fam.layers[0].groups[0][1][:2]
    c1, c2 = fam.layers[1].groups[0][1][:2]
    b1 = fam.layers[2].groups[0][1][0]
    ok = f"The number of each {s1}'s {c1} equals 3. How many {c1} does {s1} have?"
    assert parse_problem(ok, world).answer == 3
    cases = {
        "": "empty",
        f"The number of each {s1}'s {c1} equals 3.": "no question",
        f"How many {c1} does {s1} have?": "no statement",
        f"{ok} How many {c2} does {s1} have?": "second question",
        f"The number of each {s1}'s {c1} equals 3. The number of each {s1}'s {c1} equals 4. "
        f"How many {c1} does {s1} have?": "stated twice",
        f"The number of each Nowhere's {c1} equals 3. How many {c1} does {s1} have?": "item names of the world",
        f"The number of each {s1}'s {c1} equals lots. How many {c1} does {s1} have?": "after 'equals'",
        f"The number of each {s1}'s {c1} equals each {s1}'s {c2}. How many {c1} does {s1} have?": "never stated",
        f"The number of each {s1}'s {c1} equals each {s2}'s {c2}. The number of each {s2}'s {c2} equals "
        f"each {s1}'s {c1}. How many {c1} does {s1} have?": "circle",
        f"The number of each {s1}'s {c1} equals the difference of each {s1}'s Backpack, each {s1}'s Backpack "
        f"and each {s1}'s Backpack. How many {c1} does {s1} have?": "exactly two operands",
        f"The number of each {s1}'s {b1} equals 3. How many {b1} does {s1} have?": "no family and layers",
        f"The number of each {s1}'s {c1} equals 3. How many Bone does {s1} have?": "one family",
        f"The number of each {s1}'s {c1} equals 3. Tell me about {s1}.": "neither",
        f"The number of each {s1}'s {c1} equals 3. How many {c1} are there in {s1}?": "How many X does A have",
        f"The number of each {s1}'s {c1} equals 3. How many School does {s1} have?": "not a layer below",
    }
    for text, phrase in cases.items():
        with pytest.raises(ParseError) as e:
            parse_problem(text, world)
        assert phrase in str(e.value), (text, str(e.value))
        r = verify_text(text, "Define X as a; so a = 1.", 1, world)
        assert r.error == "problem_parse" and not r.correct and phrase in r.message


def test_verify_text_never_raises(world):
    rng = random.Random(3)
    p = problems("med", 1)[0]
    texts = [None, 5, b"\xff", "", "?", ".", "How many", "The number of each", p.problem_text[:50],
             "".join(rng.choice("abc's .?,equals each How many does have") for _ in range(300))]
    texts += [_mutate(p.problem_text, rng) for _ in range(200)]
    for t in texts:
        for sol in (p.solution, None, "garbage"):
            r = verify_text(t, sol, p.answer, world)
            assert r.error in ERROR_KINDS or r.correct
            assert r.error != "internal", r.message
