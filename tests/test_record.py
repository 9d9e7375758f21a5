"""``python -m igsm record``: run records that redraw the report, stay small and hold no checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from igsm.cli import main
from igsm.record import (
    LOSS_FILE,
    MAX_LOSS_ROWS,
    RECORD_MAX_BYTES,
    loss_from_events,
    read_loss_csv,
    record_problems,
    write_loss_csv,
)
from igsm.report import load_run, write_report

FAST = ["name=rec", "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=256",
        "data.batch_size=4", "data.num_workers=0", "eval.n=2", "eval.batch_size=2", "eval.max_new_tokens=8",
        "eval.buckets=[2:train,3]", "trainer.eval_every=1", "trainer.log_every_n_steps=1",
        "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.enable_progress_bar=false",
        "trainer.devices=1", "trainer.strategy=auto"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real train.py run of 2 steps, resumed to 3 (two sessions), evaluated after every step."""
    import train

    root = tmp_path_factory.mktemp("logs")
    assert train.main([f"log_root={root}", *FAST, "trainer.max_steps=2"]) == 0
    assert train.main([f"log_root={root}", *FAST, "trainer.max_steps=3", "ckpt_path=last"]) == 0
    run = root / "rec" / "version_0"
    assert list(run.glob("checkpoints/*.ckpt")) and list(run.glob("events.out.tfevents*"))
    return run


def test_a_record_redraws_the_report_of_its_run_without_checkpoints_or_events(run_dir, tmp_path, capsys) -> None:
    dest = tmp_path / "records" / "study" / "seed0"
    assert main(["record", str(run_dir), str(dest)]) == 0
    assert "recorded" in capsys.readouterr().out
    names = {p.name for p in dest.rglob("*")}
    assert names == {"config.yaml", "run_info.json", "run_time.json", "eval.json", "eval_history.jsonl", LOSS_FILE,
                     "record.json"}
    assert record_problems(tmp_path / "records") == []

    record = json.loads((dest / "record.json").read_text())
    assert record["kind"] == "train" and record["step"] == 3 and record["finished"] is True
    info = json.loads((run_dir / "run_info.json").read_text())
    assert record["cpu"] == info["cpu"] and record["cpu"]["model"]
    assert record["torch"] == info["torch"] and record["command"] == info["command"] and record["command"]
    run_time = json.loads((run_dir / "run_time.json").read_text())
    assert [(s["first_step"], s["last_step"]) for s in run_time["sessions"]] == [(0, 2), (2, 3)]
    assert record["wall_s"] == run_time["wall_s"] == pytest.approx(sum(s["wall_s"] for s in run_time["sessions"]))
    assert record["wall_s"] > 0

    # the same tables and curves from the record as from the run folder (only the run's label differs)
    original, recorded = load_run(run_dir), load_run(dest)
    assert recorded.label == "study/seed0"
    assert recorded.eval == original.eval and recorded.history == original.history
    assert recorded.curve() == original.curve() and len(recorded.curve()[0]) == 3
    steps = [s for s, _ in recorded.loss]
    assert steps == [s for s, _ in original.loss] and len(steps) == 3 == len(set(steps))  # one value per step
    assert [v for _, v in recorded.loss] == pytest.approx([v for _, v in original.loss], rel=1e-5)
    out_run, out_rec = tmp_path / "report_run", tmp_path / "report_record"
    write_report([run_dir.parent.parent], out_run)
    write_report([dest.parent], out_rec)
    assert sorted(p.name.replace("study_seed0", "RUN") for p in out_rec.glob("*.png")) == sorted(
        p.name.replace("rec_version_0", "RUN") for p in out_run.glob("*.png"))
    assert (out_rec / "train_loss_study_seed0.png").is_file() and (out_rec / "learning_curve_study_seed0.png").is_file()
    run_md = (out_run / "report.md").read_text().replace("rec/version_0", "RUN").replace("rec_version_0", "RUN")
    rec_md = (out_rec / "report.md").read_text().replace("study/seed0", "RUN").replace("study_seed0", "RUN")
    assert rec_md.splitlines()[3:] == run_md.splitlines()[3:]  # all but "Runs read from: ..."


def test_record_errors_name_the_folder_and_force_replaces(run_dir, tmp_path, capsys) -> None:
    dest = tmp_path / "r"
    cases = [
        ([str(tmp_path / "nope"), str(dest)], "no such folder"),
        ([str(run_dir.parent), str(dest)], "it holds the runs version_0; name one"),
        ([str(run_dir), str(run_dir / "inside")], "must lie outside RUN_DIR"),
    ]
    for args, needle in cases:
        assert main(["record", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    dest.mkdir()
    (dest / "old.txt").write_text("kept?")
    assert main(["record", str(run_dir), str(dest)]) == 2
    assert "exists and is not empty (pass --force" in capsys.readouterr().err
    assert main(["record", str(run_dir), str(dest), "--force"]) == 0
    assert not (dest / "old.txt").exists() and (dest / "record.json").is_file()


def test_records_in_the_repository_are_small_and_hold_no_checkpoint(repo_root) -> None:
    """Every record under records/ (committed) stays under RECORD_MAX_BYTES and holds no checkpoint
    or TensorBoard event file."""
    records = repo_root / "records"
    if records.is_dir():
        assert record_problems(records) == []


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_keeps_the_jsonl_files_of_records(repo_root) -> None:
    """*.jsonl is ignored (generated data), except a record's eval_history.jsonl."""
    if not (repo_root / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=repo_root).returncode == 0

    assert not ignored("records/study/run/eval_history.jsonl") and ignored("problems.jsonl")


def test_record_problems_catch_checkpoints_events_and_big_folders(tmp_path) -> None:
    run = tmp_path / "study" / "run"
    run.mkdir(parents=True)
    (run / "record.json").write_text("{}")
    assert record_problems(tmp_path) == []
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run / "events.out.tfevents.1.host.2.0").write_bytes(b"x")
    (run / "eval_history.jsonl").write_bytes(b"x" * RECORD_MAX_BYTES)
    problems = record_problems(tmp_path)
    assert len(problems) == 3 and "last.ckpt" in problems[0] and "tfevents" in problems[1]
    assert "more than 500,000" in problems[2]


def test_loss_csv_is_thinned_to_its_row_limit_and_keeps_the_last_step(tmp_path) -> None:
    history = {"train/loss": [(s, 10.0 / (s + 1)) for s in range(3 * MAX_LOSS_ROWS)], "other/train_loss": [(5, 1.0)]}
    rows = write_loss_csv(tmp_path / LOSS_FILE, history)
    back = read_loss_csv(tmp_path / LOSS_FILE)
    assert rows <= MAX_LOSS_ROWS and len(back["train/loss"]) == rows
    assert back["train/loss"][0] == (0, 10.0) and back["train/loss"][-1][0] == 3 * MAX_LOSS_ROWS - 1
    assert (tmp_path / LOSS_FILE).stat().st_size < RECORD_MAX_BYTES / 2


def test_loss_from_events_drops_what_a_resumed_run_logged_again(tmp_path) -> None:
    """A killed session logged steps 0-4 after its checkpoint at step 2; the resumed one purges from
    step 3 on (Lightning's purge_step) and logs 3-4 again: the record keeps the second values."""
    from torch.utils.tensorboard import SummaryWriter

    first = SummaryWriter(str(tmp_path))
    for step in range(5):
        first.add_scalar("train/loss", 10.0 + step, step)
    first.close()
    second = SummaryWriter(str(tmp_path), purge_step=3, filename_suffix=".resumed")
    for step in (3, 4):
        second.add_scalar("train/loss", 1.0 + step, step)
    second.close()
    assert loss_from_events(tmp_path)["train/loss"] == [(0, 10.0), (1, 11.0), (2, 12.0), (3, 4.0), (4, 5.0)]
