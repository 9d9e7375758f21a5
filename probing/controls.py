"""Controls that bound what a V-probe result can mean (README, "Reading the results"; docs/probing-controls.md).

* **Positive control** (:func:`finetune_positive`): a copy of the backbone whose weights are all
  fine-tuned, through a small linear head on the last layer's normalised ``[END]`` state, to
  predict the task's label on the probe's training pairs. That copy provably holds the label where
  the V-probe reads it, so the ordinary V-probe on it (frozen) must recover about the fine-tuned
  model's own test accuracy. A probe that reads nothing would score like the random-init control.
* **Negative control** (``shuffle_labels``, see :class:`probing.data.ProbeDataset`): every pair's
  label is replaced by the label of a random pair of another problem, a property no backbone holds
  by construction. Trained, random-init and positive then all score about the majority guess.
* **Solved split** (:func:`solved_flags`): whether the trained backbone solves each test problem
  (greedy decoding, strict verifier), so every task's accuracy can be split by it.

The fine-tuned copy reads the ``[END]`` state with its own code (the last ``end_id`` of each row,
not the data module's ``end`` index), so a bug in the probe's gathering cannot hide in both.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from igsm.config import GeneratorConfig
from igsm.model import GPT
from probing.data import PROBE_STREAM, PairCollate, ProbeDataset, probe_problem
from probing.labels import NUM_CLASSES, check_task


def last_end_index(idx: Tensor, end_id: int, pad_id: Optional[int] = None) -> Tensor:
    """Per row, the index of the last ``end_id`` token [B] (each probe input ends with one). With
    ``pad_id``, a row without one (the regret task reads its last token) gives its last non-pad index."""
    positions = torch.arange(idx.shape[1], device=idx.device)[None].expand_as(idx)  # [B, T]
    last_end = torch.where(idx == end_id, positions, -1).max(dim=1).values  # [B]
    if pad_id is None:
        return last_end
    last_real = torch.where(idx != pad_id, positions, 0).max(dim=1).values  # [B]
    return torch.where(last_end >= 0, last_end, last_real)


class FineTuned(nn.Module):
    """A backbone copy and the linear head it was fine-tuned with (the positive control)."""

    def __init__(self, model: GPT, n_classes: int, end_id: int, pad_id: Optional[int] = None):
        super().__init__()
        self.model, self.end_id, self.pad_id = model, end_id, pad_id
        self.head = nn.Linear(model.cfg.d_model, n_classes)

    def forward(self, idx: Tensor) -> Tensor:
        """Class logits [B, C] read at each row's last ``[END]``."""
        out = self.model(idx, output_hidden_states=True, compute_logits=False)
        rows = torch.arange(idx.shape[0], device=idx.device)
        h = self.model.ln_f(out.hidden_states[-1][rows, last_end_index(idx, self.end_id, self.pad_id)])  # [B, d]
        return self.head(h.to(self.head.weight.dtype))


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def finetune_positive(backbone: GPT, tokenizer, gen_cfg: GeneratorConfig, task: str, *, steps: int,
                      lr: float, batch_size: int, draws: int, seed: int, shuffle_labels: bool = False,
                      bf16: bool = False, device: str = "cpu", weight_decay: float = 0.0,
                      ops: Optional[Sequence[int]] = None) -> FineTuned:
    """A frozen copy of ``backbone`` fine-tuned (all weights) to hold ``task``'s label at ``[END]``.

    Trained on the probe's own training pairs (same problems, draws, label shuffling and ``ops``), AdamW
    with a linear decay to 0 over ``steps``. Returned on the CPU, in eval mode, without gradients.
    """
    check_task(task)
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FineTuned(copy.deepcopy(backbone), NUM_CLASSES[task], tokenizer.end_id, tokenizer.pad_id)
    model.to(dev).train()
    model.model.eval()  # no dropout: the copy must hold the label in the state the probe will read
    model.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (steps - s) / steps))
    per_batch = max(1, math.ceil(batch_size / max(1, draws // 2)))  # as ProbeDataModule's training loader
    data = ProbeDataset(tokenizer, gen_cfg, task, "train", steps * per_batch, seed, draws,
                        shuffle_labels=shuffle_labels, ops=ops)
    loader = DataLoader(data, batch_size=per_batch, collate_fn=PairCollate(tokenizer.pad_id, batch_size))
    for batch in loader:
        if batch["label"].numel() == 0:
            continue
        with _autocast(dev, bf16):
            logits = model(batch["idx"].to(dev))
        loss = F.cross_entropy(logits.float(), batch["label"].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.cpu().eval()
    model.requires_grad_(False)
    return model


def solved_flags(backbone: GPT, tokenizer, gen_cfg: GeneratorConfig, *, split: str, n: int, seed: int,
                 stream: str = PROBE_STREAM, batch_size: int = 64, fresh_letters: bool = False,
                 bf16: bool = False) -> list[Optional[bool]]:
    """Per probe test problem ``0..n-1``: does the backbone solve it (greedy, strict verifier)?

    None where the problem could not be generated or its prompt does not fit the model.
    """
    from igsm.generator import GenerationError
    from igsm.solve import solve

    problems, prompts, where = [], [], []
    out: list[Optional[bool]] = [None] * n
    block = backbone.cfg.block_size
    for i in range(n):
        try:
            problem = probe_problem(gen_cfg, seed, split, i, stream=stream)
        except GenerationError:
            continue
        prompt = tokenizer.encode_prompt(problem.problem_text)
        if len(prompt) >= block:
            continue
        problems.append(problem), prompts.append(prompt), where.append(i)
    if not problems:
        return out
    device = next(backbone.parameters()).device
    with _autocast(device, bf16):
        attempts, _ = solve(backbone, tokenizer, problems, prompts, max_new_tokens=block - max(map(len, prompts)),
                            batch_size=batch_size, fresh_letters=fresh_letters)
    for i, attempt in zip(where, attempts):
        out[i] = bool(attempt.report.correct)
    return out


__all__ = ["FineTuned", "finetune_positive", "last_end_index", "solved_flags"]
