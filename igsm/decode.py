"""Batched greedy decoding with a KV cache (evaluation of generated solutions, docs/spec.md#12-verification).

Prompts are sorted by length so each batch holds similar lengths (little padding), left-padded
onto one position grid, prefilled in one forward pass, then extended one token per step from
the cache. Left padding is exact: padded keys are masked out, and RoPE scores depend only on
relative positions (see :mod:`igsm.model`).

A batch that runs out of memory is decoded again in halves (:func:`decode_in_chunks`,
:func:`greedy_decode_fitting`). Solving problems (decode, parse, verify, count) is :mod:`igsm.solve`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Optional

import torch

from igsm.model import GPT

STOP_CHECK_EVERY = 8  # steps between "has every row stopped?" checks; each check syncs the GPU


# no_grad, not inference_mode: under inference_mode autocast's weight cache is bypassed, so every
# step would cast every block's weights to bf16 again (as much memory traffic as the step itself).
@torch.no_grad()
def greedy_decode(
    model: GPT,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    stop_ids: Iterable[int],
    pad_id: int,
    batch_size: int = 256,
    fresh_letters: Optional[tuple[int, list[int]]] = None,
) -> list[list[int]]:
    """Per prompt, in input order: the new token ids up to and including the first stop token
    (or max_new_tokens of them). Runs on the model's device and in its dtype, or in the active
    autocast dtype; the model is put in eval mode for the call and restored afterwards.

    ``fresh_letters = (define_id, letter_ids)``: right after ``define_id`` (" as"), the argmax
    skips the letters this row has already defined (``eval.fresh_letters``; plain greedy when None).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    stop_ids = set(stop_ids)

    # Longest first: a batch that does not fit in memory fails at once, not at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    results: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            generated = _decode_batch(model, [prompts[i] for i in rows], max_new_tokens, stop_ids, pad_id,
                                      fresh_letters)
            for i, tokens in zip(rows, generated):
                results[i] = tokens
    finally:
        model.train(was_training)
    return results


def _decode_batch(
    model: GPT, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int], pad_id: int,
    fresh_letters: Optional[tuple[int, list[int]]] = None,
) -> list[list[int]]:
    """Greedy decoding of one batch; returns each row's tokens cut after its first stop token."""
    device = model.wte.weight.device
    B, P = len(prompts), max(len(p) for p in prompts)

    idx = torch.full((B, P), pad_id, dtype=torch.long)  # [B, P]
    valid = torch.zeros(B, P, dtype=torch.bool)  # [B, P]
    for row, prompt in enumerate(prompts):
        idx[row, P - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        valid[row, P - len(prompt) :] = True
    idx, valid = idx.to(device), valid.to(device)

    # The cache holds k and v as attention produces them: the autocast dtype when one is active.
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    # The last generated token is never fed back, so P + max_new_tokens - 1 positions suffice.
    cache = model.new_kv_cache(B, P + max_new_tokens - 1, device=device, dtype=dtype)
    # Membership by table lookup (a gather), not isin or boolean-mask indexing: the step stays
    # free of host syncs; the only sync is the "all stopped?" check every STOP_CHECK_EVERY steps.
    is_stop = _id_table(stop_ids, model.vocab_size, device)  # [vocab + 1]
    out = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)  # [B, N]
    stopped = torch.zeros(B, dtype=torch.bool, device=device)  # [B]

    if fresh_letters is not None:
        define_id, letter_ids = fresh_letters
        is_letter = _id_table(letter_ids, model.vocab_size, device)  # [vocab + 1]
        defined = torch.zeros(B, model.vocab_size, dtype=torch.bool, device=device)  # [B, vocab]
        prev = idx[:, -1]  # [B]

    logits = model.forward_cached(idx, cache, valid)  # [B, padded_vocab]
    for t in range(max_new_tokens):
        scores = logits[:, : model.vocab_size]  # [B, vocab]; never a padding-vocab id
        if fresh_letters is not None:
            naming = (prev == define_id)[:, None]  # [B, 1]: this token names a new letter
            scores = scores.masked_fill(defined & naming, float("-inf"))
        next_id = scores.argmax(dim=-1, keepdim=True)  # [B, 1]
        if fresh_letters is not None:
            new_letter = naming & is_letter[next_id]  # [B, 1]
            defined.scatter_(1, next_id, defined.gather(1, next_id) | new_letter)
            prev = next_id[:, 0]
        out[:, t : t + 1] = next_id
        stopped |= is_stop[next_id[:, 0]]
        if t == max_new_tokens - 1 or (t % STOP_CHECK_EVERY == STOP_CHECK_EVERY - 1 and stopped.all()):
            break
        logits = model.forward_cached(next_id, cache)  # [B, padded_vocab]

    # Rows that stopped keep decoding until the batch does; cut each after its first stop token.
    generated = []
    for row in out[:, : t + 1].tolist():
        cut = next((j + 1 for j, tok in enumerate(row) if tok in stop_ids), len(row))
        generated.append(row[:cut])
    return generated


def _id_table(ids: Iterable[int], vocab_size: int, device: torch.device) -> torch.Tensor:
    """A bool lookup table over token ids [max(vocab_size, max id + 1)]: True at ``ids``."""
    ids = sorted(set(ids))
    table = torch.zeros(max([vocab_size, *(i + 1 for i in ids)]), dtype=torch.bool)
    table[ids] = True
    return table.to(device)


def decode_in_chunks(decode: Callable[[list], list], prompts: list, chunk: int,
                     on_halve: Optional[Callable[[int, int], None]] = None) -> tuple[list, int]:
    """``decode`` over consecutive chunks of at most ``chunk`` prompts; a chunk that runs out of
    memory is retried in halves. Returns (the outputs in order, the chunk size that fitted), so the
    caller can start there next time. Consecutive chunks are exactly the batches a run with the
    smaller ``eval.batch_size`` decodes when that size divides the batch (always for halvings of a
    power of two), so the results are the same. ``on_halve(old, new)`` is told of each halving."""
    out: list = []
    start = 0
    while start < len(prompts):
        part = prompts[start:start + chunk]
        try:
            out.extend(decode(part))
            start += len(part)
            continue
        except torch.OutOfMemoryError:
            if chunk == 1:
                raise
        # Out of the except block, so the failed attempt's tensors (held by the traceback) are freed.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if on_halve is not None:
            on_halve(chunk, chunk // 2)
        chunk //= 2
    return out, chunk


def greedy_decode_fitting(model: GPT, prompts: list[list[int]], *, batch_size: int,
                          on_halve: Optional[Callable[[int, int], None]] = None,
                          **decode_args) -> tuple[list[list[int]], int]:
    """:func:`greedy_decode` with ``batch_size``, halved when a batch runs out of memory
    (:func:`decode_in_chunks`); returns (generations in input order, the batch size that fitted).
    The chunks are taken longest first, as :func:`greedy_decode` orders its batches, so without a
    halving they are the batches ``greedy_decode(..., batch_size=batch_size)`` makes."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)

    def decode(part: list[list[int]]) -> list[list[int]]:
        return greedy_decode(model, part, batch_size=len(part), **decode_args)

    generations, fitted = decode_in_chunks(decode, [prompts[i] for i in order], batch_size, on_halve=on_halve)
    out: list[list[int]] = [[] for _ in prompts]
    for i, generated in zip(order, generations):
        out[i] = generated
    return out, fitted


__all__ = ["greedy_decode", "greedy_decode_fitting", "decode_in_chunks"]
