"""Training stream (packed token windows) and fixed evaluation sets, as one LightningDataModule.

Training (docs/spec.md#11-tokens): problems are generated in DataLoader workers, tokenized, concatenated and cut
into ``context``-long windows; a problem longer than the window is dropped. Every batch is a pure
function of ``(seed, rank, batch index)``: batch ``b`` of rank ``r`` packs the problems
``problem_rng(seed, "train", r, b, j)`` for ``j = 0, 1, ...`` until its ``batch_size`` windows are
full (the last problem is cut at the batch's end). Hence

- ranks never repeat each other (``r`` is in every key) and neither do workers: worker ``w`` of
  ``W`` builds the batches ``b = start + w, start + w + W, ...``, which is exactly the order in
  which the DataLoader hands them out, so the stream does not even depend on ``num_workers``;
- resuming is exact without saving any loader state: a run restored at optimizer step ``k`` has
  consumed ``k * accumulate_grad_batches`` batches, and the loader starts there (docs/faults.md).

Evaluation (docs/spec.md#16-the-papers-recipe): one fixed set per op bucket (``eval.buckets``,
grammar in igsm.train_config),
problem ``i`` of a bucket drawn from ``problem_rng(eval.seed, "eval", <bucket label>, i, ...)``.
The set is cut into batches of ``eval.batch_size`` prompts within one bucket; rank ``r`` of ``W``
decodes the batches ``k ≡ r (mod W)``. Sharding whole batches (rather than problems) keeps each
batch's contents, and so its decoding numerics, the same for any number of ranks.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from igsm.config import (
    BucketSpec,
    DataConfig,
    EvalConfig,
    GeneratorConfig,
    bucket_generator_config,
    generator_config,
    parse_bucket,
)
from igsm.data_setup import build_data_tokenizer
from igsm.generator import GenerationError, generate_problem, problem_rng, sample_op
from igsm.problem import RETRACTION, Problem
from igsm.tokenizer import Tokenizer

IGNORE_INDEX = -100  # targets with this value carry no loss (torch cross_entropy's ignore_index)


# -- training stream ---------------------------------------------------------------------------

def training_example(tokenizer: Tokenizer, problem: Problem, loss_on: str) -> tuple[list[int], int]:
    """(ids, first_loss): the example ``[PROBLEM] P [SOLUTION] S [ANSWER] A [EOS]`` and the index
    of its first token that is a loss target: 0 for ``loss_on="all"``, else the first solution
    token (so the solution, the answer marker, the answer and eos carry loss)."""
    ids = tokenizer.encode_example(problem.problem_text, problem.solution, problem.answer)
    if loss_on == "all":
        return ids, 0
    # encode_prompt is [eos, problem marker] + P + [solution marker], i.e. ids[:k] with one more token
    return ids, len(tokenizer.encode_prompt(problem.problem_text)) - 1


def retraction_targets(tokenizer: Tokenizer, problem: Problem) -> list[int]:
    """Indices (in :func:`training_example`'s ids) of the wrong steps' tokens ``Define A as`` of
    retry data (igsm.retry); ``BACK`` and the period after them are not included.
    ``data.retry_loss=mask`` puts no loss on them (the model is not taught to make the mistake, only
    to retract it). The solution is encoded sentence by sentence, exactly as the whole part."""
    if not problem.retries:
        return []
    pos = len(tokenizer.encode_prompt(problem.problem_text)) - 1  # first solution token
    out: list[int] = []
    for k, (sentence, wrong) in enumerate(problem.solution_parts()):
        enc = tokenizer._encode_part if k == 0 else (lambda t: tokenizer.encode(" " + t))
        ids = enc(sentence)
        if wrong:
            head = enc(sentence[: -len(f" {RETRACTION}.")])  # "Define A as": a token boundary in both tokenizers
            if ids[: len(head)] == head:
                out.extend(range(pos, pos + len(head)))
        pos += len(ids)
    return out


def letter_slots(ids: list[int], start: int, define_id: int, letter_index: dict[int, int]) -> list[tuple[int, int]]:
    """``(i, used)`` for every token ``i >= start`` that names a new letter (it follows " as"):
    ``used`` is the bitmask (bit k = letter k of a..zA..Z, ``letter_index``: token id -> k) of the
    letters named before it. The generator draws that letter uniformly from the unused ones
    (docs/spec.md#7-the-text), so ``used`` gives the exact distribution of the target (``data.letter_loss=uniform``)."""
    slots, used = [], 0
    for i in range(max(start, 1), len(ids)):
        k = letter_index.get(ids[i])
        if k is not None and ids[i - 1] == define_id:
            slots.append((i, used))
            used |= 1 << k
    return slots


def pack_windows(
    examples: Iterator[tuple[list[int], int]], batch_size: int, context: int,
    letters: Optional[tuple[int, dict[int, int]]] = None, whole_problems_only: bool = False,
) -> dict:
    """Concatenate examples ``(ids, first_loss[, no_loss])`` and cut ``batch_size`` windows of ``context`` tokens.

    Returns ``inputs`` [B, T], ``targets`` [B, T] (inputs shifted by one: row r covers stream
    positions rT..rT+T-1 and predicts rT+1..rT+T; IGNORE_INDEX where the target carries no loss),
    ``dropped``, the number of examples longer than the window, and, when ``letters`` =
    ``(define_id, letter_index)`` is given, ``letter_used`` [B, T]: for a target that names a new
    letter, the bitmask of :func:`letter_slots`, else -1. With ``whole_problems_only`` a target
    carries no loss when its example began in an earlier window (the model cannot see its start).
    ``no_loss``: indices of an example's tokens that carry no loss as targets (``data.retry_loss=mask``).
    """
    need = batch_size * context + 1
    tokens: list[int] = []
    carries_loss: list[bool] = []
    used: list[int] = []
    starts: list[int] = []  # per token: where its example begins in the stream
    dropped = 0
    for example in examples:
        ids, first_loss = example[0], example[1]
        if len(ids) > context:
            dropped += 1
            continue
        if letters is not None:
            slot_used = [-1] * len(ids)
            for i, mask in letter_slots(ids, first_loss, *letters):
                slot_used[i] = mask
            used += slot_used
        starts += [len(tokens)] * len(ids)
        tokens += ids
        loss = [False] * first_loss + [True] * (len(ids) - first_loss)
        for i in example[2] if len(example) > 2 else ():  # (ids, first_loss, no-loss indices)
            loss[i] = False
        carries_loss += loss
        if len(tokens) >= need:
            break
    stream = torch.tensor(tokens[:need], dtype=torch.long)  # [B*T + 1]
    keep = torch.tensor(carries_loss[1:need], dtype=torch.bool)  # [B*T], for the targets
    if whole_problems_only:
        window_start = torch.arange(batch_size * context) // context * context  # [B*T]
        keep &= torch.tensor(starts[1:need], dtype=torch.long) >= window_start
    batch = {
        "inputs": stream[:-1].view(batch_size, context),  # [B, T]
        "targets": stream[1:].masked_fill(~keep, IGNORE_INDEX).view(batch_size, context),  # [B, T]
        "dropped": dropped,
    }
    if letters is not None:
        batch["letter_used"] = torch.tensor(used[1:need], dtype=torch.long).view(batch_size, context)  # [B, T]
    return batch


class PackedBatches(IterableDataset):
    """Endless packed training batches: ``{"inputs": [B, T], "targets": [B, T], "index": b}``,
    plus ``"letter_used": [B, T]`` with ``letter_loss="uniform"`` (see :func:`pack_windows`).

    Batch ``b`` is a pure function of ``(seed, rank, b)`` (module docstring); ``start_batch`` is
    the first batch index this loader yields (the resume position).
    """

    def __init__(
        self, gen_cfg: GeneratorConfig, tokenizer: Tokenizer, *, context: int, batch_size: int,
        loss_on: str, seed: int, rank: int = 0, start_batch: int = 0, letter_loss: str = "sampled",
        whole_problems_only: bool = False, retry_loss: str = "full",
    ) -> None:
        self.gen_cfg, self.tokenizer = gen_cfg, tokenizer
        self.retry_loss = retry_loss  # "mask": no loss on the wrong steps of retry data
        self.context, self.batch_size, self.loss_on = context, batch_size, loss_on
        self.seed, self.rank, self.start_batch = seed, rank, start_batch
        # letter_loss="uniform" needs to know where letters are named (see pack_windows)
        self.letters = None
        if letter_loss == "uniform":
            define_id, letter_ids = tokenizer.letter_slot_ids()
            self.letters = (define_id, {t: k for k, t in enumerate(letter_ids)})
        self.whole_problems_only = whole_problems_only

    def problem(self, batch_index: int, j: int) -> Optional[Problem]:
        """Problem j of a batch; None in the (rare) case the generator gives up on its draw."""
        try:
            return generate_problem(self.gen_cfg, problem_rng(self.seed, "train", self.rank, batch_index, j))
        except GenerationError:
            return None

    def examples(self, batch_index: int) -> Iterator[tuple[list[int], int]]:
        j = 0
        while True:
            p = self.problem(batch_index, j)
            if p is not None:
                ids, first = training_example(self.tokenizer, p, self.loss_on)
                if self.retry_loss == "mask" and p.retries:
                    yield ids, first, retraction_targets(self.tokenizer, p)
                else:
                    yield ids, first
            j += 1

    def batch(self, batch_index: int) -> dict:
        batch = pack_windows(self.examples(batch_index), self.batch_size, self.context, self.letters,
                             self.whole_problems_only)
        del batch["dropped"]
        return {**batch, "index": batch_index}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        b = self.start_batch + worker
        while True:
            yield self.batch(b)
            b += n_workers


# -- evaluation sets ---------------------------------------------------------------------------

class EvalBatch:
    """Prompts of one bucket decoded together. A plain class (not a dict or dataclass) so that
    Lightning's batch-to-device transfer leaves the Problems alone."""

    __slots__ = ("bucket", "indices", "problems", "prompts")

    def __init__(self, bucket: int, indices: list[int], problems: list[Problem], prompts: list[list[int]]):
        self.bucket, self.indices, self.problems, self.prompts = bucket, indices, problems, prompts

    def __len__(self) -> int:
        return len(self.indices)


MAX_EVAL_ATTEMPTS = 64  # fresh draws for one evaluation problem before giving up


class EvalSet(Dataset):
    """The fixed evaluation problems of every bucket, as this rank's share of the batches."""

    def __init__(
        self, data_cfg: DataConfig, buckets: list[BucketSpec], tokenizer: Tokenizer, *, n: int,
        batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
    ) -> None:
        self.buckets, self.tokenizer, self.seed = buckets, tokenizer, seed
        self.gen_cfgs = [bucket_generator_config(data_cfg, b) for b in buckets]
        all_batches = [
            (k, list(range(start, min(start + batch_size, n))))
            for k in range(len(buckets))
            for start in range(0, n, batch_size)
        ]
        self.batches = all_batches[rank::world_size]
        self._feasible: dict[tuple[int, int], bool] = {}  # (bucket, op) -> has templates in the split

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> EvalBatch:
        bucket, indices = self.batches[k]
        problems = [self.problem(bucket, i) for i in indices]
        prompts = [self.tokenizer.encode_prompt(p.problem_text) for p in problems]
        return EvalBatch(bucket, indices, problems, prompts)

    def problem(self, bucket: int, index: int) -> Problem:
        """Problem ``index`` of a bucket: the same on every rank, worker and run."""
        spec, cfg = self.buckets[bucket], self.gen_cfgs[bucket]
        op_rng = problem_rng(self.seed, "eval", spec.label, index, "op")
        for attempt in range(MAX_EVAL_ATTEMPTS):
            if spec.up_to:
                # The training distribution with max_op = N, restricted to the ops that have templates
                # in this split (op = 1 has no test template at all).
                op = sample_op(cfg, op_rng)
                if not self._op_feasible(bucket, op):
                    continue
                draw_cfg = replace(cfg, op=op)
            else:
                draw_cfg = cfg
            try:
                return generate_problem(draw_cfg, problem_rng(self.seed, "eval", spec.label, index, attempt))
            except GenerationError:
                continue
        raise GenerationError(f"eval bucket {spec.spec!r}: no problem {index} in {MAX_EVAL_ATTEMPTS} draws")

    def _op_feasible(self, bucket: int, op: int) -> bool:
        key = (bucket, op)
        if key not in self._feasible:  # a fixed probe, so every process reaches the same verdict
            try:
                generate_problem(replace(self.gen_cfgs[bucket], op=op), random.Random(f"igsm:feasible:{op}"))
                self._feasible[key] = True
            except GenerationError:
                self._feasible[key] = False
        return self._feasible[key]


def keep_as_is(batch):
    """collate_fn for batches the dataset already built (module level: picklable for workers)."""
    return batch


# -- the DataModule ----------------------------------------------------------------------------

class IGSMDataModule(L.LightningDataModule):
    """Packed training stream + evaluation sets for one (data, eval, seed) config.

    Rank, world size and the resume position come from the attached Trainer when the loaders are
    requested (after Lightning restored a checkpoint), or from the arguments without a Trainer.
    """

    def __init__(self, data_cfg: DataConfig, eval_cfg: EvalConfig, seed: int, tokenizer: Optional[Tokenizer] = None):
        super().__init__()
        self.data_cfg, self.eval_cfg, self.seed = data_cfg, eval_cfg, seed
        self.tokenizer = tokenizer if tokenizer is not None else build_data_tokenizer(data_cfg)
        self.buckets = [parse_bucket(b) for b in eval_cfg.buckets or []]

    def _placement(self) -> tuple[int, int, int]:
        """(rank, world size, first training batch) from the Trainer, or (0, 1, 0) without one."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1, 0
        consumed = trainer.global_step * trainer.accumulate_grad_batches
        return trainer.global_rank, trainer.world_size, consumed

    def train_dataset(self, rank: int = 0, start_batch: int = 0) -> PackedBatches:
        d = self.data_cfg
        return PackedBatches(
            generator_config(d), self.tokenizer, context=d.context, batch_size=d.batch_size,
            loss_on=d.loss_on, seed=self.seed, rank=rank, start_batch=start_batch, letter_loss=d.letter_loss,
            whole_problems_only=d.whole_problems_only, retry_loss=d.retry_loss,
        )

    def eval_dataset(self, rank: int = 0, world_size: int = 1) -> EvalSet:
        e = self.eval_cfg
        return EvalSet(self.data_cfg, self.buckets, self.tokenizer, n=e.n, batch_size=e.batch_size,
                       seed=e.seed, rank=rank, world_size=world_size)

    def train_dataloader(self) -> DataLoader:
        rank, _, start = self._placement()
        return self._loader(self.train_dataset(rank, start), collate_fn=None)

    def val_dataloader(self) -> DataLoader:
        rank, world, _ = self._placement()
        return self._loader(self.eval_dataset(rank, world), collate_fn=keep_as_is)

    def _loader(self, dataset, collate_fn) -> DataLoader:
        workers = self.data_cfg.num_workers
        on_gpu = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return DataLoader(
            dataset, batch_size=None, num_workers=workers, collate_fn=collate_fn, pin_memory=on_gpu,
            prefetch_factor=self.data_cfg.prefetch_batches if workers > 0 else None,
            worker_init_fn=worker_ignores_stop_signals if workers > 0 else None,
        )


def worker_ignores_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT / SIGTERM to the main process, which finishes its step and
    saves a checkpoint (igsm.faults.GracefulStop): Ctrl-C signals every process of the job, and a
    worker that died of it would end the run with a traceback. Workers still exit with the main
    process. Also Lightning's worker seeding, which it adds only when no worker_init_fn is set."""
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.environ.get("PL_SEED_WORKERS") == "1":
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


__all__ = [
    "IGNORE_INDEX", "IGSMDataModule", "PackedBatches", "EvalSet", "EvalBatch", "build_data_tokenizer",
    "training_example", "pack_windows", "letter_slots", "retraction_targets",
]
