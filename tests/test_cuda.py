"""The GPU path (issue 8): bf16-mixed training, torch.compile, KV-cache decoding, probing and
cross-device resume on CUDA.

Every test runs on two devices: ``cuda`` (marker ``gpu``; skipped without CUDA, so CI stays green;
``pytest -m gpu`` or ``scripts/device_check.py`` runs them on a GPU) and ``cpu``, the same logic at
toy sizes so that it is proven in CI between GPU slots. Where a CUDA-only feature has no CPU twin
(fused AdamW, the inductor backend, which takes minutes to compile on 2 CPU cores), the CPU variant
checks the selection logic and uses a cheap backend with the same graph capture (dynamo).
"""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

import probe
import train
from igsm.cli_config import config_to_dict, load_config
from igsm.config import ModelConfig, TrainConfig
from igsm.data import IGSMDataModule
from igsm.decode import greedy_decode
from igsm.lit import GPTLitModule
from igsm.model import GPT

HAS_CUDA = torch.cuda.is_available()
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")])
DEVICES = ["cpu", CUDA]

# A small model on tiny data; on CUDA a little larger so the kernels are the real ones (tensor cores).
SIZES = {
    "cpu": ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "data.batch_size=4"],
    "cuda": ["model.n_layer=4", "model.n_head=4", "model.n_embd=256", "data.batch_size=16"],
}
COMMON = [
    "model.block_size=256", "data.context=256", "data.num_workers=0",
    "eval.n=8", "eval.batch_size=8", "eval.max_new_tokens=32", "eval.buckets=[2,3,4:train]",
    "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "optim.warmup_steps=1",
    "trainer.devices=1", "trainer.strategy=auto",  # one process (the tiny default is two DDP processes)
]


def train_config(device: str, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, COMMON + SIZES[device] + [f"trainer.accelerator={device}", *extra])


class LossRecorder(Callback):
    """The training loss of every batch, in order, and the device the module trained on (Lightning
    moves it back to the CPU when fitting ends)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.devices: set[str] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].item())
        self.devices.add(pl_module.device.type)


def fit_compiled_beside_eager(cfg, device: str, tmp_path, name: str):
    """The first training step's loss in eager mode (a copy of the fresh module, bf16 autocast on
    CUDA), then ``cfg``'s compiled training run of that module. Returns (module, datamodule,
    trainer, the LossRecorder, the eager loss)."""
    dm = IGSMDataModule(cfg.data, cfg.eval, seed=0)
    batch = dm.train_dataset().batch(0)
    L.seed_everything(0, verbose=False)
    module = GPTLitModule(config_to_dict(cfg), dm.tokenizer.to_dict())
    eager = copy.deepcopy(module).to(device)
    eager.cfg.model.compile = False
    eager.log = lambda *a, **k: None
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    with torch.no_grad(), autocast:
        eager_loss = eager.training_step({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()},
                                         0).item()
    losses = LossRecorder()
    from igsm.trainer import build_trainer

    trainer = build_trainer(cfg.trainer, name, log_root=str(tmp_path), extra_callbacks=[losses],
                            enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    return module, dm, trainer, losses, eager_loss


def one_batch_loader(batch: dict) -> DataLoader:
    return DataLoader([batch], batch_size=None)


def reference_loss(module: GPTLitModule, batch: dict) -> float:
    """The fp32 loss of the module's current weights on CPU, by the same training_step."""
    ref = copy.deepcopy(module).cpu().float()
    ref.log = lambda *a, **k: None  # no Trainer attached
    with torch.no_grad():
        return ref.training_step(batch, 0).item()


# -- 1. one bf16-mixed step: the loss of fp32 on CPU, fused AdamW on CUDA -----------------------

@pytest.mark.parametrize("device", DEVICES)
def test_bf16_mixed_step_matches_fp32_cpu_loss_and_uses_fused_adamw(device, tmp_path) -> None:
    from igsm.trainer import build_trainer

    cfg = train_config(device, "trainer.precision=bf16-mixed", "trainer.max_steps=1", "eval.final=false")
    dm = IGSMDataModule(cfg.data, cfg.eval, seed=0)
    batch = dm.train_dataset().batch(0)  # a real packed batch (letter slots included: letter_loss=uniform)
    L.seed_everything(0, verbose=False)
    module = GPTLitModule(config_to_dict(cfg), dm.tokenizer.to_dict())
    expected = reference_loss(module, batch)

    losses = LossRecorder()
    trainer = build_trainer(cfg.trainer, "bf16", log_root=str(tmp_path), extra_callbacks=[losses],
                            enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=one_batch_loader(batch))

    assert str(trainer.precision) == "bf16-mixed" and losses.devices == {device}
    [loss] = losses.losses
    assert math.isfinite(loss)
    assert abs(loss - expected) / expected < 0.02, (loss, expected)
    group = trainer.optimizers[0].param_groups[0]
    assert isinstance(trainer.optimizers[0], torch.optim.AdamW)
    assert group["fused"] is (True if device == "cuda" else None)  # fused kernels on CUDA only


# -- 2. torch.compile: the eager loss, and no unbounded recompiles --------------------------------

def _compile_backend(device: str, monkeypatch) -> None:
    """CUDA: torch.compile as configured (inductor). CPU: dynamo's graph capture with the
    eager backend (inductor on CPU takes minutes per graph on 2 shared cores)."""
    if device == "cpu":
        real_compile = torch.compile
        monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend="eager"))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_matches_eager_and_evaluation_does_not_recompile_without_bound(device, tmp_path, monkeypatch) -> None:
    from torch._dynamo.utils import counters


    _compile_backend(device, monkeypatch)
    torch._dynamo.reset()
    counters.clear()
    steps = 3
    cfg = train_config(device, "model.compile=true", f"trainer.max_steps={steps}", "trainer.precision=bf16-mixed"
                       if device == "cuda" else "trainer.precision=32-true")
    module, dm, trainer, losses, eager_loss = fit_compiled_beside_eager(cfg, device, tmp_path, "compiled")
    assert module._compiled_forward is not None  # training went through the compiled forward
    tolerance = 0.01 if device == "cuda" else 1e-4  # bf16 kernels differ between eager and inductor
    assert losses.devices == {device}
    assert abs(losses.losses[0] - eager_loss) / eager_loss < tolerance, (losses.losses[0], eager_loss)
    assert all(math.isfinite(x) for x in losses.losses) and len(losses.losses) == steps

    graphs_after_training = counters["stats"]["unique_graphs"]
    trainer.validate(module, datamodule=dm, verbose=False)  # buckets of different prompt lengths
    assert module.last_eval and all(e["n"] == 8 for e in module.last_eval)
    # Forwards of other lengths (evaluation-sized prompts) once more through the compiled path, in
    # training's grad mode: dynamo may compile one shape-generic graph more, never one per length.
    module.to(device)  # Lightning's teardown moved it to the CPU
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        for T in (17, 40, 64, 101, 150):
            module.train_forward(torch.randint(0, 50, (3, T), device=device))
    graphs = counters["stats"]["unique_graphs"]
    assert 1 <= graphs_after_training <= 2, dict(counters["stats"])
    assert graphs <= graphs_after_training + 1, dict(counters["stats"])
    torch._dynamo.reset()


# -- 3. greedy decoding with the KV cache ---------------------------------------------------------

def _decode_model(device: str) -> GPT:
    torch.manual_seed(0)
    size = dict(n_layer=2, n_head=2, n_embd=64) if device == "cpu" else dict(n_layer=4, n_head=4, n_embd=256)
    return GPT(ModelConfig(block_size=512, **size), vocab_size=200).to(device).eval()


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 60, (n,), generator=g).tolist()
    return [torch.randint(0, 200, (k,), generator=g).tolist() for k in lengths]


def _uncached_argmax_agreement(model: GPT, prompts, generated) -> float:
    """Share of generated positions whose token is the argmax of a full, uncached forward over the
    prompt and the tokens generated before it (same autocast as the caller)."""
    agree = total = 0
    with torch.no_grad():
        for prompt, gen in zip(prompts, generated):
            seq = torch.tensor([prompt + gen[:-1]], device=model.wte.weight.device)
            logits = model(seq).logits[0, len(prompt) - 1:, : model.vocab_size]  # [len(gen), vocab]
            agree += (logits.argmax(-1).cpu() == torch.tensor(gen)).sum().item()
            total += len(gen)
    return agree / total


@pytest.mark.parametrize("device", DEVICES)
def test_kv_cache_decoding_in_bf16_matches_the_uncached_argmax(device) -> None:
    model = _decode_model(device)
    prompts = _prompts(32)
    never = model.padded_vocab  # no row stops early: every position is compared
    with torch.autocast(device, dtype=torch.bfloat16):
        generated = greedy_decode(model, prompts, max_new_tokens=24, stop_ids={never}, pad_id=0, batch_size=32)
        agreement = _uncached_argmax_agreement(model, prompts, generated)
    assert all(len(g) == 24 for g in generated)
    assert agreement >= 0.99, agreement


@pytest.mark.parametrize("device", DEVICES)
def test_left_padding_does_not_change_any_rows_tokens(device) -> None:
    """Each prompt decoded alone (no padding) and in one left-padded batch of mixed lengths. In
    fp32 (TF32 off) every row is identical. In bf16 a different batch shape may pick other kernels,
    whose rounding can flip a near-tie of the random model; so there the check is that the
    padded batch is what the uncached forward says, position by position (>= 99%)."""
    model = _decode_model(device)
    prompts = _prompts(16, seed=1)
    never = model.padded_vocab
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        batched = greedy_decode(model, prompts, max_new_tokens=20, stop_ids={never}, pad_id=0, batch_size=16)
        alone = [greedy_decode(model, [p], max_new_tokens=20, stop_ids={never}, pad_id=0)[0] for p in prompts]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert batched == alone
    with torch.autocast(device, dtype=torch.bfloat16):
        batched = greedy_decode(model, prompts, max_new_tokens=20, stop_ids={never}, pad_id=0, batch_size=16)
        assert _uncached_argmax_agreement(model, prompts, batched) >= 0.99


# -- 4. probe.py: a few steps, the frozen backbone bit-identical afterwards -----------------------

class FrozenBackboneCheck(Callback):
    """Snapshots the probe's backbones when fitting starts; compares them when training ends."""

    def __init__(self) -> None:
        self.before: dict = {}
        self.checked = False

    def on_fit_start(self, trainer, pl_module) -> None:
        self.before = {k: v.detach().cpu().clone() for k, v in pl_module.backbones.state_dict().items()}

    def on_train_end(self, trainer, pl_module) -> None:
        after = {k: v.detach().cpu() for k, v in pl_module.backbones.state_dict().items()}
        assert after.keys() == self.before.keys()
        changed = [k for k in after if not torch.equal(after[k], self.before[k])]
        assert not changed, changed
        assert all(p.device.type == trainer.strategy.root_device.type for p in pl_module.parameters())
        self.checked = True


def _tiny_checkpoint(root, device: str) -> str:
    args = COMMON + SIZES[device] + [f"trainer.accelerator={device}", f"log_root={root}", "name=backbone",
                                     "trainer.max_steps=2", "eval.final=false"]
    assert train.main(args) == 0
    return str(root / "backbone" / "version_0" / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("device", DEVICES)
def test_probe_steps_leave_the_backbone_bit_identical(device, tmp_path, monkeypatch) -> None:
    import igsm.trainer

    ckpt = _tiny_checkpoint(tmp_path / "train", device)
    check = FrozenBackboneCheck()
    real_build = igsm.trainer.build_trainer

    def build_with_check(*args, **kwargs):
        kwargs["extra_callbacks"] = [*kwargs.get("extra_callbacks", ()), check]
        return real_build(*args, **kwargs)

    monkeypatch.setattr(igsm.trainer, "build_trainer", build_with_check)  # probe.py imports it at run time
    rc = probe.main([f"ckpt={ckpt}", f"log_root={tmp_path / 'probe'}", "name=p", f"trainer.accelerator={device}",
                     "trainer.precision=bf16-mixed", "trainer.max_steps=3", "probe.tasks=[nece,can_next]",
                     "probe.test_problems=4", "probe.batch_size=8", "probe.draws=3", "probe.num_workers=0",
                     "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "trainer.devices=1",
                     "trainer.strategy=auto"])
    assert rc == 0 and check.checked
    assert (tmp_path / "probe" / "p" / "version_0" / "probe.json").is_file()


# -- 5. a checkpoint written on one device resumes on the other -----------------------------------

class FusedFlag(Callback):
    """The AdamW groups' ``fused`` flag once training runs (after a resume restored the optimizer)."""

    def __init__(self) -> None:
        self.flags: set = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.flags |= {g["fused"] for g in trainer.optimizers[0].param_groups}


@pytest.mark.parametrize("first,second", [
    ("cpu", "cpu"),
    pytest.param("cuda", "cpu", marks=CUDA.marks),
    pytest.param("cpu", "cuda", marks=CUDA.marks),
])
def test_checkpoint_resumes_on_the_other_device(first, second, tmp_path) -> None:
    # The CPU sizes on both sides: the checkpoint must load into the same model shape.
    common = COMMON + SIZES["cpu"] + [f"log_root={tmp_path}", "name=run", "eval.final=false",
                                      "trainer.checkpoint_every=3", "optim.lr=1e-2"]
    before, after, fused = LossRecorder(), LossRecorder(), FusedFlag()
    assert train.main(common + [f"trainer.accelerator={first}", "trainer.max_steps=3"], extra_callbacks=[before]) == 0
    last = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
    if first == second == "cpu":  # on CPU, a checkpoint as CUDA writes it: its AdamW groups say fused
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        for group in ckpt["optimizer_states"][0]["param_groups"]:
            group["fused"] = True
        torch.save(ckpt, last)
    assert train.main(common + [f"trainer.accelerator={second}", "trainer.max_steps=6", "ckpt_path=last"],
                      extra_callbacks=[after, fused]) == 0
    assert len(before.losses) == 3 and len(after.losses) == 3
    assert all(math.isfinite(x) for x in before.losses + after.losses)
    # the AdamW kernel of the device that resumes, not of the one that wrote the checkpoint
    assert fused.flags == {True if second == "cuda" else None}
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["version_0"]  # resumed in place
    # The resumed optimizer really continued: Adam's step count went on from 3.
    steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert steps == {6}
