"""V-probing: a frozen GPT, a rank-r update of its input embedding, linear heads
(docs/spec.md#13-the-probe-labels-and-regret).

One :class:`VProbe` LightningModule trains every requested task on every requested backbone at
once (one Trainer, one data pass, one set of synced metrics):

* **backbones**: ``trained`` (the checkpoint) and/or ``random_init`` (the same shape, freshly
  initialised with the probe seed: a control of docs/spec.md#13-the-probe-labels-and-regret);
* **per (backbone, task)** a :class:`TaskProbe`: ``U [padded_vocab, r]`` (zeros) and
  ``V [r, d]`` (normal), so ``E + U V`` starts as the frozen model's embedding; plus one linear
  head on the last layer, or one per layer with ``layers="all"``.

Choices (docs/probing.md, "What is trained (and what is not)"):

* **Normalisation.** Each head reads a LayerNorm'd state, through a frozen LayerNorm of the
  backbone: the last layer (``hidden_states[-1]``, before the final norm) through ``ln_f``, the
  state the LM head reads; layer ``l < L`` through block ``l+1``'s ``ln_1``, the state the next
  block reads. No trainable parameters are added, and a linear head can undo the affine part, so
  this only improves conditioning (raw residual streams grow with depth).
* **Layers.** ``layers="all"`` adds heads on ``hidden_states[1..L-1]`` that share the probe's
  delta but read *detached* states: the delta is trained by the last-layer loss only, each lower
  head by its own loss. The last-layer probe is therefore exactly the ``layers="last"`` probe,
  and the layer-wise heads cost no extra backbone passes.
* **Freezing, three ways.** ``requires_grad_(False)`` on every backbone parameter; the optimizer
  gets the probes' parameters only; :meth:`VProbe.train` keeps the backbones in eval mode (no
  dropout) whatever Lightning sets.
* **Parameter count** per (backbone, task) probe: ``rank * (padded_vocab + d) + heads``, where
  ``padded_vocab`` is the embedding table's padded row count (``GPT.padded_vocab``, a multiple
  of 64) since ``U`` has one row per embedding row; a head is ``d * classes + classes``.
* **Memory.** ``checkpoint_activations=True`` recomputes each backbone pass in the backward
  (one extra forward) so only the ``[END]`` states are kept: every (backbone, task) pass of a
  step can then share one backward without holding a dozen activation graphs on the GPU.

Majority control: the best constant answer on the test pairs (every class is scored as a constant
guess, the best one is reported), logged next to the probes'; the training labels' majority class
is kept beside it. Binary tasks also report balanced accuracy, the mean of the accuracies on
positive and on negative pairs (0.5 for any constant answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchmetrics
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from igsm.config import ModelConfig
from igsm.model import GPT
from probing.labels import MAX_DISTANCE, NUM_CLASSES, TASKS, check_task

CONTROLS = {"none": ("trained",), "random_init": ("random_init",), "both": ("trained", "random_init")}
# column groups of the accuracy metric: all pairs, label 0, label 1, nece positives at distance t
G_ALL, G_NEG, G_POS, G_DIST = 0, 1, 2, 3
N_GROUPS = G_DIST + MAX_DISTANCE
SOLVED_GROUPS = ("solved", "unsolved")


# --------------------------------------------------------------------------------------------
# Metrics (synced across ranks by torchmetrics)
# --------------------------------------------------------------------------------------------

class GroupedAccuracy(torchmetrics.Metric):
    """Correct / total counts per (head, group); ``compute()`` returns both, summed over ranks.

    Groups: all pairs, label 0, label 1 (binary tasks) and, for nece, the positive pairs at
    distance t = 1..MAX_DISTANCE from the question (paper Result 8).
    """

    full_state_update = False

    def __init__(self, n_heads: int, binary: bool):
        super().__init__()
        self.binary = binary
        self.add_state("correct", torch.zeros(n_heads, N_GROUPS, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(n_heads, N_GROUPS, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, label: Tensor, dist: Tensor) -> None:
        """preds [H, B] per head; label [B]; dist [B] (-1 = no distance group)."""
        ok = (preds == label[None]).long()  # [H, B]
        masks = [torch.ones_like(label, dtype=torch.bool)]
        if self.binary:
            masks += [label == 0, label == 1]
        else:
            masks += [torch.zeros_like(label, dtype=torch.bool)] * 2
        positive = label == 1
        masks += [positive & (dist == t) for t in range(1, MAX_DISTANCE + 1)]
        m = torch.stack(masks, dim=1).long()  # [B, G]
        # A sum of products, not ok @ m: CUDA has no integer matmul (addmm_cuda for 'Long').
        self.correct += (ok[:, :, None] * m[None]).sum(1)  # [H, B, G] -> [H, G]
        self.total += m.sum(0)[None].expand_as(self.total)

    def compute(self) -> tuple[Tensor, Tensor]:
        return self.correct, self.total


class ClassCounts(torchmetrics.Metric):
    """Histogram of the training labels (for the majority-guess control)."""

    full_state_update = False

    def __init__(self, n_classes: int):
        super().__init__()
        self.add_state("counts", torch.zeros(n_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, label: Tensor) -> None:
        # Not torch.bincount: its output size depends on the largest label, a host sync on CUDA.
        classes = torch.arange(self.counts.numel(), device=label.device)  # [C]
        self.counts += (label[:, None] == classes).sum(0)  # [B, C] -> [C]

    def compute(self) -> Tensor:
        return self.counts


def _acc(correct: Tensor, total: Tensor) -> Optional[float]:
    return float(correct) / float(total) if int(total) > 0 else None


def balanced_accuracy(acc_pos: Optional[float], acc_neg: Optional[float]) -> Optional[float]:
    """The mean of the accuracies on positive and on negative pairs: 0.5 for any constant answer,
    whatever the label balance (None unless both classes occur)."""
    return None if acc_pos is None or acc_neg is None else (acc_pos + acc_neg) / 2


# --------------------------------------------------------------------------------------------
# Loading a backbone
# --------------------------------------------------------------------------------------------

class Backbone(NamedTuple):
    """A trained GPT and what it was trained with."""

    model: GPT  # frozen, eval mode
    tokenizer: Any  # igsm.tokenizer.Tokenizer
    train_config: Any  # igsm.config.TrainConfig, resolved
    path: str


def load_backbone(path: str | Path, map_location: str = "cpu") -> Backbone:
    """A ``train.py`` checkpoint (or a transformers folder, see igsm.hf) -> its GPT (eval mode,
    frozen), tokenizer and resolved config.

    Loaded through :class:`igsm.lit.GPTLitModule` (its hyper-parameters hold the resolved config
    and the tokenizer's ``to_dict()``), so the probe reads checkpoints exactly as training wrote them.
    """
    if Path(path).is_dir():  # a transformers folder (python -m igsm export, or trained elsewhere)
        from igsm.hf import load_pretrained

        pre = load_pretrained(path)
        return Backbone(freeze(pre.model.to(map_location)), pre.tokenizer, pre.train_config, str(path))
    from igsm.lit import GPTLitModule

    lit = GPTLitModule.load_from_checkpoint(str(path), map_location=map_location, weights_only=False)
    return Backbone(freeze(lit.model), lit.tokenizer, lit.cfg, str(path))


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients (the backbone's first two freezes)."""
    model.eval()
    model.requires_grad_(False)
    return model


def random_backbone(cfg: ModelConfig, vocab_size: int, seed: int) -> GPT:
    """A GPT of the same shape, initialised from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT(cfg, vocab_size)
    return freeze(model)


# --------------------------------------------------------------------------------------------
# The probe of one task on one backbone
# --------------------------------------------------------------------------------------------

class TaskProbe(nn.Module):
    """Rank-r embedding delta ``(U, V)`` and linear heads (keys: layer numbers 1..L as strings)."""

    def __init__(self, padded_vocab: int, d: int, rank: int, n_classes: int, layers: Sequence[int],
                 v_init_std: float = 0.02):
        super().__init__()
        self.U = nn.Parameter(torch.zeros(padded_vocab, rank))  # zero: the probe starts as the frozen model
        self.V = nn.Parameter(torch.randn(rank, d) * v_init_std)
        self.heads = nn.ModuleDict({str(l): nn.Linear(d, n_classes) for l in layers})

    @property
    def layers(self) -> list[int]:
        return [int(k) for k in self.heads]


def expected_trainable(padded_vocab: int, d: int, rank: int, n_classes: int, n_heads: int = 1) -> int:
    """rank * (padded_vocab + d) + heads * (d * classes + classes)."""
    return rank * (padded_vocab + d) + n_heads * (d * n_classes + n_classes)


# --------------------------------------------------------------------------------------------
# The LightningModule
# --------------------------------------------------------------------------------------------

class VProbe(pl.LightningModule):
    """Probes of several tasks on a frozen trained backbone and/or a random-init control."""

    def __init__(self, backbone: GPT, tasks: Sequence[str] = TASKS, *, rank: int = 8, layers: str = "last",
                 control: str = "both", lr: float = 2e-3, weight_decay: float = 0.01, warmup_steps: int = 0,
                 betas: tuple[float, float] = (0.9, 0.999), v_init_std: float = 0.02, seed: int = 0,
                 checkpoint_activations: bool = False, length_chunks: int = 1,
                 positive: Optional[dict[str, nn.Module]] = None, backbone_ckpt: Optional[str] = None,
                 probe_config: Optional[dict] = None):
        """``positive``: per task, a :class:`probing.controls.FineTuned` copy of the backbone that
        holds the task's label (the positive control); it is probed as the backbone "positive".
        ``backbone_ckpt`` (where the backbone was loaded from) and ``probe_config`` (probe.py's
        resolved config) go into its checkpoints: a resume reloads that backbone and names the
        settings that changed."""
        super().__init__()
        if layers not in ("last", "all"):
            raise ValueError(f"layers={layers!r}: 'last' or 'all'")
        if control not in CONTROLS:
            raise ValueError(f"control={control!r}: one of {list(CONTROLS)}")
        self.tasks = [check_task(t) for t in tasks]
        self.rank, self.layers_mode, self.control = rank, layers, control
        self.lr, self.weight_decay, self.warmup_steps, self.betas = lr, weight_decay, warmup_steps, tuple(betas)
        self.checkpoint_activations = checkpoint_activations
        self.length_chunks = max(1, int(length_chunks))
        self.backbone_ckpt, self.probe_config = backbone_ckpt, probe_config
        self.save_hyperparameters(ignore=["backbone", "positive", "backbone_ckpt", "probe_config"])

        freeze(backbone)
        self.n_layer, self.d = backbone.cfg.n_layer, backbone.cfg.d_model
        self.padded_vocab = backbone.padded_vocab
        self.backbone_names = list(CONTROLS[control])
        bbs = {}
        for name in self.backbone_names:
            bbs[name] = backbone if name == "trained" else random_backbone(backbone.cfg, backbone.vocab_size, seed)
        self.backbones = nn.ModuleDict(bbs)
        self.positive = nn.ModuleDict()
        if positive is not None:
            missing = [t for t in self.tasks if t not in positive]
            if missing:
                raise ValueError(f"positive control: no fine-tuned backbone for tasks {missing}")
            self.positive = nn.ModuleDict({t: freeze(positive[t]) for t in self.tasks})
            self.backbone_names.append("positive")
        self.head_layers = list(range(1, self.n_layer + 1)) if layers == "all" else [self.n_layer]

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.probes = nn.ModuleDict({
                self.key(b, t): TaskProbe(self.padded_vocab, self.d, rank, NUM_CLASSES[t], self.head_layers, v_init_std)
                for b in self.backbone_names for t in self.tasks
            })
        n_heads = len(self.head_layers)
        self.test_acc = nn.ModuleDict({self.key(b, t): GroupedAccuracy(n_heads, NUM_CLASSES[t] == 2)
                                       for b in self.backbone_names for t in self.tasks})
        # the constant guesses: head c always answers class c (the best one is the majority control)
        self.majority_acc = nn.ModuleDict({t: GroupedAccuracy(NUM_CLASSES[t], NUM_CLASSES[t] == 2) for t in self.tasks})
        # test accuracy split by whether the trained backbone solves the pair's problem (last head)
        self.solved_acc = nn.ModuleDict({
            f"{b}__{t}__{s}": GroupedAccuracy(NUM_CLASSES[t] if b == "majority" else 1, NUM_CLASSES[t] == 2)
            for b in [*self.backbone_names, "majority"] for t in self.tasks for s in SOLVED_GROUPS})
        # the positive control's own head: what the fine-tuned copy holds, for the probe to recover
        self.finetuned_acc = nn.ModuleDict({t: GroupedAccuracy(1, NUM_CLASSES[t] == 2) for t in self.positive})
        self.train_counts = nn.ModuleDict({t: ClassCounts(NUM_CLASSES[t]) for t in self.tasks})
        self.majority_class: dict[str, int] = {}  # of the training labels
        self.train_positive_rate: dict[str, Optional[float]] = {}
        self.results: dict = {}

    @staticmethod
    def key(backbone: str, task: str) -> str:
        return f"{backbone}__{task}"

    # -- freezing ------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> VProbe:
        """Lightning calls ``train()`` before fitting and after every validation: the probes follow
        it, the backbones never leave eval mode (dropout stays off)."""
        super().train(mode)
        for bb in self.all_backbones():
            bb.eval()
        return self

    def all_backbones(self) -> list[nn.Module]:
        return [*self.backbones.values(), *self.positive.values()]

    def backbone_for(self, backbone: str, task: str) -> GPT:
        """The frozen GPT that ``backbone``'s probe of ``task`` reads."""
        return self.positive[task].model if backbone == "positive" else self.backbones[backbone]

    def trainable_parameters(self, backbone: Optional[str] = None, task: Optional[str] = None) -> list[nn.Parameter]:
        out = []
        for k, probe in self.probes.items():
            b, t = k.split("__")
            if (backbone is None or b == backbone) and (task is None or t == task):
                out += [p for p in probe.parameters() if p.requires_grad]
        return out

    def configure_optimizers(self):
        params = self.trainable_parameters()
        assert not any(p.requires_grad for bb in self.all_backbones() for p in bb.parameters())
        opt = torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.max_steps)) if self.trainer is not None and self.trainer.max_steps > 0 else 1
        warm = self.warmup_steps

        def schedule(step: int) -> float:  # linear warm-up (none by default), linear decay to 0
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (total - step) / max(1, total - warm))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- forward -------------------------------------------------------------------------------

    def end_states(self, backbone: str, task: str, idx: Tensor, end: Tensor, *,
                   detach_lower: bool = True) -> list[Tensor]:
        """The normalised hidden states at ``[END]`` for each head layer: a list of [B, d]."""
        bb = self.backbone_for(backbone, task)
        probe = self.probes[self.key(backbone, task)]
        rows = torch.arange(idx.shape[0], device=idx.device)

        def run(U: Tensor, V: Tensor) -> Tensor:
            out = bb(idx, embed_delta=(U, V), output_hidden_states=True, compute_logits=False)
            return torch.stack([out.hidden_states[l][rows, end] for l in self.head_layers])  # [H, B, d]

        if self.checkpoint_activations and torch.is_grad_enabled():
            states = checkpoint(run, probe.U, probe.V, use_reentrant=False)
        else:
            states = run(probe.U, probe.V)
        out = []
        for i, l in enumerate(self.head_layers):
            h = states[i]  # [B, d]
            if l == self.n_layer:
                out.append(bb.ln_f(h))
            else:
                out.append(bb.blocks[l].ln_1(h.detach() if detach_lower else h))
        return out

    def logits(self, backbone: str, task: str, idx: Tensor, end: Tensor,
               end_host: Optional[list[int]] = None) -> list[Tensor]:
        """Per head layer, the class logits [B, C].

        With ``length_chunks > 1`` the rows are sorted by length and run in that many chunks, each
        cut to its own longest row: the same result with less padding (probe inputs vary a lot in
        length; worth it on CPU, where a smaller matmul costs proportionally less). The chunks'
        lengths come from ``end_host`` (``end`` as a list, read before the batch went to the GPU:
        :meth:`on_before_batch_transfer`), else from one device-to-host copy of ``end``.
        """
        k = min(self.length_chunks, idx.shape[0])
        if k <= 1:
            return self._logits(backbone, task, idx, end)
        order = torch.argsort(end)
        chunks = torch.tensor_split(order, k)
        lengths = chunk_lengths(end.tolist() if end_host is None else end_host, k)
        parts = []
        for rows, T in zip(chunks, lengths):
            parts.append(self._logits(backbone, task, idx[rows, :T], end[rows]))
        inverse = torch.argsort(order)
        return [torch.cat([p[h] for p in parts])[inverse] for h in range(len(self.head_layers))]

    def _logits(self, backbone: str, task: str, idx: Tensor, end: Tensor) -> list[Tensor]:
        probe = self.probes[self.key(backbone, task)]
        states = self.end_states(backbone, task, idx, end)
        return [probe.heads[str(l)](h.float() if h.dtype != probe.heads[str(l)].weight.dtype else h)
                for l, h in zip(self.head_layers, states)]

    @torch.no_grad()
    def predict(self, task: str, idx: Tensor, end: Tensor, backbone: str = "trained") -> Tensor:
        """The last-layer head's predicted class per row [B]."""
        return self.logits(backbone, task, idx, end)[-1].argmax(-1)

    # -- training ------------------------------------------------------------------------------

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Each pair batch's ``end`` also as a list (``end_host``), read on the CPU before Lightning
        moves the batch to the GPU: the length chunks need it on the host (:meth:`logits`), and
        reading it from the GPU would be a host sync per step."""
        if isinstance(batch, dict) and torch.is_tensor(batch.get("end")):
            return {**batch, "end_host": batch["end"].tolist()}
        if isinstance(batch, dict):
            return {k: self.on_before_batch_transfer(v, dataloader_idx) for k, v in batch.items()}
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.on_before_batch_transfer(v, dataloader_idx) for v in batch)
        return batch

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if isinstance(batch, (tuple, list)):  # CombinedLoader may hand (batch, idx, dataloader_idx)
            batch = batch[0]
        total = torch.zeros((), device=self.device)
        for task in self.tasks:
            b = batch[task]
            if b["label"].numel() == 0:  # keep every parameter in the graph (DDP) at zero cost
                total = total + sum(p.sum() * 0 for p in self.trainable_parameters(task=task))
                continue
            self.train_counts[task].update(b["label"])
            for name in self.backbone_names:
                per_layer = self.logits(name, task, b["idx"], b["end"], b.get("end_host"))
                losses = [F.cross_entropy(lg.float(), b["label"]) for lg in per_layer]
                total = total + sum(losses)
                tag = f"probe/{task}" + ("" if name == "trained" else f"/{name}")
                self.log(f"{tag}/train_loss", losses[-1], on_step=True, on_epoch=False, batch_size=len(b["label"]))
        return total

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Probe checkpoints hold the probes only: the trained backbone is its own checkpoint
        (``backbone_ckpt``) and the random-init control is rebuilt from the seed. They also hold
        the training-label counts of the majority control, summed over ranks (every rank builds
        the checkpoint, rank 0 writes it), which metrics leave out of ``state_dict``."""
        state = checkpoint.get("state_dict", {})
        for k in [k for k in state if k.startswith(("backbones.", "positive."))]:
            del state[k]
        checkpoint["backbone_ckpt"] = self.backbone_ckpt
        checkpoint["probe_config"] = self.probe_config
        # An all-reduce of our own, not compute(): compute() returns a cached value on a rank that
        # has had no label since its last call, and that rank would then skip the collective.
        counts = {t: self.train_counts[t].counts.detach().clone() for t in self.tasks}
        if self._trainer is not None and self.trainer.world_size > 1:
            counts = {t: self.trainer.strategy.reduce(c, reduce_op="sum") for t, c in counts.items()}
        checkpoint["train_counts"] = {t: c.cpu() for t, c in counts.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resuming (probe.py ``ckpt_path``): the frozen backbones are this module's own (loaded from
        ``backbone_ckpt`` or rebuilt), so their weights are put back before Lightning's strict load;
        the label counts go to rank 0 (the other ranks start from zero: the sum is the same)."""
        state = checkpoint.setdefault("state_dict", {})
        for k, v in self.state_dict().items():
            if k.startswith(("backbones.", "positive.")):
                state.setdefault(k, v)
        for t, counts in checkpoint.get("train_counts", {}).items():
            if t in self.train_counts:
                own = self.train_counts[t].counts
                own.copy_(counts.to(own.device) if self.global_rank == 0 else torch.zeros_like(own))

    def on_train_epoch_start(self) -> None:  # belt and braces: Lightning may call train() on submodules
        for bb in self.all_backbones():
            bb.eval()

    # -- testing -------------------------------------------------------------------------------

    def on_test_start(self) -> None:
        for task in self.tasks:
            counts = self.train_counts[task].compute()
            self.majority_class[task] = int(counts.argmax()) if int(counts.sum()) > 0 else 0
            self.train_positive_rate[task] = _acc(counts[1], counts.sum()) if len(counts) == 2 else None

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        task = self.tasks[dataloader_idx]
        if batch["label"].numel() == 0:
            return
        label, dist = batch["label"], batch["dist"]
        solved = batch.get("solved")
        for name in self.backbone_names:
            logits = self.logits(name, task, batch["idx"], batch["end"], batch.get("end_host"))
            preds = torch.stack([lg.argmax(-1) for lg in logits])
            self.test_acc[self.key(name, task)].update(preds, label, dist)
            self._update_solved(name, task, preds[-1:], label, dist, solved)
        constants = torch.arange(NUM_CLASSES[task], device=label.device)[:, None].expand(-1, len(label))  # [C, B]
        self.majority_acc[task].update(constants, label, dist)
        self._update_solved("majority", task, constants, label, dist, solved)
        if task in self.positive:
            own = self.positive[task](batch["idx"]).argmax(-1)[None]  # [1, B]
            self.finetuned_acc[task].update(own, label, dist)

    def _update_solved(self, name: str, task: str, preds: Tensor, label: Tensor, dist: Tensor,
                       solved: Optional[Tensor]) -> None:
        """preds [H, B] (H = 1, or one constant per class for the majority); solved [B] (1, 0, -1 =
        unknown) or None (no solved split this run)."""
        if solved is None:
            return
        self._solved_split = True
        for group, flag in zip(SOLVED_GROUPS, (1, 0)):
            rows = solved == flag
            self.solved_acc[f"{name}__{task}__{group}"].update(preds[:, rows], label[rows], dist[rows])

    def on_test_epoch_end(self) -> None:
        results: dict = {"tasks": {}}
        scalars: dict[str, float] = {}
        for task in self.tasks:
            entry: dict = {}
            binary = NUM_CLASSES[task] == 2
            maj_c, maj_t = self.majority_acc[task].compute()
            entry["n_test_pairs"] = int(maj_t[0, G_ALL])
            best = int(maj_c[:, G_ALL].argmax())  # the best constant on the test pairs (ties: the lower class)
            for name in self.backbone_names:
                correct, total = self.test_acc[self.key(name, task)].compute()
                last = len(self.head_layers) - 1
                sub = {"acc": _acc(correct[last, G_ALL], total[last, G_ALL])}
                if binary:
                    sub["acc_neg"] = _acc(correct[last, G_NEG], total[last, G_NEG])
                    sub["acc_pos"] = _acc(correct[last, G_POS], total[last, G_POS])
                    sub["n_pos"] = int(total[last, G_POS])
                    sub["balanced_acc"] = balanced_accuracy(sub["acc_pos"], sub["acc_neg"])
                if len(self.head_layers) > 1:
                    sub["layers"] = {str(l): _acc(correct[i, G_ALL], total[i, G_ALL])
                                     for i, l in enumerate(self.head_layers)}
                if task == "nece":
                    sub["by_distance"] = {
                        "layers": list(self.head_layers),
                        "distances": list(range(1, MAX_DISTANCE + 1)),
                        "acc": [[_acc(correct[i, G_DIST + t], total[i, G_DIST + t]) for t in range(MAX_DISTANCE)]
                                for i in range(len(self.head_layers))],
                        "n": [int(total[0, G_DIST + t]) for t in range(MAX_DISTANCE)],
                    }
                entry[name] = sub
                prefix = f"probe/{task}" if name == "trained" else f"probe/{task}/{name}"
                for k in ("acc", "acc_pos", "acc_neg", "balanced_acc"):
                    if sub.get(k) is not None:
                        scalars[f"{prefix}/{k}"] = sub[k]
                for l, a in sub.get("layers", {}).items():
                    if a is not None:
                        scalars[f"{prefix}/layer_{l}/acc"] = a
            entry["majority"] = {"acc": _acc(maj_c[best, G_ALL], maj_t[best, G_ALL]), "class": best,
                                 "train_class": self.majority_class.get(task, 0)}
            if binary:
                entry["majority"]["balanced_acc"] = balanced_accuracy(_acc(maj_c[best, G_POS], maj_t[best, G_POS]),
                                                                      _acc(maj_c[best, G_NEG], maj_t[best, G_NEG]))
                entry["test_positive_rate"] = _acc(maj_t[0, G_POS], maj_t[0, G_ALL])
                entry["train_positive_rate"] = self.train_positive_rate.get(task)
            if entry["majority"]["acc"] is not None:
                scalars[f"probe/{task}/majority/acc"] = entry["majority"]["acc"]
            # the flat per-task summary (docs/probing.md, "Reading the results")
            entry["acc"] = entry.get("trained", {}).get("acc")
            entry["random_init_acc"] = entry.get("random_init", {}).get("acc")
            entry["majority_acc"] = entry["majority"]["acc"]
            if binary:
                entry["balanced_acc"] = entry.get("trained", {}).get("balanced_acc")
                entry["random_init_balanced_acc"] = entry.get("random_init", {}).get("balanced_acc")
            if task in self.positive:  # the positive control (probing.controls)
                own_c, own_t = self.finetuned_acc[task].compute()
                entry["positive"]["finetuned_acc"] = _acc(own_c[0, G_ALL], own_t[0, G_ALL])
                if binary:
                    entry["positive"]["finetuned_balanced_acc"] = balanced_accuracy(
                        _acc(own_c[0, G_POS], own_t[0, G_POS]), _acc(own_c[0, G_NEG], own_t[0, G_NEG]))
                    entry["positive_balanced_acc"] = entry["positive"]["balanced_acc"]
                    entry["positive_finetuned_balanced_acc"] = entry["positive"]["finetuned_balanced_acc"]
                entry["positive_acc"] = entry["positive"]["acc"]
                entry["positive_finetuned_acc"] = entry["positive"]["finetuned_acc"]
                if entry["positive_finetuned_acc"] is not None:
                    scalars[f"probe/{task}/positive/finetuned_acc"] = entry["positive_finetuned_acc"]
            by_solved = self._solved_entry(task, scalars)
            if by_solved is not None:
                entry["by_solved"] = by_solved
            results["tasks"][task] = entry
        for k, v in scalars.items():  # already summed over ranks: sync_dist only averages equal values
            self.log(k, v, sync_dist=True, add_dataloader_idx=False)
        self.results = results  # probe.py draws the nece-by-distance grid (igsm.report.nece_by_distance_figure)

    def _solved_entry(self, task: str, scalars: dict[str, float]) -> Optional[dict]:
        """``{"solved": {...}, "unsolved": {...}}``: per group the pairs and every backbone's and the
        majority's accuracy (last head); None when this run has no solved split."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        # every rank must take the same branch (compute() syncs): ask the data module when there is one
        split = (datamodule.solved is not None if hasattr(datamodule, "solved")
                 else getattr(self, "_solved_split", False))
        if not split:
            return None
        out = {}
        for group in SOLVED_GROUPS:
            sub: dict = {}
            for name in [*self.backbone_names, "majority"]:
                correct, total = self.solved_acc[f"{name}__{task}__{group}"].compute()
                sub["n_test_pairs"] = int(total[0, G_ALL])
                head = int(correct[:, G_ALL].argmax())  # the majority: the group's best constant
                acc = _acc(correct[head, G_ALL], total[head, G_ALL])
                sub["acc" if name == "trained" else f"{name}_acc"] = acc
                if acc is not None:
                    prefix = f"probe/{task}" if name == "trained" else f"probe/{task}/{name}"
                    scalars[f"{prefix}/{group}/acc"] = acc
            out[group] = sub
        return out


def chunk_lengths(ends: list[int], k: int) -> list[int]:
    """The length (longest ``end`` + 1) of each of the ``k`` chunks ``torch.tensor_split`` makes of
    the rows sorted by ``end``: a chunk's longest row is its last, whatever order ties take."""
    ordered = sorted(ends)
    n, lengths, start = len(ordered), [], 0
    for i in range(k):
        size = n // k + (1 if i < n % k else 0)  # tensor_split's chunk sizes
        start += size
        lengths.append(ordered[start - 1] + 1)
    return lengths



__all__ = [
    "VProbe", "TaskProbe", "Backbone", "load_backbone", "random_backbone", "freeze", "expected_trainable",
    "GroupedAccuracy", "ClassCounts", "balanced_accuracy", "CONTROLS",
    "SOLVED_GROUPS",
]
