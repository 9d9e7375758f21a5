"""``python -m igsm record RUN_DIR records/<study>/<run>``: a run folder's numbers, small enough to commit.

A run folder (``logs/<name>/version_N/`` of train.py or probe.py) holds checkpoints and TensorBoard
events (megabytes to gigabytes). A *record* holds what ``python -m igsm report`` needs to redraw
its tables and curves, a few hundred KB at most (:data:`RECORD_MAX_BYTES`; a test walks
``records/``):

- copied: ``config.yaml`` (the resolved config), ``run_info.json``, ``run_time.json`` (wall time),
  ``eval.json`` and ``eval_history.jsonl`` (the evaluations), ``probe.json`` (probe runs);
- extracted from the TensorBoard events: ``train_loss.csv``, the training loss per logged step
  (train.py: ``train/loss``; probe.py: each probe's ``.../train_loss``), at most
  :data:`MAX_LOSS_ROWS` rows (evenly thinned, the last step always kept);
- written: ``record.json``, where the run came from and how it ran: the CPU model and its vector
  extensions, the wall time, the git commit, the torch version and the command line.

Never copied: checkpoints, event files, figures. A partly finished run (still training, or
stopped) can be recorded too; recording it again later (``--force``) brings the record up to date.
Docs: docs/report.md, "Run records".
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

RECORD_MAX_BYTES = 500_000  # per record folder
COPIED = ("config.yaml", "run_info.json", "run_time.json", "eval.json", "eval_history.jsonl", "probe.json")
LOSS_FILE = "train_loss.csv"
RECORD_FILE = "record.json"
FORBIDDEN = ("*.ckpt", "events.out.tfevents*")  # never in a record
MAX_LOSS_ROWS = 5000


class RecordError(Exception):
    """A user-facing error of the record command (printed as one line, exit code 2)."""


# ------------------------------------------------------------------------------------------------
# The machine
# ------------------------------------------------------------------------------------------------
def cpu_info() -> dict:
    """``{"model", "avx2", "avx512", "amx"}`` of this machine: lscpu's "Model name" and "Flags",
    else /proc/cpuinfo, else the platform's processor string (flags then unknown: None)."""
    model, flags = None, None
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={"LC_ALL": "C", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", "").strip() or None
        flags = fields["Flags"].split() if "Flags" in fields else None
    except (OSError, subprocess.SubprocessError):
        pass
    if model is None or flags is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
            found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
            model = model or (found.group(1).strip() if found else None)
            found = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
            flags = flags if flags is not None else (found.group(1).split() if found else None)
        except OSError:
            pass
    model = model or platform.processor() or platform.machine() or None
    if flags is None:
        return {"model": model, "avx2": None, "avx512": None, "amx": None}
    return {"model": model, "avx2": "avx2" in flags, "avx512": any(f.startswith("avx512") for f in flags),
            "amx": any(f.startswith("amx") for f in flags)}


def process_start_time() -> float:
    """When this process started (seconds since the epoch), from /proc on Linux, so a run's wall
    time counts its start-up (imports, data) too; elsewhere: now."""
    try:
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        # field 22 of /proc/self/stat, counted after the ")" that ends the command name (which may hold spaces)
        ticks = float(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return time.time()


def cpu_summary(cpu: Optional[dict]) -> str:
    """"AMD EPYC (AVX2)", "Intel Xeon (AVX-512, AMX)": the model and its widest vector extensions."""
    if not cpu:
        return "?"
    ext = [name for key, name in (("avx512", "AVX-512"), ("amx", "AMX")) if cpu.get(key)]
    ext = ext or (["AVX2"] if cpu.get("avx2") else [])
    return f"{cpu.get('model') or '?'}" + (f" ({', '.join(ext)})" if ext else "")


# ------------------------------------------------------------------------------------------------
# TensorBoard events: the training loss and the wall time
# ------------------------------------------------------------------------------------------------
def event_files(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob("events.out.tfevents*"))


def is_loss_tag(tag: str) -> bool:
    return tag == "train/loss" or tag.endswith("/train_loss")


def loss_from_events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per loss tag, (step, value) ascending, from the run's TensorBoard event files. A resumed
    run's events logged after its checkpoint by the killed session are dropped, as TensorBoard
    does (the resumed session logs those steps again); a step logged twice keeps the last value."""
    if not event_files(run_dir):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        if is_loss_tag(tag):
            out[tag] = sorted({e.step: float(e.value) for e in acc.Scalars(tag)}.items())
    return out


def wall_s_from_events(run_dir: Path) -> Optional[float]:
    """The sum over event files (one per session) of the time from their first to their last event:
    a lower bound on the run's wall time (start-up before the first event is not counted)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total, found = 0.0, False
    for f in event_files(run_dir):
        times = [e.wall_time for e in EventFileLoader(str(f)).Load() if e.wall_time]
        if times:
            total, found = total + max(times) - min(times), True
    return round(total, 1) if found else None


def write_loss_csv(path: Path, history: dict[str, list[tuple[int, float]]]) -> int:
    """One row per step, one column per tag (empty where a tag was not logged); at most
    MAX_LOSS_ROWS rows (evenly thinned, the last kept). Returns the rows written."""
    tags = sorted(history)
    at: dict[int, dict[str, float]] = {}
    for tag in tags:
        for step, value in history[tag]:
            at.setdefault(step, {})[tag] = value
    steps = sorted(at)
    if len(steps) > MAX_LOSS_ROWS:
        stride = len(steps) / MAX_LOSS_ROWS
        steps = sorted({steps[int(i * stride)] for i in range(MAX_LOSS_ROWS - 1)} | {steps[-1]})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *tags])
        for s in steps:
            w.writerow([s, *(f"{at[s][t]:.6g}" if t in at[s] else "" for t in tags)])
    return len(steps)


def read_loss_csv(path: Path) -> dict[str, list[tuple[int, float]]]:
    """The per-tag (step, value) lists of :func:`write_loss_csv`'s file."""
    out: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for tag, value in row.items():
                if tag != "step" and value not in ("", None):
                    out.setdefault(tag, []).append((int(row["step"]), float(value)))
    return out


def loss_history(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The training-loss history of a record (``train_loss.csv``) or of a run folder (its events;
    empty without tensorboard or events)."""
    run_dir = Path(run_dir)
    if (run_dir / LOSS_FILE).is_file():
        try:
            return read_loss_csv(run_dir / LOSS_FILE)
        except (OSError, ValueError, KeyError):
            return {}
    try:
        return loss_from_events(run_dir)
    except ImportError:
        return {}


# ------------------------------------------------------------------------------------------------
# Making a record
# ------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _config_header(path: Path) -> dict:
    """The ``# key: value`` comments at the top of config.yaml (run_info.json's facts, older runs too)."""
    out = {}
    try:
        for line in path.read_text().splitlines():
            if not line.startswith("# "):
                break
            key, _, value = line[2:].partition(": ")
            out[key] = None if value == "None" else value
    except OSError:
        pass
    return out


def _last_step(run_dir: Path, loss: dict) -> Optional[int]:
    steps = [s for points in loss.values() for s, _ in points[-1:]]
    for e in (_read_json(run_dir / "run_time.json").get("sessions") or [])[-1:]:
        steps.append(e.get("last_step"))
    probe = _read_json(run_dir / "probe.json")
    steps.append((probe.get("probe") or {}).get("steps"))
    history = run_dir / "eval_history.jsonl"
    if history.is_file():
        for line in history.read_text().splitlines():
            try:
                steps.append(json.loads(line).get("step"))
            except (ValueError, AttributeError):
                continue
    steps = [s for s in steps if isinstance(s, int)]
    return max(steps) if steps else None


def _finished(run_dir: Path, is_probe: bool) -> bool:
    """probe.py wrote probe.json; train.py evaluated at trainer.max_steps."""
    if is_probe:
        return (run_dir / "probe.json").is_file()
    import yaml

    try:
        max_steps = (yaml.safe_load((run_dir / "config.yaml").read_text()).get("trainer") or {}).get("max_steps")
        entries = json.loads((run_dir / "eval.json").read_text())
        return any(e.get("step") == max_steps for e in entries)
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return False


def check_run_dir(run_dir: Path) -> None:
    """RecordError unless ``run_dir`` is one train.py / probe.py run folder."""
    if not run_dir.is_dir():
        raise RecordError(f"RUN_DIR {run_dir}: no such folder")
    if not (run_dir / "config.yaml").is_file():
        versions = sorted(p.name for p in run_dir.glob("version_*") if (p / "config.yaml").is_file())
        hint = (f": it holds the runs {', '.join(versions)}; name one, e.g. {run_dir / versions[-1]}" if versions
                else " (expected a train.py or probe.py run folder such as logs/<name>/version_N)")
        raise RecordError(f"RUN_DIR {run_dir}: not a run folder, no config.yaml{hint}")


def make_record(run_dir: str | Path, dest: str | Path, *, force: bool = False, commit: Optional[str] = None) -> dict:
    """Copy what the report needs from ``run_dir`` into ``dest`` (see the module docstring) and
    return the record.json written. ``force``: replace a non-empty ``dest``. ``commit``: the git
    commit of the run's code where the run folder does not name one."""
    run_dir, dest = Path(run_dir), Path(dest)
    check_run_dir(run_dir)
    src, out = run_dir.resolve(), dest.resolve()
    if out == src or src in out.parents or out in src.parents:
        raise RecordError(f"DEST {dest}: must lie outside RUN_DIR {run_dir} and not contain it")
    if dest.exists() and not dest.is_dir():
        raise RecordError(f"DEST {dest}: exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()):
        if not force:
            raise RecordError(f"DEST {dest}: exists and is not empty (pass --force to replace it)")
        shutil.rmtree(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RecordError(f"DEST {dest}: cannot be created ({e.strerror or e})") from None

    files = [name for name in COPIED if (run_dir / name).is_file()]
    for name in files:
        shutil.copyfile(run_dir / name, dest / name)
    loss = loss_from_events(run_dir)
    if loss:
        write_loss_csv(dest / LOSS_FILE, loss)
        files.append(LOSS_FILE)

    info = _read_json(run_dir / "run_info.json") or _config_header(run_dir / "config.yaml")
    run_time = _read_json(run_dir / "run_time.json")
    probe = _read_json(run_dir / "probe.json")
    if run_time.get("wall_s") is not None:
        wall, wall_source = run_time["wall_s"], "run_time.json (summed over sessions)"
    elif probe.get("time_s") is not None:
        wall, wall_source = probe["time_s"], "probe.json time_s (the last session)"
    else:
        wall = wall_s_from_events(run_dir)
        wall_source = "TensorBoard events: first to last event of each session (a lower bound)" if wall else None
    cpu = info.get("cpu") if isinstance(info.get("cpu"), dict) else None
    record = {
        "recorded_from": str(src),
        "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kind": "probe" if info.get("kind") == "probe" or probe else "train",
        "step": _last_step(run_dir, loss),
        "finished": _finished(run_dir, bool(probe) or info.get("kind") == "probe"),
        "wall_s": wall,
        "wall_s_source": wall_source,
        "cpu": cpu or cpu_info(),
        "cpu_source": "the run (run_info.json)" if cpu else "the machine that made the record",
        "git_commit": info.get("igsm_commit") or commit,
        "torch": info.get("torch"),
        "command": info.get("command"),
        "files": files,
    }
    (dest / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


# ------------------------------------------------------------------------------------------------
# Keeping records small
# ------------------------------------------------------------------------------------------------
def record_problems(root: str | Path, max_bytes: int = RECORD_MAX_BYTES) -> list[str]:
    """One line per record folder under ``root`` over ``max_bytes`` and per checkpoint or event
    file anywhere under ``root`` (a record folder: one holding record.json or config.yaml)."""
    root = Path(root)
    problems = [f"{p}: a checkpoint or TensorBoard event file has no place in a record"
                for pattern in FORBIDDEN for p in sorted(root.rglob(pattern))]
    folders = sorted({p.parent for name in (RECORD_FILE, "config.yaml") for p in root.rglob(name)})
    for folder in folders:
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        if size > max_bytes:
            problems.append(f"{folder}: {size:,} bytes, more than {max_bytes:,}")
    return problems


__all__ = ["RECORD_MAX_BYTES", "COPIED", "LOSS_FILE", "RECORD_FILE", "RecordError", "cpu_info", "cpu_summary",
           "process_start_time", "loss_from_events", "loss_history", "wall_s_from_events", "write_loss_csv",
           "read_loss_csv", "make_record", "check_run_dir", "record_problems"]
