"""The full-solution verifier (docs/spec.md#12-verification): own solutions verify, corruptions get the right verdict.

Every check goes through ``verify_solution_strict``, which raises if the verifier itself (or the
Problem) is inconsistent, so a verifier bug cannot hide behind the never-raise wrapper.
"""

from __future__ import annotations

import random
import re
import string

import pytest

from conftest import draw_problems
from igsm import ABS, INST, Param, Problem, generator_preset
from igsm.graph import abstract_equation
from igsm.render import _SolutionWriter
from igsm.verify import ERROR_KINDS, Report, VerifierBug, verify_solution, verify_solution_strict

V = verify_solution_strict

CONFIGS = {
    "tiny": dict(preset="tiny"),
    "med": dict(preset="med"),
    "hard": dict(preset="hard"),
    "med_qp": dict(preset="med", fmt="qp"),
    "med_op15": dict(preset="med", op=15),
    "med_op23": dict(preset="med", op=23),
    "hard_op21": dict(preset="hard", op=21),
    "hard_op28": dict(preset="hard", op=28),
    "hard_op30_qp": dict(preset="hard", op=30, fmt="qp"),
    "med_reask": dict(preset="med", reask=True),
    "med_op20_reask": dict(preset="med", op=20, reask=True),
    "hard_op28_reask": dict(preset="hard", op=28, reask=True),
}


def _cfg(name: str):
    kw = dict(CONFIGS[name])
    return generator_preset(kw.pop("preset"), **kw)


def problems(name: str, n: int, start: int = 0) -> list[Problem]:
    return draw_problems(_cfg(name), n, "verify", name, start=start)


def sentences(sol: str) -> list[str]:
    """Solution -> sentences without their final period."""
    return sol[:-1].split(". ")


def join(sents: list[str]) -> str:
    return ". ".join(sents) + "."


def used_letters(sol: str) -> set:
    return set(re.findall(r"(?:^|; |so | as )([A-Za-z])(?= =|;)", sol))


def assert_correct(r: Report, unnecessary: int = 0) -> None:
    assert r.correct, r.message
    assert r.error is None and r.answer_correct
    assert r.missing_params == []
    assert len(r.unnecessary_params) == unnecessary, r.unnecessary_params


def assert_wrong(r: Report, kind, sentence=None, param=None) -> None:
    kinds = (kind,) if isinstance(kind, str) else kind
    assert not r.correct
    assert r.error in kinds, (r.error, r.message)
    assert r.message and r.message[0].isupper() and r.message.endswith(".")
    if sentence is not None:
        assert r.first_wrong_sentence == sentence, (r.first_wrong_sentence, r.message)
    if param is not None:
        assert r.first_wrong_param == param, (r.first_wrong_param, r.message)


# ---------------------------------------------------------------------------------------------
# own solutions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_own_solutions_verify(name):
    for p in problems(name, 120):
        sol = p.solution
        for answer in (p.answer, str(p.answer), f" {p.answer}", f"Answer: {p.answer}."):
            assert_correct(V(p, sol, answer))
        r = V(p, sol)  # no answer: the solution's own last value counts
        assert_correct(r)
        assert V(p, " " + sol + "\n").correct  # surrounding whitespace is fine
        assert "Correct" in r.message
        # the graph JSON export verifies too (another Problem object, another cache entry)
        q = Problem.from_graph_json(p.graph_json())
        assert_correct(V(q, sol, p.answer))


def test_error_kinds_documented():
    import igsm.verify as mod

    for kind in ERROR_KINDS:
        assert f"``{kind}``" in mod.__doc__
    assert len(set(ERROR_KINDS)) == len(ERROR_KINDS)


def test_report_to_dict():
    p = problems("med", 1)[0]
    d = V(p, p.solution, p.answer).to_dict()
    assert d["correct"] is True and d["error"] is None
    assert set(d) >= {"correct", "answer_correct", "error", "first_wrong_param", "missing_params",
                      "unnecessary_params", "message"}


# ---------------------------------------------------------------------------------------------
# helpers that write extra sentences in the generator's own style
# ---------------------------------------------------------------------------------------------
def _closure(p: Problem, targets: list[Param], have: set) -> list[Param]:
    """targets and every input they need that is not in ``have``, inputs first."""
    out: list[Param] = []
    seen = set(have)

    def eq(x):
        return p.equations.get(x) or abstract_equation(p.children, x)

    def visit(x):
        if x in seen:
            return
        seen.add(x)
        for y in eq(x).inputs:
            visit(y)
        out.append(x)

    for t in targets:
        visit(t)
    return out


def _value(p: Problem, x: Param, memo: dict) -> int:
    if x in p.values:
        return p.values[x]
    if x not in memo:
        eq = abstract_equation(p.children, x)
        memo[x] = eq.evaluate({y: _value(p, y, memo) for y in eq.inputs})
    return memo[x]


def with_extra(p: Problem, extra: list[Param], at: int) -> str:
    """The own solution with sentences for ``extra`` (and what they need) inserted at ``at``."""
    sents = sentences(p.solution)
    have = set(p.solution_order[:at])
    todo = _closure(p, extra, have)
    fresh = iter([c for c in string.ascii_letters if c not in used_letters(p.solution)])
    letters = dict(p.letters)
    memo: dict = {}
    values = {x: _value(p, x, memo) for x in list(p.values) + todo}
    writer = _SolutionWriter(p.param_name, lambda: next(fresh), str)
    new = []
    for x in todo:
        eq = p.equations.get(x) or abstract_equation(p.children, x)
        new.append(writer.sentence(x, eq, letters, values)[:-1])
    return join(sents[:at] + new + sents[at:])


def _unnecessary_candidates(p: Problem) -> list[Param]:
    nec = p.necessary
    out = [x for x in p.equations if x not in nec]
    for i in range(p.d - 1):
        for j in range(len(p.names[i])):
            for k in range(i + 1, p.d):
                x = Param(ABS, i, j, k)
                if x not in p.equations:
                    out.append(x)
    return out


def test_extra_unnecessary_steps_stay_correct_and_are_counted():
    seen_abstract_outside_equations = 0
    for p in problems("med", 80) + problems("hard_op28_reask", 30):
        cands = _unnecessary_candidates(p)
        if not cands:
            continue
        rng = random.Random(len(p.solution))
        x = rng.choice(cands)
        added = _closure(p, [x], set(p.solution_order[:-1]))
        if p.question in added:  # x needs the question itself: it can only come after it
            continue
        if len(added) + sum(eq.op for eq in (p.equations[y] for y in p.solution_order)) > 50:
            continue
        seen_abstract_outside_equations += any(y not in p.equations for y in added)
        sol = with_extra(p, [x], len(p.solution_order) - 1)
        r = V(p, sol, p.answer)
        assert_correct(r, unnecessary=len(added))
        assert set(r.unnecessary_params) == {p.param_name(y) for y in added}
        # the same sentences after the question: the last sentence is no longer the question
        late = with_extra(p, [x], len(p.solution_order))
        assert_wrong(V(p, late, p.answer), "wrong_question")
    assert seen_abstract_outside_equations > 5  # abstract pairs not in ``equations`` are parameters


def test_unnecessary_parameter_computed_wrongly_is_wrong():
    for p in problems("med", 60):
        cands = [x for x in p.equations if x.kind == INST and x not in p.necessary
                 and not p.equations[x].inputs]
        if not cands:
            continue
        x = cands[0]
        sol = with_extra(p, [x], 0)
        assert_correct(V(p, sol, p.answer), unnecessary=1)
        v = p.values[x]
        first = sentences(sol)[0]
        assert first.startswith(f"Define {p.param_name(x)} as ") and first.endswith(f"= {v}")
        wrong = first[: -len(str(v))] + str((v + 1) % 23)
        r = V(p, join([wrong] + sentences(sol)[1:]), p.answer)
        assert_wrong(r, "wrong_literal", sentence=0, param=p.param_name(x))
        assert r.missing_params == []  # the necessary ones are still all computed


# ---------------------------------------------------------------------------------------------
# other ways to write the same computation are correct
# ---------------------------------------------------------------------------------------------
def test_commuted_operands_are_correct():
    n = 0
    for p in problems("hard", 80):
        for k, m in _steps(p):
            if m["op"] == "-":
                continue
            new = f"{m['lhs']} = {m['b']} {m['op']} {m['a']} = {m['y']} {m['op']} {m['x']} = {m['r']}"
            assert_correct(V(p, _replace(p, k, m, new), p.answer))
            n += 1
    assert n > 200


RUNNING_SUM = re.compile(r"(?P<t>[A-Za-z]) = (?P<a>[A-Za-z]) \+ (?P<b>[A-Za-z]) = "
                         r"(?P<x>\d+) \+ (?P<y>\d+) = (?P<r>\d+); "
                         r"so (?P<v>[A-Za-z]) = (?P=t) \+ (?P<c>[A-Za-z]) = (?P=r) \+ (?P<z>\d+) = (?P<s>\d+)$")


def test_regrouped_sums_are_correct():
    """(a + b) + c written as a + (b + c): the same sum, still correct."""
    n = 0
    for p in problems("hard", 150):
        for k, s in enumerate(sentences(p.solution)):
            m = RUNNING_SUM.search(s)
            if not m:
                continue
            y, z, x = int(m["y"]), int(m["z"]), int(m["x"])
            r1 = (y + z) % 23
            new = (f"{m['t']} = {m['b']} + {m['c']} = {y} + {z} = {r1}; "
                   f"so {m['v']} = {m['a']} + {m['t']} = {x} + {r1} = {(x + r1) % 23}")
            sents = sentences(p.solution)
            sents[k] = s[: m.start()] + new
            assert_correct(V(p, join(sents), p.answer))
            n += 1
    assert n > 20


# ---------------------------------------------------------------------------------------------
# corruptions with known verdicts
# ---------------------------------------------------------------------------------------------
STEP = re.compile(r"(?P<lhs>[A-Za-z]) = (?P<a>\w+) (?P<op>[-+*]) (?P<b>\w+) = (?P<x>\d+) [-+*] (?P<y>\d+) = (?P<r>\d+)")


def _apply(op: str, x: int, y: int) -> int:
    return (x + y if op == "+" else x - y if op == "-" else x * y) % 23


def _steps(p: Problem):
    """(sentence index, match) for every binary step of the own solution."""
    for k, s in enumerate(sentences(p.solution)):
        for m in STEP.finditer(s):
            yield k, m


def _replace(p: Problem, k: int, m: re.Match, new: str) -> str:
    sents = sentences(p.solution)
    s = sents[k]
    sents[k] = s[: m.start()] + new + s[m.end():]
    return join(sents)


def test_wrong_result_is_wrong_arithmetic():
    n = 0
    for p in problems("hard", 80):
        for k, m in _steps(p):
            r = int(m["r"])
            bad = _replace(p, k, m, m.group(0)[: -len(m["r"])] + str((r + 5) % 23))
            rep = V(p, bad, p.answer)
            assert_wrong(rep, "wrong_arithmetic", sentence=k, param=p.param_name(p.solution_order[k]))
            assert p.param_name(p.solution_order[k]) in rep.missing_params
            n += 1
    assert n > 100


def test_wrong_number_for_a_letter_is_wrong_reference_value():
    n = 0
    for p in problems("hard", 80):
        for k, m in _steps(p):
            x, y = int(m["x"]), int(m["y"])
            x2 = (x + 3) % 23
            # the step's own arithmetic stays right: only the reference to m["a"] is wrong
            new = f"{m['lhs']} = {m['a']} {m['op']} {m['b']} = {x2} {m['op']} {y} = {_apply(m['op'], x2, y)}"
            assert_wrong(V(p, _replace(p, k, m, new), p.answer), "wrong_reference_value", sentence=k)
            n += 1
    assert n > 100
    # a copy with the wrong number
    for p in problems("med", 80):
        for k, s in enumerate(sentences(p.solution)):
            m = re.search(r"so ([A-Za-z]) = ([A-Za-z]) = (\d+)$", s)
            if m:
                sents = sentences(p.solution)
                sents[k] = s[: m.start(3)] + str((int(m[3]) + 1) % 23)
                assert_wrong(V(p, join(sents), p.answer), "wrong_reference_value", sentence=k)
                n += 1
    assert n > 130


def test_use_before_definition():
    n = 0
    for p in problems("med", 80):
        sents = sentences(p.solution)
        for k in range(len(sents) - 1):
            later = p.solution_order[k + 1]
            if p.solution_order[k] not in set(p.equations[later].inputs):
                continue
            swapped = sents[:k] + [sents[k + 1], sents[k]] + sents[k + 2:]
            assert_wrong(V(p, join(swapped), p.answer), "undefined_symbol", sentence=k,
                         param=p.param_name(later))
            n += 1
    assert n > 30


def test_computed_before_its_inputs_is_not_ready():
    n = 0
    for p in problems("med", 80):
        q = p.question
        if not p.equations[q].inputs:
            continue
        # a constant for the question, written before anything is computed
        c = next(c for c in string.ascii_letters if c not in used_letters(p.solution))
        early = f"Define {p.param_name(q)} as {c}; so {c} = {p.answer}"
        r = V(p, join([early] + sentences(p.solution)), p.answer)
        assert_wrong(r, "not_ready", sentence=0, param=p.param_name(q))
        n += 1
    assert n > 30


def test_skipped_necessary_parameter():
    n = 0
    for p in problems("hard", 60):
        sents = sentences(p.solution)
        if len(sents) < 2:
            continue
        k = random.Random(n).randrange(len(sents) - 1)
        r = V(p, join(sents[:k] + sents[k + 1:]), p.answer)
        skipped = p.param_name(p.solution_order[k])
        assert_wrong(r, "undefined_symbol")  # its letter is used by some later sentence
        assert skipped in r.missing_params
        assert p.param_name(p.question) in r.missing_params  # everything after it is suspect too
        n += 1
    assert n > 30


def test_wrong_literal_even_when_the_answer_is_unchanged():
    """N * 0 = 0 for every N: a wrong literal there leaves every value and the answer unchanged."""
    found = 0
    for p in problems("hard", 400):
        for k, x in enumerate(p.solution_order):
            eq = p.equations[x]
            if eq.abstract or eq.literal_op != "times" or p.values[x] != 0 or not eq.inputs:
                continue
            s = sentences(p.solution)[k]
            m = re.search(rf"so ([A-Za-z]) = {eq.literal} \* ([A-Za-z]) = {eq.literal} \* 0 = 0$", s)
            if not m:
                continue
            lit = eq.literal % 22 + 1
            sents = sentences(p.solution)
            sents[k] = s[: m.start()] + f"so {m[1]} = {lit} * {m[2]} = {lit} * 0 = 0"
            bad = join(sents)
            r = V(p, bad, p.answer)
            assert_wrong(r, "wrong_literal", sentence=k, param=p.param_name(x))
            assert r.answer_correct  # the reference evaluator (set of inputs + value) would accept it
            found += 1
    assert found >= 3


def test_wrong_constant_is_wrong_literal():
    n = 0
    for p in problems("med", 60):
        s = sentences(p.solution)[0]
        m = re.fullmatch(r"Define (.+) as ([A-Za-z]); so \2 = (\d+)", s)
        assert m, s  # the first step is always a constant (docs/spec.md#6-the-shortest-solution-order)
        sents = sentences(p.solution)
        sents[0] = s[: m.start(3)] + str((int(m[3]) + 7) % 23)
        assert_wrong(V(p, join(sents), p.answer), "wrong_literal", sentence=0, param=m[1])
        n += 1
    assert n == 60


def test_wrong_operation():
    n = 0
    for p in problems("hard", 100):
        for k, m in _steps(p):
            if m["op"] == "*":
                continue
            a, b, x, y = m["a"], m["b"], int(m["x"]), int(m["y"])
            new = f"{m['lhs']} = {a} * {b} = {x} * {y} = {x * y % 23}"  # right arithmetic, wrong operation
            assert_wrong(V(p, _replace(p, k, m, new), p.answer), "wrong_operation", sentence=k)
            n += 1
    assert n > 100
    # "N more than" written as "N times"
    for p in problems("med", 100):
        for k, x in enumerate(p.solution_order):
            eq = p.equations[x]
            if eq.literal_op == "more" and eq.literal and eq.inputs:
                for kk, m in _steps(p):
                    if kk == k and m["a"] == str(eq.literal) and m["op"] == "+":
                        new = f"{m['lhs']} = {m['a']} * {m['b']} = {m['x']} * {m['y']} = " \
                              f"{int(m['x']) * int(m['y']) % 23}"
                        assert_wrong(V(p, _replace(p, k, m, new), p.answer), "wrong_operation", sentence=k)
                        n += 1
    assert n > 130
    # the operation written differently in the symbolic and the numeric part
    for p in problems("med", 40):
        for k, m in _steps(p):
            other = "*" if m["op"] != "*" else "+"
            sym, rest = m.group(0).split(" = ", 2)[1], m.group(0).split(" = ", 2)[2]
            only_sym = f"{m['lhs']} = {sym.replace(' ' + m['op'] + ' ', ' ' + other + ' ')} = {rest}"
            assert_wrong(V(p, _replace(p, k, m, only_sym), p.answer), "wrong_operation", sentence=k)
            only_num = f"{m['lhs']} = {sym} = {rest.replace(' ' + m['op'] + ' ', ' ' + other + ' ', 1)}"
            assert_wrong(V(p, _replace(p, k, m, only_num), p.answer), "wrong_arithmetic", sentence=k)


def test_swapped_difference_operands():
    n = 0
    for p in problems("hard", 150):
        for k, m in _steps(p):
            if m["op"] != "-" or m["a"] == m["b"]:
                continue
            x, y = int(m["x"]), int(m["y"])
            new = f"{m['lhs']} = {m['b']} - {m['a']} = {y} - {x} = {(y - x) % 23}"
            assert_wrong(V(p, _replace(p, k, m, new), p.answer), "wrong_operation", sentence=k)
            n += 1
    assert n > 30


def test_wrong_input_is_wrong_dependencies():
    n = 0
    for p in problems("hard", 100):
        letters = p.letters
        for k, m in _steps(p):
            x = p.solution_order[k]
            if k == 0 or m["b"] not in letters.values():
                continue
            other = next((q for q in p.solution_order[:k] if q not in p.equations[x].inputs), None)
            if other is None:
                continue
            c = letters[other]
            y2 = p.values[other]
            new = f"{m['lhs']} = {m['a']} {m['op']} {c} = {m['x']} {m['op']} {y2} = {_apply(m['op'], int(m['x']), y2)}"
            assert_wrong(V(p, _replace(p, k, m, new), p.answer), "wrong_dependencies", sentence=k)
            n += 1
    assert n > 30


def test_wrong_answer():
    for p in problems("med", 50):
        wrong = (p.answer + 1) % 23
        for ans in (wrong, str(wrong), "x", "", "-1", True, 3.5, b"\xff", "１"):
            r = V(p, p.solution, ans)
            assert_wrong(r, "wrong_answer", param=p.param_name(p.question))
            assert not r.answer_correct and r.missing_params == []
        assert V(p, p.solution, str(p.answer).encode()).correct

    class Index:  # numpy / torch integers have __index__
        def __init__(self, v):
            self.v = v

        def __index__(self):
            return self.v

    p = problems("med", 1)[0]
    assert V(p, p.solution, Index(p.answer)).correct
    assert V(p, p.solution, Index(p.answer + 1)).error == "wrong_answer"


def test_redefined_unknown_and_parse_errors():
    for p in problems("med", 40):
        sents = sentences(p.solution)
        q = p.param_name(p.question)
        # a sentence twice: the parameter (and its letter) is defined again
        assert_wrong(V(p, join(sents[:1] + sents), p.answer), "redefined", sentence=1)
        # an intermediate or parameter letter reused
        first_letter = p.letters[p.solution_order[0]]
        dup = sents[-1].replace(f" as {p.letters[p.question]};", f" as {first_letter};", 1)
        dup = re.sub(rf"so {p.letters[p.question]} = ", f"so {first_letter} = ", dup)
        if len(sents) > 1:
            assert_wrong(V(p, join(sents[:-1] + [dup]), p.answer), "redefined", param=q)
        # not a parameter of this problem
        assert_wrong(V(p, join(["Define Nowhere's Nothing as z; so z = 3"] + sents), p.answer),
                     "unknown_param", sentence=0, param="Nowhere's Nothing")
        # grammar
        for junk in (sents[-1].replace("so ", "so so ", 1), sents[-1] + " +", sents[-1].replace("Define", "define"),
                     sents[-1].replace("; so", ", so"), sents[-1] + "; so x = 1"):
            assert_wrong(V(p, join(sents[:-1] + [junk]), p.answer), ("parse", "redefined"),
                         sentence=len(sents) - 1)


# ---------------------------------------------------------------------------------------------
# truncation, garbage, fuzz: wrong, never raises
# ---------------------------------------------------------------------------------------------
def test_truncation_at_every_character():
    for p in problems("hard_op21", 4) + problems("tiny", 4):
        sol = p.solution
        ends = {len(join(sentences(sol)[:k])) for k in range(1, len(sentences(sol)))}
        q = p.param_name(p.question)
        for cut in range(len(sol)):
            prefix = sol[:cut]
            r = V(p, prefix)
            assert_wrong(r, "truncated")
            assert q in r.missing_params
            r2 = V(p, prefix, p.answer)
            # an answer after a finished sentence claims the solution is complete: wrong question
            expect = "wrong_question" if len(prefix.rstrip()) in ends else "truncated"
            assert_wrong(r2, expect)
        assert V(p, sol).correct


GARBAGE = [
    "", " ", ".", "..", ". . .", ";", "; ; ;", "=", "Define", "Define .", "Define  as ; so  = .", "so a = 1.",
    "Define X as a; so a = 1.", "\x00\x01\x02", "Ünïcödé ☃ 😀 ∑ √ ≠",
    "Define 😀 as 😀; so 😀 = 😀.",
    "Define A's B as a; so a = ² + ³ = 1 + 1 = 2.", "1 2 3 4 5", "\n\n\n", "Define\nX as a;\nso a = 1.",
    "Define X as a; so a = 99999999999999999999999999.", "Define X as a; so a = " + "9" * 5000 + ".",
    "Define X as ab; so ab = 1.", "Define X as a; so a = a = a = a = a.", "?" * 100, "Answer: 3.",
]


def test_garbage_never_raises():
    rng = random.Random(0)
    alphabet = string.printable + "éßø☃😀∑≠\u200b\u202e"
    junk = GARBAGE + ["".join(rng.choice(alphabet) for _ in range(rng.randrange(200))) for _ in range(300)]
    for p in problems("med", 1):
        r = V(p, "Define X as a; so a = 1. " * 20_000, p.answer)  # huge input
        assert r.error == "unknown_param" and len(r.message) < 400
    for p in problems("med", 5) + problems("hard_op28_reask", 3):
        for s in junk:
            for ans in (None, p.answer, "junk"):
                r = V(p, s, ans)
                assert not r.correct and r.error in ERROR_KINDS
        for s in (None, b"\xff\xfe garbage", bytearray(b"Define"), 12, 3.5, ["Define"], object()):
            r = V(p, s, p.answer)
            assert not r.correct and r.error in ("truncated", "parse", "unknown_param"), r


def _mutate(sol: str, rng: random.Random) -> str:
    ops = rng.randrange(8)
    i = rng.randrange(len(sol) + 1)
    tokens = sol.split(" ")
    if ops == 0:  # delete a span
        return sol[:i] + sol[i + rng.randrange(1, 12):]
    if ops == 1:  # insert junk
        return sol[:i] + rng.choice(["; ", ". ", " = ", " + ", "a", "17", "Define ", "so ", "\u00e9", " "]) + sol[i:]
    if ops == 2:  # replace a number
        nums = [j for j, t in enumerate(tokens) if t.rstrip(".;").isdigit()]
        if nums:
            j = rng.choice(nums)
            tokens[j] = tokens[j].replace(tokens[j].rstrip(".;"), str(rng.randrange(30)))
        return " ".join(tokens)
    if ops == 3:  # replace a letter
        lets = [j for j, t in enumerate(tokens) if len(t.rstrip(".;")) == 1 and t[0].isalpha()]
        if lets:
            j = rng.choice(lets)
            tokens[j] = rng.choice(string.ascii_letters) + tokens[j][1:]
        return " ".join(tokens)
    if ops == 4:  # swap two tokens
        a, b = rng.randrange(len(tokens)), rng.randrange(len(tokens))
        tokens[a], tokens[b] = tokens[b], tokens[a]
        return " ".join(tokens)
    if ops == 5:  # swap two sentences
        s = sentences(sol)
        a, b = rng.randrange(len(s)), rng.randrange(len(s))
        s[a], s[b] = s[b], s[a]
        return join(s)
    if ops == 6:  # change an operator
        return sol.replace(rng.choice([" + ", " - ", " * "]), rng.choice([" + ", " - ", " * "]), rng.randrange(1, 3))
    return sol[:i]  # cut


def test_fuzz_mutations_never_raise():
    rng = random.Random(1)
    counts: dict = {}
    for p in problems("med", 60) + problems("hard_op28_reask", 20):
        for _ in range(40):
            sol = p.solution
            for _ in range(rng.randrange(1, 4)):
                sol = _mutate(sol, rng)
            r = V(p, sol, p.answer if rng.random() < 0.7 else None)
            assert r.error in ERROR_KINDS or (r.error is None and r.correct)
            assert r.correct == (r.error is None)
            if r.correct:
                assert r.missing_params == []
            else:
                assert r.message
            counts[r.error] = counts.get(r.error, 0) + 1
    # the mutations reach many different error kinds
    assert len([k for k in counts if k]) >= 8, counts


def test_never_raises_on_broken_problems():
    p = problems("med", 1)[0]
    for problem in (None, 3, "text", object()):
        r = verify_solution(problem, p.solution, p.answer)
        assert r.error == "internal" and not r.correct
    # a Problem whose values do not follow from its equations: the strict path says so
    g = p.graph_json()
    first = p.solution_order[0]
    for e in g["params"]:
        if e["param"] == list(first):
            e["value"] = (e["value"] + 1) % 23
    broken = Problem.from_graph_json(g)
    with pytest.raises(VerifierBug):
        V(broken, p.solution, p.answer)
    assert verify_solution(broken, p.solution, p.answer).error == "internal"


def test_first_error_in_solution_order():
    """Two corruptions: the earlier one is reported."""
    for p in problems("hard_op21", 30):
        steps = list(_steps(p))
        if len(steps) < 2:
            continue
        (k1, m1), (k2, m2) = steps[0], steps[-1]
        if k1 == k2:
            continue
        sents = sentences(p.solution)
        sents[k2] = sents[k2][: m2.start("r")] + str((int(m2["r"]) + 1) % 23) + sents[k2][m2.end("r"):]
        sents[k1] = sents[k1][: m1.start("r")] + str((int(m1["r"]) + 1) % 23) + sents[k1][m1.end("r"):]
        assert_wrong(V(p, join(sents), p.answer), "wrong_arithmetic", sentence=k1)
