"""Probe inputs: token cuts at the probing positions, ``[START] A [MID] B [END]`` queries, batches.

Token layout (both tokenizers): the generation prompt's layout, ``[eos, problem] P [solution] S``,
so a probe input is a prefix of ``[eos] + tokenizer.encode_example(...)`` (the eos in front is the
end of the previous example in a packed training window, and the first token of every prompt).
The example is encoded piece by piece (statements, question, each solution sentence) exactly as
the tokenizer encodes a whole part, so every cut is a token boundary of the full example:

* ``problem_end``: after the problem text, before the ``[solution]`` marker (nece; dep in qp);
* ``statement_end``: pq only, after the last statement, before the question (dep);
* ``boundaries[j]``: after the ``[solution]`` marker and j solution sentences (j = 0..n).

The ``regret`` task instead appends ``Define A as`` at a boundary (:func:`regret_ids`) and is read at
its last token. Otherwise ``[START] A [END]`` (dep: ``[START] A [MID] B [END]``) is appended, where a parameter name
is encoded as ``tokenizer.encode(" " + name)``: in the text every name follows a space
("each A's B", "Define A's B", "does A have"), which both tokenizers encode with the space in
the first token of the name.

Batches are **right-padded** with ``pad_id``; ``end`` holds each row's ``[END]`` index, so the probe
gathers ``hidden[arange(B), end]``. Padding after ``[END]`` cannot change it (causal attention).

A problem is a pure function of its index: ``problem_rng(seed, "probe", split, index)``; the
draws of a task come from ``problem_rng(seed, "probe", split, index, task)``, so every task sees
the same problems and every rank, worker or restart the same pairs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler

from igsm.config import GeneratorConfig
from igsm.generator import GenerationError, generate_problem, problem_rng, world_for
from igsm.problem import Problem
from probing.labels import TASKS, ProblemLabels, check_task, draw_queries, necessity_baseline

PROBE_STREAM = "probe"
HELDOUT_STREAM = "probe_heldout"  # test pairs from fresh training-template problems (probe.test_split=train)
DONOR_STREAM = "probe_label_donor"  # the problems whose labels shuffle_labels hands out


# --------------------------------------------------------------------------------------------
# Token cuts
# --------------------------------------------------------------------------------------------

def encode_part(tokenizer, text: str) -> list[int]:
    """A text part as the tokenizer encodes it inside an example (GPT-2: with a leading space)."""
    return tokenizer._encode_part(text)


def name_ids(tokenizer, name: str) -> list[int]:
    """A parameter name as it appears in the text: after a space."""
    return tokenizer.encode(" " + name)


def sentence_ids(tokenizer, sentences: Sequence[str]) -> list[list[int]]:
    """The ids of each solution sentence, so that their concatenation is the solution part."""
    return [encode_part(tokenizer, s) if k == 0 else tokenizer.encode(" " + s) for k, s in enumerate(sentences)]


class ProblemTokens:
    """The full example of a problem, ``[eos, problem] P [solution] S [answer] A [eos]``, and its
    probing cuts (each an exclusive end index: ``ids[:cut]`` is the truncated input)."""

    def __init__(self, tokenizer, problem: Problem):
        tok = tokenizer
        statement, question = problem.statement, problem.question_text
        if problem.fmt == "qp":
            first, second = encode_part(tok, question), tok.encode(" " + statement)
        else:
            first, second = encode_part(tok, statement), tok.encode(" " + question)
        head = [tok.eos_id, tok.problem_id]
        self.problem_end = len(head) + len(first) + len(second)
        # dep: before the question in pq; in qp the statements end the problem text
        self.statement_end = len(head) + len(first) if problem.fmt == "pq" else self.problem_end
        sentences = sentence_ids(tok, problem.solution_sentences)
        cut = self.problem_end + 1  # after the [solution] marker
        self.boundaries = [cut]
        for s in sentences:
            cut += len(s)
            self.boundaries.append(cut)
        self.ids = head + first + second + [tok.solution_id] + [i for s in sentences for i in s] \
            + [tok.answer_id] + encode_part(tok, str(problem.answer)) + [tok.eos_id]

    def cut(self, task: str, position: int = 0) -> int:
        if task == "nece":
            return self.problem_end
        if task == "dep":
            return self.statement_end
        check_task(task)
        return self.boundaries[position]


def query_ids(tokenizer, prefix: Sequence[int], a_name: str, b_name: Optional[str] = None) -> list[int]:
    """``prefix + [START] A [END]`` or ``prefix + [START] A [MID] B [END]``."""
    out = list(prefix) + [tokenizer.start_id] + name_ids(tokenizer, a_name)
    if b_name is not None:
        out += [tokenizer.mid_id] + name_ids(tokenizer, b_name)
    return out + [tokenizer.end_id]


def regret_ids(tokenizer, prefix: Sequence[int], a_name: str, first: bool) -> list[int]:
    """``prefix + "Define A as"``, the regret probe's input: the beginning of a solution sentence
    exactly as the example would encode it (``first``: the solution's first sentence, encoded as
    the start of the solution part), read at its last token "as"."""
    text = f"Define {a_name} as"
    return list(prefix) + (encode_part(tokenizer, text) if first else tokenizer.encode(" " + text))


def collate_pairs(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``ids`` to the longest row; ``end`` = each row's last real index (its ``[END]``).
    Rows with a ``solved`` flag (1, 0, -1 = unknown) also give ``solved`` [B]."""
    T = max(len(r["ids"]) for r in rows)
    idx = torch.full((len(rows), T), pad_id, dtype=torch.long)  # [B, T]
    for i, r in enumerate(rows):
        idx[i, : len(r["ids"])] = torch.tensor(r["ids"], dtype=torch.long)
    out = {
        "idx": idx,
        "end": torch.tensor([len(r["ids"]) - 1 for r in rows], dtype=torch.long),  # [B]
        "label": torch.tensor([r["label"] for r in rows], dtype=torch.long),  # [B]
        "dist": torch.tensor([r["dist"] for r in rows], dtype=torch.long),  # [B]
    }
    if "solved" in rows[0]:
        out["solved"] = torch.tensor([r["solved"] for r in rows], dtype=torch.long)  # [B]
    return out


class PairCollate:
    """Flatten the per-problem lists of pairs, keep at most ``max_rows`` of them, and pad (a class,
    so worker processes can pickle it)."""

    def __init__(self, pad_id: int, max_rows: Optional[int] = None):
        self.pad_id, self.max_rows = pad_id, max_rows

    def __call__(self, items: list[list[dict]]) -> dict[str, torch.Tensor]:
        rows = [r for item in items for r in item][: self.max_rows]
        if not rows:  # a batch of problems without any query (dep on a 1-parameter graph)
            return {"idx": torch.full((0, 1), self.pad_id, dtype=torch.long),
                    "end": torch.zeros(0, dtype=torch.long), "label": torch.zeros(0, dtype=torch.long),
                    "dist": torch.zeros(0, dtype=torch.long)}
        return collate_pairs(rows, self.pad_id)


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------

def probe_problem(gen_cfg: GeneratorConfig, seed: int, split: str, index: int, stream: str = PROBE_STREAM) -> Problem:
    """The probe problem at ``index`` of a split (template split of ``gen_cfg``); another
    ``stream`` gives other problems of the same split."""
    cfg = replace(gen_cfg, split=split)
    return generate_problem(cfg, problem_rng(seed, stream, split, index), world_for(cfg))


def problem_pairs(tokenizer, problem: Problem, task: str, rng, draws: int = 10) -> list[dict]:
    """The probe inputs of one problem for one task: ``{"ids", "label", "dist", "position", "a", "b", "nece"}``."""
    labels = ProblemLabels(problem)
    tokens = ProblemTokens(tokenizer, problem)
    out = []
    for pos, a, b in draw_queries(problem, task, rng, draws):
        if task == "regret":  # read where the step is written, not at an appended [END]
            ids = regret_ids(tokenizer, tokens.ids[: tokens.cut(task, pos)], problem.param_name(a), pos == 0)
        else:
            ids = query_ids(tokenizer, tokens.ids[: tokens.cut(task, pos)], problem.param_name(a),
                            problem.param_name(b) if b is not None else None)
        out.append({"ids": ids, "label": labels.label(task, a, b, pos),
                    "dist": labels.distance(a) if task == "nece" else -1,
                    "position": pos, "a": a, "b": b, "nece": int(a in problem.necessary)})
    return out


class ProbeDataset(Dataset):
    """Item ``i`` = the list of (up to ``draws``) probe inputs of problem ``i`` for one task.

    ``stream``: which problems of the split (``HELDOUT_STREAM``: fresh ones, never trained on).
    ``shuffle_labels`` (the negative control): each pair's label is that of a random pair of
    another problem (the same index of ``DONOR_STREAM``), so no input holds its label; the
    labels' distribution stays the task's. ``solved``: per problem index, whether the backbone
    solves it (None = unknown); rows then carry ``solved`` = 1, 0 or -1.
    """

    def __init__(self, tokenizer, gen_cfg: GeneratorConfig, task: str, split: str, n_problems: int,
                 seed: int = 0, draws: int = 10, *, stream: str = PROBE_STREAM, shuffle_labels: bool = False,
                 solved: Optional[Sequence[Optional[bool]]] = None):
        self.tokenizer, self.gen_cfg = tokenizer, gen_cfg
        self.task, self.split, self.n, self.seed, self.draws = check_task(task), split, n_problems, seed, draws
        self.stream, self.shuffle_labels, self.solved = stream, shuffle_labels, solved

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> list[dict]:
        try:
            problem = probe_problem(self.gen_cfg, self.seed, self.split, index, self.stream)
        except GenerationError:  # the generator gave up on this draw (rare): no pairs
            return []
        rng = problem_rng(self.seed, self.stream, self.split, index, self.task)
        keys = ("ids", "label", "dist", "nece") if self.task == "regret" else ("ids", "label", "dist")
        rows = [{k: r[k] for k in keys} for r in problem_pairs(self.tokenizer, problem, self.task, rng, self.draws)]
        if self.shuffle_labels and rows:
            donor_labels = self._donor_labels(index)
            if not donor_labels:
                return []
            pick = problem_rng(self.seed, DONOR_STREAM, "pick", self.split, index, self.task)
            for r in rows:
                r["label"], r["dist"] = pick.choice(donor_labels), -1
        if self.solved is not None:
            flag = self.solved[index] if index < len(self.solved) else None
            for r in rows:
                r["solved"] = -1 if flag is None else int(flag)
        return rows

    def _donor_labels(self, index: int) -> list[int]:
        try:
            donor = probe_problem(self.gen_cfg, self.seed, self.split, index, DONOR_STREAM)
        except GenerationError:
            return []
        rng = problem_rng(self.seed, DONOR_STREAM, self.split, index, self.task)
        return [r["label"] for r in problem_pairs(self.tokenizer, donor, self.task, rng, self.draws)]


def regret_necessity_control(dataset: ProbeDataset) -> dict:
    """The regret probe's necessity-only control on a regret dataset's queries (its label shuffling
    included): :func:`probing.labels.necessity_baseline`, for ``probe.json``'s regret entry."""
    if dataset.task != "regret":
        raise ValueError(f"the necessity-only control is the regret task's, not {dataset.task!r}'s")
    b = necessity_baseline((r["nece"], r["label"]) for i in range(len(dataset)) for r in dataset[i])
    return {"necessity": {**b, "rule": "the better of regret = not nece / regret = nece on the test queries"},
            "necessity_acc": b["acc"]}


class ResumeSampler(Sampler):
    """``sampler`` without the problems of the first ``batches`` batches of ``per_batch`` problems
    (counted within the current pass over it), on the first pass only: a resumed probe run reads
    the pairs an uninterrupted one would. ``len`` stays the full pass, so Lightning, which counts
    the batches already done in this epoch, ends the epoch where it would have."""

    def __init__(self, sampler: Sampler, batches: int, per_batch: int):
        self.sampler = sampler
        per_pass = max(1, math.ceil(len(sampler) / per_batch))
        self.skip = (batches % per_pass) * per_batch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.sampler), skip, None)


# --------------------------------------------------------------------------------------------
# The LightningDataModule
# --------------------------------------------------------------------------------------------

try:  # lightning is a dependency, but keep the token helpers importable without it
    import lightning.pytorch as pl
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
    from lightning.pytorch.utilities import CombinedLoader
except ImportError:  # pragma: no cover
    pl = None


class ProbeDataModule(pl.LightningDataModule if pl is not None else object):
    """Train (template-train problems) and test (template-test problems) pairs for several tasks.

    A training batch is a dict ``{task: batch}`` (one batch per task, all tasks every step); the
    test loaders are one per task, in ``tasks`` order (``dataloader_idx`` = task index).
    ``batch_size`` counts pairs. A training batch reads ``ceil(batch_size / (draws / 2))`` problems
    (repeated draws are dropped, so a problem gives fewer than ``draws`` pairs) and keeps the first
    ``batch_size`` pairs: exactly ``batch_size`` unless the problems average fewer than
    ``draws / 2`` distinct draws. Test batches read ``ceil(batch_size / draws)`` problems, all
    their pairs. Under DDP each loader gets its own distributed sampler (training: equal shards;
    test: unpadded, so no pair is counted twice); ``train_problems`` = 0 sizes the training set to
    ``max_steps`` (no problem is seen twice).
    ``test_split="train"`` draws the test pairs from fresh training-template problems (another
    stream: none of them is a probe training problem), where a small backbone may be competent.
    """

    def __init__(self, tokenizer, gen_cfg: GeneratorConfig, tasks: Sequence[str] = TASKS, *,
                 batch_size: int = 32, draws: int = 10, train_problems: int = 0,
                 test_problems: int = 128, seed: int = 0, num_workers: int = 0, test_split: str = "test",
                 shuffle_labels: bool = False):
        super().__init__()
        if test_split not in ("test", "train"):
            raise ValueError(f"test_split={test_split!r}: 'test' (test-template problems) or 'train' "
                             "(fresh training-template problems)")
        self.test_split, self.shuffle_labels = test_split, shuffle_labels
        self.solved: Optional[list[Optional[bool]]] = None  # per test problem, set by probe.py (solved split)
        self.tokenizer, self.gen_cfg = tokenizer, gen_cfg
        self.tasks = [check_task(t) for t in tasks]
        self.batch_size, self.draws = batch_size, draws
        self.train_problems, self.test_problems = train_problems, test_problems
        self.seed, self.num_workers = seed, num_workers
        self.problems_per_batch = max(1, math.ceil(batch_size / draws))  # test
        self.train_problems_per_batch = max(1, math.ceil(batch_size / max(1, draws // 2)))

    def _n_train(self) -> int:
        if self.train_problems > 0:
            return self.train_problems
        trainer = getattr(self, "trainer", None)
        steps = trainer.max_steps if trainer is not None and trainer.max_steps > 0 else 1000
        world = trainer.world_size if trainer is not None else 1
        return steps * self.train_problems_per_batch * world

    def _loader(self, task: str, split: str, n: int) -> DataLoader:
        ds = self.dataset(task, split, n)
        trainer = getattr(self, "trainer", None)
        sampler = None
        if trainer is not None and trainer.world_size > 1:
            # Our own shards (Lightning keeps a DistributedSampler it is given): equal training
            # shards (every rank steps together); unpadded test shards, so no pair counts twice.
            cls = DistributedSampler if split == "train" else UnrepeatedDistributedSampler
            kw = {"drop_last": True} if split == "train" else {}
            sampler = cls(ds, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False, **kw)
        train = split == "train"
        if train and trainer is not None and trainer.global_step > 0:  # resumed: go on where the checkpoint stopped
            sampler = ResumeSampler(sampler if sampler is not None else SequentialSampler(ds),
                                    trainer.global_step * trainer.accumulate_grad_batches,
                                    self.train_problems_per_batch)
        return DataLoader(ds, batch_size=self.train_problems_per_batch if train else self.problems_per_batch,
                          sampler=sampler,
                          collate_fn=PairCollate(self.tokenizer.pad_id, self.batch_size if train else None),
                          num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=False)

    def dataset(self, task: str, role: str, n: int) -> ProbeDataset:
        """The pairs of one task for ``role`` "train" or "test" (its split and stream follow ``test_split``)."""
        if role == "train":
            return ProbeDataset(self.tokenizer, self.gen_cfg, task, "train", n, self.seed, self.draws,
                                shuffle_labels=self.shuffle_labels)
        split, stream = self.test_split_stream()
        return ProbeDataset(self.tokenizer, self.gen_cfg, task, split, n, self.seed, self.draws, stream=stream,
                            shuffle_labels=self.shuffle_labels, solved=self.solved)

    def test_split_stream(self) -> tuple[str, str]:
        """(split, stream) of the test problems: test templates, or fresh training-template problems."""
        return ("test", PROBE_STREAM) if self.test_split == "test" else ("train", HELDOUT_STREAM)

    def train_dataloader(self) -> Any:
        n = self._n_train()
        return CombinedLoader({t: self._loader(t, "train", n) for t in self.tasks}, mode="max_size_cycle")

    def test_dataloader(self) -> Any:
        return [self._loader(t, "test", self.test_problems) for t in self.tasks]


__all__ = [
    "PROBE_STREAM", "HELDOUT_STREAM", "DONOR_STREAM", "encode_part", "regret_ids", "name_ids", "sentence_ids",
    "ProblemTokens", "query_ids", "collate_pairs", "PairCollate", "probe_problem", "problem_pairs", "ProbeDataset",
    "regret_necessity_control", "ResumeSampler", "ProbeDataModule",
]
