"""Issue 28's review of the GPU path, on CPU: precision resolution (auto picks bf16 only where a GPU
has bf16 tensor cores; probe.py resolves it as train.py does), clipping on unscaled float16
gradients, host syncs of the probe's steps, and resumes across device counts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import probe
from igsm.cli_config import config_to_dict, load_config
from igsm.config import ProbeConfig, TrainConfig

FAST = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=128", "data.context=128",
        "data.batch_size=2", "data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1",
        "trainer.strategy=auto"]


# -- precision: auto, and probe.py's controls --------------------------------------------------------

@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16-mixed"), ((8, 0), "bf16-mixed"),
                                                  ((7, 5), "16-mixed"), ((7, 0), "16-mixed")])
def test_auto_precision_on_a_gpu_is_bf16_only_with_bf16_tensor_cores(monkeypatch, capability, expected) -> None:
    """H100 (9.0) and A100 (8.0): bf16-mixed; T4 (7.5) and V100 (7.0) have fp16 tensor cores only:
    16-mixed. Fails if auto picks bf16 on every CUDA device."""
    import igsm.trainer as trainer_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cfg = load_config(TrainConfig, ["trainer.accelerator=gpu"])
    assert cfg.trainer.precision is None
    assert trainer_module.resolve_precision(cfg.trainer) == expected
    cfg.trainer.precision = "32-true"
    assert trainer_module.resolve_precision(cfg.trainer) == "32-true"  # an explicit value is kept


@pytest.mark.parametrize("resolved, bf16", [("bf16-mixed", True), ("32-true", False), ("16-mixed", False)])
def test_probe_controls_use_the_precision_train_py_resolves(monkeypatch, resolved, bf16) -> None:
    """trainer.precision null (the default) resolves through igsm.trainer.resolve_precision, as in
    train.py: the solved-split decoding and the positive-control fine-tuning run in bf16 exactly
    when the probes do. Fails with the old ``str(precision).startswith("bf16")`` (False for null)."""
    import igsm.trainer as trainer_module
    import probing.controls as controls

    monkeypatch.setattr(trainer_module, "resolve_precision", lambda cfg: resolved)
    seen = []
    monkeypatch.setattr(controls, "solved_flags", lambda *a, bf16, **k: seen.append(("solved", bf16)) or [True])
    monkeypatch.setattr(controls, "finetune_positive", lambda *a, bf16, **k: seen.append(("positive", bf16)))
    cfg = load_config(ProbeConfig, ["trainer.accelerator=cpu", "probe.tasks=[nece]", "probe.split_by_solved=true",
                                    "probe.positive_control=true"])
    assert cfg.trainer.precision is None
    backbone = SimpleNamespace(model=torch.nn.Linear(1, 1), tokenizer=None,
                               train_config=SimpleNamespace(eval=SimpleNamespace(fresh_letters=False)))
    datamodule = SimpleNamespace(test_split_stream=lambda: ("test", "probe"), solved=None)
    probe.build_controls(cfg, backbone, None, datamodule)
    assert seen == [("solved", bf16), ("positive", bf16)]


# -- clipping under 16-mixed ---------------------------------------------------------------------------

def test_clipping_under_float16_acts_on_unscaled_gradients() -> None:
    """With a GradScaler and fused AdamW (which unscales inside its step, so Lightning does not
    unscale before clipping), configure_gradient_clipping logs and clips the true gradient norm,
    and the scaler's step then applies the same update as an unscaled run. Fails without the
    unscale: the logged norm is the loss scale times too large, and clipping shrinks the update."""
    from igsm.data import IGSMDataModule
    from igsm.lit import GPTLitModule

    cfg = load_config(TrainConfig, FAST + ["optim.grad_clip=1.0"])
    tokenizer = IGSMDataModule(cfg.data, cfg.eval, 0).tokenizer.to_dict()
    batch = torch.randint(0, 100, (2, 17))
    runs = []
    for scale in (None, 2.0 ** 12):
        torch.manual_seed(0)
        module = GPTLitModule(config_to_dict(cfg), tokenizer)
        logged = {}
        module.log = lambda name, value, logged=logged, **k: logged.__setitem__(name, float(value))
        optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-2, fused=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=scale) if scale else None
        module._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler), world_size=1)
        loss = module.model(batch[:, :-1].contiguous(), batch[:, 1:].contiguous()).loss
        (scaler.scale(loss) if scaler else loss).backward()
        module.configure_gradient_clipping(optimizer)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        runs.append((logged["train/grad_norm"], [p.detach().clone() for p in module.model.parameters()]))
    (norm, weights), (scaled_norm, scaled_weights) = runs
    assert norm > 1.0  # the clip acts
    assert scaled_norm == pytest.approx(norm, rel=1e-4)
    for a, b in zip(weights, scaled_weights):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
