"""What Canon layers cost (issue 19): prints three tables, each measured side by side in one run
(the variants interleaved, repeats taken round-robin, the median reported).

1. One Canon layer, forward + backward, ``F.conv1d`` (groups = channels) vs k shifted
   multiply-adds, eager and ``torch.compile``, fp32 and bf16 autocast, at the d and 4d widths of
   the model (positions A/C and D).
2. Training steps (forward + backward + AdamW) of whole models with model.canon "", A, AC, ABCD:
   tokens/s and the ratio to no Canon.
3. Cached greedy decoding with and without Canon ABCD: new tokens/s and the ratio, and the aten
   ops of one decoding step (issue 28: Canon's one-position step vs the convolution it replaced).

    python benchmarks/canon.py                        # the tiny and small_cpu models (128 dims), CPU
    python benchmarks/canon.py --models small_cpu --threads 1
    python benchmarks/canon.py --device cuda --models med   # GPT2-12-12 widths (768), on a GPU

Prints the CPU model (lscpu) or GPU name beside the numbers. Which convolution each device runs
is igsm.model.canon_conv (shifts under torch.compile, conv1d eager); this script is how it was chosen.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from igsm.config import ModelConfig  # noqa: E402
from igsm.decode import greedy_decode  # noqa: E402
from igsm.model import GPT, Canon, causal_conv_conv1d, causal_conv_shift  # noqa: E402
from igsm.trainer import cpu_has_native_bf16  # noqa: E402

# (n_layer, n_head, n_embd, micro-batch, context): the training shapes of the presets
MODELS = {
    "tiny": (3, 4, 128, 8, 256),  # configs/tiny.yaml, one DDP process's micro-batch
    "small_cpu": (8, 4, 128, 16, 256),  # configs/depth_width_cpu/deep-8x128.yaml (one process)
    "med": (12, 12, 768, 32, 768),  # configs/med.yaml's model and context, a 32-sequence micro-batch
}
VOCAB = 512


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model} ({torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(variants: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each variant, the variants interleaved round-robin."""
    for fn in variants.values():  # warm-up (and compilation)
        fn()
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def layer_table(shape, device, precisions, repeats, compile_too: bool) -> None:
    _, _, d, batch, context = shape
    print(f"\n1. one Canon layer, forward + backward, [{batch}, {context}, C], k = 4 (ms; median of {repeats})")
    print(f"{'C':>6} {'precision':>10} {'conv1d':>9} {'shift':>9}" + (f" {'conv1d+compile':>15} {'shift+compile':>14}"
                                                                    if compile_too else ""))
    for channels in (d, 4 * d):
        w = torch.randn(channels, 4, device=device, requires_grad=True)
        x = torch.randn(batch, context, channels, device=device, requires_grad=True)
        for bf16 in precisions:
            fns = {"conv1d": causal_conv_conv1d, "shift": causal_conv_shift}
            if compile_too:
                fns |= {"conv1d+compile": torch.compile(causal_conv_conv1d),
                        "shift+compile": torch.compile(causal_conv_shift)}

            def step(fn, x=x, w=w, bf16=bf16):
                with autocast(device, bf16):
                    y = fn(x, w)
                y.float().sum().backward()
                x.grad = w.grad = None

            res = timed({name: (lambda fn=fn: step(fn)) for name, fn in fns.items()}, repeats, device)
            print(f"{channels:>6} {'bf16' if bf16 else 'fp32':>10} " + " ".join(
                f"{res[n] * 1e3:>{max(9, len(n))}.2f}" for n in fns))


def train_table(shape, device, bf16: bool, repeats: int) -> None:
    L, H, d, batch, context = shape
    print(f"\n2. training step (forward + backward + AdamW), GPT {L} x {d}, [{batch}, {context}] tokens, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, eager (Canon by F.conv1d: igsm.model.canon_conv)")
    models, opts = {}, {}
    idx = torch.randint(0, VOCAB, (batch, context), device=device)
    for canon in ("", "A", "AC", "ABCD"):
        torch.manual_seed(0)
        models[canon] = GPT(ModelConfig(n_layer=L, n_head=H, n_embd=d, block_size=context, canon=canon),
                            VOCAB).to(device).train()
        opts[canon] = torch.optim.AdamW(models[canon].parameters(), lr=1e-4)

    def step(canon: str) -> None:
        with autocast(device, bf16):
            loss = models[canon](idx, idx).loss
        loss.backward()
        opts[canon].step()
        opts[canon].zero_grad(set_to_none=True)

    res = timed({c: (lambda c=c: step(c)) for c in models}, repeats, device)
    print(f"{'model.canon':>12} {'params':>10} {'s/step':>8} {'tokens/s':>10} {'cost vs none':>13}")
    for canon, t in res.items():
        print(f"{repr(canon):>12} {models[canon].num_params():>10,} {t:>8.3f} {batch * context / t:>10,.0f} "
              f"{t / res['']:>12.2f}x")


def conv1d_step(canon: Canon, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """Canon's cached decoding step as it ran before issue 28: the convolution path over the
    concatenated state (cat, transposes, ``F.conv1d``), then the state's tail by cat, slice, copy."""
    y = causal_conv_conv1d(x, canon.weight[:, 0], state)  # [B, 1, C]
    state.copy_(torch.cat((state, x), dim=1)[:, -(canon.kernel - 1):])
    return y


def aten_ops_per_step(model: GPT, batch: int, device: torch.device, bf16: bool) -> int:
    """aten ops (nested ones included, as the profiler lists them) of one cached decoding step."""
    cache = model.new_kv_cache(batch, 16, device=device, dtype=torch.bfloat16 if bf16 else None)
    idx = torch.zeros(batch, 1, dtype=torch.long, device=device)
    with torch.no_grad(), autocast(device, bf16):
        model.forward_cached(torch.zeros(batch, 4, dtype=torch.long, device=device), cache)
        model.forward_cached(idx, cache)
        with torch.profiler.profile() as prof:
            model.forward_cached(idx, cache)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def decode_table(shape, device, bf16: bool, repeats: int) -> None:
    L, H, d, _, _ = shape
    batch, prompt_len, new = 64, 120, 64
    print(f"\n3. cached greedy decoding, GPT {L} x {d}, {batch} prompts of {prompt_len} tokens, {new} new each, "
          f"{'bf16 autocast' if bf16 else 'fp32'}; 'ABCD, conv1d step': Canon's step before issue 28")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB, (prompt_len,), generator=g).tolist() for _ in range(batch)]
    models = {}
    for name, canon in (("", ""), ("ABCD", "ABCD"), ("ABCD, conv1d step", "ABCD")):
        torch.manual_seed(0)
        models[name] = GPT(ModelConfig(n_layer=L, n_head=H, n_embd=d, block_size=512, canon=canon), VOCAB).to(device)
    for m in models["ABCD, conv1d step"].modules():
        if isinstance(m, Canon):
            m.step = types.MethodType(conv1d_step, m)

    def run(name: str) -> None:
        with autocast(device, bf16):
            greedy_decode(models[name], prompts, max_new_tokens=new, stop_ids=[VOCAB + 1], pad_id=0, batch_size=batch)

    res = timed({c: (lambda c=c: run(c)) for c in models}, repeats, device)
    for name, t in res.items():
        ops = aten_ops_per_step(models[name], batch, device, bf16)
        print(f"{repr(name):>20} {batch * new / t:>10,.0f} new tokens/s  {t / res['']:.2f}x the time of no Canon  "
              f"{ops} aten ops a step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "small_cpu"], choices=sorted(MODELS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: one training process per core)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile columns")
    p.add_argument("--skip", nargs="*", default=[], choices=["layer", "train", "decode"])
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    # bf16 where the device multiplies it natively (trainer.precision auto); both for the layer table
    native = device.type == "cuda" or cpu_has_native_bf16()
    print(f"device: {device_name(device)}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    for name in args.models:
        shape = MODELS[name]
        print(f"\n== {name}: n_layer {shape[0]}, n_embd {shape[2]}")
        if "layer" not in args.skip:
            layer_table(shape, device, (False, True), args.repeats, not args.no_compile)
        if "train" not in args.skip:
            train_table(shape, device, native, args.repeats)
        if "decode" not in args.skip:
            decode_table(shape, device, native, args.repeats)


if __name__ == "__main__":
    main()
