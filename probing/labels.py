"""Labels of the V-probing tasks, computed from the Problem, never from text
(docs/spec.md#13-the-probe-labels-and-regret).

``G`` is the problem's dependency graph: every parameter in ``problem.equations`` (all instance
parameters and the abstract ones that appear). A probing *position* is where the input sequence
is cut before the ``[START] A [END]`` query is appended:

==============  ============================================  =====================================
task            label of (A[, B]) at the position             position
==============  ============================================  =====================================
``nece``        A is necessary for the answer                 end of the problem text (pq: end of
                                                              the question; qp: end of the problem)
``dep``         A depends on B, directly or transitively      pq: end of the statements, before the
                                                              question; qp: end of the problem (the
                                                              question comes first there, so there
                                                              is no "before the question" that
                                                              holds the statements)
``known``       A has been computed after j solution          boundary j = after j solution
                sentences                                     sentences, j = 0..len(solution)
``value``       A's value (0..22) if known, else 23           same
``can_next``    A is not known and all its inputs are known   same
``nece_next``   can_next(A) and nece(A)                       same
``regret``      A is not computable yet (not can_next(A)):    boundary j = 0..len(solution) - 1, then
                "Define A as" would be a mistake              ``Define A as`` (no ``[START] A [END]``:
                                                              read at "as", where a model writing
                                                              the step would be)
==============  ============================================  =====================================

``regret`` (Part 2.2's "I made a mistake" probe, on request: not in the default ``TASKS``) draws
its candidates stratified so that necessity tells nothing: among the necessary parameters of G as
many wrong steps (A neither known nor computable: an input is not computed yet, the mistakes of
retry data and the verifier's ``not_ready``) as ready ones (A ``can_next``), and the same among the
unnecessary parameters, each uniform over the (boundary, A) pairs of its kind. Predicting the label
from ``nece(A)`` alone then scores 50% (:func:`necessity_baseline`, reported beside the probe).

A literal (RNG) input is always "known", so a constant parameter (or an abstract one with no
children) is ``can_next`` until it is computed. Positions are indices: ``0`` for ``nece`` and
``dep`` (one position each), ``j`` for the boundary tasks. Token cuts live in
:mod:`probing.data`. No torch here.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from typing import Optional

from igsm.probe_tasks import ALL_TASKS, EXTRA_TASKS, TASKS  # the task names, owned there
from igsm.problem import Param, Problem

NUM_CLASSES = {"nece": 2, "dep": 2, "known": 2, "value": 24, "can_next": 2, "nece_next": 2, "regret": 2}
PAIR_TASKS = frozenset({"dep"})  # the query names two parameters: [START] A [MID] B [END]
BOUNDARY_TASKS = frozenset({"known", "value", "can_next", "nece_next"})  # cut at solution boundaries
UNKNOWN_VALUE = 23  # value class of a parameter that is not computed yet
MAX_DISTANCE = 8  # nece-by-distance (paper Result 8) reports t = 1..MAX_DISTANCE


def check_task(task: str) -> str:
    if task not in ALL_TASKS:
        raise ValueError(f"probe task {task!r} is unknown; allowed: {list(ALL_TASKS)}")
    return task


def graph_params(problem: Problem) -> list[Param]:
    """G's parameters in a fixed order (the problem's topological definition order)."""
    return list(problem.definition_order)


def n_positions(problem: Problem, task: str) -> int:
    """How many probing positions a task has in this problem (boundary tasks: sentences + 1)."""
    check_task(task)
    if task == "regret":  # before each solution sentence: there is a next step to write
        return len(problem.solution_order)
    return len(problem.solution_order) + 1 if task in BOUNDARY_TASKS else 1


def question_distances(problem: Problem) -> dict[Param, int]:
    """Shortest dependency-graph path length from each ancestor of the question to it.

    Edges run input -> parameter, so this is a breadth-first search backwards from the question
    over inputs. The question itself has distance 0; parameters it does not depend on are absent.
    """
    dist = {problem.question: 0}
    queue = deque([problem.question])
    while queue:
        p = queue.popleft()
        for q in problem.equations[p].inputs:
            if q not in dist:
                dist[q] = dist[p] + 1
                queue.append(q)
    return dist


class ProblemLabels:
    """All probing labels of one problem, from a few precomputed tables.

    ``step[A]`` is the boundary at which A becomes known (its 1-based solution index; absent when
    A is never computed), and ``ready[A]`` the first boundary at which all of A's inputs are
    known (infinite when some input is never computed). Then, at boundary j:
    known = step[A] <= j, can_next = ready[A] <= j < step[A].
    """

    INF = 1 << 30

    def __init__(self, problem: Problem):
        self.problem = problem
        self.params = graph_params(problem)
        self.necessary = problem.necessary
        self.step = {p: j + 1 for j, p in enumerate(problem.solution_order)}
        inf = self.INF
        self.ready = {
            p: max((self.step.get(q, inf) for q in eq.inputs), default=0)
            for p, eq in problem.equations.items()
        }
        self._ancestors: dict[Param, frozenset] = {}
        self._distances: Optional[dict[Param, int]] = None

    def ancestors(self, a: Param) -> frozenset:
        if a not in self._ancestors:
            self._ancestors[a] = frozenset(self.problem.ancestors(a))
        return self._ancestors[a]

    @property
    def distances(self) -> dict[Param, int]:
        if self._distances is None:
            self._distances = question_distances(self.problem)
        return self._distances

    def n_positions(self, task: str) -> int:
        return n_positions(self.problem, task)

    def label(self, task: str, a: Param, b: Optional[Param] = None, position: int = 0) -> int:
        """The label of one probe query (class index, 0/1 for binary tasks)."""
        if task == "nece":
            return int(a in self.necessary)
        if task == "dep":
            if b is None:
                raise ValueError("dep needs two parameters (A depends on B)")
            return int(b in self.ancestors(a))
        if task == "regret":
            j = position
            return int(not (self.ready[a] <= j < self.step.get(a, self.INF)))  # not can_next
        if task not in BOUNDARY_TASKS:
            check_task(task)
        j = position
        if not 0 <= j <= len(self.problem.solution_order):
            raise ValueError(f"boundary {j} is outside 0..{len(self.problem.solution_order)}")
        known = self.step.get(a, self.INF) <= j
        if task == "known":
            return int(known)
        if task == "value":
            return self.problem.values[a] if known else UNKNOWN_VALUE
        can_next = self.ready[a] <= j and not known
        if task == "can_next":
            return int(can_next)
        return int(can_next and a in self.necessary)  # nece_next

    def regret_candidates(self, j: int) -> tuple[list[Param], list[Param]]:
        """(wrong, ready) steps at boundary j over G: A neither known nor computable yet (label 1),
        and A ``can_next``, computable and not known yet (label 0; the solution's next step among them)."""
        inf = self.INF
        wrong = [p for p in self.params if self.step.get(p, inf) > j and self.ready[p] > j]
        ready = [p for p in self.params if self.ready[p] <= j < self.step.get(p, inf)]
        return wrong, ready

    def distance(self, a: Param) -> int:
        """Distance from A to the question (0 for the question, -1 when A is not an ancestor)."""
        return self.distances.get(a, -1)


def label(problem: Problem, task: str, a: Param, b: Optional[Param] = None, position: int = 0) -> int:
    """One label, without caching (use :class:`ProblemLabels` for many queries)."""
    return ProblemLabels(problem).label(task, a, b, position)


def draw_queries(problem: Problem, task: str, rng: random.Random, n: int = 10) -> list[tuple]:
    """Up to ``n`` distinct ``(position, A, B)`` draws (B None except for dep).

    Each draw is a uniform position of the task, A uniform over G, and for dep B uniform over
    G without A. Repeated draws are dropped, so a small problem can yield fewer than ``n``.
    """
    check_task(task)
    if task == "regret":
        return draw_regret_queries(problem, rng, n)
    params = graph_params(problem)
    n_pos = n_positions(problem, task)
    pair = task in PAIR_TASKS
    if pair and len(params) < 2:
        return []
    seen: set = set()
    out: list[tuple] = []
    for _ in range(n):
        pos = rng.randrange(n_pos) if n_pos > 1 else 0
        a = rng.choice(params)
        b = None
        if pair:
            b = rng.choice(params[:-1])
            if b == a:  # uniform over G \ {A}: swap A's slot for the last parameter
                b = params[-1]
        key = (pos, a, b)
        if key not in seen:
            seen.add(key)
            out.append(key)
    return out


def draw_regret_queries(problem: Problem, rng: random.Random, n: int = 10) -> list[tuple]:
    """Up to ``n`` distinct ``(position, A, None)`` regret draws, balanced within each necessity
    stratum: among the necessary A as many wrong steps (label 1) as ready ones (label 0), and the
    same among the unnecessary A, each drawn uniformly without repeats from all (boundary, A) pairs
    of its kind; shuffled. The ``n // 2`` (wrong, ready) pairs are shared between the strata as evenly
    as their pools allow (necessary first on a tie). So ``nece(A)`` says nothing about the label."""
    labels = ProblemLabels(problem)
    necessary = problem.necessary
    pools: dict[bool, tuple[list, list]] = {True: ([], []), False: ([], [])}  # nece -> (wrong, ready)
    for j in range(n_positions(problem, "regret")):
        wrong, ready = labels.regret_candidates(j)
        for kind, params in enumerate((wrong, ready)):
            for a in params:
                pools[a in necessary][kind].append((j, a, None))
    room = {s: min(len(w), len(r)) for s, (w, r) in pools.items()}
    pairs = {True: 0, False: 0}
    for _ in range(n // 2):
        open_ = [s for s in (True, False) if pairs[s] < room[s]]
        if not open_:
            break
        pairs[min(open_, key=lambda s: pairs[s])] += 1  # min keeps the first (necessary) on a tie
    out: list[tuple] = []
    for s in (True, False):
        wrong, ready = pools[s]
        out += rng.sample(wrong, pairs[s]) + rng.sample(ready, pairs[s])
    rng.shuffle(out)
    return out


def necessity_baseline(pairs: Iterable[tuple[int, int]]) -> dict:
    """The regret probe's necessity-only control on ``(nece, label)`` pairs of its test queries: the
    accuracy of the better of the two rules "regret = not nece" and "regret = nece", chosen on these
    same queries (an upper bound for any rule that reads nece alone and is not constant; the
    constant rules are the majority control). ``{"acc", "mapping", "n"}``; ``acc`` None without pairs,
    ``mapping`` "either (tie)" when both rules score the same."""
    pairs = list(pairs)
    agree = sum(int(nece == label) for nece, label in pairs)
    if not pairs:
        return {"acc": None, "mapping": None, "n": 0}
    disagree = len(pairs) - agree
    mapping = "regret = nece" if agree > disagree else "regret = not nece" if disagree > agree else "either (tie)"
    return {"acc": max(agree, disagree) / len(pairs), "mapping": mapping, "n": len(pairs)}


__all__ = [
    "ALL_TASKS", "EXTRA_TASKS", "draw_regret_queries", "necessity_baseline",
    "TASKS", "NUM_CLASSES", "PAIR_TASKS", "BOUNDARY_TASKS", "UNKNOWN_VALUE", "MAX_DISTANCE",
    "check_task", "graph_params", "n_positions", "question_distances", "ProblemLabels", "label",
    "draw_queries",
]
