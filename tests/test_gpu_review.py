"""GPU checks of the GPU-path review (issue 14): what only CUDA shows. Skipped without CUDA;
``scripts/device_check.py`` runs them with ``pytest -m gpu``. Their CPU counterparts are in
tests/test_gpu_path.py."""

from __future__ import annotations

import time
import warnings

import pytest
import torch

from igsm.config import ModelConfig
from igsm.decode import STOP_CHECK_EVERY, greedy_decode
from igsm.lit import uniform_letter_loss
from igsm.model import GPT

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


class SyncCount:
    """Counts the host syncs CUDA reports inside the block (torch.cuda.set_sync_debug_mode)."""

    def __enter__(self):
        self._catch = warnings.catch_warnings(record=True)
        self.records = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)

    @property
    def n(self) -> int:
        return sum("synchronizing" in str(r.message) for r in self.records)


def test_compile_prerequisites_are_installed() -> None:
    from igsm.compile_check import compile_problems

    problems = compile_problems(cuda=True)
    assert problems == [], "torch.compile (model.compile=true, on in med/hard) needs: " + "; ".join(problems)


def test_probe_metric_counts_on_cuda() -> None:
    """probe.py's test phase: the metric update once used an integer matmul, which CUDA lacks."""
    from probing.vprobe import GroupedAccuracy

    metric = GroupedAccuracy(2, binary=True).cuda()
    preds = torch.tensor([[1, 0, 1], [0, 0, 1]], device="cuda")
    label = torch.tensor([1, 0, 0], device="cuda")
    metric.update(preds, label, torch.tensor([1, -1, -1], device="cuda"))
    correct, total = metric.compute()
    assert correct[:, 0].tolist() == [2, 2] and total[0, 0].item() == 3


def test_uniform_letter_loss_does_not_sync() -> None:
    V, letter_ids = 50304, torch.arange(100, 152, device="cuda")
    logits = torch.randn(4, 256, V, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, V, (4, 256), device="cuda")
    used = torch.where(torch.rand(4, 256, device="cuda") < 0.1, 3, -1)
    torch.cuda.synchronize()
    with SyncCount() as syncs:
        loss = uniform_letter_loss(logits, targets, used, letter_ids)
        loss.backward()
    assert syncs.n == 0
    assert torch.isfinite(loss)


def med_decode_model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=12, n_head=12), 50260).cuda().eval()


def test_decode_steps_sync_only_for_the_stop_check_and_give_fp32_logits() -> None:
    model = med_decode_model()
    prompts = torch.randint(0, 50260, (32, 100)).tolist()
    fresh = (100, list(range(200, 252)))
    n_new = 64
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model.forward_cached(torch.tensor(prompts[:2], device="cuda"), model.new_kv_cache(2, 101))
        assert logits.dtype == torch.float32
        greedy_decode(model, prompts, max_new_tokens=4, stop_ids={10 ** 6}, pad_id=0, fresh_letters=fresh)  # warm-up
        with SyncCount() as syncs:
            greedy_decode(model, prompts, max_new_tokens=n_new, stop_ids={10 ** 6}, pad_id=0, fresh_letters=fresh)
    # the stop checks, plus a few per call (copying the prompts, reading the results back)
    assert syncs.n <= n_new // STOP_CHECK_EVERY + 8, [str(r.message) for r in syncs.records][:5]


def test_decode_throughput_target() -> None:
    """Design target: >= 100k new tokens/s for GPT2-12-12 at batch 256 (bf16 autocast, KV cache).
    Prompts of 300 tokens, 256 new tokens each (benchmarks/decode_throughput.py for med's full shapes)."""
    model = med_decode_model()
    prompts = torch.randint(0, 50260, (256, 300)).tolist()
    never = model.padded_vocab

    def run(n: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = greedy_decode(model, prompts, max_new_tokens=n, stop_ids={never}, pad_id=0, batch_size=256)
        torch.cuda.synchronize()
        assert sum(map(len, out)) == 256 * n
        return time.perf_counter() - t0

    run(16)  # warm-up
    rate = 256 * 256 / run(256)
    print(f"decode: {rate:,.0f} new tokens/s (GPT2-12-12, batch 256, prompt 300, 256 new, bf16)")
    assert rate >= 100_000, f"{rate:,.0f} new tokens/s < the 100k target"
