"""Training throughput: the Lightning training step vs a plain PyTorch loop of the same model, and
the data pipeline's tokens/s, in one run (docs/measurements.md#targets: >= 45% MFU for GPT2-12-12, ctx 768, bf16, on
an H100/H200; "the GPU never waits on data").

    python benchmarks/train_throughput.py                 # GPU: configs/med.yaml as train.py runs it
    python benchmarks/train_throughput.py --preset depth_width/gpt2-20-9
    python benchmarks/train_throughput.py --steps 50 --batch-size 32 --no-compile

Three measurements of the same model on the same synthetic batches (random tokens, so only the
model is timed): (1) a plain loop (forward, backward, clip, fused AdamW step), (2) the Lightning
Trainer that train.py builds (same module, callbacks, logger), and (3) that Trainer fed by the real
IGSMDataModule (generation in DataLoader workers): if (3) matches (2), the GPU did not wait on
data. Then the data pipeline alone: tokens/s of one worker (generation + tokenization + packing).

On a GPU the model, micro-batch, context, precision and torch.compile are the preset's own
(``--preset``, default med: GPT2-12-12, micro-batch 64 x 768, bf16-mixed, compile on), so the
number is the one train.py gets; only the accumulation is 1 (tokens/s per micro-batch).
Without a GPU the model shrinks to a tiny size (printed) and compile is off: CPU numbers are only
good for ratios, and on a shared machine only roughly so.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset  # noqa: E402

from igsm.cli_config import config_to_dict, load_config  # noqa: E402
from igsm.config import TrainConfig  # noqa: E402
from igsm.data import IGSMDataModule  # noqa: E402
from igsm.lit import GPTLitModule, param_groups, peak_flops  # noqa: E402
from igsm.model import GPT  # noqa: E402
from igsm.trainer import build_trainer  # noqa: E402


class SyntheticBatches(IterableDataset):
    """The same few random batches over and over (CPU tensors, like a real loader's)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __iter__(self):
        i = 0
        while True:
            yield self.batches[i % len(self.batches)]
            i += 1


class SyntheticData(L.LightningDataModule):
    def __init__(self, batches: list[dict]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self) -> DataLoader:
        return DataLoader(SyntheticBatches(self.batches), batch_size=None, pin_memory=torch.cuda.is_available())


class StepTimer(Callback):
    """Wall time of the optimizer steps after the first ``warmup`` (synchronising the GPU)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            _sync()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        _sync()
        self.end = time.perf_counter()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def plain_loop(cfg: TrainConfig, vocab_size: int, batches: list[dict], warmup: int, steps: int, device) -> float:
    """Seconds for ``steps`` optimizer steps of a hand-written loop after ``warmup`` steps."""
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model, vocab_size).to(device)
    forward = torch.compile(model) if cfg.model.compile else model
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas), fused=True if device.type == "cuda" else None)
    use_bf16 = device.type == "cuda"
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            _sync()
            start = time.perf_counter()
        batch = batches[step % len(batches)]
        inputs = batch["inputs"].to(device, non_blocking=True)
        targets = batch["targets"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = forward(inputs, targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync()
    return time.perf_counter() - start


def lightning_run(cfg: TrainConfig, tokenizer_dict: dict, datamodule, warmup: int, steps: int, root: str) -> float:
    torch.manual_seed(cfg.seed)
    module = GPTLitModule(config_to_dict(cfg), tokenizer_dict)
    timer = StepTimer(warmup)
    trainer = build_trainer(cfg.trainer, "bench", log_root=root, extra_callbacks=[timer],
                            enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    return timer.end - timer.start


def data_tokens_per_s(dm: IGSMDataModule, n_batches: int) -> float:
    """One worker's rate: build n_batches packed batches in this process."""
    ds = dm.train_dataset(rank=0, start_batch=10_000)
    ds.batch(9_999)  # warm caches (world, tokenizer)
    start = time.perf_counter()
    tokens = sum(ds.batch(10_000 + b)["inputs"].numel() for b in range(n_batches))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 10 GPU, 3 CPU)")
    p.add_argument("--preset", default="med", help="GPU: the train.py preset measured (default med)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="sequences per step (default: the preset's on GPU, 4 CPU)")
    p.add_argument("--no-compile", action="store_true", help="GPU: eager even if the preset compiles")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for run (3) (default: the preset's)")
    p.add_argument("--data-batches", type=int, default=None, help="batches for the data pipeline rate")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved repetitions, best kept (default: 1 GPU, 2 CPU)")
    args = p.parse_args()

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if on_gpu:
        overrides = [f"preset={args.preset}"] + ([f"data.batch_size={args.batch_size}"] if args.batch_size else [])
        size_note = f"preset {args.preset}"
    else:
        overrides = ["preset=tiny", "model.n_layer=2", "model.n_head=2", f"data.batch_size={args.batch_size or 4}",
                     "data.num_workers=1", "trainer.accelerator=cpu", "trainer.precision=32-true"]
        size_note = ("NO GPU: shrunk to a tiny GPT (2 layers, 128 dims) on tiny data (word tokenizer), "
                     "context 512, fp32, no compile; compare ratios only")
    if args.no_compile:
        overrides.append("model.compile=false")
    warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 3)
    steps = args.steps if on_gpu else min(args.steps, 10)
    repeats = args.repeats if args.repeats is not None else (1 if on_gpu else 2)
    overrides += ["data.global_batch_size=null", "trainer.accumulate_grad_batches=1",
                  f"trainer.max_steps={warmup + steps}", "trainer.eval_every=null", "eval.final=false",
                  "trainer.checkpoint_every=1000000", "trainer.enable_progress_bar=false",
                  f"trainer.log_every_n_steps={max(1, steps // 3)}", "optim.warmup_steps=1"]
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    cfg = load_config(TrainConfig, overrides)
    if on_gpu:
        m = cfg.model
        size_note += (f": GPT2-{m.n_layer}-{m.n_head} (d={m.d_model}), context {cfg.data.context}, "
                      f"{cfg.trainer.precision or 'bf16-mixed'}, " + ("torch.compile" if m.compile else "eager"))
    if cfg.model.compile:
        from igsm.compile_check import compile_error

        if (error := compile_error("model.compile")) is not None:
            sys.exit(f"error: {error}")
    dm = IGSMDataModule(cfg.data, cfg.eval, seed=cfg.seed)
    B, T = cfg.data.batch_size, cfg.data.context
    vocab = dm.tokenizer.vocab_size
    gen = torch.Generator().manual_seed(0)
    batches = [{"inputs": torch.randint(0, vocab, (B, T), generator=gen),
                "targets": torch.randint(0, vocab, (B, T), generator=gen), "index": i} for i in range(4)]
    if on_gpu:
        batches = [{k: v.pin_memory() if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]

    model_probe = GPT(cfg.model, vocab)
    flops_per_token = model_probe.flops_per_token(T)
    peak = peak_flops(device)
    tokens = steps * B * T
    print(f"model: {size_note}; {model_probe.num_params() / 1e6:.2f}M parameters, batch {B} x {T} tokens, "
          f"{warmup} warm-up + {steps} timed steps, best of {repeats}")
    del model_probe

    # Interleaved and best-of-`repeats`: on a shared machine, load changes between measurements.
    best = {"plain": math.inf, "lightning": math.inf, "real": math.inf}
    with tempfile.TemporaryDirectory() as root:
        for r in range(repeats):
            best["plain"] = min(best["plain"], plain_loop(cfg, vocab, batches, warmup, steps, device))
            best["lightning"] = min(best["lightning"], lightning_run(
                cfg, dm.tokenizer.to_dict(), SyntheticData(batches), warmup, steps, os.path.join(root, f"s{r}")))
            best["real"] = min(best["real"], lightning_run(
                cfg, dm.tokenizer.to_dict(), dm, warmup, steps, os.path.join(root, f"r{r}")))

    def report(label: str, seconds: float) -> float:
        rate = tokens / seconds
        mfu = f", MFU {100 * rate * flops_per_token / peak:.1f}%" if peak else ""
        print(f"{label:<44} {rate:>12,.0f} tokens/s{mfu}")
        return rate

    print("\nresults" + ("" if peak else " (no MFU: no peak-FLOPs entry for this device)"))
    plain = report("(1) plain PyTorch loop", best["plain"])
    lit = report("(2) Lightning (train.py's Trainer)", best["lightning"])
    real = report(f"(3) Lightning + IGSMDataModule, workers={cfg.data.num_workers}", best["real"])
    print(f"Lightning / plain loop: {lit / plain:.3f}; real data / synthetic: {real / lit:.3f}")

    n_data = args.data_batches or 8
    per_worker = data_tokens_per_s(dm, n_data)
    print(f"data pipeline, this run ({cfg.data.preset}, {cfg.data.tokenizer} tokenizer, loss on "
          f"{cfg.data.loss_on}, one worker): {per_worker:,.0f} tokens/s = {lit / per_worker:.2f} workers' worth "
          f"of the training step ({cfg.data.num_workers} configured)")
    if not on_gpu:  # what the GPU recipe's loader delivers per worker, for the GPU question
        med = load_config(TrainConfig, ["preset=med"])
        med_rate = data_tokens_per_s(IGSMDataModule(med.data, med.eval, seed=0), n_data)
        print(f"data pipeline, med recipe (gpt2 tokenizer, context 768, batch {med.data.batch_size}, one worker): "
              f"{med_rate:,.0f} tokens/s")


if __name__ == "__main__":
    main()
