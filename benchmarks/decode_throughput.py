"""New tokens per second of batched greedy decoding with the KV cache (design target: >= 100k/s
for GPT2-12-12 at batch >= 256 on one GPU).

    python benchmarks/decode_throughput.py                      # med evaluation's shapes, bf16 on CUDA
    python benchmarks/decode_throughput.py --n-layer 20 --n-head 9 --prompt-len 512

GPU defaults are the med evaluation's shapes (configs/med.yaml, EvalConfig): GPT2-12-12, the GPT-2
vocabulary (50,260 ids), eval.batch_size 256 prompts of 170-620 tokens (the range of the op = 23
bucket's prompts; op <= 15 averages 266), eval.max_new_tokens 1,024 new tokens each.

On CPU, sizes not given on the command line shrink to a tiny model so the script ends in seconds.
Random weights and prompts; the stop id is one the model can never emit, so every row decodes
exactly --new-tokens tokens and the count is exact.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

from _common import device_and_defaults

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from igsm.config import ModelConfig  # noqa: E402
from igsm.decode import greedy_decode  # noqa: E402
from igsm.model import GPT  # noqa: E402

GPU_DEFAULTS = dict(n_layer=12, n_head=12, batch=256, prompt_len="170-620", new_tokens=1024, vocab=50260)
CPU_DEFAULTS = dict(n_layer=2, n_head=2, batch=8, prompt_len="32", new_tokens=32, vocab=2048)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-layer", type=int, help="layers (GPU default 12, CPU 2)")
    p.add_argument("--n-head", type=int, help="heads; hidden size is 64 * heads (GPU default 12, CPU 2)")
    p.add_argument("--batch", type=int, help="prompts decoded together (GPU default 256, CPU 8)")
    p.add_argument("--prompt-len",
                   help="tokens per prompt, N or MIN-MAX (uniform per prompt; GPU default 170-620, CPU 32)")
    p.add_argument("--new-tokens", type=int, help="tokens generated per prompt (GPU default 1024, CPU 32)")
    p.add_argument("--vocab", type=int, help="vocabulary size (GPU default 50260, the GPT-2 tokenizer's; CPU 2048)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16-autocast", "bf16", "fp32"],
                   help="auto = bf16-autocast on CUDA, fp32 on CPU; bf16 casts the weights themselves")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up; the best is reported")
    p.add_argument("--canon", default="", help="Canon layers (model.canon, e.g. ABCD; default none)")
    p.add_argument("--rope-dim", type=int, default=None, help="dims of each head RoPE rotates (default all)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    device, shrunk = device_and_defaults(args, GPU_DEFAULTS, CPU_DEFAULTS)
    dtype = args.dtype if args.dtype != "auto" else ("bf16-autocast" if device.type == "cuda" else "fp32")

    lo, _, hi = str(args.prompt_len).partition("-")
    lo, hi = int(lo), int(hi or lo)
    cfg = ModelConfig(n_layer=args.n_layer, n_head=args.n_head, block_size=max(2048, hi + args.new_tokens),
                      canon=args.canon, rope_dim=args.rope_dim)
    model = GPT(cfg, args.vocab).to(device).eval()
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16-autocast"
                else contextlib.nullcontext())

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(lo, hi + 1, (args.batch,), generator=g).tolist()
    prompts = [torch.randint(0, args.vocab, (n,), generator=g).tolist() for n in lengths]
    never = model.padded_vocab  # outside the vocabulary: no row ever stops early

    def run() -> list[list[int]]:
        with autocast:
            return greedy_decode(model, prompts, max_new_tokens=args.new_tokens, stop_ids={never},
                                 pad_id=0, batch_size=args.batch)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if shrunk:
        print(f"CPU run: shrunk {', '.join(k.replace('_', '-') for k in shrunk)} to a tiny setting "
              f"(pass them explicitly to override); GPU defaults are {GPU_DEFAULTS}")
    levers = (f", canon {args.canon}" if args.canon else "") + \
        (f", rope_dim {args.rope_dim}" if args.rope_dim is not None else "")
    print(f"model GPT2-{cfg.n_layer}-{cfg.n_head} (d={cfg.d_model}, {model.num_params() / 1e6:.1f}M params, "
          f"vocab {args.vocab}{levers}) on {device}, {dtype}; batch {args.batch}, prompts of {args.prompt_len} tokens, "
          f"new tokens {args.new_tokens}")

    run()  # warm-up: allocator, kernels, autotuning
    best = float("inf")
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        out = run()
        sync()
        best = min(best, time.perf_counter() - t0)
    n_new = sum(len(o) for o in out)
    assert n_new == args.batch * args.new_tokens, "early stop despite an impossible stop id"
    print(f"{n_new} new tokens in {best:.3f} s (best of {args.repeats}, prefill included): "
          f"{n_new / best:,.0f} new tokens/s")


if __name__ == "__main__":
    main()
