"""``python -m igsm report``, the TensorBoard figures and hparams, and scripts/sweep.sh end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from igsm.cli import main
from igsm.report import depth_width_groups, load_runs, probe_seed_groups, seed_groups, write_report

PNG = b"\x89PNG"

EVAL = [  # a tiny run's buckets: training max_op 4, so op=6 is out of distribution
    {"bucket": "train_op=2", "split": "train", "op": 2, "reask": False, "n": 8, "accuracy": 0.5,
     "answer_accuracy": 0.625, "unnecessary_params_per_correct": 0.25, "errors": {}, "step": 100},
    {"bucket": "op<=4", "split": "test", "op": "<=4", "reask": False, "n": 8, "accuracy": 0.25,
     "answer_accuracy": 0.5, "unnecessary_params_per_correct": 0.0, "errors": {}, "step": 100},
    {"bucket": "op=3", "split": "test", "op": 3, "reask": False, "n": 8, "accuracy": 0.375,
     "answer_accuracy": 0.5, "unnecessary_params_per_correct": 0.0, "errors": {}, "step": 100},
    {"bucket": "op=6", "split": "test", "op": 6, "reask": False, "n": 8, "accuracy": 0.125,
     "answer_accuracy": 0.25, "unnecessary_params_per_correct": None, "errors": {}, "step": 100},
    {"bucket": "reask_op=4", "split": "test", "op": 4, "reask": True, "n": 8, "accuracy": 0.0,
     "answer_accuracy": 0.0, "unnecessary_params_per_correct": None, "errors": {}, "step": 100},
]


def train_config(name: str, n_layer: int, n_embd: int, lr: float = 5e-3) -> str:
    return (f"# igsm_commit: abc\nname: {name}\npreset: tiny\nseed: 0\nlog_root: logs\n"
            f"model:\n  n_layer: {n_layer}\n  n_head: 4\n  n_embd: {n_embd}\n"
            f"data:\n  preset: tiny\n  max_op: 4\n  batch_size: 16\n  context: 256\n"
            f"optim:\n  lr: {lr}\ntrainer:\n  max_steps: 100\n  devices: 1\n")


def make_train_run(root: Path, name: str, n_layer: int, n_embd: int, acc_scale: float = 1.0, **kw) -> Path:
    run = root / name / "version_0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(train_config(name, n_layer, n_embd, **kw))
    (run / "run_info.json").write_text(json.dumps({"parameters": 1000 * n_layer * n_embd, "world_size": 1,
                                                   "accumulate_grad_batches": 1}))
    entries = [dict(e, accuracy=e["accuracy"] * acc_scale) for e in EVAL]
    (run / "eval.json").write_text(json.dumps(entries))
    return run


def make_probe_run(root: Path) -> Path:
    run = root / "wide_probe" / "version_0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: wide_probe\npreset: probe_tiny\nprobe:\n  rank: 8\n")
    (run / "run_info.json").write_text(json.dumps({"kind": "probe", "backbone_run": "wide"}))
    grid = {"layers": [1, 2], "distances": [1, 2, 3], "acc": [[0.9, 0.5, None], [0.95, 0.8, None]], "n": [40, 12, 0]}
    tasks = {"nece": {"acc": 0.9, "random_init_acc": 0.6, "majority_acc": 0.55, "n_test_pairs": 52,
                      "balanced_acc": 0.85, "random_init_balanced_acc": 0.5},
             "value": {"acc": 0.6, "random_init_acc": 0.62, "majority_acc": 0.5, "n_test_pairs": 70},
             "regret": {"acc": 0.7, "random_init_acc": 0.55, "majority_acc": 0.5, "necessity_acc": 0.65,
                        "n_test_pairs": 40}}
    (run / "probe.json").write_text(json.dumps({"backbone": {"run": "wide"}, "probe": {"steps": 20},
                                                "tasks": tasks, "nece_by_distance": grid}))
    return run


@pytest.fixture
def runs_root(tmp_path) -> Path:
    """Two depth-width runs, one run of another lr, a probe run, and four broken folders."""
    root = tmp_path / "logs"
    make_train_run(root, "deep", 4, 64)
    make_train_run(root, "wide", 2, 128, acc_scale=0.5)
    make_train_run(root, "other_lr", 3, 64, lr=1e-3)
    make_probe_run(root)
    unevaluated = root / "running" / "version_0"  # training not evaluated yet
    unevaluated.mkdir(parents=True)
    (unevaluated / "config.yaml").write_text(train_config("running", 2, 64))
    broken = make_train_run(root, "broken", 2, 64)
    (broken / "eval.json").write_text('[{"bucket": "op=3", "acc')  # killed mid-write
    partial = make_train_run(root, "partial", 2, 64)
    (partial / "eval.json").write_text('[{"bucket": "op=3"}]')
    probing = root / "probing" / "version_0"  # probe run still training
    probing.mkdir(parents=True)
    (probing / "config.yaml").write_text("name: probing\nprobe:\n  rank: 8\n")
    (probing / "run_info.json").write_text(json.dumps({"kind": "probe"}))
    return root


def test_report_writes_tables_and_figures_and_names_each_bad_run(runs_root, tmp_path, capsys) -> None:
    out = tmp_path / "report"
    assert main(["report", str(runs_root), str(tmp_path / "missing"), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    skipped = cap.err.strip().splitlines()
    assert len(skipped) == 5, cap.err  # one line per bad run folder and per missing path
    for needle in ("missing: no such folder", "running/version_0: no eval.json", "broken/version_0: eval.json is not",
                   "partial/version_0: eval.json entry 0 lacks", "probing/version_0: no probe.json"):
        assert sum(needle in line for line in skipped) == 1, (needle, skipped)
    assert "figures for 4 runs" in cap.out
    md = (out / "report.md").read_text()
    assert "| deep/version_0 | 256k | 4 × 64 | tiny (max_op 4) | 410k | 100 |" in md  # 100 steps x 16 x 256 tokens
    assert "| deep/version_0 | op=6 | test | out | 8 | 12.5% | 25.0% | - |" in md
    assert "| deep/version_0 | train_op=2 | train | in | 8 | 50.0% | 62.5% | 0.25 |" in md
    assert "| wide_probe/version_0 | wide | nece | 90.0% | 60.0% | 55.0% | - | +30.0 | 85.0% / 50.0% | 52 |" in md
    assert "| wide_probe/version_0 | wide | value | 60.0% | 62.0% | 50.0% | - | -2.0 | - | 70 |" in md
    # the regret probe's necessity-only control is shown and counts as a control of the margin
    assert "| wide_probe/version_0 | wide | regret | 70.0% | 55.0% | 50.0% | 65.0% | +5.0 | - | 40 |" in md
    assert "running" not in md.split("Left out:")[1].split("##")[1]  # bad runs appear only in "Left out"
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {"accuracy_vs_op.png", "probe_wide_probe_version_0.png", "nece_by_distance_wide_probe_version_0.png",
                    "depth_width_0.png"}
    for name in pngs:
        assert (out / name).read_bytes()[:4] == PNG and f"]({name})" in md


def test_learning_curve_table_and_figure_from_eval_history(tmp_path) -> None:
    """Every evaluation in eval_history.jsonl becomes a row (a resumed run's repeated step counts
    once, the later entry winning); a torn last line is ignored; one evaluation draws no curve."""
    run = make_train_run(tmp_path / "logs", "curve", 2, 32)
    history = [dict(e, step=step, accuracy=acc) for step, acc in ((50, 0.1), (100, 0.3), (100, 0.4)) for e in EVAL[:2]]
    (run / "eval_history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in history) + '{"step": 15')
    single = make_train_run(tmp_path / "logs", "single", 2, 32)
    (single / "eval_history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EVAL))
    out = tmp_path / "report"
    result = write_report([tmp_path / "logs"], out)
    md = (out / "report.md").read_text()
    assert "| step | tokens | train_op=2 | op<=4 |" in md
    assert "| 50 | 205k | 10.0% | 10.0% |" in md and "| 100 | 410k | 40.0% | 40.0% |" in md
    assert "30.0%" not in md.split("## Learning curves")[1]
    assert "**single/version_0**" not in md
    assert {p.name for p in result["figures"]} >= {"learning_curve_curve_version_0.png"}
    assert not (out / "learning_curve_single_version_0.png").exists()
    assert (out / "learning_curve_curve_version_0.png").read_bytes()[:4] == PNG


def test_retry_runs_show_their_data_retractions_and_the_regret_probe_on_own_solutions(tmp_path) -> None:
    """Issue 21's study redraws from its run folders: the retry rate, kind and loss and the Canon
    layers in the runs table, the retractions the model wrote per bucket, and the regret probe's
    flags on the model's own not_ready and correct steps. Runs without retry get no extra column."""
    root = tmp_path / "logs"
    make_train_run(root, "plain", 3, 128)
    out = tmp_path / "report"
    write_report([root], out)
    assert "retractions" not in (out / "report.md").read_text()

    retry = make_train_run(root, "retry", 3, 128)
    config = (retry / "config.yaml").read_text().replace(
        "  max_op: 4\n", "  max_op: 4\n  op_sampling: uniform\n  retry_rate: 0.2\n  retry_kind: retry_weak\n"
        "  retry_loss: mask\n")
    (retry / "config.yaml").write_text(config.replace("  n_embd: 128\n", "  n_embd: 128\n  canon: ABCD\n"))
    counts = {"retractions_per_problem": 0.25, "solutions_with_retractions": 2, "true_regrets": 1, "false_regrets": 1}
    (retry / "eval.json").write_text(json.dumps([dict(e, **counts) for e in EVAL]))
    probe = make_probe_run(root)
    record = json.loads((probe / "probe.json").read_text())
    record["analysis"] = {"regret": {"not_ready_steps": 40, "probe_flagged_not_ready": 30, "correct_steps": 200,
                                     "probe_flagged_correct": 10, "rate_flagged_not_ready": 0.75,
                                     "rate_flagged_correct": 0.05}}
    (probe / "probe.json").write_text(json.dumps(record))
    write_report([root], out)
    md = (out / "report.md").read_text()
    assert ("| retry/version_0 | 384k | 3 × 128, Canon ABCD | tiny (max_op 4), op uniform, retry_weak 0.2, "
            "wrong steps masked |" in md)
    assert "| plain/version_0 | 384k | 3 × 128 | tiny (max_op 4) |" in md
    assert ("| retry/version_0 | op=3 | test | in | 8 | 37.5% | 50.0% | 0.00 | 0.25 (2 solutions; 1 true / 1 false) |"
            in md)
    assert "| plain/version_0 | op=3 | test | in | 8 | 37.5% | 50.0% | 0.00 | - |" in md
    assert "| wide_probe/version_0 | wide | 30 / 40 | 75.0% | 10 / 200 | 5.0% |" in md


def test_depth_width_grid_groups_runs_that_differ_only_in_depth_and_width(runs_root) -> None:
    runs, _ = load_runs([runs_root])
    groups = depth_width_groups(runs)
    assert [sorted(r.label for r in g) for g in groups] == [["deep/version_0", "wide/version_0"]]
    deep = next(r for r in groups[0] if r.n_layer == 4)
    assert deep.ood_accuracy() == 0.125 and [e["op"] for e in deep.ood_entries()] == [6]


def test_seeds_table_groups_runs_that_differ_only_in_the_seed_and_shows_the_worst_seed(tmp_path) -> None:
    """Three seeds of one recipe (bookkeeping such as checkpoint_every may differ) make one group whose
    table ends with the worst seed and the mean; a run of another lr or another process layout is
    not a seed of that recipe."""
    root = tmp_path / "logs"
    for seed, scale in ((2, 1.0), (0, 0.5), (1, 2.0)):
        run = make_train_run(root, f"recipe-s{seed}", 3, 128, acc_scale=scale)
        config = (run / "config.yaml").read_text().replace("seed: 0\n", f"seed: {seed}\n")
        (run / "config.yaml").write_text(config + f"  checkpoint_every: {850 + seed}\n")
    make_train_run(root, "other_lr", 3, 128, lr=1e-3)
    layout = make_train_run(root, "two_ranks", 3, 128)
    config = (layout / "config.yaml").read_text().replace("seed: 0\n", "seed: 3\n")
    (layout / "config.yaml").write_text(config.replace("  devices: 1\n", "  devices: 2\n"))
    runs, _ = load_runs([root])
    groups = seed_groups(runs)
    assert [[r.label for r in g] for g in groups] == [[f"recipe-s{seed}/version_0" for seed in (0, 1, 2)]]
    out = tmp_path / "report"
    write_report([root], out)
    seeds = (out / "report.md").read_text().split("## Seeds")[1].split("## ")[0]
    assert "| seed | run | step | train_op=2 | op<=4 | op=3 | op=6 | reask_op=4 |" in seeds
    assert "| 0 | recipe-s0/version_0 | 100 | 25.0% | 12.5% | 18.8% | 6.2% | 0.0% |" in seeds
    assert "| **worst** |  |  | 25.0% | 12.5% | 18.8% | 6.2% | 0.0% |" in seeds
    assert "| **mean** |  |  | 58.3% | 29.2% | 43.8% | 14.6% | 0.0% |" in seeds
    assert "other_lr" not in seeds and "two_ranks" not in seeds


def test_one_probe_on_several_backbones_gets_a_table_with_its_smallest_margin(tmp_path) -> None:
    """The same probe config on two backbones (two seeds) is one group: per task, each backbone's
    trained / random init / best constant, the smallest margin over the best control and the
    spread; a probe of another config is left out of the group."""
    root = tmp_path / "logs"
    for name, backbone, nece in (("probe-s0", "recipe-s0", 0.9), ("probe-s1", "recipe-s1", 0.7)):
        run = make_probe_run(root)
        record = json.loads((run / "probe.json").read_text())
        record["backbone"]["run"] = backbone
        record["tasks"]["nece"]["acc"] = nece
        (run / "probe.json").write_text(json.dumps(record))
        (run / "config.yaml").write_text(f"name: {name}\nckpt: logs/{backbone}/last.ckpt\nprobe:\n  rank: 8\n")
        run.parent.rename(root / name)
    other = make_probe_run(root)
    (other / "config.yaml").write_text("name: wide_probe\nprobe:\n  rank: 16\n")
    runs, _ = load_runs([root])
    assert [[r.label for r in g] for g in probe_seed_groups(runs)] == [["probe-s0/version_0", "probe-s1/version_0"]]
    out = tmp_path / "report"
    write_report([root], out)
    md = (out / "report.md").read_text()
    assert "| task | recipe-s0 | recipe-s1 | smallest margin | spread of trained (points) |" in md
    assert "| nece | 90.0% / 60.0% / 55.0% (+30.0) | 70.0% / 60.0% / 55.0% (+10.0) | +10.0 | 20.0 |" in md
    assert "| regret | 70.0% / 55.0% / 50.0% (+5.0) | 70.0% / 55.0% / 50.0% (+5.0) | +5.0 | 0.0 |" in md


def test_report_with_no_readable_run_fails_with_one_line(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no run could be read") and "no run folders" in err[0]


def test_accuracy_vs_op_figure_draws_each_bucket_kind_at_its_op() -> None:
    from igsm.report import accuracy_vs_op_figure

    assert accuracy_vs_op_figure([("r", [e for e in EVAL if e["reask"]], 4)]) is None  # reask only: nothing to draw
    fig = accuracy_vs_op_figure([("r", EVAL, 4)])
    ax = fig.axes[0]
    drawn = [(line.get_marker(), list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()
             if line.get_marker() not in (None, "None", "")]
    # forced op test templates (op 3, 6), forced op training templates (op 2), op<=4 test templates at x = 4
    assert drawn == [("o", [3, 6], [37.5, 12.5]), ("s", [2], [50.0]), ("D", [4], [25.0])]
    assert ax.get_xlabel().startswith("op") and "accuracy" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[-1] == "op ≤ N mix (training distribution), test templates"


def read_events(run: Path) -> dict[str, set[str]]:
    """Tag -> plugin names of every summary in a run folder's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tags: dict[str, set[str]] = {}
    for f in run.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(f)).Load():
            for value in event.summary.value:
                tags.setdefault(value.tag, set()).add(value.metadata.plugin_data.plugin_name)
    return tags


def test_probe_figures_and_hparams_reach_tensorboard(tmp_path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from igsm.report_tb import log_probe_figures

    probe_run = make_probe_run(tmp_path)
    writer = SummaryWriter(str(tmp_path / "tb"))
    log_probe_figures(writer, json.loads((probe_run / "probe.json").read_text()), step=20,
                      config={"probe": {"rank": 8, "tasks": ["nece", "value"]}, "ckpt": None})
    writer.close()
    tags = read_events(tmp_path / "tb")
    assert tags["figures/probe_accuracy"] == {"images"} and tags["figures/nece_by_distance"] == {"images"}
    assert tags["_hparams_/experiment"] == {"hparams"}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sweep_of_two_tiny_runs_end_to_end(repo_root, subprocess_env, tmp_path) -> None:
    """scripts/sweep.sh: two configs that differ in depth, trained one after another, then the
    report with the depth-width grid; every run's TensorBoard has the figure and the hparams."""
    (tmp_path / "one_layer.yaml").write_text("model:\n  n_layer: 1\n")
    (tmp_path / "two_layers.yaml").write_text("model:\n  n_layer: 2\n")
    fast = ["model.n_head=2", "model.n_embd=32", "model.block_size=256", "data.batch_size=4", "data.num_workers=0",
            "eval.n=2", "eval.batch_size=2", "eval.max_new_tokens=8", "eval.buckets=[2:train,3,6]",
            "trainer.max_steps=2", "trainer.accelerator=cpu", "trainer.precision=32-true",
            "trainer.enable_progress_bar=false", "trainer.devices=1", "trainer.strategy=auto"]
    env = dict(subprocess_env, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    r = subprocess.run(["bash", str(repo_root / "scripts" / "sweep.sh"), "--log-root", "logs", "--out", "rep",
                        "one_layer.yaml", "two_layers.yaml", "--", *fast],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count("done   ") == 2 and "figures for 2 runs" in r.stdout
    for stem in ("one_layer", "two_layers"):
        run = tmp_path / "logs" / "sweep" / stem / "version_0"
        assert json.loads((run / "eval.json").read_text())[0]["step"] == 2
        tags = read_events(run)
        assert tags.get("figures/accuracy_vs_op") == {"images"}, sorted(tags)
        assert tags.get("_hparams_/experiment") == {"hparams"}
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| sweep/one_layer/version_0 |" in md and "1 × 32" in md and "2 × 32" in md
    assert (tmp_path / "rep" / "depth_width_0.png").read_bytes()[:4] == PNG
    assert (tmp_path / "rep" / "accuracy_vs_op.png").read_bytes()[:4] == PNG
