"""Muon's orthogonalisation (issue 28, item 4): matrices of one shape as one batch, the fused q, k, v
weight as three blocks, and the state dict still torch's (exact resume: tests/test_train.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from igsm.cli_config import load_config
from igsm.config import ModelConfig, TrainConfig
from igsm.lit import param_groups
from igsm.model import GPT
from igsm.optim import MuonAdamW, build_optimizer, muon_row_blocks, newton_schulz, orthogonalise

MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul"}
SYNCS = {"nonzero", "_local_scalar_dense", "item", "masked_select"}


class OpNames(TorchDispatchMode):
    """The names of the aten ops dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def gpt(n_layer: int = 2, n_embd: int = 32) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=n_layer, n_head=2, n_embd=n_embd, block_size=64), 40)


def muon_optimizer(model: torch.nn.Module, **overrides) -> MuonAdamW:
    cfg = load_config(TrainConfig, ["optim.name=muon", "optim.weight_decay=0"]).optim
    return build_optimizer(model, param_groups(model, 0.0), cfg, fused=None, **overrides)


def random_grads(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def test_batched_newton_schulz_equals_one_matrix_at_a_time() -> None:
    """Several shapes, tall and wide of one oriented shape sharing a batch, a lone matrix: the
    batched iteration gives each matrix what its own iteration gives (float64)."""
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 8), (24, 8), (8, 8), (8, 24), (16, 40), (8, 8), (40, 16), (5, 3), (24, 8)]
    mats = [torch.randn(s, generator=g, dtype=torch.float64) * (i + 1) for i, s in enumerate(shapes)]
    batched = orthogonalise(mats, dtype=torch.float64, batched=True)
    assert [tuple(o.shape) for o in batched] == shapes
    for m, o in zip(mats, batched):
        torch.testing.assert_close(o, newton_schulz(m, dtype=torch.float64), rtol=1e-12, atol=1e-12)
        s = torch.linalg.svdvals(o)
        assert 0.6 < s.min() and s.max() < 1.3  # orthogonalised (the quintic's band around 1)
    assert newton_schulz(torch.stack(mats[:3:2]), dtype=torch.float64).shape == (2, 8, 8)


@pytest.mark.parametrize("batched", [True, False])
def test_fused_qkv_is_orthogonalised_as_three_blocks(batched: bool) -> None:
    """q, k, v gradients of very different scales: each block's update is orthogonal on its own
    and lr-scaled as a square matrix (lr x 1), so v moves as much as q. Orthogonalising the fused
    [3d, d] matrix (before) gives v's block a near-zero update, q's almost all of it."""
    model = gpt()
    opt = muon_optimizer(model, ns_float32=True)
    opt.batched = batched
    random_grads(model)
    d = model.cfg.d_model
    c_attn = model.blocks[0].attn.c_attn.weight
    with torch.no_grad():
        c_attn.grad[:d] *= 100.0  # q
        c_attn.grad[2 * d:] *= 0.01  # v
    assert muon_row_blocks(model)[id(c_attn)] == 3
    grad, before = c_attn.grad.clone(), c_attn.detach().clone()
    lr = opt.param_groups[-1]["lr"]
    opt.step()
    step = (before - c_attn.detach()) / lr  # [3d, d]: the orthogonalised update (weight decay 0)
    momentum = opt.param_groups[-1]["momentum"]
    nesterov = grad.lerp(grad * (1 - momentum), momentum)  # the first step's Nesterov update
    for block in range(3):
        rows = slice(block * d, (block + 1) * d)
        torch.testing.assert_close(step[rows], newton_schulz(nesterov[rows]), rtol=1e-4, atol=1e-5)
        s = torch.linalg.svdvals(step[rows])  # a random square block has a few tiny singular
        assert 0.6 < s.median() and s.max() < 1.3  # values 5 iterations do not lift; v's block too
    fused = newton_schulz(nesterov) * 3 ** 0.5  # the old update: one [3d, d] matrix, lr x sqrt(3)
    assert torch.linalg.svdvals(fused[2 * d:]).max() < 0.01


@pytest.mark.parametrize("batched", [True, False])
def test_every_muon_matrix_gets_its_own_orthogonalised_update(batched: bool) -> None:
    """The other matrices (attn.c_proj [d, d], mlp.c_fc [4d, d], mlp.c_proj [d, 4d]) batched across
    layers: each moves by lr x its shape scaling x newton_schulz of its own update."""
    model = gpt(n_layer=3)
    opt = muon_optimizer(model, ns_float32=True)
    opt.batched = batched
    random_grads(model)
    muon = opt.param_groups[-1]
    lr, momentum = muon["lr"], muon["momentum"]
    before = {p: (p.detach().clone(), p.grad.clone()) for p in muon["params"]}
    opt.step()
    for p, (w, grad) in before.items():
        if p.shape[0] == 3 * p.shape[1]:
            continue  # c_attn: three blocks (the test above)
        expected = newton_schulz(grad.lerp(grad * (1 - momentum), momentum)) * max(1.0, p.shape[0] / p.shape[1]) ** 0.5
        torch.testing.assert_close((w - p.detach()) / lr, expected, rtol=1e-4, atol=1e-5)


def test_a_muon_step_is_a_few_batched_iterations_whatever_the_depth() -> None:
    """Matrices of one shape share one batched Newton-Schulz: the matmuls of a Muon step do not
    grow with the number of layers (the per-matrix loop ran 15 per matrix), and it syncs nothing.
    (Batched is the default off CPUs, where launches cost; forced here.)"""
    counts = {}
    for n_layer in (2, 6):
        model = gpt(n_layer=n_layer)
        opt = muon_optimizer(model, ns_float32=True)
        random_grads(model)
        opt._adamw, opt.batched = None, True  # Muon's step alone
        with OpNames() as ops:
            opt.step()
        counts[n_layer] = sum(n in MATMULS for n in ops.names)
        assert not [n for n in ops.names if n in SYNCS]
    # two shapes after turning tall matrices wide ([d, d]: q, k, v, attn.c_proj; [d, 4d]: c_fc, mlp.c_proj),
    # 5 iterations of 3 products each
    assert counts == {2: 2 * 5 * 3, 6: 2 * 5 * 3}


def test_the_state_dict_is_torchs_so_older_checkpoints_load() -> None:
    """row_blocks is not saved: a state dict of MuonAdamW loads into one built without it (as
    written before this change) and back, and the groups hold torch's keys only."""
    model = gpt()
    opt = muon_optimizer(model, ns_float32=True)
    random_grads(model)
    opt.step()
    saved = opt.state_dict()
    torchs = torch.optim.Muon([torch.zeros(2, 2)]).state_dict()["param_groups"][0]
    assert set(saved["param_groups"][-1]) == set(torchs) | {"name"}
    plain = MuonAdamW(param_groups_of(opt), adamw=dict(lr=1e-3), muon=dict(lr=0.02), ns_float32=True)
    plain.load_state_dict(copy.deepcopy(saved))
    fresh = muon_optimizer(model, ns_float32=True)
    fresh.load_state_dict(plain.state_dict())
    assert fresh._row_blocks == opt._row_blocks and 3 in fresh._row_blocks[0]
    assert copy.deepcopy(fresh)._row_blocks == opt._row_blocks  # pickling keeps them too
    for a, b in zip(fresh.state_dict()["state"].values(), saved["state"].values()):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def param_groups_of(opt: MuonAdamW) -> list[dict]:
    return [{k: v for k, v in g.items() if k in ("params", "name", "weight_decay")} for g in opt.param_groups]


def test_row_blocks_that_do_not_divide_the_rows_are_one_clear_error() -> None:
    layer = torch.nn.Linear(4, 6)
    with pytest.raises(ValueError) as info:
        MuonAdamW([{"params": [layer.weight], "name": "muon", "weight_decay": 0.0}], row_blocks={id(layer.weight): 4})
    assert "row_blocks=4" in str(info.value) and "(6, 4)" in str(info.value) and "\n" not in str(info.value)


def test_bf16_step_is_torchs_muon_step_up_to_bf16_rounding() -> None:
    """Without ns_float32 (GPUs) the iterations run in bf16 as torch.optim.Muon's do; on matrices
    without row blocks the batched step lands where torch's per-matrix step does."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 48), torch.nn.Tanh(), torch.nn.Linear(48, 16),
                                torch.nn.Tanh(), torch.nn.Linear(16, 48))
    x = torch.randn(64, 16)
    start = copy.deepcopy(model.state_dict())
    ends = []
    for ours in (True, False):
        model.load_state_dict(start)
        weights = [m.weight for m in model if isinstance(m, torch.nn.Linear)]
        group = {"params": weights, "name": "muon", "weight_decay": 0.1}
        opt = (MuonAdamW([group], muon=dict(lr=0.02), batched=True) if ours
               else torch.optim.Muon(weights, lr=0.02, weight_decay=0.1))
        for _ in range(2):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        ends.append(copy.deepcopy(model.state_dict()))
    for k in ("0.weight", "2.weight", "4.weight"):
        moved = (ends[1][k] - start[k]).norm()
        assert (ends[0][k] - ends[1][k]).norm() < 0.05 * moved
