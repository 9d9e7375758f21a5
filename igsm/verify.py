"""Full-solution verification (docs/spec.md#12-verification): parse a solution and grade it against a Problem.

    report = verify_solution(problem, solution, answer)   # never raises
    report.correct, report.error, report.first_wrong_param, report.message

A solution is a sequence of sentences ``Define <param> as <letter>; <steps>; so <letter> = ....``
Each step is ``<letter> = <symbolic> = <numeric> = <result>`` (a binary operation), or one of the
short forms ``v = 6`` (a constant) and ``v = w = 6`` (a copy). Letters are single ASCII letters.

What is checked, sentence by sentence in solution order (the *first* error is reported):

* the sentence parses; it names a real parameter (an instance edge, or any valid abstract pair
  of the structure graph, also one that is not in ``problem.equations``); neither the
  parameter nor any letter is defined twice;
* every letter used was defined earlier (by this or an earlier sentence);
* **the computation matches the problem**: the sentence's expression tree, with letters
  replaced by what they stand for, equals the parameter's equation up to commutativity and
  associativity of ``+`` and ``*`` (sums and products are flattened and sorted, differences
  keep their order). So ``t = a - b; so v = 3 * t`` is ``3 * (a - b)``, running sums are sums,
  an abstract parameter is a sum of products, and the operands may come in any order;
* the numbers: each letter's number in the numeric part is the value that letter was given,
  a literal is repeated as itself, and each result is right mod 23.

Within one sentence a wrong computation (inputs, literal, operation) is reported before a wrong
number, because it is the model's first decision about that parameter. A wrong computation is
``not_ready`` if an input the problem requires is not computed yet, else ``wrong_dependencies``
if the set of parameters used differs, else ``wrong_literal`` if the literal numbers differ, else
``wrong_operation``. After the last sentence: it must define the question, and the answer (when
given) must equal the question's value. ``Report.first_wrong_sentence`` is the 0-based index of
the sentence with the reported error (for error analysis at the boundary before it).

**Retractions** (retry data, :mod:`igsm.retry`): a sentence ``Define A as BACK`` is checked to be
well formed (A a parameter of the problem's structure, an abstract one that no statement uses
included, that no earlier sentence computed), then removed, and
the rest is graded as above (sentence numbers still count it). ``Report.retractions`` counts
them, ``true_regrets`` those whose A was not computable yet there (an input not computed yet) and
``false_regrets`` those whose A was ready.

Correctly computed parameters that the question does not need keep a solution correct; they
are listed in ``unnecessary_params``. Necessary parameters that no sentence computes correctly
are listed in ``missing_params``. After the first error the remaining sentences are still read
(without reporting) so that these two lists describe the whole solution.

Error kinds (``Report.error``), one line each:

==========================  =====================================================================
``parse``                   a sentence (or the cut-off end) is not in the solution grammar
``unknown_param``           ``Define X`` where X is not a parameter of this problem
``redefined``               a parameter or a letter is defined a second time
``undefined_symbol``        a letter is used before any sentence defined it
``wrong_reference_value``   a letter's (or a literal's) number in the numeric part is not its value
``wrong_arithmetic``        a step's result is not its operation on its numbers, mod 23 (or the
                            numeric part uses another operation than the symbolic part)
``wrong_dependencies``      the parameter is computed from other parameters than the problem says
``wrong_operation``         right inputs and literal, wrong operation (or operand order in ``-``)
``wrong_literal``           right inputs, wrong literal number(s)
``not_ready``               the parameter is computed while one of its inputs is not yet computed
``wrong_question``          the last sentence does not define the question parameter
``wrong_answer``            the solution is right but the given answer is not the question's value
``truncated``               the solution is empty, is cut in the middle of a sentence, or ends
                            (with no answer given) before it defines the question
``bad_retraction``          retry data's ``Define A as BACK.`` is malformed: BACK after a value or
                            anywhere but right after "as", A not a parameter, or A already computed
``problem_parse``           text-only mode: the problem text could not be understood (igsm.parse)
``internal``                the verifier itself failed (a bug, or an inconsistent Problem)
==========================  =====================================================================

``answer=None`` means "no answer was produced": a solution that stops at a sentence boundary
before defining the question is then ``truncated``; with an answer given it is ``wrong_question``.
Without an answer, ``answer_correct`` says whether the solution's last sentence gives the question
its right value.

Per-problem lookups (parameter names, expected computations) are cached on the side, keyed by
the Problem's identity; a Problem must not be mutated after it was first verified.
"""

from __future__ import annotations

import operator
import re
import string
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from .graph import abstract_equation
from .problem import ABS, INST, MOD, RETRACTION, Equation, Param, Problem

ERROR_KINDS = (
    "parse",
    "unknown_param",
    "redefined",
    "undefined_symbol",
    "wrong_reference_value",
    "wrong_arithmetic",
    "wrong_dependencies",
    "wrong_operation",
    "wrong_literal",
    "not_ready",
    "wrong_question",
    "wrong_answer",
    "truncated",
    "bad_retraction",
    "problem_parse",
    "internal",
)

_LETTERS = frozenset(string.ascii_letters)
_NUM = {str(i): i for i in range(10_000)}  # decimal numbers in their one written form (no leading zeros, no sign)
_MAX_SHOWN = 90  # characters of a sentence quoted in a message


@dataclass
class Report:
    """The verdict on one solution. ``to_dict()`` gives the JSON form of ``igsm verify``."""

    correct: bool
    answer_correct: bool
    error: Optional[str] = None  # one of ERROR_KINDS, None when correct
    first_wrong_param: Optional[str] = None  # the parameter name as the solution wrote it
    missing_params: list[str] = field(default_factory=list)
    unnecessary_params: list[str] = field(default_factory=list)
    message: str = ""
    first_wrong_sentence: Optional[int] = None  # 0-based index of the sentence with the error
    # retry data (igsm.retry): well-formed retractions "Define A as BACK.", and how many of them name
    # an A that was not computable yet there (a true regret) or was ready (a false one)
    retractions: int = 0
    true_regrets: int = 0
    false_regrets: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Tally:
    """Counts over graded solutions, as evaluation (eval.json), the error analysis and
    ``igsm verify`` report them. ``add`` one :class:`Report` at a time."""

    n: int = 0
    correct: int = 0
    answer_correct: int = 0
    unnecessary: int = 0  # unnecessary parameters, summed over the correct solutions
    errors: dict = field(default_factory=dict)  # error kind -> wrong solutions, in first-seen order
    retractions: int = 0  # retry data: well-formed retractions, and the solutions holding one
    with_retractions: int = 0
    true_regrets: int = 0
    false_regrets: int = 0

    def add(self, report: Report) -> None:
        self.n += 1
        self.correct += bool(report.correct)
        self.answer_correct += bool(report.answer_correct)
        if report.correct:
            self.unnecessary += len(report.unnecessary_params)
        else:
            self.errors[report.error] = self.errors.get(report.error, 0) + 1
        self.retractions += report.retractions
        self.with_retractions += report.retractions > 0
        self.true_regrets += report.true_regrets
        self.false_regrets += report.false_regrets


class VerifierBug(RuntimeError):
    """Raised by :func:`verify_solution_strict` when the verifier (or the Problem) is inconsistent."""


class _Fail(Exception):
    """An error in the sentence being read: kind, message, and whether the sentence is unusable."""

    def __init__(self, kind: str, message: str, fatal: bool = True):
        self.kind, self.message, self.fatal = kind, message, fatal


# --------------------------------------------------------------------------------------------
# Per-problem context (cached)
# --------------------------------------------------------------------------------------------
class _Leaves(dict):
    """Parameter -> leaf id ("P0", "P1", ...), assigned on first use."""

    __slots__ = ()

    def __missing__(self, p: Param) -> str:
        v = self[p] = f"P{len(self)}"
        return v


class _Context:
    """Name -> parameter lookups, leaf ids and lazily computed expectations of one Problem."""

    __slots__ = ("problem", "by_name", "items", "leaf", "values", "expected", "equations",
                 "necessary", "question")

    def __init__(self, problem: Problem):
        self.problem = problem
        names, children = problem.names, problem.children
        by_name: dict[str, Param] = {}
        for i in range(len(children)):
            layer_names, lower = names[i], names[i + 1]
            for j, kids in enumerate(children[i]):
                owner = layer_names[j] + "'s "
                for k in kids:
                    by_name[owner + lower[k]] = Param(INST, i, j, k)
        self.by_name = by_name  # instance edges; abstract pairs are added when first named
        self.items: Optional[dict] = None  # item name -> (layer, index), built when first needed
        self.leaf = _Leaves()
        self.values = dict(problem.values)  # plus abstract pairs outside ``equations``, when needed
        self.expected: dict[Param, str] = {}
        self.equations = problem.equations
        self.necessary = frozenset(problem.solution_order)
        self.question = problem.question

    def lookup(self, name: str) -> Optional[Param]:
        """The parameter called ``name``: an instance edge, else a valid abstract pair, else None."""
        p = self.by_name.get(name)
        if p is None:
            if self.items is None:
                self.items = {n: (i, j) for i, layer in enumerate(self.problem.names) for j, n in enumerate(layer)}
            cats = self.problem.categories
            for k in range(1, len(cats)):
                suffix = "'s " + cats[k]
                if name.endswith(suffix):
                    owner = self.items.get(name[: -len(suffix)])
                    if owner is not None and owner[0] < k:
                        p = self.by_name[name] = Param(ABS, owner[0], owner[1], k)
                        break
        return p

    def all_names(self) -> list[str]:
        """Every parameter name of the problem (instance edges and abstract pairs)."""
        cats = self.problem.categories
        out = list(self.by_name)
        for i, layer in enumerate(self.problem.names):
            for n in layer:
                out.extend(f"{n}'s {cats[k]}" for k in range(i + 1, len(cats)))
        return out

    def equation(self, p: Param) -> Equation:
        eq = self.equations.get(p)
        if eq is None:
            if p.kind != ABS:
                raise VerifierBug(f"instance parameter {self.problem.param_name(p)} has no equation")
            eq = abstract_equation(self.problem.children, p)
        return eq

    def value(self, p: Param) -> int:
        v = self.values.get(p)
        if v is None:
            eq = self.equation(p)
            v = eq.evaluate({q: self.value(q) for q in eq.inputs})
            self.values[p] = v
        return v

    def expected_normal_form(self, p: Param) -> str:
        c = self.expected.get(p)
        if c is None:
            c = _normal_form(_equation_tree(self.equation(p), self.leaf))
            self.expected[p] = c
        return c


_CACHE: dict[int, _Context] = {}
_CACHE_SIZE = 512


def _context(problem: Problem) -> _Context:
    ctx = _CACHE.get(id(problem))
    if ctx is not None and ctx.problem is problem:
        return ctx
    ctx = _Context(problem)
    if len(_CACHE) >= _CACHE_SIZE:
        for key in list(_CACHE)[: _CACHE_SIZE // 4]:  # drop the oldest quarter
            _CACHE.pop(key, None)
    _CACHE[id(problem)] = ctx
    return ctx


# --------------------------------------------------------------------------------------------
# Expression trees: a leaf is a string ("P3" a parameter, "#5" a literal); an inner node is
# (op, [normal forms of its children]) with + and * flattened.
# --------------------------------------------------------------------------------------------
def _normal_form(node) -> str:
    """The tree as one string with the children of + and * sorted: two computations are the same
    exactly when their normal forms are equal (not to be confused with Canon layers, igsm.model)."""
    if type(node) is str:
        return node
    op, kids = node
    if op == "-":
        return "-(" + kids[0] + "," + kids[1] + ")"
    return op + "(" + ",".join(sorted(kids)) + ")"


def _combine(op: str, a, b):
    if op == "-":
        return ("-", [_normal_form(a), _normal_form(b)])
    kids = []
    for x in (a, b):
        if type(x) is tuple and x[0] == op:
            kids.extend(x[1])
        else:
            kids.append(_normal_form(x))
    return (op, kids)


def _equation_tree(eq: Equation, leaf: dict):
    ins = [leaf[q] for q in eq.inputs]
    if eq.abstract:
        if eq.products:
            prods = [_normal_form(("*", [ins[i], ins[i + 1]])) for i in range(0, len(ins), 2)]
            if not prods:
                return "#0"
            return prods[0] if len(prods) == 1 else ("+", prods)
        if not ins:
            return "#0"
        return ins[0] if len(ins) == 1 else ("+", ins)
    if not ins:
        return f"#{eq.literal}"
    if len(ins) == 1:
        base = ins[0]
    else:
        base = ("-", ins) if eq.combine == "diff" else ("+", ins)
    if eq.literal is None:
        return base
    return _combine("*" if eq.literal_op == "times" else "+", f"#{eq.literal}", base)


_LEAF_RE = re.compile(r"P\d+|#\d+")


def _leaves(form: str, ctx: _Context) -> tuple[set, list]:
    """Parameters (as Params) and literals (sorted ints) in a normal form string."""
    params, literals = set(), []
    back = {v: p for p, v in ctx.leaf.items()}
    for tok in _LEAF_RE.findall(form):
        if tok[0] == "#":
            literals.append(int(tok[1:]))
        else:
            params.add(back[tok])
    literals.sort()
    return params, literals


def _formula(ctx: _Context, p: Param) -> str:
    """The problem's computation of p in words and symbols, e.g. ``3 * (A's x - B's y)``."""
    eq = ctx.equation(p)
    name = ctx.problem.param_name
    ins = [name(q) for q in eq.inputs]
    if eq.abstract:
        if eq.products:
            terms = [f"{ins[i]} * {ins[i + 1]}" for i in range(0, len(ins), 2)]
            return " + ".join(terms) if terms else "0 (no children)"
        return " + ".join(ins) if ins else "0 (no children)"
    if not ins:
        return str(eq.literal)
    base = ins[0] if len(ins) == 1 else (" - " if eq.combine == "diff" else " + ").join(ins)
    if eq.literal is None:
        return base
    if len(ins) > 1:
        base = f"({base})"
    return f"{eq.literal} {'*' if eq.literal_op == 'times' else '+'} {base}"


def _show(text: str) -> str:
    return repr(text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "...")


# --------------------------------------------------------------------------------------------
# One sentence
# --------------------------------------------------------------------------------------------
class _Sentence:
    """What one sentence defined: filled in by :func:`_read_sentence`."""

    __slots__ = ("param", "name", "letter", "value", "error", "kind")

    def __init__(self):
        self.param: Optional[Param] = None
        self.name: Optional[str] = None
        self.letter: Optional[str] = None
        self.value: Optional[int] = None
        self.error: Optional[str] = None  # message
        self.kind: Optional[str] = None


def _read_head(ctx: _Context, head: str, out: _Sentence, letters: dict, defined: dict, k: int):
    """``Define <name> as <letter>``: sets out.name/param/letter or raises _Fail."""
    if not head.startswith("Define "):
        raise _Fail("parse", f"sentence {k + 1} {_show(head)} does not start with 'Define '")
    name, sep, letter = head[7:].rpartition(" as ")
    if not sep or not name:
        raise _Fail("parse", f"sentence {k + 1} {_show(head)} is not 'Define <parameter> as <letter>'")
    out.name = name
    if len(letter) != 1 or letter not in _LETTERS:
        raise _Fail("parse", f"sentence {k + 1}: {_show(letter)} after 'as' is not a single ASCII letter")
    p = ctx.lookup(name)
    if p is None:
        raise _Fail("unknown_param", f"sentence {k + 1} defines {name!r}, which is not a parameter of this problem")
    out.param = p
    if p in defined:
        raise _Fail("redefined", f"sentence {k + 1} defines {name} again (first defined in sentence {defined[p] + 1})")
    if letter in letters:
        raise _Fail("redefined", f"sentence {k + 1} defines {name} as {letter}, but letter {letter} is already used")
    out.letter = letter


def _where(k: int, out: _Sentence, step: str) -> str:
    return f"sentence {k + 1} ({out.name}), step {_show(step)}"


def _operand(tok: str, letters: dict, own: str, k: int, out: _Sentence, step: str):
    """A symbolic operand: (node, value) of a letter or a literal."""
    got = letters.get(tok)
    if got is not None:
        return got
    num = _NUM.get(tok)
    if num is not None:
        return ("#" + tok, num)
    where = _where(k, out, step)
    if len(tok) == 1 and tok in _LETTERS:
        if tok == own:
            raise _Fail("undefined_symbol", f"{where}: {tok} is used before it has a value")
        raise _Fail("undefined_symbol", f"{where}: letter {tok} is used but was never defined before")
    raise _Fail("parse", f"{where}: {_show(tok)} is neither a defined letter nor a number 0..9999")


def _read_steps(body: list, k: int, own: str, letters: dict, local: dict, out: _Sentence):
    """Read the steps of one sentence; returns (node of the result, first value error or None).

    ``local`` collects the intermediate letters (added to ``letters`` as they are defined).
    """
    value_error: Optional[_Fail] = None
    node = None
    last = len(body) - 1
    for s_i, step in enumerate(body):
        pieces = step.split(" = ")
        lhs = pieces[0]
        if lhs not in _LETTERS:
            if s_i != last and lhs.startswith("so "):
                raise _Fail("parse", f"{_where(k, out, step)}: 'so' may only start the last step")
            raise _Fail("parse", f"{_where(k, out, step)}: {_show(lhs)} before ' = ' is not a single ASCII letter")
        if s_i == last:
            if lhs != own:
                raise _Fail("parse", f"{_where(k, out, step)}: the 'so' step must compute {own}, not {lhs}")
        elif lhs == own or lhs in letters:
            raise _Fail("redefined", f"{_where(k, out, step)}: letter {lhs} is already defined")
        n = len(pieces)
        if n == 4:
            sym = pieces[1].split(" ")
            num = pieces[2].split(" ")
            if len(sym) != 3 or len(num) != 3:
                raise _Fail("parse", f"{_where(k, out, step)}: expected '<a> <op> <b> = <x> <op> <y> = <result>'")
            op = sym[1]
            if op not in ("+", "-", "*") or num[1] not in ("+", "-", "*"):
                raise _Fail("parse", f"{_where(k, out, step)}: the operation must be one of + - *")
            if num[1] != op and value_error is None:
                value_error = _Fail("wrong_arithmetic", f"{_where(k, out, step)}: the numbers are combined with "
                                    f"{num[1]}, not with {op}", fatal=False)
            a_node, a_val = letters.get(sym[0]) or _operand(sym[0], letters, own, k, out, step)
            b_node, b_val = letters.get(sym[2]) or _operand(sym[2], letters, own, k, out, step)
            x, y, r = _NUM.get(num[0]), _NUM.get(num[2]), _NUM.get(pieces[3])
            if x is None or y is None or r is None:
                raise _Fail("parse", f"{_where(k, out, step)}: the numeric part and the result must be numbers 0..9999")
            if value_error is None:
                if x != a_val:
                    value_error = _Fail("wrong_reference_value",
                                        f"{_where(k, out, step)}: {sym[0]} is {a_val}, not {x}", fatal=False)
                elif y != b_val:
                    value_error = _Fail("wrong_reference_value",
                                        f"{_where(k, out, step)}: {sym[2]} is {b_val}, not {y}", fatal=False)
            res = (x + y if op == "+" else x - y if op == "-" else x * y) % MOD
            if r != res and value_error is None:
                value_error = _Fail("wrong_arithmetic",
                                    f"{_where(k, out, step)}: {x} {op} {y} = {res} mod {MOD}, not {r}", fatal=False)
            if type(a_node) is str and type(b_node) is str:  # two leaves: nothing to flatten
                node = (op, [a_node, b_node])
            else:
                node = _combine(op, a_node, b_node)
            val = r
        elif n == 2:  # constant: v = 6
            r = _NUM.get(pieces[1])
            if r is None:
                raise _Fail("parse", f"{_where(k, out, step)}: a one-part step must be '<letter> = <number>'")
            node, val = "#" + pieces[1], r
        elif n == 3:  # copy: v = w = 6
            src, r = pieces[1], _NUM.get(pieces[2])
            if len(src) != 1 or src not in _LETTERS or r is None:
                raise _Fail("parse", f"{_where(k, out, step)}: a copy must be '<letter> = <letter> = <number>'")
            node, s_val = _operand(src, letters, own, k, out, step)
            if r != s_val and value_error is None:
                value_error = _Fail("wrong_reference_value", f"{_where(k, out, step)}: {src} is {s_val}, not {r}",
                                    fatal=False)
            val = r
        else:
            raise _Fail("parse", f"{_where(k, out, step)}: a step has 2, 3 or 4 parts separated by ' = ', not {n}")
        if s_i != last:
            letters[lhs] = (node, val)
            local[lhs] = True
    out.value = val
    return node, value_error


def _read_sentence(ctx: _Context, s: str, k: int, letters: dict, defined: dict) -> tuple[_Sentence, Optional[_Fail]]:
    """Check one complete sentence (without its final period); bind its letters."""
    out = _Sentence()
    local: dict = {}
    try:
        parts = s.split("; ")
        _read_head(ctx, parts[0], out, letters, defined, k)
        last = parts[-1]
        if len(parts) < 2 or not last.startswith("so "):
            raise _Fail("parse", f"sentence {k + 1} ({out.name}) must end with '; so {out.letter} = ...'")
        body = parts[1:]
        body[-1] = last[3:]
        node, value_error = _read_steps(body, k, out.letter, letters, local, out)
    except _Fail as e:
        for x in local:  # a sentence that cannot be read defines nothing
            letters.pop(x, None)
        return out, e
    p = out.param
    defined[p] = k
    form = node if type(node) is str else _normal_form(node)
    letters[out.letter] = (ctx.leaf[p], out.value)  # later sentences see the parameter itself
    expected = ctx.expected.get(p) or ctx.expected_normal_form(p)
    if form != expected:
        return out, _structure_error(ctx, p, out, form, defined, k)
    return out, value_error


def _structure_error(ctx: _Context, p: Param, out: _Sentence, form: str, defined: dict, k: int) -> _Fail:
    eq = ctx.equation(p)
    name = ctx.problem.param_name
    head = f"sentence {k + 1} computes {out.name}"
    formula = f"the problem gives {name(p)} = {_formula(ctx, p)}"
    waiting = [q for q in eq.inputs if q not in defined or defined[q] >= k]
    if waiting:
        missing = list(dict.fromkeys(name(q) for q in waiting))
        what = f"input {missing[0]} is" if len(missing) == 1 else f"inputs {', '.join(missing)} are"
        return _Fail("not_ready", f"{head} before its {what} computed; {formula}", fatal=False)
    got_params, got_literals = _leaves(form, ctx)
    want_params, want_literals = _leaves(ctx.expected_normal_form(p), ctx)
    if got_params != want_params:
        got = ", ".join(sorted(name(q) for q in got_params)) or "no parameter"
        return _Fail("wrong_dependencies", f"{head} from {got}; {formula}", fatal=False)
    if got_literals != want_literals:
        got = ", ".join(map(str, got_literals)) or "no number"
        return _Fail("wrong_literal", f"{head} with the number(s) {got}; {formula}", fatal=False)
    return _Fail("wrong_operation", f"{head} from the right inputs with the wrong operation; {formula}",
                 fatal=False)


# --------------------------------------------------------------------------------------------
# Retractions (retry data, igsm.retry)
# --------------------------------------------------------------------------------------------
_RETRACTION = RETRACTION
_RETRACT_END = " as " + RETRACTION  # a sentence without its final period


def _words(s: str) -> list[str]:
    return s.replace(";", " ").split()


def _read_retraction(ctx: _Context, s: str, k: int, defined: dict, regrets: list) -> Optional[_Fail]:
    """``Define <name> as BACK``: a parameter of the problem, not computed yet. Counts it as a
    true regret (some input not computed yet) or a false one (it was ready), or returns the error."""
    name = s[7:-len(_RETRACT_END)]
    if "; " in name or " = " in name:
        return _Fail("bad_retraction", f"sentence {k + 1} {_show(s)}: {_RETRACTION} after a value; a retraction "
                     f"is 'Define <parameter> as {_RETRACTION}'")
    p = ctx.lookup(name)
    if p is None:
        return _Fail("bad_retraction", f"sentence {k + 1} retracts {name!r}, which is not a parameter of this problem")
    if p in defined:
        return _Fail("bad_retraction", f"sentence {k + 1} retracts {name}, which sentence {defined[p] + 1} "
                     "already computed")
    ready = all(q in defined for q in ctx.equation(p).inputs)
    regrets[1 if ready else 0] += 1
    return None


# --------------------------------------------------------------------------------------------
# The cut-off end of a solution
# --------------------------------------------------------------------------------------------
def _is_step_prefix(piece: str) -> bool:
    """Could ``piece`` (cut anywhere) be the beginning of a step ``[so ]v = a op b = x op y = r``?"""
    toks = piece.split(" ")
    if toks[0] == "so":
        toks = toks[1:]
    elif len(toks) == 1 and toks[0] == "s":
        return True
    # states: 0 lhs letter; 1 '='; 2 operand; 3 op or '='; 4 operand after op; 5 '='
    state = 0
    n = len(toks)
    for i, t in enumerate(toks):
        if t == "" and i == n - 1:
            return True
        operand = (len(t) == 1 and t in _LETTERS) or (t.isascii() and t.isdigit())
        if state == 0:
            if not (len(t) == 1 and t in _LETTERS):
                return False
            state = 1
        elif state in (1, 5):
            if t != "=":
                return False
            state = 2
        elif state in (2, 4):
            if not operand:
                return False
            state = 3 if state == 2 else 5
        elif t == "=":
            state = 2
        elif t in ("+", "-", "*"):
            state = 4
        else:
            return False
    return True


def _fragment_error(ctx: _Context, frag: str, k: int, letters: dict, defined: dict) -> tuple[_Fail, Optional[str]]:
    """The reason an unfinished last sentence is wrong: truncated, unless it cannot be a prefix."""
    cut = _Fail("truncated", "")
    if "Define".startswith(frag):
        return cut, None
    if not frag.startswith("Define "):
        return _Fail("parse", f"the unfinished last sentence {_show(frag)} does not start with 'Define '"), None
    if frag.endswith(";"):
        frag = frag[:-1] + "; "
    parts = frag.split("; ")
    if len(parts) == 1:  # the head itself is cut: a prefix of '<name> as <letter>'?
        rest = frag[7:]
        for name in ctx.all_names():
            full = name + " as "
            if full.startswith(rest) or (len(rest) == len(full) + 1 and rest.startswith(full)
                                         and rest[-1] in _LETTERS):
                return cut, None
            if rest.startswith(full) and _RETRACTION.startswith(rest[len(full):]):  # "... as BA"
                return cut, None
        return _Fail("parse", f"the unfinished sentence {k + 1} {_show(frag)} does not name a parameter"), None
    out = _Sentence()
    local: dict = {}
    try:
        _read_head(ctx, parts[0], out, letters, defined, k)
        complete, piece = parts[1:-1], parts[-1]
        if any(x.startswith("so ") for x in complete):
            raise _Fail("parse", f"sentence {k + 1} ({out.name}): 'so' may only start the last step")
        if complete:
            # read the finished intermediate steps as if a final step followed
            _, value_error = _read_steps(complete + [f"{out.letter} = 0"], k, out.letter, letters, local, out)
            if value_error is not None:
                return value_error, out.name
        if not _is_step_prefix(piece):
            return _Fail("parse", f"the unfinished sentence {k + 1} {_show(frag)} has a step that cannot be "
                         "completed"), out.name
    except _Fail as e:
        return e, out.name
    finally:
        for x in local:
            letters.pop(x, None)
    return cut, None


# --------------------------------------------------------------------------------------------
# The whole solution
# --------------------------------------------------------------------------------------------
def _parse_answer(answer: Any) -> tuple[bool, Optional[int]]:
    """(given, value): value None when given but not a number."""
    if answer is None:
        return False, None
    if isinstance(answer, bool):
        return True, None
    if isinstance(answer, int):
        return True, answer
    if hasattr(answer, "__index__") and not isinstance(answer, (str, bytes, bytearray)):
        try:  # numpy / torch integers
            return True, operator.index(answer)
        except Exception:  # noqa: BLE001 - e.g. a tensor with several elements
            return True, None
    if isinstance(answer, (bytes, bytearray)):
        answer = bytes(answer).decode("utf-8", "replace")
    if not isinstance(answer, str):
        return True, None
    s = answer.strip()
    if s[:7].lower() == "answer:":
        s = s[7:].strip()
    if s.endswith("."):
        s = s[:-1].rstrip()
    if s.isascii() and s.isdigit() and len(s) <= 6:
        return True, int(s)
    return True, None


def _as_text(solution: Any) -> Optional[str]:
    if solution is None:
        return ""
    if isinstance(solution, str):
        return solution
    if isinstance(solution, (bytes, bytearray)):
        return bytes(solution).decode("utf-8", "replace")
    return None


def verify_solution_strict(problem: Problem, solution: Any, answer: Any = None) -> Report:
    """:func:`verify_solution`, but a failure of the verifier itself raises (used by tests).

    Any solution text gives a Report; only a bug or an inconsistent Problem (values that do not
    follow from its equations) raises :class:`VerifierBug` or the underlying exception.
    """
    ctx = _context(problem)
    name = problem.param_name
    given, ans = _parse_answer(answer)
    text = _as_text(solution)
    if text is None:
        report = Report(False, False, "parse", message=f"the solution is a {type(solution).__name__}, not a string")
        return _finish(ctx, report, [], given, ans, None)
    text = text.strip()
    complete = text.endswith(".")
    sentences = (text[:-1] if complete else text).split(". ") if text else []
    fragment = None
    if not complete and sentences:
        fragment = sentences.pop()

    letters: dict = {}
    defined: dict = {}
    done: list[tuple[Param, _Sentence]] = []  # correctly computed parameters, in order
    first: Optional[tuple[str, str, Optional[str], int]] = None  # kind, message, name, sentence
    last: Optional[_Sentence] = None
    regrets = [0, 0]  # true, false
    for k, s in enumerate(sentences):
        if s.endswith(_RETRACT_END) and s.startswith("Define "):  # a retraction: checked, then removed
            fail = _read_retraction(ctx, s, k, defined, regrets)
            if fail is not None and first is None:
                first = (fail.kind, fail.message, s[7:-len(_RETRACT_END)], k)
            continue
        out, fail = _read_sentence(ctx, s, k, letters, defined)
        if fail is not None and fail.kind == "parse" and _RETRACTION in _words(s):
            fail = _Fail("bad_retraction", f"sentence {k + 1} {_show(s)}: {_RETRACTION} may only follow "
                         "'Define <parameter> as'")
        last = out
        if fail is None:
            p = out.param
            if out.value != (ctx.values.get(p) if p in ctx.values else ctx.value(p)):
                if first is None:
                    raise VerifierBug(
                        f"sentence {k + 1} ({out.name}) checks out but gives {out.value}, while the problem's "
                        f"value is {ctx.value(p)}: the Problem's values do not follow from its equations")
                continue  # consistent with an earlier wrong value: not computed correctly
            done.append((p, out))
        elif first is None:
            first = (fail.kind, fail.message, out.name, k)

    if first is None:
        if fragment is not None:
            fail, fname = _fragment_error(ctx, fragment, len(sentences), letters, defined)
            if fail.kind == "truncated":
                where = f"in the middle of sentence {len(sentences) + 1}"
                first = ("truncated", _truncated_message(ctx, defined, where), None, len(sentences))
            else:
                first = (fail.kind, fail.message, fname, len(sentences))
        elif not sentences:
            first = ("truncated", "the solution is empty", None, 0)
        elif last is None:
            first = ("truncated", "the solution has only retractions", None, len(sentences))
        elif last.param != ctx.question:
            q = name(ctx.question)
            if ctx.question in defined:
                first = ("wrong_question", f"the last sentence defines {last.name}, but the question asks for {q} "
                         f"(defined in sentence {defined[ctx.question] + 1})", last.name, len(sentences) - 1)
            elif given:
                first = ("wrong_question", f"the solution ends with {last.name}, but the question asks for {q}, "
                         "which it never defines", last.name, len(sentences) - 1)
            else:
                first = ("truncated", _truncated_message(ctx, defined, f"after sentence {len(sentences)}"),
                         None, len(sentences))
    report = Report(False, False, retractions=sum(regrets), true_regrets=regrets[0], false_regrets=regrets[1])
    if first is not None:
        report.error, report.message, report.first_wrong_param, report.first_wrong_sentence = first
    return _finish(ctx, report, done, given, ans, last)


def _truncated_message(ctx: _Context, defined: dict, where: str) -> str:
    if ctx.question in defined:
        return f"the solution stops {where}"
    return f"the solution stops {where}, before it defines the question {ctx.problem.param_name(ctx.question)}"


def _finish(ctx: _Context, report: Report, done: list, given: bool, ans: Optional[int],
            last: Optional[_Sentence]) -> Report:
    name = ctx.problem.param_name
    got = {p for p, _ in done}
    report.missing_params = [name(p) for p in ctx.problem.solution_order if p not in got]
    report.unnecessary_params = [name(p) for p, _ in done if p not in ctx.necessary]
    truth = ctx.value(ctx.question)
    if given:
        report.answer_correct = ans is not None and ans == truth
    else:
        report.answer_correct = (last is not None and last.param == ctx.question and last.value == truth
                                 and ctx.question in got)
    if report.error is None:
        if given and not report.answer_correct:
            report.error = "wrong_answer"
            report.first_wrong_param = name(ctx.question)
            report.message = f"the solution is right but the answer is {ans if ans is not None else 'not a number'}; " \
                             f"{name(ctx.question)} = {truth}"
        else:
            report.correct = True
            extra = f" ({len(report.unnecessary_params)} unnecessary)" if report.unnecessary_params else ""
            report.message = f"correct: {len(done)} parameters computed{extra}, answer {truth}"
    elif report.error == "truncated" and report.missing_params:
        report.message += "; missing: " + ", ".join(report.missing_params)
    msg = report.message
    if msg:
        report.message = msg[0].upper() + msg[1:] + ("" if msg.endswith(".") else ".")
    return report


def verify_solution(problem: Problem, solution: Any, answer: Any = None) -> Report:
    """Grade ``solution`` (and ``answer``, if given) against ``problem``. Never raises.

    ``answer`` may be an int or a string (``"16"``, ``" 16"``, ``"Answer: 16."``); ``None`` means
    no answer was produced. A failure of the verifier itself gives ``error="internal"``.
    """
    try:
        return verify_solution_strict(problem, solution, answer)
    except Exception as e:  # noqa: BLE001 - the contract is "never raises"; tests use the strict path
        try:
            msg = f"{type(e).__name__}: {e}"
        except Exception:  # noqa: BLE001
            msg = type(e).__name__
        return Report(False, False, "internal", message=f"The verifier failed ({msg[:300]}).")


__all__ = ["ERROR_KINDS", "Report", "Tally", "VerifierBug", "verify_solution", "verify_solution_strict"]
