"""probe.py end to end on a tiny train.py checkpoint: outputs, config errors, DDP on two CPU processes."""

import json
import shutil
import subprocess
import sys

import pytest

import probe
from probing.run import find_checkpoint

PROBE_FAST = ["trainer.max_steps=2", "probe.test_problems=4", "probe.batch_size=6", "probe.draws=3",
              "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "trainer.devices=1",
              "trainer.strategy=auto"]


@pytest.fixture(scope="module")
def train_run(tiny_train_run):
    """The shared tiny training run (conftest): its log root and checkpoint."""
    return tiny_train_run


def _tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images, text = set(), set(), set()
    for f in run_dir.glob("events.out.tfevents.*"):
        ea = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
        ea.Reload()
        tags = ea.Tags()
        scalars |= set(tags["scalars"])
        images |= set(tags["images"])
        text |= set(tags["tensors"])
    return scalars, images, text


def test_probe_end_to_end(train_run, tmp_path):
    root, ckpt = train_run
    rc = probe.main([f"ckpt={ckpt}", f"log_root={tmp_path}", "name=p", "probe.layers=all", "probe.analysis=true",
                     "analysis.n=3", "analysis.max_new_tokens=24", *PROBE_FAST])
    assert rc == 0
    run = tmp_path / "p" / "version_0"
    res = json.loads((run / "probe.json").read_text())
    assert res["backbone_ckpt"] == str(ckpt)
    assert set(res["tasks"]) == {"nece", "dep", "known", "value", "can_next", "nece_next"}
    for _task, e in res["tasks"].items():
        assert e["n_test_pairs"] > 0
        assert all(0 <= e[k] <= 1 for k in ("acc", "random_init_acc", "majority_acc"))
    assert len(res["nece_by_distance"]["acc"]) == 2  # one row per layer of the 2-layer backbone
    analysis = json.loads((run / "analysis.json").read_text())
    assert set(analysis) >= {"sets", "unnecessary", "first_wrong"} and analysis["sets"]["reask"]["n"] == 3
    assert (run / "nece_by_distance.png").read_bytes()[:4] == b"\x89PNG"
    scalars, images, _ = _tags(run)
    for task in ("dep", "nece_next"):  # per-class accuracy is logged when the class has test pairs
        assert (f"probe/{task}/acc_pos" in scalars) == (res["tasks"][task]["trained"]["n_pos"] > 0)
    for task, e in res["tasks"].items():  # balanced accuracy: binary tasks with both classes in the test pairs
        sub = e.get("trained", {})
        if sub.get("acc_pos") is not None and sub.get("acc_neg") is not None:
            assert e["balanced_acc"] == sub["balanced_acc"] == pytest.approx((sub["acc_pos"] + sub["acc_neg"]) / 2)
            assert f"probe/{task}/balanced_acc" in scalars and f"probe/{task}/random_init/balanced_acc" in scalars
    assert res["tasks"]["nece"]["balanced_acc"] is not None and "balanced_acc" not in res["tasks"]["value"]
    for need in ("probe/nece/acc", "probe/dep/acc_neg", "probe/nece_next/acc_neg", "probe/value/acc",
                 "probe/nece/layer_1/acc", "probe/nece/layer_2/acc",
                 "probe/can_next/random_init/acc", "probe/can_next/majority/acc", "probe/nece/train_loss",
                 "analysis/reask/accuracy"):
        assert need in scalars, need
    assert "figures/nece_by_distance" in images  # the grid, drawn once (igsm.report.nece_by_distance_figure)
    # the default checkpoint is the newest *training* checkpoint, never a probe run's own
    cfg = probe.load_config(probe.ProbeConfig, [f"log_root={tmp_path}"])
    shutil.copytree(root / "tiny", tmp_path / "tiny")  # keeps its (older) modification time
    assert find_checkpoint(cfg).endswith("tiny/version_0/checkpoints/last.ckpt")


def test_probe_subset_and_control(train_run, tmp_path):
    _, ckpt = train_run
    rc = probe.main([f"ckpt={ckpt}", f"log_root={tmp_path}", "name=q", "probe.tasks=[nece,dep]",
                     "probe.control=random_init", *PROBE_FAST])
    assert rc == 0
    res = json.loads((tmp_path / "q" / "version_0" / "probe.json").read_text())
    assert set(res["tasks"]) == {"nece", "dep"}
    assert res["tasks"]["nece"]["acc"] is None and res["tasks"]["nece"]["random_init_acc"] is not None


@pytest.mark.parametrize("arg", ["probe.layers=some", "probe.tasks=[nece,nope]", "probe.control=all",
                                 "probe.rnak=8", "trainer.max_steps=0"])
def test_bad_config_exits_2(arg, capsys, tmp_path):
    assert probe.main([arg, f"log_root={tmp_path}"]) == 2
    assert "error:" in capsys.readouterr().err


def test_missing_checkpoint_exits_2(tmp_path, capsys):
    assert probe.main([f"log_root={tmp_path}"]) == 2
    assert "train a model first" in capsys.readouterr().err


def test_ddp_two_cpu_processes(train_run, tmp_path, repo_root, subprocess_env):
    _, ckpt = train_run
    args = [f"ckpt={ckpt}", f"log_root={tmp_path}", "probe.tasks=[nece,can_next]", *PROBE_FAST]
    single = probe.main(args + ["name=one"])
    assert single == 0
    proc = subprocess.run(
        [sys.executable, str(repo_root / "probe.py"), *args, "name=two", "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.strategy=ddp"],
        cwd=tmp_path, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "version_0" / "probe.json").read_text())
    two = json.loads((tmp_path / "two" / "version_0" / "probe.json").read_text())
    assert two["probe"]["devices"] == 2
    for task in ("nece", "can_next"):  # test pairs are split across ranks, none repeated, none lost
        assert two["tasks"][task]["n_test_pairs"] == one["tasks"][task]["n_test_pairs"]
        assert two["tasks"][task]["majority"]["class"] in (0, 1)


def test_probe_presets():
    """configs/probe_*.yaml load with the probe schema; med and hard are the paper's recipe."""
    tiny, med, hard = (probe.load_config(probe.ProbeConfig, [f"preset={p}"])
                       for p in ("probe_tiny", "probe_med", "probe_hard"))
    assert (tiny.trainer.accelerator == "cpu"
            and tiny.probe.tasks == ["nece", "dep", "known", "value", "can_next", "nece_next"])
    for cfg in (med, hard):
        p = cfg.probe
        assert (p.lr, p.weight_decay, p.warmup_steps, p.rank, cfg.trainer.max_steps) == (2e-3, 0.01, 0, 8, 100_000)
        assert p.test_problems * 8 >= 4096  # >= 4,096 test pairs at ~8+ distinct draws per problem
    assert (med.probe.batch_size, hard.probe.batch_size) == (256, 128)
