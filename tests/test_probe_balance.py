"""Probe numbers that mean what they say: training and test pairs share one op distribution, the
majority control is the best constant on the test pairs, binary tasks report balanced accuracy."""

import collections

import lightning.pytorch as pl
import pytest
import torch

from igsm.cli_config import load_config
from igsm.config import ModelConfig, ProbeConfig, generator_preset
from igsm.generator import world_for
from igsm.model import GPT
from igsm.tokenizer import build_tokenizer
from probing.data import ProbeDataModule, probe_problem
from probing.vprobe import VProbe, balanced_accuracy

GEN = generator_preset("tiny")  # the default train.py run's data, which the default probe run reads


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("word", world_for(GEN))


def pair_ops(ds, n: int) -> tuple[collections.Counter, int, int]:
    """(pairs per op, positive pairs, pairs) of the first ``n`` problems of a ProbeDataset."""
    ops, positive, total = collections.Counter(), 0, 0
    for i in range(n):
        rows = ds[i]
        if rows:
            ops[probe_problem(ds.gen_cfg, ds.seed, ds.split, i, ds.stream, ds.ops).op] += len(rows)
            positive += sum(r["label"] for r in rows)
            total += len(rows)
    return ops, positive, total


def test_training_and_test_pairs_share_the_op_distribution_of_the_default_probe_run(tok):
    """Test-template problems have op >= 2 (op = 1 has no test template); the probe's training
    pairs used to follow the training distribution (40% of them op = 1, 26% positive), so their
    label balance was another than the test pairs' (nece: 48% vs 72% positive)."""
    p = load_config(ProbeConfig, []).probe  # the default preset, probe_tiny
    dm = ProbeDataModule(tok, GEN, ["nece"], batch_size=p.batch_size, draws=p.draws, test_problems=p.test_problems)
    test_ops, test_pos, test_n = pair_ops(dm.dataset("nece", "test", p.test_problems), p.test_problems)
    train_ops, train_pos, train_n = pair_ops(dm.dataset("nece", "train", 400), 400)
    distance = sum(abs(train_ops[k] / train_n - test_ops[k] / test_n) for k in set(train_ops) | set(test_ops)) / 2
    assert distance < 0.1, (sorted(train_ops.items()), sorted(test_ops.items()))
    assert min(test_ops) >= 2 and min(train_ops) >= 2
    # what remains between the rates is the test templates' own (docs/probing.md)
    assert abs(train_pos / train_n - test_pos / test_n) < 0.15


def test_fresh_training_template_test_pairs_leave_the_training_distribution_alone(tok):
    dm = ProbeDataModule(tok, GEN, ["nece"], test_problems=8, test_split="train")
    assert dm.train_ops() is None and dm.dataset("nece", "train", 4).ops is None


def test_majority_is_the_best_constant_on_the_test_pairs_and_balanced_accuracy_is_reported(tok):
    """Tested before any training (no training label counted): a majority taken from the training
    labels would answer class 0, which scores 1 - (positive rate) on nece's mostly positive test pairs."""
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=512), tok.vocab_size)
    tasks = ["nece", "can_next", "value"]
    dm = ProbeDataModule(tok, GEN, tasks, batch_size=10, draws=5, test_problems=6)
    module = VProbe(gpt, tasks, control="both")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.test(module, dm, verbose=False)
    for task in tasks:
        labels = [r["label"] for i in range(6) for r in dm.dataset(task, "test", 6)[i]]
        counts = collections.Counter(labels)
        e = module.results["tasks"][task]
        assert e["n_test_pairs"] == len(labels)
        assert e["majority_acc"] == pytest.approx(max(counts.values()) / len(labels))
        assert e["majority"]["class"] == max(sorted(counts), key=counts.get)
        if task == "value":  # 24 classes: no balanced accuracy
            assert "balanced_acc" not in e
            continue
        assert e["test_positive_rate"] == pytest.approx(counts[1] / len(labels))
        assert e["majority"]["balanced_acc"] == pytest.approx(0.5)
        for name in ("trained", "random_init"):
            sub = e[name]
            assert sub["balanced_acc"] == pytest.approx((sub["acc_pos"] + sub["acc_neg"]) / 2)
        assert e["balanced_acc"] == e["trained"]["balanced_acc"]
        assert e["random_init_balanced_acc"] == e["random_init"]["balanced_acc"]
    nece = module.results["tasks"]["nece"]
    assert nece["test_positive_rate"] > 0.5 and nece["majority_acc"] > 0.5


def test_balanced_accuracy_needs_both_classes():
    assert balanced_accuracy(1.0, 0.0) == 0.5 and balanced_accuracy(0.9, 0.7) == pytest.approx(0.8)
    assert balanced_accuracy(None, 0.7) is None
