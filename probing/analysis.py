"""Error analysis (docs/spec.md#14-error-analysis, the paper's Result 6): the backbone's own mistakes vs its probes.

The trained backbone solves problems by greedy decoding and the verifier grades every solution
(:func:`igsm.solve.solve`). Then:

(a) **Planned redundancy.** On reask problems, for every unnecessary parameter that a *correct*
    solution computes, ask the ``nece`` probe (cut at the end of the problem, as in training)
    whether that parameter is necessary. The paper finds it usually says yes: the model planned
    the redundant step before writing the first word. For reference we also report how often the
    probe calls the *other* unnecessary parameters (the ones the solution skipped) necessary.
(b) **Believed ready.** For every wrong solution with a first wrong parameter A in G, cut the
    model's own generation at the boundary before the wrong sentence and compute the truth
    there (known = the parameters its earlier, correct sentences defined): ``can_next(A)`` and
    ``nece_next(A)``. When the truth is false, record how often the ``can_next`` / ``nece_next``
    probe also said false. The paper finds it rarely did: the model believed A was ready.

(c) **Regret** (Part 2.2), when the ``regret`` probe was trained: on the model's own greedy
    solutions, read the probe at "Define A as" of every step (the input it was trained on: the
    solution so far, then ``Define A as``). Steps the verifier marks ``not_ready`` (the first wrong
    sentence of a solution, when that is its error) are the model's real mistakes: how many does
    the probe flag ("A is not computable yet")? Correct steps (every sentence before the first
    error, all of a correct solution; retractions excluded): how many does it flag?

Sets: ``analysis.n`` reask problems (op = ``analysis.reask_op``, template test split) for (a)
and (b), and ``analysis.n`` test-split problems of the training distribution for (b).
The output is a JSON-able dict (``analysis.json``) and TensorBoard scalars ``analysis/...``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from typing import Optional

import torch

from igsm.config import AnalysisConfig, GeneratorConfig
from igsm.generator import GenerationError, generate_problem, problem_rng, world_for
from igsm.problem import Param, Problem
from igsm.solve import solve, tally
from probing.data import ProblemTokens, collate_pairs, query_ids, regret_ids, sentence_ids

_DEFINE = re.compile(r"^Define (.+?) as [A-Za-z];")
NEXT_TASKS = ("can_next", "nece_next")  # the probes (b) asks at the first wrong sentence


def analysis_problems(gen_cfg: GeneratorConfig, kind: str, n: int, seed: int, reask_op: Optional[int]) -> list[Problem]:
    """``n`` test-split problems: ``kind="reask"`` (op forced, question re-asked) or ``"test"``."""
    if kind == "reask":
        cfg = replace(gen_cfg, split="test", reask=True, op=reask_op or gen_cfg.max_op)
    else:
        cfg = replace(gen_cfg, split="test", reask=False, op=None)
    world = world_for(cfg)
    out = []
    for i in range(n):
        try:
            out.append(generate_problem(cfg, problem_rng(seed, "analysis", kind, i), world))
        except GenerationError:
            continue
    return out


def split_sentences(solution: str) -> list[str]:
    """The solution's sentences as the verifier reads them (each with its final period)."""
    text = solution.strip()
    if not text:
        return []
    complete = text.endswith(".")
    parts = (text[:-1] if complete else text).split(". ")
    return [p + "." for p in (parts if complete else parts[:-1])]


def first_wrong_case(tokenizer, problem: Problem, solution: str, report) -> Optional[tuple[list[int], dict]]:
    """For a wrong solution: the probe input at the boundary before its first wrong sentence,
    querying the first wrong parameter A, and the truth there ``{"can_next": 0|1, "nece_next": 0|1}``.
    Known = the parameters of G that the earlier sentences define (all correct: the error is the
    first). None when there is no parameter of G to blame (parse errors, truncation, unknown names).
    """
    names = {problem.param_name(p): p for p in problem.equations}
    a = names.get(report.first_wrong_param) if report.first_wrong_param else None
    k = report.first_wrong_sentence
    if a is None or k is None:
        return None
    sentences = split_sentences(solution)
    known: set[Param] = set()
    for s in sentences[:k]:
        m = _DEFINE.match(s)
        if m and m.group(1) in names:
            known.add(names[m.group(1)])
    ready = all(q in known for q in problem.equations[a].inputs)
    truth = {"can_next": int(ready and a not in known)}
    truth["nece_next"] = int(truth["can_next"] and a in problem.necessary)
    prefix = (tokenizer.encode_prompt(problem.problem_text)
              + [i for s in sentence_ids(tokenizer, sentences[:k]) for i in s])
    return query_ids(tokenizer, prefix, problem.param_name(a)), truth


def regret_cases(tokenizer, problem: Problem, solution: str, report) -> list[tuple[list[int], int]]:
    """The regret probe's inputs on one generated solution, ``(ids, mistake)``: at "Define A as"
    of each correct step (``mistake`` 0: every sentence before the first error, retractions
    excluded) and of the first wrong sentence when the verifier calls it ``not_ready`` (1)."""
    sentences = split_sentences(solution)
    k_err = report.first_wrong_sentence if not report.correct else None
    end = len(sentences) if k_err is None else min(k_err, len(sentences))
    prompt = tokenizer.encode_prompt(problem.problem_text)
    parts = sentence_ids(tokenizer, sentences)
    out: list[tuple[list[int], int]] = []
    prefix = list(prompt)
    for k in range(len(sentences)):
        m = _DEFINE.match(sentences[k])
        if k < end and m:
            out.append((regret_ids(tokenizer, prefix, m.group(1), k == 0), 0))
        elif k == k_err and report.error == "not_ready" and report.first_wrong_param:
            out.append((regret_ids(tokenizer, prefix, report.first_wrong_param, k == 0), 1))
        if k >= end:
            break
        prefix += parts[k]
    return out


class _Prober:
    """Batches probe queries and runs the trained backbone's last-layer heads."""

    def __init__(self, module, tokenizer, batch_size: int = 64, precision: Optional[str] = None):
        self.module, self.tok, self.batch_size, self.precision = module, tokenizer, batch_size, precision

    @torch.no_grad()
    def __call__(self, task: str, seqs: list[list[int]]) -> list[int]:
        if not seqs:
            return []
        device = next(self.module.parameters()).device
        preds: list[int] = []
        for s in range(0, len(seqs), self.batch_size):
            rows = [{"ids": ids, "label": 0, "dist": -1} for ids in seqs[s: s + self.batch_size]]
            b = collate_pairs(rows, self.tok.pad_id)
            with _autocast(device, self.precision):
                p = self.module.predict(task, b["idx"].to(device), b["end"].to(device), backbone="trained")
            preds += p.tolist()
        return preds


def _autocast(device: torch.device, precision: Optional[str] = None):
    """The run's mixed precision (a Lightning precision string) as an autocast context; None = the
    old default (bf16 on CUDA, fp32 on CPU). Decoding outside it would run in fp32: ~10x slower on
    a GPU, with a KV cache twice the size."""
    if precision is not None:
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
        return (torch.autocast(device.type, dtype=dtype) if dtype is not None
                else torch.autocast(device.type, enabled=False))
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _warn_halved(old: int, new: int) -> None:
    print(f"warning: out of memory decoding {old} analysis prompts at once; going on with {new} at a time "
          f"(results as with analysis.batch_size={new}; set it to start there)", file=sys.stderr, flush=True)


def _rate(num: int, den: int) -> Optional[float]:
    return num / den if den else None


def run_analysis(module, tokenizer, gen_cfg: GeneratorConfig, cfg: AnalysisConfig, seed: int = 0,
                 precision: Optional[str] = None) -> dict:
    """Generate, verify, probe; the ``analysis.json`` dict (see the module docstring).

    ``precision``: the run's Lightning precision ("bf16-mixed", ...): decoding and probing run
    under its autocast (None = bf16 autocast on CUDA, fp32 on CPU)."""
    tok = tokenizer
    backbone = module.backbones["trained"]
    prober = _Prober(module, tok, precision=precision)
    device = next(backbone.parameters()).device
    tasks = set(module.tasks)
    block = backbone.cfg.block_size
    out: dict = {"sets": {}}
    a_total = a_called = a_other_total = a_other_called = 0
    b_stats = {t: {"truth_false": 0, "probe_false": 0, "truth_true": 0, "probe_true": 0}
               for t in NEXT_TASKS}
    b_cases = b_skipped = 0
    errors: dict[str, int] = {}
    regret = {"not_ready_steps": 0, "probe_flagged_not_ready": 0, "correct_steps": 0, "probe_flagged_correct": 0}
    chunk = cfg.batch_size  # prompts decoded at once; halved for good on out of memory

    for kind in ("reask", "test"):
        problems = analysis_problems(gen_cfg, kind, cfg.n, seed, cfg.reask_op)
        prompts = [tok.encode_prompt(p.problem_text) for p in problems]
        keep = [i for i, pr in enumerate(prompts) if len(pr) < block]
        problems, prompts = [problems[i] for i in keep], [prompts[i] for i in keep]
        with _autocast(device, precision):  # the run's precision: fp32 decoding is ~10x slower on a GPU
            attempts, chunk = solve(backbone, tok, problems, prompts, batch_size=chunk, on_halve=_warn_halved,
                                    max_new_tokens=max(1, min(cfg.max_new_tokens,
                                                              block - max(map(len, prompts), default=0))))
        nece_queries: list[tuple[list[int], bool]] = []  # (ids, computed by a correct solution)
        regret_queries: list[tuple[list[int], int]] = []  # (ids, 1 = a not_ready step, 0 = a correct one)
        next_queries: list[tuple[list[int], str, int]] = []  # (ids, task, truth)
        counts = tally(attempts)
        for attempt in attempts:
            problem, solution, report = attempt.problem, attempt.solution, attempt.report
            names = {problem.param_name(p): p for p in problem.equations}
            if "regret" in tasks:
                regret_queries += [c for c in regret_cases(tok, problem, solution, report) if len(c[0]) <= block]
            if report.correct:
                if kind == "reask" and "nece" in tasks:
                    tokens = ProblemTokens(tok, problem)
                    prefix = tokens.ids[: tokens.problem_end]
                    computed = set(report.unnecessary_params)
                    for p in problem.equations:
                        if p in problem.necessary:
                            continue
                        name = problem.param_name(p)
                        nece_queries.append((query_ids(tok, prefix, name), name in computed))
                    for name in computed - set(names):  # valid abstract pairs outside G
                        nece_queries.append((query_ids(tok, prefix, name), True))
                continue
            case = first_wrong_case(tok, problem, solution, report)
            if case is None or len(case[0]) > block:
                b_skipped += 1
                continue
            ids, truth = case
            b_cases += 1
            for t in NEXT_TASKS:
                if t in tasks:
                    next_queries.append((ids, t, truth[t]))
        for error, count in counts.errors.items():
            errors[error or "none"] = errors.get(error or "none", 0) + count
        out["sets"][kind] = {"n": counts.n, "correct": counts.correct, "accuracy": _rate(counts.correct, counts.n),
                             "unnecessary_per_correct": _rate(counts.unnecessary, counts.correct)}
        preds = prober("nece", [ids for ids, _ in nece_queries])
        for (_, computed), pred in zip(nece_queries, preds):
            if computed:
                a_total += 1
                a_called += pred == 1
            else:
                a_other_total += 1
                a_other_called += pred == 1
        for (_, mistake), pred in zip(regret_queries, prober("regret", [ids for ids, _ in regret_queries])):
            key = "not_ready" if mistake else "correct"
            regret[f"{key}_steps"] += 1
            regret[f"probe_flagged_{key}"] += int(pred == 1)
        for t in NEXT_TASKS:
            qs = [(ids, truth) for ids, task, truth in next_queries if task == t]
            for (_, truth), pred in zip(qs, prober(t, [ids for ids, _ in qs])):
                key = "false" if truth == 0 else "true"
                b_stats[t][f"truth_{key}"] += 1
                b_stats[t][f"probe_{key}"] += int(pred == truth)

    out["unnecessary"] = {
        "computed_by_correct_reask_solutions": a_total,
        "probe_said_necessary": a_called,
        "rate_probe_said_necessary": _rate(a_called, a_total),
        "other_unnecessary_params": a_other_total,
        "other_rate_probe_said_necessary": _rate(a_other_called, a_other_total),
    }
    out["first_wrong"] = {"cases": b_cases, "skipped": b_skipped, "error_kinds": errors}
    for t, s in b_stats.items():
        out["first_wrong"][t] = {
            "truth_false": s["truth_false"], "probe_also_false": s["probe_false"],
            "rate_probe_also_false": _rate(s["probe_false"], s["truth_false"]),
            "truth_true": s["truth_true"], "probe_also_true": s["probe_true"],
            "rate_probe_also_true": _rate(s["probe_true"], s["truth_true"]),
        }
    if "regret" in tasks:
        out["regret"] = {**regret,
                         "rate_flagged_not_ready": _rate(regret["probe_flagged_not_ready"], regret["not_ready_steps"]),
                         "rate_flagged_correct": _rate(regret["probe_flagged_correct"], regret["correct_steps"])}
    return out


def analysis_scalars(result: dict) -> dict[str, float]:
    """The TensorBoard scalars of an analysis result (None values left out)."""
    s: dict[str, Optional[float]] = {}
    for kind, v in result["sets"].items():
        s[f"analysis/{kind}/accuracy"] = v["accuracy"]
        s[f"analysis/{kind}/unnecessary_per_correct"] = v["unnecessary_per_correct"]
    u = result["unnecessary"]
    s["analysis/unnecessary/probe_said_necessary"] = u["rate_probe_said_necessary"]
    s["analysis/unnecessary/other_probe_said_necessary"] = u["other_rate_probe_said_necessary"]
    for t in NEXT_TASKS:
        f = result["first_wrong"][t]
        s[f"analysis/first_wrong/{t}_false/probe_also_false"] = f["rate_probe_also_false"]
    if "regret" in result:
        s["analysis/regret/flagged_not_ready"] = result["regret"]["rate_flagged_not_ready"]
        s["analysis/regret/flagged_correct"] = result["regret"]["rate_flagged_correct"]
    return {k: float(v) for k, v in s.items() if v is not None}


__all__ = ["run_analysis", "analysis_scalars", "analysis_problems", "split_sentences", "first_wrong_case",
           "regret_cases"]
