"""Probe controls: the positive control (a backbone that holds the label), shuffled labels (a
property nothing holds), test pairs from training templates, and the solved split."""

import json

import lightning.pytorch as pl
import pytest
import torch

import probe
from conftest import tiny_gpt
from igsm.config import generator_preset
from igsm.generator import world_for
from igsm.tokenizer import build_tokenizer
from probing.controls import FineTuned, finetune_positive, last_end_index, solved_flags
from probing.data import HELDOUT_STREAM, ProbeDataModule, ProbeDataset, collate_pairs, probe_problem
from probing.vprobe import VProbe

GEN = generator_preset("tiny")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("word", world_for(GEN))


def run(module, dm, steps):
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, dm)
    trainer.test(module, dm, verbose=False)
    return module.results


def test_last_end_index(tok):
    rows = [{"ids": [1, 2, tok.end_id], "label": 0, "dist": -1},
            {"ids": [tok.end_id, 5, 6, 7, tok.end_id], "label": 1, "dist": -1}]
    b = collate_pairs(rows, tok.pad_id)
    assert last_end_index(b["idx"], tok.end_id).tolist() == b["end"].tolist() == [2, 4]


def test_shuffled_labels_keep_inputs_not_labels(tok):
    plain = ProbeDataset(tok, GEN, "nece", "train", 40, seed=3)
    shuffled = ProbeDataset(tok, GEN, "nece", "train", 40, seed=3, shuffle_labels=True)
    same_inputs = changed = n = 0
    positives = [0, 0]
    for i in range(40):
        a, b = plain[i], shuffled[i]
        assert b == shuffled[i]  # deterministic
        if not b:
            continue
        same_inputs += [r["ids"] for r in a] == [r["ids"] for r in b]
        changed += sum(x["label"] != y["label"] for x, y in zip(a, b))
        n += len(a)
        positives[0] += sum(r["label"] for r in a)
        positives[1] += sum(r["label"] for r in b)
        assert all(r["dist"] == -1 for r in b)
    assert same_inputs >= 38 and changed > n // 5  # same queries, other labels ...
    assert abs(positives[0] - positives[1]) < 0.25 * n  # ... with about the task's label distribution


def test_test_split_train_gives_fresh_training_template_problems(tok):
    dm = ProbeDataModule(tok, GEN, ["nece"], test_split="train", test_problems=4, seed=1)
    assert dm.test_split_stream() == ("train", HELDOUT_STREAM)
    test_texts = {probe_problem(GEN, 1, "train", i, HELDOUT_STREAM).problem_text for i in range(20)}
    train_texts = {probe_problem(GEN, 1, "train", i).problem_text for i in range(20)}
    assert not test_texts & train_texts
    assert all(probe_problem(GEN, 1, "train", i, HELDOUT_STREAM).bucket() < GEN.split_boundary for i in range(5))
    with pytest.raises(ValueError, match="test_split"):
        ProbeDataModule(tok, GEN, ["nece"], test_split="valid")


def test_solved_split_counts_every_pair(tok):
    dm = ProbeDataModule(tok, GEN, ["nece", "known"], batch_size=10, draws=5, test_problems=6)
    dm.solved = [True, False, None, True, False, False]
    res = run(VProbe(tiny_gpt(tok), ["nece", "known"], control="both"), dm, steps=2)
    for task, e in res["tasks"].items():
        s = e["by_solved"]
        n_unknown = len(dm.dataset(task, "test", 6)[2])
        assert s["solved"]["n_test_pairs"] + s["unsolved"]["n_test_pairs"] + n_unknown == e["n_test_pairs"]
        assert s["solved"]["n_test_pairs"] > 0 and s["unsolved"]["n_test_pairs"] > 0
        assert {"acc", "random_init_acc", "majority_acc"} <= set(s["solved"])


def test_solved_flags_of_an_untrained_model(tok):
    flags = solved_flags(tiny_gpt(tok), tok, GEN, split="test", n=3, seed=0, batch_size=3)
    assert flags == [False, False, False]


def test_finetuned_copy_is_frozen_and_the_backbone_untouched(tok):
    gpt = tiny_gpt(tok)
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    ft = finetune_positive(gpt, tok, GEN, "nece", steps=3, lr=1e-2, batch_size=8, draws=4, seed=0)
    assert isinstance(ft, FineTuned) and not ft.training
    assert not any(p.requires_grad for p in ft.parameters())
    assert all(torch.equal(before[k], v) for k, v in gpt.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in ft.model.state_dict().items())


@pytest.mark.slow
def test_positive_control_is_recovered(tok):
    """A copy fine-tuned to hold nece at [END] must be read by the V-probe about as well as its own
    head reads it, and better than the probe reads the untuned backbone. Breaking the probe's
    reading ([END] gathering, length cuts, the delta, the head) fails here. About 30 s of CPU.

    In balanced accuracy: the test pairs are 72% positive, so the best constant already reads 72%
    and plain accuracy cannot tell a copy that holds the label from one that answers 1 (at this
    budget the copy reaches about 57% balanced, the untuned backbone's probe 50%)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    gpt = tiny_gpt(tok)
    dm = ProbeDataModule(tok, GEN, ["nece"], batch_size=32, draws=10, test_problems=60)
    dm.setup("fit")
    ft = finetune_positive(gpt, tok, GEN, "nece", steps=300, lr=3e-3, batch_size=32, draws=10, seed=0,
                           ops=dm.train_ops())  # the probe's own training pairs, as probe.py trains it
    module = VProbe(gpt, ["nece"], control="both", lr=1e-2, positive={"nece": ft}, length_chunks=2)
    e = run(module, dm, steps=100)["tasks"]["nece"]
    assert e["positive_finetuned_balanced_acc"] >= 0.55  # the copy holds the label (0.5: it does not)
    assert e["positive_balanced_acc"] >= e["positive_finetuned_balanced_acc"] - 0.05  # the probe recovers it
    assert e["positive_balanced_acc"] >= max(e["balanced_acc"], e["random_init_balanced_acc"]) + 0.05


@pytest.fixture(scope="module")
def ckpt(tiny_train_run):
    return tiny_train_run[1]  # the shared tiny training run (conftest)


def test_probe_cli_controls(ckpt, tmp_path, capsys):
    rc = probe.main([f"ckpt={ckpt}", f"log_root={tmp_path}", "name=c", "probe.tasks=[nece,can_next]",
                     "probe.positive_control=true", "probe.positive_steps=2", "probe.shuffle_labels=true",
                     "probe.test_split=train", "probe.split_by_solved=true", "trainer.max_steps=2",
                     "probe.test_problems=4", "probe.batch_size=6", "probe.draws=3",
                     "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "trainer.devices=1",
                     "trainer.strategy=auto"])
    assert rc == 0
    res = json.loads((tmp_path / "c" / "version_0" / "probe.json").read_text())
    assert res["controls"]["positive_control"] and res["controls"]["shuffle_labels"]
    assert res["solved"]["test_split"] == "train" and res["solved"]["n_problems"] >= 1
    for e in res["tasks"].values():
        assert 0 <= e["positive_acc"] <= 1 and 0 <= e["positive_finetuned_acc"] <= 1
        assert set(e["by_solved"]) == {"solved", "unsolved"}
    assert "positive" in capsys.readouterr().out


@pytest.mark.parametrize("arg", ["probe.test_split=valid", "probe.positive_steps=0", "probe.positive_lr=0"])
def test_bad_control_options_exit_2(arg, capsys):
    assert probe.main([arg, "print_config=true"]) == 2
    assert arg.split("=")[0] in capsys.readouterr().err
