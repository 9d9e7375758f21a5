"""Training stream (packing, masks, determinism across ranks/workers/resume) and evaluation sets."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from igsm.cli_config import load_config
from igsm.config import TrainConfig, parse_bucket
from igsm.data import IGNORE_INDEX, EvalSet, IGSMDataModule, PackedBatches, pack_windows, training_example

CONTEXT, BATCH = 128, 4


def datamodule(*overrides: str) -> IGSMDataModule:
    cfg = load_config(TrainConfig, ["data.num_workers=0", "eval.n=6", "eval.batch_size=4", *overrides])
    return IGSMDataModule(cfg.data, cfg.eval, seed=cfg.seed)


@pytest.fixture(scope="module")
def dm() -> IGSMDataModule:
    return datamodule("data.loss_on=solution")


def stream(dm: IGSMDataModule, loss_on: str, rank: int = 0, start: int = 0) -> PackedBatches:
    ds = dm.train_dataset(rank, start)
    ds.context, ds.batch_size, ds.loss_on = CONTEXT, BATCH, loss_on
    return ds


# -- packing -----------------------------------------------------------------------------------

def test_pack_windows_concatenates_cuts_and_drops_long_examples() -> None:
    examples = [([1, 2, 3, 4], 2), (list(range(100, 120)), 0), ([5, 6, 7], 1), ([8, 9, 10, 11, 12], 0)]
    packed = pack_windows(iter(examples), batch_size=2, context=5)
    inputs, targets, dropped = packed["inputs"], packed["targets"], packed["dropped"]
    assert dropped == 1  # the 20-token example does not fit a 5-token window
    assert inputs.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    # targets are the inputs shifted by one across the whole stream; loss only from first_loss on
    assert targets.tolist() == [[IGNORE_INDEX, 3, 4, IGNORE_INDEX, 6], [7, 8, 9, 10, 11]]


def test_whole_problems_only_drops_the_loss_of_an_example_cut_by_the_window() -> None:
    examples = [([1, 2, 3, 4], 0), ([5, 6, 7], 0), ([8, 9, 10, 11, 12], 0)]
    plain = pack_windows(iter(examples), batch_size=2, context=5)
    masked = pack_windows(iter(examples), batch_size=2, context=5, whole_problems_only=True)
    assert torch.equal(plain["inputs"], masked["inputs"])
    # window 2 starts inside [5, 6, 7]: its target 7 is masked; [8, ...] began inside the window
    assert plain["targets"].tolist() == [[2, 3, 4, 5, 6], [7, 8, 9, 10, 11]]
    assert masked["targets"].tolist() == [[2, 3, 4, 5, 6], [IGNORE_INDEX, 8, 9, 10, 11]]


@pytest.mark.parametrize("whole_problems_only", [False, True])
@pytest.mark.parametrize("loss_on", ["all", "solution"])
def test_packed_batches_invariants(dm: IGSMDataModule, loss_on: str, whole_problems_only: bool) -> None:
    tok = dm.tokenizer
    ds = stream(dm, loss_on)
    ds.whole_problems_only = whole_problems_only
    for b in range(3):
        batch = ds.batch(b)
        inputs, targets = batch["inputs"], batch["targets"]
        assert inputs.shape == targets.shape == (BATCH, CONTEXT) and inputs.dtype == torch.long
        flat_in, flat_tg = inputs.flatten(), targets.flatten()
        # targets are the inputs shifted by one (where they carry loss), rows included
        kept = flat_tg[:-1] != IGNORE_INDEX
        assert torch.equal(flat_tg[:-1][kept], flat_in[1:][kept])
        assert flat_in[0].item() == tok.problem_id  # every batch starts with a whole problem
        # walk the stream: a target carries loss iff it lies in a solution span (after [SOLUTION],
        # up to and including [EOS]); with loss_on=all every target does; with whole_problems_only
        # only where its problem began in the target's window
        in_solution, problem_start = False, None
        for k, (x, y) in enumerate(zip(flat_in.tolist(), flat_tg.tolist())):
            if x == tok.problem_id:
                problem_start = k
            if x == tok.solution_id:
                in_solution = True
            elif x == tok.eos_id:
                in_solution = False
                assert k - problem_start + 1 <= CONTEXT  # no problem longer than the window
            # target k is token k + 1: its problem began at problem_start unless k + 1 opens a new one
            start = k + 1 if k + 1 < len(flat_in) and flat_in[k + 1] == tok.problem_id else problem_start
            visible = start is not None and start >= k // CONTEXT * CONTEXT
            expected = (in_solution or loss_on == "all") and (visible or not whole_problems_only)
            assert (y != IGNORE_INDEX) == expected, (b, k)


def test_training_example_loss_starts_at_the_solution(dm: IGSMDataModule) -> None:
    problem = stream(dm, "solution").problem(0, 0)
    ids, first = training_example(dm.tokenizer, problem, "solution")
    assert ids[first - 1] == dm.tokenizer.solution_id
    assert dm.tokenizer.decode(ids[first:]).startswith(problem.solution)
    assert training_example(dm.tokenizer, problem, "all") == (ids, 0)


def test_long_problems_are_dropped(dm: IGSMDataModule) -> None:
    ds = stream(dm, "all")
    ds.context = 60  # shorter than many tiny problems
    packed = pack_windows(ds.examples(0), 2, 60)
    inputs, dropped = packed["inputs"], packed["dropped"]
    assert dropped > 0
    starts = (inputs.flatten() == dm.tokenizer.problem_id).nonzero().flatten().tolist()
    ends = (inputs.flatten() == dm.tokenizer.eos_id).nonzero().flatten().tolist()
    assert all(e - s < 60 for s, e in zip(starts, ends))


@pytest.mark.parametrize("loss_on", ["all", "solution"])
def test_letter_slots_mark_every_new_letter_with_the_letters_used_before(dm: IGSMDataModule, loss_on: str) -> None:
    """letter_loss=uniform: each solution letter's target position carries the bitmask of the
    problem's earlier letters; every other position carries -1."""
    from igsm.render import LETTERS

    ds = stream(dm, loss_on)
    define_id, letter_ids = dm.tokenizer.letter_slot_ids()
    ds.letters, ds.whole_problems_only = (define_id, {t: k for k, t in enumerate(letter_ids)}), False
    batch = ds.batch(0)
    targets, used = batch["targets"].flatten().tolist(), batch["letter_used"].flatten().tolist()
    expected = []
    # rebuild the expectation from the text: the letters of each solution, in order
    j = 0
    while len(expected) < len(targets):
        p = ds.problem(0, j)
        j += 1
        ids, _ = training_example(dm.tokenizer, p, loss_on)
        if len(ids) > CONTEXT:
            continue
        letters_in_order = [p.letters[q] for q in p.solution_order]
        marks = [-1] * len(ids)
        mask, k = 0, 0
        for i in range(1, len(ids)):
            if ids[i - 1] == ds.letters[0] and ids[i] in letter_ids and k < len(letters_in_order):
                assert dm.tokenizer.decode([ids[i]]).strip() == letters_in_order[k]
                marks[i] = mask
                mask |= 1 << LETTERS.index(letters_in_order[k])
                k += 1
        assert k == len(letters_in_order)  # every definition was found
        expected += marks
    assert used == expected[1 : len(targets) + 1]
    assert sum(u >= 0 for u in used) > 10
    assert all(t != IGNORE_INDEX for t, u in zip(targets, used) if u >= 0)  # slots carry loss


# -- determinism: ranks, workers, resume -----------------------------------------------------

def test_same_index_same_batch_and_ranks_differ(dm: IGSMDataModule) -> None:
    a = stream(dm, "all", rank=0).batch(3)["inputs"]
    assert torch.equal(a, stream(dm, "all", rank=0).batch(3)["inputs"])  # pure function of (seed, rank, b)
    assert not torch.equal(a, stream(dm, "all", rank=1).batch(3)["inputs"])  # ranks differ
    assert not torch.equal(a, stream(dm, "all", rank=0).batch(4)["inputs"])  # batches differ
    other_seed = datamodule("seed=1", "data.loss_on=solution")
    assert not torch.equal(a, stream(other_seed, "all", rank=0).batch(3)["inputs"])


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_order_is_the_batch_index_for_any_number_of_workers(dm: IGSMDataModule, workers: int) -> None:
    ds = stream(dm, "all", rank=1, start=5)
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    got = []
    for batch in loader:
        got.append(batch)
        if len(got) == 4:
            break
    assert [b["index"] for b in got] == [5, 6, 7, 8]  # workers take turns: never the same batch twice
    for b in got:
        assert torch.equal(b["inputs"], ds.batch(b["index"])["inputs"])


def test_resume_position_continues_the_stream(dm: IGSMDataModule) -> None:
    full = iter(stream(dm, "all"))
    first_six = [next(full)["inputs"] for _ in range(6)]
    resumed = iter(stream(dm, "all", start=4))
    assert torch.equal(next(resumed)["inputs"], first_six[4])
    assert torch.equal(next(resumed)["inputs"], first_six[5])


# -- evaluation sets ---------------------------------------------------------------------------

def eval_set(dm: IGSMDataModule, rank: int = 0, world: int = 1) -> EvalSet:
    return dm.eval_dataset(rank, world)


def test_eval_buckets_follow_their_rule(dm: IGSMDataModule) -> None:
    ds = eval_set(dm)
    boundary = dm.data_cfg.split_boundary
    for k in range(len(ds)):
        batch = ds[k]
        spec = dm.buckets[batch.bucket]
        for p, prompt in zip(batch.problems, batch.prompts):
            assert prompt == dm.tokenizer.encode_prompt(p.problem_text)
            if spec.split == "test":
                assert p.bucket() >= boundary  # test templates only
            elif spec.split == "train":
                assert p.bucket() < boundary
            if spec.up_to:
                assert 1 <= p.op <= spec.op
            elif not spec.reask:
                assert p.op == spec.op
            assert p.reask == spec.reask


def test_eval_set_is_fixed_and_sharded_by_batches(dm: IGSMDataModule) -> None:
    def items(ds: EvalSet) -> dict:
        out = {}
        for k in range(len(ds)):
            b = ds[k]
            for i, p in zip(b.indices, b.problems):
                out[(b.bucket, i)] = (p.problem_text, p.solution, tuple(b.indices))
        return out

    single = items(eval_set(dm))
    assert len(single) == len(dm.buckets) * dm.eval_cfg.n
    assert items(eval_set(dm)) == single  # deterministic
    for world in (2, 3):
        shards = [items(eval_set(dm, r, world)) for r in range(world)]
        assert sum(len(s) for s in shards) == len(single)  # every problem exactly once
        merged = {k: v for s in shards for k, v in s.items()}
        assert merged == single  # same problems, in the same batches, as one process


def test_up_to_bucket_skips_ops_without_test_templates() -> None:
    dm = datamodule("eval.buckets=[<=3]", "eval.n=12")
    ops = {p.op for b in (eval_set(dm)[k] for k in range(len(eval_set(dm)))) for p in b.problems}
    assert ops and ops <= {2, 3}  # op = 1 has no test template


def test_datamodule_without_trainer_is_rank_zero_from_the_start(dm: IGSMDataModule) -> None:
    loader = dm.train_dataloader()
    assert loader.dataset.rank == 0 and loader.dataset.start_batch == 0
    assert len(dm.val_dataloader().dataset) == len(eval_set(dm))


def test_bucket_labels_key_the_eval_problems() -> None:
    a = datamodule("eval.buckets=[3]")
    b = datamodule("eval.buckets=[3:test,4]")
    assert parse_bucket("3:test").label == parse_bucket("3").label
    assert eval_set(a)[0].problems[0].problem_text == eval_set(b)[0].problems[0].problem_text
