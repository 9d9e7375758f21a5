"""GPTLitModule: the LightningModule around :class:`igsm.model.GPT` (loss, optimizer, schedule,
logging, evaluation). The network itself is a plain ``nn.Module`` in :mod:`igsm.model`.

Training: next-token cross-entropy on packed windows (targets -100 carry no loss; with
``data.letter_loss=uniform`` the target of a new solution letter is the uniform distribution over
the problem's unused letters, :func:`uniform_letter_loss`), AdamW
β = (0.9, 0.98) with weight decay on matmul weights only (``optim.name=muon``: Muon on the hidden
matrices, :mod:`igsm.optim`), linear warm-up then cosine decay to ``min_lr_ratio`` × each group's
peak, stepped every optimizer step. Logged: ``train/loss``, ``train/grad_norm``,
``train/lr/*`` (LearningRateMonitor), ``train/tokens_per_s`` (all ranks together) and
``train/mfu`` (per device, against the bf16 dense peak of H100/H200/A100; absent on CPU).

Evaluation (validation loop): each rank greedy-decodes its share of the fixed evaluation sets
(:class:`igsm.data.EvalSet`), grades every generation with the full-solution verifier, and adds
counts to one :class:`EvalScores` metric per bucket; the counts are summed across ranks when
computed. Logged per bucket (``<bucket>`` is a label such as ``op<=15``, ``op=20``,
``reask_op=20``, ``train_op<=2``): ``eval/<bucket>/accuracy``, ``eval/<bucket>/answer_accuracy``,
``eval/<bucket>/unnecessary_per_correct``, plus a few decoded examples as TensorBoard text.
Rank 0 writes ``eval.json`` into the run folder (the latest evaluation), a list with one entry per
bucket, and appends the same entries, one JSON line each, to ``eval_history.jsonl`` (every
evaluation of the run, resumes included: the learning curve)::

    {"bucket": "op=20", "split": "test", "op": 20, "reask": false, "n": 4096,
     "accuracy": 0.91, "answer_accuracy": 0.93, "unnecessary_params_per_correct": 0.01,
     "errors": {"wrong_arithmetic": 201, "not_ready": 168}, "retractions_per_problem": 0.0,
     "solutions_with_retractions": 0, "true_regrets": 0, "false_regrets": 0, "step": 100000}

``split`` is the template split the problems come from ("test" unless the bucket says
``:train``/``:any``); ``op`` is the forced op (an int) or ``"<=N"`` for a bucket drawn from the
training distribution with max_op = N; for reask buckets ``op`` is the op before re-asking.
``unnecessary_params_per_correct`` is null when no solution was correct; ``errors`` counts the wrong
solutions by the verifier's error kind (igsm.verify.ERROR_KINDS). The retraction counts are for
models trained on retry data (igsm.retry): retractions ``Define A as BACK.`` per problem, how many
solutions hold one, and how many retracted an A that was not computable yet (true regrets) or was
ready (false regrets), as the verifier counts them.

The checkpoint's hyper-parameters hold the resolved config and the tokenizer, so
``GPTLitModule.load_from_checkpoint(path)`` rebuilds model, tokenizer and evaluation sets.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections import deque
from functools import partial
from typing import Any, Optional

import lightning as L
import torch
import torch.nn as nn
from torchmetrics import Metric

from igsm.cli_config import config_from_dict
from igsm.config import BucketSpec, TrainConfig, parse_bucket
from igsm.data import EvalBatch
from igsm.decode import decode_in_chunks, greedy_decode
from igsm.faults import NonFiniteError
from igsm.model import GPT
from igsm.optim import MUON_GROUP, build_optimizer
from igsm.solve import Attempt, grade, tally
from igsm.tokenizer import Tokenizer, tokenizer_from_dict
from igsm.trainer import atomic_write, cpu_has_native_bf16
from igsm.verify import ERROR_KINDS, Tally

# Dense bf16 tensor-core peak per GPU (no sparsity), matched against torch.cuda.get_device_name;
# the first key found in the name wins (so "H100 PCIe" before "H100").
PEAK_BF16_FLOPS = (
    ("H200", 989e12),  # also GH200
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


def peak_flops(device: torch.device) -> Optional[float]:
    """The bf16 dense peak of a CUDA device from PEAK_BF16_FLOPS; None on CPU or unknown GPUs."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def lr_multiplier(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Factor on the peak lr after ``step`` optimizer steps: linear warm-up over ``warmup`` steps,
    then a half cosine from 1 to ``min_ratio`` at ``total`` steps (flat after)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay for matmul weights; none for biases, LayerNorm and embeddings (the
    tied output head is the embedding matrix, so it is not decayed either)."""
    no_decay_ids = {
        id(p) for m in model.modules() if isinstance(m, (nn.Embedding, nn.LayerNorm)) for p in m.parameters(False)
    }
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # shared (tied) parameters appear once
        if not p.requires_grad:
            continue
        (no_decay if id(p) in no_decay_ids or name.endswith("bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


RETRY_COUNTS = ("retractions", "with_retractions", "true_regrets", "false_regrets")
COUNTS = ("n", "correct", "answer_correct", "unnecessary", *RETRY_COUNTS)  # EvalScores' states besides errors


class EvalScores(Metric):
    """Counts of one evaluation bucket, summed over batches and ranks."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in COUNTS:
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("errors", default=torch.zeros(len(ERROR_KINDS), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, counts: Tally) -> None:
        """Add the counts of one batch's graded solutions (:func:`igsm.solve.tally`)."""
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(counts, name))
        for kind, count in counts.errors.items():
            self.errors[ERROR_KINDS.index(kind)] += count

    def compute(self) -> dict[str, Any]:
        counts: dict[str, Any] = {k: int(getattr(self, k)) for k in COUNTS}
        counts["errors"] = {kind: int(c) for kind, c in zip(ERROR_KINDS, self.errors.tolist()) if c}
        return counts


def bucket_entry(spec: BucketSpec, counts: dict[str, int], step: int) -> dict:
    """One eval.json entry (format in the module docstring)."""
    n, correct = counts["n"], counts["correct"]
    return {
        "bucket": spec.label,
        "split": spec.split,
        "op": f"<={spec.op}" if spec.up_to else spec.op,
        "reask": spec.reask,
        "n": n,
        "accuracy": correct / n if n else None,
        "answer_accuracy": counts["answer_correct"] / n if n else None,
        "unnecessary_params_per_correct": counts["unnecessary"] / correct if correct else None,
        "errors": counts.get("errors", {}),
        # retractions "Define A as BACK." the model wrote (retry data, igsm.retry)
        "retractions_per_problem": counts.get("retractions", 0) / n if n else None,
        "solutions_with_retractions": counts.get("with_retractions", 0),
        "true_regrets": counts.get("true_regrets", 0),
        "false_regrets": counts.get("false_regrets", 0),
        "step": step,
    }


class GPTLitModule(L.LightningModule):
    """Training and evaluation of one GPT. ``config``: a resolved TrainConfig as a dict;
    ``tokenizer``: ``Tokenizer.to_dict()``. Both are saved in the checkpoint."""

    def __init__(self, config: dict, tokenizer: dict) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # config.yaml in the run folder is the readable copy
        self.cfg: TrainConfig = config_from_dict(TrainConfig, config)
        self.tokenizer: Tokenizer = tokenizer_from_dict(tokenizer)
        self.model = GPT(self.cfg.model, self.tokenizer.vocab_size)
        self.buckets = [parse_bucket(b) for b in self.cfg.eval.buckets]
        self.eval_scores = nn.ModuleList(EvalScores() for _ in self.buckets)  # states never enter checkpoints
        self.last_eval: list[dict] = []  # eval.json entries of the latest evaluation
        self.last_eval_step: Optional[int] = None
        self._compiled_forward = None  # built on first use, in the process that trains
        self._compiled_letter_loss = None  # likewise, for data.letter_loss=uniform
        self._batch_times: deque = deque()
        self._peak_flops: Optional[float] = None  # set on_fit_start, with _flops_per_token
        self._flops_per_token = 0
        self._examples_logged: set[int] = set()
        self._letter_ids: Optional[torch.Tensor] = None  # token ids of a..zA..Z (letter_loss=uniform)
        self._losses_finite: Optional[torch.Tensor] = None  # this optimizer step's micro-batch losses so far
        self.nonfinite_skips = 0  # steps skipped under optim.on_nonfinite=skip (kept in checkpoints)
        self._eval_chunk: Optional[int] = None  # prompts decoded at once after an out-of-memory halving

    # -- forward and loss ------------------------------------------------------------------------

    @property
    def train_forward(self):
        """``model.forward``, compiled when ``model.compile`` is on. The compiled callable wraps the
        bound method and is kept out of the module tree, so checkpoint keys stay ``model.*``."""
        if not self.cfg.model.compile:
            return self.model.forward
        if self._compiled_forward is None:
            self._compiled_forward = torch.compile(self.model.forward)
        return self._compiled_forward

    @property
    def letter_loss(self):
        """:func:`uniform_letter_loss`, compiled when ``model.compile`` is on: fused, the fp32
        log-softmax over the [B, T, vocab] logits is never materialised (~10 GB at med sizes)."""
        if not self.cfg.model.compile:
            return uniform_letter_loss
        if self._compiled_letter_loss is None:
            self._compiled_letter_loss = torch.compile(uniform_letter_loss)
        return self._compiled_letter_loss

    def __getstate__(self) -> dict:  # ddp_spawn pickles the module: compiled callables do not travel
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state["_compiled_forward"] = None
        state["_compiled_letter_loss"] = None
        return state

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "letter_used" in batch:  # data.letter_loss=uniform
            logits = self.train_forward(batch["inputs"]).logits  # [B, T, padded_vocab]
            if self._letter_ids is None:
                self._letter_ids = torch.tensor(self.tokenizer.letter_slot_ids()[1], device=logits.device)
            loss = self.letter_loss(logits, batch["targets"], batch["letter_used"], self._letter_ids)
        else:
            loss = self.train_forward(batch["inputs"], batch["targets"]).loss  # inputs, targets [B, T]
        self.log("train/loss", loss, prog_bar=True)
        world = self.trainer.world_size if self._trainer is not None else 1
        return loss if world == 1 else loss * self.token_share(batch["targets"], world)

    def token_share(self, targets: torch.Tensor, world: int) -> torch.Tensor:
        """Weight of this rank's mean loss so that DDP's gradient average is the mean over every
        loss token of the (micro-)batch on all ranks, as in one process holding the whole batch
        (``W * n_rank / n_all``). Accumulated micro-batches still count equally, as Lightning does.

        Each rank's loss is a mean over its own tokens and DDP averages the ranks' gradients, so
        without this weight a token of a rank with few loss tokens (short solutions, whole-problem
        masking) would count more than one of a rank with many; the process layout would change the
        training. One scalar all-reduce, without a barrier (Lightning's ``strategy.reduce`` puts
        one before it) and without a host sync; not called in one process."""
        local = (targets != -100).sum().float()  # []
        total = local.clone()
        torch.distributed.all_reduce(total)  # [] sum, the same on every rank
        return local * world / total.clamp(min=1)

    # -- optimizer, schedule, clipping -----------------------------------------------------------

    def configure_optimizers(self) -> dict:
        o = self.cfg.optim
        # Muon's Newton-Schulz in float32 where bf16 is emulated (CPUs without AVX512-BF16/AMX)
        ns_float32 = self.device.type == "cpu" and not cpu_has_native_bf16()
        optimizer = build_optimizer(self.model, param_groups(self.model, o.weight_decay), o,
                                    fused=self._use_fused_adamw(self.device), ns_float32=ns_float32)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
            lr_multiplier, warmup=o.warmup_steps, total=self.cfg.trainer.max_steps, min_ratio=o.min_lr_ratio))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1, "name": "train/lr"}}

    def on_train_start(self) -> None:
        """Put the learning rate on the schedule of the current config. Needed on resume: the
        optimizer state restores the lr of the step it was saved at, computed with the old run's
        trainer.max_steps / optim.lr; resuming with other values (extending a run) would otherwise
        spend one step at the old value. Without changes this is a no-op."""
        o = self.cfg.optim
        schedule = self.lr_schedulers()
        factor = lr_multiplier(schedule.last_epoch, warmup=o.warmup_steps, total=self.cfg.trainer.max_steps,
                               min_ratio=o.min_lr_ratio)
        peaks = [o.muon_lr if group.get("name") == MUON_GROUP else o.lr for group in schedule.optimizer.param_groups]
        schedule.base_lrs = peaks
        for group, peak in zip(schedule.optimizer.param_groups, peaks):
            group["initial_lr"] = peak
            group["lr"] = peak * factor

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resume with the AdamW kernel of this run's device, not of the device that wrote the
        checkpoint: torch's ``load_state_dict`` restores each group's ``fused`` flag too, so a CPU
        checkpoint resumed on CUDA would otherwise step unfused (and a CUDA one fused on CPU).
        Also restores the count of skipped non-finite steps (optim.max_nonfinite_skips).

        A checkpoint written by another torch version: torch's ``load_state_dict`` replaces each
        parameter group by the saved one, and MuonAdamW's inner Muon and AdamW never see the
        ``__setstate__`` that would fill in the hyper-parameters an older torch did not save (AdamW's
        ``decoupled_weight_decay`` came with torch 2.7): a KeyError at the first step. Missing keys
        take this torch's defaults (a fresh optimizer's, group by group); keys this torch does not
        know are left for it to ignore. Parameter tensors and state (moments, Muon's momentum
        buffers) are plain tensors and load as they are."""
        self.nonfinite_skips = checkpoint.get("nonfinite_skips", 0)
        fused = self._use_fused_adamw(self.trainer.strategy.root_device if self._trainer is not None else self.device)
        saved_states = checkpoint.get("optimizer_states", [])
        if saved_states:
            o = self.cfg.optim
            fresh = build_optimizer(self.model, param_groups(self.model, o.weight_decay), o, fused=None)
            fresh = fresh.state_dict()["param_groups"]  # the groups as this torch saves them
            for group, default in zip(saved_states[0].get("param_groups", []), fresh):
                for key, value in default.items():
                    group.setdefault(key, value)
        for state in saved_states:
            for group in state.get("param_groups", []):
                if "fused" in group:
                    group["fused"] = fused

    @staticmethod
    def _use_fused_adamw(device: torch.device) -> Optional[bool]:
        return True if device.type == "cuda" else None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip the global gradient norm to ``optim.grad_clip`` and log the norm before clipping.
        Lightning calls this after DDP's gradient all-reduce. Under 16-mixed the gradients are
        unscaled first: Lightning leaves that to optimizers that unscale inside their step (fused
        AdamW), and clipping scaled gradients would clip nothing (the norm is x the loss scale)."""
        unscale_for_clipping(self.trainer.precision_plugin if self._trainer is not None else None, optimizer)
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.log("train/grad_norm", norm)
        self.check_finite(norm)

    # -- divergence ------------------------------------------------------------------------------

    def on_before_backward(self, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach())  # no host sync here: check_finite reads it once per step
        self._losses_finite = finite if self._losses_finite is None else self._losses_finite & finite

    def check_finite(self, norm: torch.Tensor) -> None:
        """Stop, or skip the update of, a step whose gradient norm or loss is not finite
        (``optim.on_nonfinite``); called before the optimizer step, so no bad update is applied and
        no checkpoint is written. One host sync per step. The norm is of the all-reduced gradients,
        identical on every rank, so under DDP only it decides (a non-finite loss on any rank makes
        it non-finite); with float16's loss scaler, overflowing steps are the scaler's business."""
        losses, self._losses_finite = self._losses_finite, None
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return
        checks = [norm.detach().float().reshape(1)]
        if losses is not None and self.trainer.world_size == 1:
            checks.append(torch.where(losses, 0.0, float("nan")).reshape(1).to(checks[0]))
        value = torch.cat(checks).sum()
        if bool(torch.isfinite(value)):
            return
        step = self.global_step + 1  # the step being taken; checkpoints count completed steps
        o = self.cfg.optim
        if o.on_nonfinite == "skip" and self.nonfinite_skips < o.max_nonfinite_skips:
            self.nonfinite_skips += 1
            for p in self.model.parameters():
                p.grad = None  # AdamW leaves parameters without a gradient untouched: no update at all
            if self.trainer.is_global_zero:
                print(f"warning: non-finite loss or gradient norm ({value.item()}) at optimizer step {step}: "
                      f"update skipped ({self.nonfinite_skips} of optim.max_nonfinite_skips="
                      f"{o.max_nonfinite_skips})", file=sys.stderr, flush=True)
            return
        raise NonFiniteError(step, value.item(), self.nonfinite_skips)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nonfinite_skips"] = self.nonfinite_skips

    # -- throughput ------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        self._peak_flops = peak_flops(self.device)
        self._flops_per_token = self.model.flops_per_token(self.cfg.data.context)

    def on_train_batch_end(self, outputs: Any, batch: dict, batch_idx: int) -> None:
        """Tokens/s over the last log_every_n_steps optimizer steps (a window, so one slow step,
        e.g. the first compiled one, does not dominate), and the MFU that follows.

        Logged only on the batches whose step metrics Lightning writes (the last micro-batch of
        every log_every_n_steps-th optimizer step): each ``self.log`` of a Python float becomes a
        tensor on the device, a host-to-device copy that waits for the GPU stream."""
        now = time.perf_counter()
        trainer = self.trainer
        window = trainer.log_every_n_steps * trainer.accumulate_grad_batches
        self._batch_times.append((now, batch["inputs"].numel()))
        while len(self._batch_times) > window + 1:
            self._batch_times.popleft()
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if len(self._batch_times) < 2 or not stepped or trainer.global_step % trainer.log_every_n_steps != 0:
            return
        elapsed = now - self._batch_times[0][0]
        tokens_per_device = sum(n for _, n in list(self._batch_times)[1:]) / elapsed
        self.log("train/tokens_per_s", tokens_per_device * self.trainer.world_size)
        if self._peak_flops:
            self.log("train/mfu", tokens_per_device * self._flops_per_token / self._peak_flops)

    def on_validation_end(self) -> None:
        self._batch_times.clear()  # the evaluation's wall time is not training time

    # -- evaluation ------------------------------------------------------------------------------

    def decode(self, prompts: list[list[int]]) -> list[list[int]]:
        """Greedy continuations of the prompts, each within the model's block_size."""
        budget = min(self.cfg.eval.max_new_tokens, self.cfg.model.block_size - max(map(len, prompts)) + 1)
        if budget < 1:
            return [[] for _ in prompts]
        t = self.tokenizer
        return greedy_decode(self.model, prompts, max_new_tokens=budget, stop_ids=[t.eos_id], pad_id=t.pad_id,
                             batch_size=len(prompts),
                             fresh_letters=t.letter_slot_ids() if self.cfg.eval.fresh_letters else None)

    def decode_fitting(self, prompts: list[list[int]]) -> list[list[int]]:
        """:meth:`decode`, in halves when a batch runs out of memory; the smaller size then holds
        for the rest of the run (one warning per halving). Identical results to a run started with
        that ``eval.batch_size`` (:func:`igsm.decode.decode_in_chunks`)."""
        chunk = min(len(prompts), self._eval_chunk or len(prompts))
        generations, fitted = decode_in_chunks(self.decode, prompts, chunk, on_halve=self._warn_halved)
        if fitted < len(prompts):
            self._eval_chunk = fitted
        return generations

    def _warn_halved(self, old: int, new: int) -> None:
        print(f"warning: out of memory decoding {old} evaluation prompts at once; going on with {new} at a "
              f"time (results as with eval.batch_size={new}; set it to start there)", file=sys.stderr, flush=True)

    def on_validation_epoch_start(self) -> None:
        self._examples_logged = set()

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        attempts = grade(self.tokenizer, batch.problems, self.decode_fitting(batch.prompts))
        self.eval_scores[batch.bucket].update(tally(attempts))
        self._log_examples(batch.bucket, attempts)

    def on_validation_epoch_end(self) -> None:
        step = self.global_step
        entries = []
        for spec, scores in zip(self.buckets, self.eval_scores):
            with warnings.catch_warnings():
                # Under DDP a rank decodes only its share of the batches, so some buckets get no
                # update on it; the sum over ranks is still exact (torchmetrics warns regardless).
                warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric EvalScores")
                counts = scores.compute()  # summed over ranks
            scores.reset()
            entry = bucket_entry(spec, counts, step)
            entries.append(entry)
            for key, name in (("accuracy", "accuracy"), ("answer_accuracy", "answer_accuracy"),
                              ("unnecessary_params_per_correct", "unnecessary_per_correct")):
                if entry[key] is not None:  # already identical on every rank: max keeps it exact
                    self.log(f"eval/{spec.label}/{name}", float(entry[key]), sync_dist=True, reduce_fx="max")
        self.last_eval, self.last_eval_step = entries, step
        run_dir = self.trainer.log_dir  # a broadcast from rank 0: every rank must ask
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            with atomic_write(os.path.join(run_dir or ".", "eval.json")) as f:
                json.dump(entries, f, indent=2)
                f.write("\n")
            with open(os.path.join(run_dir or ".", "eval_history.jsonl"), "a") as history:
                history.writelines(json.dumps(entry) + "\n" for entry in entries)  # the learning curve

    def _log_examples(self, bucket: int, examples: list[Attempt]) -> None:
        """The first ``eval.examples`` generations of a bucket as TensorBoard text (rank 0)."""
        experiment = getattr(self.logger, "experiment", None)
        if (bucket in self._examples_logged or not self.trainer.is_global_zero
                or not hasattr(experiment, "add_text") or self.cfg.eval.examples == 0):
            return
        self._examples_logged.add(bucket)
        parts = []
        for a in examples[: self.cfg.eval.examples]:
            verdict = "correct" if a.report.correct else f"wrong ({a.report.error}: {a.report.message})"
            parts.append(f"**problem** (op {a.problem.op}):\n\n    {a.problem.problem_text}\n\n"
                         f"**generated**:\n\n    {a.solution}\n\n**answer** {a.answer} (expected {a.problem.answer}): "
                         f"{verdict}")
        experiment.add_text(f"eval/{self.buckets[bucket].label}/examples", "\n\n---\n\n".join(parts), self.global_step)


def unscale_for_clipping(precision_plugin: Any, optimizer: torch.optim.Optimizer) -> None:
    """Unscale the gradients of a float16 run (a GradScaler) whose optimizer unscales inside its own
    step (``_step_supports_amp_scaling``: fused AdamW), which Lightning does not unscale before
    clipping. The scaler remembers it: its step then passes no scale to the optimizer."""
    scaler = getattr(precision_plugin, "scaler", None)
    if scaler is None or not getattr(optimizer, "_step_supports_amp_scaling", False):
        return  # no scaler, or Lightning has unscaled already
    from torch.amp.grad_scaler import OptState

    if scaler._per_optimizer_states[id(optimizer)]["stage"] is OptState.READY:
        scaler.unscale_(optimizer)


def uniform_letter_loss(logits: torch.Tensor, targets: torch.Tensor, letter_used: torch.Tensor,
                        letter_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy where a target that names a new letter (``letter_used >= 0``)
    is the uniform distribution over the letters not in its bitmask (``data.letter_loss=uniform``).

    logits [B, T, V], targets [B, T] (-100 = no loss), letter_used [B, T] (-1 = not a letter slot),
    letter_ids [52]. Every other target is the usual one-hot cross-entropy.

    GPU-friendly: no host sync (every row is scored and the rows are selected with masks, never
    with ``nonzero``), and one fp32 log-softmax read straight from bf16 logits (its ``dtype``
    argument: no separate fp32 copy of the logits; autocast leaves it alone).
    """
    V = logits.size(-1)
    log_p = torch.log_softmax(logits.reshape(-1, V), dim=-1, dtype=torch.float32)  # [N, V] fp32
    flat_targets = targets.reshape(-1)  # [N]
    used = letter_used.reshape(-1)  # [N]
    scored = flat_targets != -100  # [N]
    slot = (used >= 0) & scored  # [N]: the target names a new letter
    onehot = (used < 0) & scored  # [N]: the usual one-hot target
    onehot_nll = -log_p.gather(1, flat_targets.clamp(min=0)[:, None]).squeeze(1)  # [N]
    letter_log_p = log_p.index_select(1, letter_ids)  # [N, 52]
    bit = torch.arange(letter_ids.numel(), device=used.device)  # [52]
    unused = ((used.clamp(min=0)[:, None] >> bit) & 1) == 0  # [N, 52]
    uniform_nll = -(letter_log_p * unused).sum(1) / unused.sum(1).clamp(min=1)  # [N]
    zero = log_p.new_zeros(())
    total = torch.where(onehot, onehot_nll, zero).sum() + torch.where(slot, uniform_nll, zero).sum()
    return total / (onehot.sum() + slot.sum()).clamp(min=1)


__all__ = ["GPTLitModule", "EvalScores", "lr_multiplier", "param_groups", "peak_flops", "PEAK_BF16_FLOPS"]
