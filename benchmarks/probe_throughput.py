"""Probe training pairs per second: V-probe steps (forward through the frozen backbone, backward
to the rank-8 embedding delta, AdamW on the probe) on real probe batches, plus how fast the data
side builds those batches (so one can tell whether loader workers keep up).

    python benchmarks/probe_throughput.py          # GPT2-12-12, med problems, GPT-2 tokens, batch 256, bf16 on CUDA
    python benchmarks/probe_throughput.py --task dep --checkpoint-activations

On CPU, sizes not given on the command line shrink to the default CPU setting (the tiny
train.py model: 2 layers, 128 dims; tiny problems, word tokens, batch 32), so
the script ends in seconds. Random backbone weights:
the cost does not depend on them. One (task, backbone) probe; a probe.py step trains
tasks x backbones of them, so its pairs/s is this number divided by that count.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as probe.py: no spinning OpenMP threads on shared cores
import torch  # noqa: E402

from _common import device_and_defaults  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from igsm.config import ModelConfig, generator_preset  # noqa: E402
from igsm.generator import world_for  # noqa: E402
from igsm.model import GPT  # noqa: E402
from igsm.tokenizer import build_tokenizer  # noqa: E402
from probing.data import PairCollate, ProbeDataset  # noqa: E402
from probing.run import GPU_LENGTH_CHUNKS  # noqa: E402  (probe.length_chunks=null on a GPU)
from probing.vprobe import VProbe  # noqa: E402

GPU_DEFAULTS = dict(n_layer=12, n_head=12, n_embd=768, batch=256, preset="med", tokenizer="gpt2", steps=20,
                    length_chunks=GPU_LENGTH_CHUNKS)
CPU_DEFAULTS = dict(n_layer=3, n_head=4, n_embd=128, batch=32, preset="tiny", tokenizer="word", steps=10,
                    length_chunks=1)  # the default train.py model (configs/tiny.yaml) and probe.py run


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-layer", type=int, help="layers (GPU default 12, CPU 2)")
    p.add_argument("--n-head", type=int, help="heads (GPU default 12, CPU 4)")
    p.add_argument("--n-embd", type=int, help="hidden size (GPU default 768, CPU 128)")
    p.add_argument("--batch", type=int, help="pairs per step (GPU default 256, CPU 32)")
    p.add_argument("--preset", help="generator preset of the problems (GPU default med, CPU tiny)")
    p.add_argument("--tokenizer", help="word or gpt2 (GPU default gpt2, CPU word)")
    p.add_argument("--steps", type=int, help="timed steps after two warm-up steps (GPU default 20, CPU 10)")
    p.add_argument("--task", default="can_next", help="probe task (default can_next: solution prefixes)")
    p.add_argument("--checkpoint-activations", action="store_true", help="recompute the backbone in the backward")
    p.add_argument("--length-chunks", type=int,
                   help="length-sorted chunks per batch (default as probe.py: GPU 4, CPU 1)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    device, shrunk = device_and_defaults(args, GPU_DEFAULTS, CPU_DEFAULTS)
    if shrunk:
        print(f"CPU run: shrunk {', '.join(k.replace('_', '-') for k in shrunk)} to the tiny setting "
              "(pass them explicitly to override)")

    gen = generator_preset(args.preset)
    tok = build_tokenizer(args.tokenizer, world_for(gen) if args.tokenizer == "word" else None)
    ds = ProbeDataset(tok, gen, args.task, "train", n_problems=10**9, seed=0, draws=10)
    collate = PairCollate(tok.pad_id, args.batch)  # exactly --batch pairs, as in training
    per_batch = max(1, -(-args.batch // 5))  # problems read per batch (repeated draws are dropped)

    def make_batch(k: int) -> dict:
        return collate([ds[k * per_batch + i] for i in range(per_batch)])

    n_batches = args.steps + 2
    t0 = time.perf_counter()
    batches = [make_batch(k) for k in range(n_batches)]
    data_s = time.perf_counter() - t0
    n_data_pairs = sum(len(b["label"]) for b in batches)

    torch.manual_seed(0)
    gpt = GPT(ModelConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=2048),
              tok.vocab_size)
    module = VProbe(gpt, [args.task], control="none", checkpoint_activations=args.checkpoint_activations,
                    length_chunks=args.length_chunks).to(device)
    module.train()
    opt = torch.optim.AdamW(module.trainable_parameters(), lr=2e-3, weight_decay=0.01)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    module.log = lambda *a, **k: None  # no Trainer attached

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(b: dict) -> None:
        b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = module.training_step({args.task: b}, 0)
        loss.backward()
        opt.step()

    for b in batches[:2]:  # warm-up
        step(b)
    sync()
    pairs = tokens = 0
    t0 = time.perf_counter()
    for b in batches[2:]:
        step(b)
        pairs += len(b["label"])
        tokens += int((b["end"] + 1).sum())
    sync()
    dt = time.perf_counter() - t0
    mean_len = tokens / max(1, pairs)
    print(f"backbone {args.n_layer} layers, {args.n_head} heads, d={gpt.cfg.d_model}; {args.preset} problems, "
          f"{args.tokenizer} tokens, task {args.task}, batch {args.batch} (~{pairs / args.steps:.0f} pairs), "
          f"mean input {mean_len:.0f} tokens, device {device.type}"
          + (", activation checkpointing" if args.checkpoint_activations else "")
          + (f", {args.length_chunks} length chunks" if args.length_chunks > 1 else ""))
    print(f"probe training: {pairs / dt:,.0f} pairs/s ({tokens / dt:,.0f} tokens/s, "
          f"{1000 * dt / args.steps:.1f} ms/step)")
    print(f"probe data (one process): {n_data_pairs / data_s:,.0f} pairs/s")


if __name__ == "__main__":
    main()
