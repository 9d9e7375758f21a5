"""CPU tests of what would break or slow the GPU path (issue 14): integer matmuls in metric code,
host syncs per step, per-step casts, invalid command lines, the probe's global batch.

The checks run the code under a TorchDispatchMode that records every aten op it dispatches, so
CUDA-only failures (no integer matmul on CUDA) and GPU-only costs (a sync, a cast per step) show
on CPU as ops that should not be there.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import probe
import train
from igsm.cli_config import load_config
from igsm.config import ConfigError, ModelConfig, ProbeConfig, TrainConfig
from igsm.decode import STOP_CHECK_EVERY, greedy_decode
from igsm.lit import EvalScores, uniform_letter_loss
from igsm.model import GPT
from igsm.verify import Tally
from probing.run import GPU_LENGTH_CHUNKS, per_device_sizes
from probing.vprobe import ClassCounts, GroupedAccuracy

ROOT = Path(__file__).resolve().parents[1]
MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "dot", "mv", "addmv", "_addmm_activation"}
# ops whose result the host must wait for (data-dependent shapes or values copied to Python)
SYNCS = {"nonzero", "_local_scalar_dense", "masked_select", "unique", "_unique2", "item", "isin"}


class OpLog(TorchDispatchMode):
    """Records (op name, input tensor dtypes, input shapes) of every dispatched aten op."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [a for a in list(args) + list((kwargs or {}).values()) if torch.is_tensor(a)]
        self.calls.append((func.overloadpacket.__name__, tuple(t.dtype for t in tensors),
                           tuple(tuple(t.shape) for t in tensors)))
        return func(*args, **(kwargs or {}))

    def names(self) -> Counter:
        return Counter(name for name, _, _ in self.calls)

    def syncs(self) -> list[str]:
        bool_index = [n for n, dtypes, _ in self.calls if n in ("index", "index_put", "index_put_")
                      and torch.bool in dtypes[1:]]
        return [n for n in self.names().elements() if n in SYNCS] + bool_index


# -- 1. metrics: no integer matmul (CUDA has none) ------------------------------------------------

def test_metric_updates_use_no_integer_matmul() -> None:
    g = torch.Generator().manual_seed(0)
    preds, label = torch.randint(0, 2, (3, 50), generator=g), torch.randint(0, 2, (50,), generator=g)
    dist = torch.randint(-1, 6, (50,), generator=g)
    metric, counts, scores = GroupedAccuracy(3, binary=True), ClassCounts(2), EvalScores()
    with OpLog() as log:
        metric.update(preds, label, dist)
        counts.update(label)
        scores.update(Tally(n=4, correct=3, answer_correct=2, unnecessary=1))
    integer_matmuls = [(n, d) for n, d, _ in log.calls
                       if n in MATMULS and any(not t.is_floating_point and not t.is_complex for t in d)]
    assert integer_matmuls == []
    correct, total = metric.compute()
    ok = preds == label
    assert correct[:, 0].tolist() == ok.sum(1).tolist()  # all pairs
    assert correct[:, 2].tolist() == (ok & (label == 1)).sum(1).tolist()  # label 1
    assert total[0, 1] == (label == 0).sum()


# -- 2. every documented command line passes its config check -------------------------------------

def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every ``python train.py|probe.py ...`` in README, scripts/, configs/ and the
    entry points' docstrings; the slurm script's ARGS array with its variables filled in."""
    sources = [ROOT / "README.md", ROOT / "train.py", ROOT / "probe.py",
               *sorted((ROOT / "scripts").glob("*")), *sorted((ROOT / "configs").rglob("*.yaml")),
               *sorted((ROOT / "docs").glob("*.md"))]
    found = []
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text()
        variables = dict(re.findall(r"^(\w+)=([^\s(]+)$", text, flags=re.M))
        # a glob array (CONFIGS=(configs/x/*.yaml)) indexed by a job variable: its first file
        for name, pattern in re.findall(r"^(\w+)=\((\S+)\)", text, flags=re.M):
            matches = sorted(ROOT.glob(pattern))
            if matches:
                for var, value in list(variables.items()):
                    variables[var] = re.sub(r"\$\{" + name + r"\[[^]]*\]\}", str(matches[0].relative_to(ROOT)), value)
        for m in re.finditer(r"python (train|probe)\.py((?: +[^\s#`|>]+)*)", text):
            args = m.group(2).split()
            template = any(c in a for a in args for c in "<();") or "..." in args
            if template or re.search(r"=[A-Z]+(\s|$)", m.group(2)) or any("$" in a for a in args if "ARGS" not in a):
                continue  # a template in prose (config=FILE name=PREFIX/<stem>, $C), not a command line
            if '"${ARGS[@]}"' in args:
                array = re.search(r"^ARGS=\((.*)\)$", text, flags=re.M).group(1)
                for _ in range(3):  # variables defined through other variables
                    array = re.sub(r"\$\{(\w+)\}", lambda v, env=variables: env.get(v.group(1), v.group(0)), array)
                array = re.sub(r"\$\{(\w+)\}", lambda v: v.group(1).lower(), array)  # computed ($(...)): a stand-in
                args = [a for a in args if a != '"${ARGS[@]}"'] + shlex.split(array)
            # resuming needs a run on disk; "ckpt=..." stands for a path; the rest must pass as written
            args = ["ckpt=run.ckpt" if a == "ckpt=..." else a for a in args if not a.startswith("ckpt_path=")]
            found.append((f"{path.relative_to(ROOT)}: {m.group(0).strip()}", m.group(1), args))
    return found


def test_every_documented_command_line_passes_print_config(capsys) -> None:
    commands = documented_commands()
    assert any("slurm" in where for where, _, _ in commands)
    assert sum(kind == "probe" for _, kind, _ in commands) >= 3
    failures, seen = [], set()
    for where, kind, args in commands:
        key = (kind, tuple(args))
        if key in seen:
            continue
        seen.add(key)
        rc = (train if kind == "train" else probe).main([*args, "print_config=true"])
        err = capsys.readouterr().err
        if rc != 0:
            failures.append(f"{where}: {err.strip()}")
    assert failures == []


# -- 3. torch.compile where it pays, and its prerequisites -----------------------------------------

@pytest.mark.parametrize("preset", ["med", "hard", "depth_width/gpt2-20-9", "depth_width/gpt2-4-30"])
def test_gpu_presets_compile(preset) -> None:
    assert load_config(TrainConfig, [f"preset={preset}"]).model.compile


def test_missing_compiler_is_one_clear_line(monkeypatch, capsys) -> None:
    import igsm.compile_check as cc

    monkeypatch.setattr(cc.shutil, "which", lambda name: None)
    problems = cc.compile_problems(cuda=False)
    assert len(problems) == 1 and "C compiler" in problems[0]
    assert train.main(["model.compile=true", "trainer.max_steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.compile=true" in err and "C compiler" in err


# -- 4. throughput logged on logging steps only (a Python float logged is a device sync) -----------

def test_throughput_is_logged_only_on_logging_steps(monkeypatch) -> None:
    from igsm.lit import GPTLitModule

    module = GPTLitModule.__new__(GPTLitModule)
    torch.nn.Module.__init__(module)
    from collections import deque

    module._batch_times, module._peak_flops, module._flops_per_token = deque(), 1e12, 10
    fake = SimpleNamespace(log_every_n_steps=5, accumulate_grad_batches=2, world_size=1, global_step=0)
    monkeypatch.setattr(GPTLitModule, "trainer", property(lambda self: fake))
    logged = []
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.append((fake.global_step, name)))
    batch = {"inputs": torch.zeros(2, 8, dtype=torch.long)}
    for batch_idx in range(40):  # 20 optimizer steps of 2 micro-batches
        fake.global_step = (batch_idx + 1) // 2
        module.on_train_batch_end(None, batch, batch_idx)
    steps = sorted({step for step, _ in logged})
    assert steps == [5, 10, 15, 20]  # once per log_every_n_steps optimizer steps
    assert len(logged) == 2 * len(steps)  # tokens/s and MFU


# -- 5. the probe's batch is global; padding is cut on GPU by default ------------------------------

def test_probe_batch_is_global_and_chunks_default_by_device() -> None:
    cfg = load_config(ProbeConfig, ["preset=probe_med", "trainer.devices=8", "trainer.accelerator=gpu"])
    assert per_device_sizes(cfg) == (32, GPU_LENGTH_CHUNKS)
    cfg = load_config(ProbeConfig, ["preset=probe_med", "trainer.accelerator=cpu"])
    assert per_device_sizes(cfg) == (256, 1)
    with pytest.raises(ConfigError, match="probe.batch_size=100.*multiple of"):
        load_config(ProbeConfig, ["probe.batch_size=100", "trainer.devices=8"])


# -- 6 and 9. decoding: few ops per token, no weight casts, no syncs, fp32 last row ----------------

def decode_ops(model: GPT, n_new: int, fresh) -> OpLog:
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]] * 2
    with OpLog() as log, torch.autocast("cpu", dtype=torch.bfloat16):
        greedy_decode(model, prompts, max_new_tokens=n_new, stop_ids={10 ** 6}, pad_id=0, fresh_letters=fresh)
    return log


def test_decode_step_has_no_weight_casts_syncs_or_per_step_masks() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=3, n_head=2, block_size=256), 100)
    fresh = (3, list(range(10, 62)))
    short, long = decode_ops(model, 9, fresh), decode_ops(model, 9 + 48, fresh)
    per_token = {n: (long.names()[n] - short.names()[n]) / 48 for n in long.names()}
    weight_shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}
    step_calls = long.calls[len(short.calls):]  # not aligned op for op, but all are step ops
    casts = [s for n, _, s in step_calls if n in ("_to_copy", "to") and s and s[0] in weight_shapes]
    assert casts == []  # autocast's weight cache works: no bf16 copy of a weight per step
    syncs = (len(long.syncs()) - len(short.syncs())) / 48
    assert syncs <= 1 / STOP_CHECK_EVERY + 1e-9  # only the "all stopped?" check
    assert per_token.get("where", 0) == 0 and per_token.get("arange", 0) == 0  # no mask built per step
    computing = sum(v for n, v in per_token.items() if n not in (
        "view", "t", "transpose", "slice", "select", "unsqueeze", "expand", "split", "permute", "unbind",
        "alias", "detach", "squeeze"))
    assert computing <= 3 * 22 + 20  # was 3 * 31 + 25 before the review


def test_last_row_logits_are_float32_under_bf16_autocast() -> None:
    """A bf16 logit row ties near-equal letters (argmax then takes the lowest id)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, block_size=64), 100)
    idx = torch.tensor([[1, 2, 4, 5]])
    with torch.no_grad():
        h = model.ln_f(model(idx, output_hidden_states=True).hidden_states[-1][0, -1])  # [d]
        model.wte.weight[30] = 6.0 * h / h.norm() ** 2  # logit ~6 for id 30 ...
        model.wte.weight[70] = model.wte.weight[30] * (1 + 2 ** -10)  # ... and a hair more for id 70
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.forward_cached(idx, model.new_kv_cache(1, 8))
    assert logits.dtype == torch.float32
    assert logits[0, 70] > logits[0, 30]
    out = greedy_decode(model, [[1, 2, 4, 5]], max_new_tokens=1, stop_ids=[], pad_id=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert greedy_decode(model, [[1, 2, 4, 5]], max_new_tokens=1, stop_ids=[], pad_id=0) == out == [[70]]


# -- 8. the error analysis decodes in the run's precision ------------------------------------------

def test_analysis_decodes_under_the_runs_autocast(monkeypatch) -> None:
    import igsm.decode
    import probing.analysis as analysis
    from igsm.config import AnalysisConfig, generator_config
    from igsm.data_setup import build_data_tokenizer

    seen = []

    def fake_decode(model, prompts, **kw):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return [[] for _ in prompts]

    monkeypatch.setattr(igsm.decode, "greedy_decode", fake_decode)  # what igsm.solve decodes with
    data = load_config(TrainConfig, []).data
    tok = build_data_tokenizer(data)
    backbone = GPT(ModelConfig(n_layer=1, n_head=2, block_size=512), tok.vocab_size)
    module = SimpleNamespace(backbones={"trained": backbone}, tasks=["nece"])
    analysis.run_analysis(module, tok, generator_config(data), AnalysisConfig(n=2), precision="bf16-mixed")
    assert seen and all(seen)


# -- 10. DDP does not broadcast buffers (a rank without a batch would hang in it) -----------------

@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "ddp_find_unused_parameters_true"])
def test_ddp_strategies_do_not_broadcast_buffers(strategy) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    from igsm.config import TrainerConfig
    from igsm.trainer import resolve_strategy

    ddp = resolve_strategy(TrainerConfig(strategy=strategy))
    kwargs = ddp._ddp_kwargs
    assert isinstance(ddp, DDPStrategy)
    assert kwargs.get("forward_sync_buffers", kwargs.get("broadcast_buffers")) is False
    assert ddp._ddp_kwargs.get("find_unused_parameters", False) == strategy.endswith("_true")
    assert resolve_strategy(TrainerConfig(strategy="auto")) == "auto"


# -- 11. the uniform letter loss: no sync, same values ------------------------------------------

def reference_letter_loss(logits, targets, letter_used, letter_ids):
    """The loss as first written (nonzero on the slots): the reference for the values."""
    flat = logits.reshape(-1, logits.size(-1)).float()
    used = letter_used.reshape(-1)
    slot = (used >= 0) & (targets.reshape(-1) != -100)
    onehot_targets = targets.reshape(-1).masked_fill(used >= 0, -100)
    onehot_sum = torch.nn.functional.cross_entropy(flat, onehot_targets, ignore_index=-100, reduction="sum")
    rows = slot.nonzero().squeeze(1)
    log_p = torch.log_softmax(flat[rows], dim=-1)[:, letter_ids]
    bit = torch.arange(letter_ids.numel())
    unused = ((used[rows, None] >> bit) & 1) == 0
    uniform_sum = -((log_p * unused).sum(1) / unused.sum(1)).sum()
    return (onehot_sum + uniform_sum) / ((onehot_targets != -100).sum() + rows.numel()).clamp(min=1)


def test_uniform_letter_loss_is_sync_free_and_unchanged() -> None:
    g = torch.Generator().manual_seed(1)
    V, letter_ids = 80, torch.arange(20, 72)
    logits = torch.randn(3, 16, V, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, V, (3, 16), generator=g)
    targets[0, :3] = -100
    used = torch.full((3, 16), -1)
    slots = torch.rand(3, 16, generator=g) < 0.3
    used[slots] = torch.randint(0, 2 ** 52, (int(slots.sum()),), generator=g)
    used[0, 1] = 5  # a slot whose target carries no loss
    with OpLog() as log:
        loss = uniform_letter_loss(logits, targets, used, letter_ids)
    assert log.syncs() == []
    ref = reference_letter_loss(logits, targets, used, letter_ids)
    torch.testing.assert_close(loss, ref)
    grad, = torch.autograd.grad(loss, logits)
    ref_grad, = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(grad, ref_grad)
