"""What one Muon step costs (issue 28): the per-matrix loop Muon ran before (one Newton-Schulz
iteration per matrix, the fused q, k, v weight as one [3d, d] matrix) against igsm.optim's batched
step (matrices of one shape as one batched iteration, q, k, v as three [d, d] blocks), side by
side in one run: the variants interleaved, repeats round-robin, the median reported.

    python benchmarks/muon.py                                 # tiny and small_cpu (128 dims), CPU
    python benchmarks/muon.py --models med --repeats 3        # GPT2-12-12's matrices (768 dims)
    python benchmarks/muon.py --device cuda --models med      # bf16 iterations, as on a GPU

Columns: ``loop`` (before), ``batched, qkv fused`` (the batching alone: the same update as the
loop), ``batched`` (igsm's step off CPUs: batching and the three q, k, v blocks), ``one by one``
(igsm's step on a CPU: the three q, k, v blocks, one Newton-Schulz per matrix: on a CPU the products
themselves cost, and the batch's large temporaries were slower). Only Muon's part of the
optimizer step is timed (AdamW's is the same in all three), on fixed random gradients. The
Newton-Schulz dtype is what training picks: float32 on a CPU that emulates bf16, else bf16.
Also printed: the aten ops that compute per Muon step (views left out), about the kernel
launches of a GPU, where a step of small matrices is bound by launches rather than FLOPs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from canon import MODELS, device_name, timed  # noqa: E402  (benchmarks/canon.py)
from igsm.cli_config import load_config  # noqa: E402
from igsm.config import ModelConfig, TrainConfig  # noqa: E402
from igsm.lit import param_groups  # noqa: E402
from igsm.model import GPT  # noqa: E402
from igsm.optim import MuonAdamW, adjusted_lr, build_optimizer, newton_schulz  # noqa: E402
from igsm.trainer import cpu_has_native_bf16  # noqa: E402

VIEWS = {"view", "t", "transpose", "slice", "select", "unsqueeze", "expand", "permute", "unbind", "alias",
         "detach", "squeeze", "unflatten", "split"}


class ComputeOps(TorchDispatchMode):
    """Counts the aten ops that compute (views left out): on a GPU, about one kernel launch each."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ not in VIEWS
        return func(*args, **(kwargs or {}))


def compute_ops(fn) -> int:
    with ComputeOps() as ops:
        fn()
    return ops.count


@torch.no_grad()
def loop_step(opt: MuonAdamW) -> None:
    """Muon's step as it ran before (igsm.optim at issue 28, torch.optim.Muon's single-tensor
    loop): one Newton-Schulz iteration per matrix, each matrix whole."""
    dtype = torch.float32 if opt.ns_float32 else torch.bfloat16
    for group in opt._muon.param_groups:
        lr, momentum = float(group["lr"]), group["momentum"]
        for p in group["params"]:
            buf = opt.state[p]["momentum_buffer"]
            buf.lerp_(p.grad, 1 - momentum)
            update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
            update = newton_schulz(update, group["ns_steps"], group["ns_coefficients"], group["eps"], dtype)
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(update.to(p.dtype), alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape))


def table(name: str, device: torch.device, ns_float32: bool, repeats: int) -> None:
    L, H, d, _, _ = MODELS[name]
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=L, n_head=H, n_embd=d, block_size=64), 512).to(device)
    cfg = load_config(TrainConfig, ["optim.name=muon"]).optim
    groups = param_groups(model, cfg.weight_decay)
    batched = build_optimizer(model, groups, cfg, fused=None, ns_float32=ns_float32)
    fused = build_optimizer(model, groups, cfg, fused=None, ns_float32=ns_float32)
    fused._row_blocks = [[1] * len(b) for b in fused._row_blocks]  # the same update as the loop
    one_by_one = build_optimizer(model, groups, cfg, fused=None, ns_float32=ns_float32)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    for opt, batch in ((batched, True), (fused, True), (one_by_one, False)):
        opt._adamw, opt.batched = None, batch  # Muon's part only
    variants = {"loop": lambda: loop_step(batched), "batched, qkv fused": fused.step, "batched": batched.step,
                "one by one": one_by_one.step}
    batched.step()  # creates the momentum buffers the loop reads
    matrices = batched.param_groups[-1]["params"]
    print(f"\n== {name}: GPT {L} x {d}, {len(matrices)} Muon matrices, Newton-Schulz in "
          f"{'float32' if ns_float32 else 'bf16'} (ms per Muon step; median of {repeats})")
    res = timed(variants, repeats, device)
    print("  ".join(f"{k}: {v * 1e3:.1f}" for k, v in res.items()))
    print("  ".join(f"loop / {k}: {res['loop'] / v:.2f}x" for k, v in res.items() if k != "loop"))
    print("aten ops that compute (about the kernel launches on a GPU): " + "  ".join(
        f"{k}: {compute_ops(fn)}" for k, fn in variants.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "small_cpu"], choices=sorted(MODELS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: one training process per core)")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    ns_float32 = device.type == "cpu" and not cpu_has_native_bf16()  # as igsm.lit does
    print(f"device: {device_name(device)}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    for name in args.models:
        table(name, device, ns_float32, args.repeats)


if __name__ == "__main__":
    main()
