"""The V-probe module: frozen three ways, parameter count, controls, metrics, data module."""


import lightning.pytorch as pl
import pytest
import torch

from conftest import tiny_gpt
from igsm.config import generator_preset
from igsm.generator import world_for
from igsm.tokenizer import build_tokenizer
from probing.data import ProbeDataModule, ProbeDataset, collate_pairs
from probing.labels import NUM_CLASSES, TASKS
from probing.vprobe import GroupedAccuracy, VProbe, expected_trainable, random_backbone

GEN = generator_preset("tiny")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("word", world_for(GEN))


def fit(module, tok, steps=3, tasks=TASKS, callbacks=(), test=False):
    dm = ProbeDataModule(tok, GEN, tasks, batch_size=10, draws=5, test_problems=4)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(module, dm)
    if test:
        trainer.test(module, dm, verbose=False)
    return trainer


@pytest.mark.parametrize("layers", ["last", "all"])
def test_trainable_parameter_count(tok, layers):
    gpt = tiny_gpt(tok)
    m = VProbe(gpt, TASKS, rank=8, layers=layers, control="both")
    d, V = gpt.cfg.d_model, gpt.padded_vocab  # U has one row per (padded) embedding row
    n_heads = gpt.cfg.n_layer if layers == "all" else 1
    for backbone in ("trained", "random_init"):
        for task in TASKS:
            n = sum(p.numel() for p in m.trainable_parameters(backbone, task))
            assert n == expected_trainable(V, d, 8, NUM_CLASSES[task], n_heads)
            if layers == "last":
                assert n == 8 * (V + d) + d * NUM_CLASSES[task] + NUM_CLASSES[task]
    # everything that requires a gradient is a probe parameter, and that is what the optimizer gets
    grad = {id(p) for p in m.parameters() if p.requires_grad}
    assert grad == {id(p) for p in m.trainable_parameters()}
    m.trainer = None
    opt_params = {id(p) for g in _optimizer(m).param_groups for p in g["params"]}
    assert opt_params == grad


def _optimizer(m):
    class _T:  # configure_optimizers reads trainer.max_steps
        max_steps = 10
    m._trainer = _T()
    try:
        return m.configure_optimizers()["optimizer"]
    finally:
        m._trainer = None


def test_backbone_bit_identical_after_training(tok):
    gpt = tiny_gpt(tok, dropout=0.3)
    m = VProbe(gpt, ["nece", "dep"], control="both", layers="all")
    before = {k: v.clone() for k, v in m.backbones.state_dict().items()}
    probes_before = {k: v.clone() for k, v in m.probes.state_dict().items()}
    fit(m, tok, steps=3, tasks=["nece", "dep"])
    after = m.backbones.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    changed = [k for k, v in m.probes.state_dict().items() if not torch.equal(v, probes_before[k])]
    assert any(k.endswith(".U") for k in changed) and any("heads" in k for k in changed)
    assert all(not p.requires_grad for p in m.backbones.parameters())


class _ModeSpy(pl.Callback):
    """Checks, inside Lightning's training loop, that the backbones are in eval mode and that the
    probe's features are deterministic although the backbone has dropout."""

    def __init__(self):
        self.checked = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        assert module.training and all(p.training for p in module.probes.values())
        for bb in module.backbones.values():
            assert not any(sub.training for sub in bb.modules())
        b = batch["nece"]
        with torch.no_grad():
            h1 = module.end_states("trained", "nece", b["idx"], b["end"])[-1]
            h2 = module.end_states("trained", "nece", b["idx"], b["end"])[-1]
        assert torch.equal(h1, h2)
        self.checked += 1


def test_backbone_stays_in_eval_mode(tok):
    gpt = tiny_gpt(tok, dropout=0.5)
    m = VProbe(gpt, ["nece"], control="both")
    m.train()  # what Lightning calls
    assert m.training and not gpt.training and not m.backbones["random_init"].training
    # dropout 0.5 is live in train mode: the check above is sensitive to it
    idx = torch.randint(0, tok.vocab_size, (2, 16))
    gpt.train()
    a, b = (gpt(idx, compute_logits=False, output_hidden_states=True),
            gpt(idx, compute_logits=False, output_hidden_states=True))
    assert not torch.equal(a.hidden_states[-1], b.hidden_states[-1])
    m.train()
    assert not gpt.training
    spy = _ModeSpy()
    fit(m, tok, steps=3, tasks=["nece"], callbacks=[spy])
    assert spy.checked == 3


def test_probe_starts_as_the_frozen_model(tok):
    gpt = tiny_gpt(tok)
    m = VProbe(gpt, ["known"], control="none")
    probe = m.probes["trained__known"]
    assert torch.count_nonzero(probe.U) == 0 and torch.count_nonzero(probe.V) > 0
    idx = torch.randint(0, tok.vocab_size, (3, 12))
    with torch.no_grad():
        plain = gpt(idx, output_hidden_states=True, compute_logits=False).hidden_states
        delta = gpt(idx, embed_delta=(probe.U, probe.V), output_hidden_states=True, compute_logits=False).hidden_states
    assert all(torch.equal(x, y) for x, y in zip(plain, delta))


def test_checkpoint_holds_what_the_constructor_was_given(tok):
    """A probe checkpoint names its backbone and probe.py's config (a resume reloads that backbone
    and names changed settings), both given to the constructor, and holds no backbone weights."""
    m = VProbe(tiny_gpt(tok), ["known"], control="none", backbone_ckpt="runs/b.ckpt", probe_config={"seed": 3})
    m.train_counts["known"].update(torch.tensor([0, 1, 1]))
    checkpoint = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(checkpoint)
    assert (checkpoint["backbone_ckpt"], checkpoint["probe_config"]) == ("runs/b.ckpt", {"seed": 3})
    assert not any(k.startswith("backbones.") for k in checkpoint["state_dict"])
    assert "backbone_ckpt" not in m.hparams and "probe_config" not in m.hparams


def test_random_init_control(tok):
    gpt = tiny_gpt(tok)
    m = VProbe(gpt, ["nece"], control="both", seed=3)
    r = m.backbones["random_init"]
    assert m.backbones["trained"] is gpt and r is not gpt
    assert {k: v.shape for k, v in r.state_dict().items()} == {k: v.shape for k, v in gpt.state_dict().items()}
    assert not torch.equal(r.wte.weight, gpt.wte.weight)
    again = random_backbone(gpt.cfg, gpt.vocab_size, 3)  # a pure function of the seed
    assert all(torch.equal(x, y) for x, y in zip(r.state_dict().values(), again.state_dict().values()))
    only = VProbe(gpt, ["nece"], control="random_init")
    assert list(only.backbones) == ["random_init"] and list(only.probes) == ["random_init__nece"]


def test_fit_and_test_results(tok):
    gpt = tiny_gpt(tok)
    m = VProbe(gpt, TASKS, control="both", layers="all")
    fit(m, tok, steps=2, test=True)
    res = m.results["tasks"]
    assert set(res) == set(TASKS)
    for task, e in res.items():
        assert e["n_test_pairs"] > 0
        for k in ("acc", "random_init_acc", "majority_acc"):
            assert 0.0 <= e[k] <= 1.0
        assert set(e["trained"]["layers"]) == {"1", "2"}
        if NUM_CLASSES[task] == 2:
            assert "acc_pos" in e["trained"] and "acc_neg" in e["random_init"]
    grid = res["nece"]["trained"]["by_distance"]
    assert len(grid["acc"]) == 2 and len(grid["acc"][0]) == 8
    # the training labels' majority is kept beside the majority control (the best constant on the test pairs)
    counts = m.train_counts["nece"].compute()
    assert res["nece"]["majority"]["train_class"] == int(counts.argmax())


def test_grouped_accuracy():
    metric = GroupedAccuracy(n_heads=2, binary=True)
    label = torch.tensor([0, 1, 1, 1])
    dist = torch.tensor([-1, 1, 2, -1])
    preds = torch.tensor([[0, 1, 0, 1], [1, 1, 1, 1]])
    metric.update(preds, label, dist)
    correct, total = metric.compute()
    assert total[0, :3].tolist() == [4, 1, 3] and correct[0, :3].tolist() == [3, 1, 2]
    assert correct[1, :3].tolist() == [3, 0, 3]
    assert total[0, 3].item() == 1 and correct[0, 3].item() == 1  # distance 1: right
    assert total[0, 4].item() == 1 and correct[0, 4].item() == 0  # distance 2: wrong


def test_dataset_is_deterministic_and_padded(tok):
    ds = ProbeDataset(tok, GEN, "dep", "test", n_problems=5, seed=1, draws=10)
    assert ds[3] == ds[3]
    assert ds[3] != ds[4]
    rows = ds[0] + ds[1]
    b = collate_pairs(rows, tok.pad_id)
    assert b["idx"].shape[0] == len(rows)
    for i, r in enumerate(rows):
        assert b["idx"][i, b["end"][i]].item() == tok.end_id
        assert b["idx"][i, : len(r["ids"])].tolist() == r["ids"]
        assert (b["idx"][i, len(r["ids"]):] == tok.pad_id).all()
    # train and test problems come from different template buckets
    train = ProbeDataset(tok, GEN, "nece", "train", 3, seed=1)
    from probing.data import probe_problem
    assert all(probe_problem(GEN, 1, "train", i).bucket() < GEN.split_boundary for i in range(3))
    assert all(probe_problem(GEN, 1, "test", i).bucket() >= GEN.split_boundary for i in range(3))
    assert len(train) == 3


def test_length_chunks_give_the_same_logits(tok):
    gpt = tiny_gpt(tok)
    m = VProbe(gpt, ["can_next"], control="none", layers="all", seed=1)
    torch.nn.init.normal_(m.probes["trained__can_next"].U, std=0.1)  # a non-trivial delta
    ds = ProbeDataset(tok, GEN, "can_next", "train", n_problems=4, seed=2)
    b = collate_pairs([r for i in range(4) for r in ds[i]], tok.pad_id)
    with torch.no_grad():
        plain = m.logits("trained", "can_next", b["idx"], b["end"])
        m.length_chunks = 3
        chunked = m.logits("trained", "can_next", b["idx"], b["end"])
    assert len(plain) == len(chunked) == 2
    for x, y in zip(plain, chunked):
        assert torch.allclose(x, y, atol=1e-5)
