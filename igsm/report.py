"""``python -m igsm report RUN_DIR... [--out DIR]``: tables and figures from run folders.

Reads the folders ``train.py`` and ``probe.py`` write (``config.yaml``, ``run_info.json``,
``eval.json``, ``probe.json``; a folder that holds many runs, such as ``logs/``, is searched for
them) or the records ``python -m igsm record`` makes of them (``records/<study>/<run>``, the same
files, the training loss as ``train_loss.csv`` instead of TensorBoard events; :mod:`igsm.record`),
and writes into ``DIR`` (default ``report/``):

- ``report.md``: a table of runs, a table of accuracy per evaluation bucket, a table of probe
  accuracy beside both controls, and links to the figures;
- ``accuracy_vs_op.png``: full-solution accuracy against op, one line per training run, the
  in-distribution and out-of-distribution ranges shaded;
- ``probe_<run>.png``: probe accuracy per task, as bars beside the random-init and majority controls;
- ``nece_by_distance_<run>.png``: nece accuracy per layer and distance to the question (heatmap);
- ``depth_width_<k>.png``: for training runs that differ only in depth and width, a layers × width
  grid coloured by out-of-distribution accuracy, the parameter count in each cell;
- ``learning_curve_<run>.png``: for a run evaluated more than once (``trainer.eval_every``; its
  ``eval_history.jsonl``), accuracy per bucket against training tokens, also as a table;
- ``train_loss_<run>.png``: the training loss against training tokens (a record's
  ``train_loss.csv``, else the run's TensorBoard events).

A run with missing or partial files is named in one line (``skipped ...: why``) and left out; the
report never fails because of one run. The figure functions are shared with TensorBoard
(:mod:`igsm.report_tb`). Matplotlib is imported only when a figure is drawn, with the headless
Agg backend, and nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from igsm.show import save_figure

# Keys that may differ between runs of one depth-width grid: the run's name and where it ran.
GRID_FREE_KEYS = {
    "name", "preset", "config", "ckpt_path", "print_config", "log_root", "model.n_layer", "model.n_head",
    "model.n_embd",
    "model.compile", "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.accelerator",
    "trainer.accumulate_grad_batches", "trainer.enable_progress_bar", "trainer.cpu_threads",
    "trainer.log_every_n_steps", "trainer.checkpoint_every", "trainer.eval_every", "data.num_workers",
    "data.prefetch_batches", "data.batch_size", "eval.batch_size", "eval.examples",
}

# Keys that may differ between runs of one recipe trained with several seeds: the seed, the run's
# name and bookkeeping that does not touch the training (the process layout does: each DDP rank
# draws its own problems, so trainer.devices and data.batch_size stay in the recipe).
SEED_FREE_KEYS = {
    "seed", "name", "preset", "config", "ckpt_path", "print_config", "log_root", "model.compile",
    "trainer.enable_progress_bar", "trainer.cpu_threads", "trainer.log_every_n_steps",
    "trainer.checkpoint_every", "trainer.eval_every", "data.num_workers", "data.prefetch_batches",
    "eval.batch_size", "eval.examples",
}

RUN_FILES = ("config.yaml", "run_info.json", "eval.json", "probe.json")


class ReportError(Exception):
    """A user-facing error of the report command (printed as one line, exit code 2)."""


class SkippedRun(Exception):
    """A run folder that cannot be reported; the message says why in a few words."""


@dataclass
class Run:
    """One run folder, as far as the report needs it."""

    path: Path
    label: str  # "<name>/version_N": unique enough to read, short enough for a legend
    kind: str  # "train" or "probe"
    config: dict  # the resolved config (nested dicts)
    info: dict = field(default_factory=dict)  # run_info.json
    eval: list[dict] = field(default_factory=list)  # eval.json entries
    probe: Optional[dict] = None  # probe.json
    history: list[dict] = field(default_factory=list)  # eval_history.jsonl: every evaluation's entries
    loss: list[tuple[int, float]] = field(default_factory=list)  # (step, train/loss), ascending
    record: dict = field(default_factory=dict)  # record.json (a record folder)
    run_time: dict = field(default_factory=dict)  # run_time.json

    # -- where and how long it ran -------------------------------------------------------------
    @property
    def cpu(self) -> Optional[dict]:
        return self.record.get("cpu") or self.info.get("cpu")

    @property
    def wall_s(self) -> Optional[float]:
        if self.record.get("wall_s") is not None:
            return self.record["wall_s"]
        if self.run_time.get("wall_s") is not None:
            return self.run_time["wall_s"]
        return (self.probe or {}).get("time_s")

    # -- training facts ----------------------------------------------------------------------
    @property
    def n_layer(self) -> Optional[int]:
        return self.config.get("model", {}).get("n_layer")

    @property
    def width(self) -> Optional[int]:
        model = self.config.get("model", {})
        return model.get("n_embd") or (64 * model["n_head"] if model.get("n_head") else None)

    @property
    def parameters(self) -> Optional[int]:
        return self.info.get("parameters")

    @property
    def max_op(self) -> Optional[int]:
        return self.config.get("data", {}).get("max_op")

    @property
    def step(self) -> Optional[int]:
        if self.kind == "probe":
            return (self.probe or {}).get("probe", {}).get("steps")
        steps = [e.get("step") for e in self.eval if isinstance(e.get("step"), int)]
        return max(steps) if steps else None

    @property
    def tokens_seen(self) -> Optional[int]:
        """Training tokens: steps × sequences per optimizer step × context (windows are packed)."""
        return self.tokens_at(self.step)

    def tokens_at(self, step: Optional[int]) -> Optional[int]:
        data = self.config.get("data", {})
        if self.kind != "train" or step is None or not data.get("batch_size") or not data.get("context"):
            return None
        per_step = data["batch_size"] * self.info.get("accumulate_grad_batches", 1) * self.info.get("world_size", 1)
        return step * per_step * data["context"]

    def curve(self) -> tuple[list[int], dict[str, list[Optional[float]]]]:
        """The learning curve from ``eval_history.jsonl``: evaluated steps (ascending) and, per
        bucket, its accuracy at each (None where not evaluated). The last evaluation of a step wins
        (a resumed run may evaluate a step twice)."""
        at: dict[int, dict[str, float]] = {}
        for e in self.history:
            at.setdefault(e["step"], {})[e["bucket"]] = e["accuracy"]
        steps = sorted(at)
        buckets = list(dict.fromkeys(e["bucket"] for e in self.history))
        return steps, {b: [at[s].get(b) for s in steps] for b in buckets}

    def ood_entries(self) -> list[dict]:
        """Forced-op, test-template, non-reask buckets beyond the training max_op."""
        return [e for e in forced_op_entries(self.eval, "test") if self.max_op is not None and e["op"] > self.max_op]

    def ood_accuracy(self) -> Optional[float]:
        """Mean full-solution accuracy over the out-of-distribution buckets (None without any)."""
        accs = [e["accuracy"] for e in self.ood_entries() if e.get("accuracy") is not None]
        return sum(accs) / len(accs) if accs else None


# ------------------------------------------------------------------------------------------------
# Finding and reading runs
# ------------------------------------------------------------------------------------------------
def find_run_folders(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Run folders at or below ``paths`` (a folder holding any of RUN_FILES), in sorted order,
    and one line per path that holds none."""
    found: list[Path] = []
    problems: list[str] = []
    for p in map(Path, paths):
        if not p.is_dir():
            problems.append(f"{p}: no such folder")
            continue
        here = sorted({f.parent for name in RUN_FILES for f in p.rglob(name)
                       if "checkpoints" not in f.parent.parts}, key=_natural)
        if not here:
            problems.append(f"{p}: no run folders (none of {', '.join(RUN_FILES)} below it)")
        found.extend(f for f in here if f not in found)
    return found, problems


def _natural(path: Path) -> list:
    """Sort key: version_10 after version_9 (so the newest version of a run is read last)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def load_run(folder: Path) -> Run:
    """Read one run folder; :class:`SkippedRun` says what is missing or broken."""
    info = _read_json(folder / "run_info.json", dict) if (folder / "run_info.json").is_file() else {}
    config = _read_config(folder / "config.yaml")
    kind = "probe" if info.get("kind") == "probe" or (folder / "probe.json").is_file() or "probe" in config else "train"
    name = config.get("name") or folder.parent.name
    record = _optional_json(folder / "record.json")
    if record:  # records/<study>/<run>: the study and the run's own folder name it
        label = f"{folder.parent.name}/{folder.name}"
    else:
        label = f"{name}/{folder.name}" if folder.name.startswith("version_") else str(name)
    run = Run(folder, label, kind, config, info, record=record, run_time=_optional_json(folder / "run_time.json"))
    if kind == "train":
        if not (folder / "eval.json").is_file():
            raise SkippedRun("no eval.json (not evaluated yet)")
        entries = _read_json(folder / "eval.json", list)
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not {"bucket", "op", "split", "n", "accuracy"} <= set(e):
                raise SkippedRun(f"eval.json entry {i} lacks bucket/op/split/n/accuracy")
        run.eval = entries
        run.history = _read_history(folder / "eval_history.jsonl")
        from .record import loss_history

        run.loss = loss_history(folder).get("train/loss", [])
    else:
        if not (folder / "probe.json").is_file():
            raise SkippedRun("no probe.json (probing not finished)")
        probe = _read_json(folder / "probe.json", dict)
        if not isinstance(probe.get("tasks"), dict):
            raise SkippedRun("probe.json has no 'tasks'")
        run.probe = probe
    return run


def _optional_json(path: Path) -> dict:
    """A JSON object file that only adds facts: {} when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_history(path: Path) -> list[dict]:
    """eval_history.jsonl's entries with an int step; a missing file or a torn last line (a run
    killed while appending) leaves the rest readable."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(e, dict) and isinstance(e.get("step"), int) and "bucket" in e and "accuracy" in e:
            entries.append(e)
    return entries


def load_runs(paths: Sequence[str | Path]) -> tuple[list[Run], list[str]]:
    """Every readable run under ``paths`` and one line for each path or run left out."""
    folders, problems = find_run_folders(paths)
    runs = []
    for folder in folders:
        try:
            runs.append(load_run(folder))
        except SkippedRun as e:
            problems.append(f"skipped {folder}: {e}")
    return runs, problems


def _read_json(path: Path, kind: type) -> Any:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SkippedRun(f"{path.name} is not readable JSON ({e.__class__.__name__})") from None
    if not isinstance(data, kind):
        raise SkippedRun(f"{path.name} holds a {type(data).__name__}, expected a {kind.__name__}")
    return data


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise SkippedRun("no config.yaml (not a complete run folder)")
    import yaml  # PyYAML, installed with omegaconf

    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SkippedRun(f"config.yaml is not readable YAML ({e.__class__.__name__})") from None
    if not isinstance(config, dict):
        raise SkippedRun("config.yaml is not a mapping")
    return config


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + str(k): v})
    return out


def forced_op_entries(entries: list[dict], split: str) -> list[dict]:
    """eval.json entries of forced-op (``op`` an int), non-reask buckets of one template split, by op."""
    return sorted((e for e in entries if isinstance(e.get("op"), int) and not e.get("reask")
                   and e.get("split") == split), key=lambda e: e["op"])


def depth_width_groups(runs: list[Run]) -> list[list[Run]]:
    """Groups of training runs whose configs differ only in depth and width (GRID_FREE_KEYS),
    with at least two distinct (layers, width) cells."""
    with_shape = [r for r in runs if r.kind == "train" and r.n_layer is not None and r.width is not None]
    return [g for g in _same_config(with_shape, GRID_FREE_KEYS) if len({(r.n_layer, r.width) for r in g}) >= 2]


def _same_config(runs: list[Run], free_keys: set[str]) -> list[list[Run]]:
    """``runs`` grouped by their resolved config, the keys in ``free_keys`` left out."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        key = json.dumps({k: v for k, v in flatten(run.config).items() if k not in free_keys},
                         sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """Groups of training runs whose configs differ only in the seed (SEED_FREE_KEYS), with at least
    two distinct seeds; each group sorted by seed."""
    groups = _same_config([r for r in runs if r.kind == "train"], SEED_FREE_KEYS)
    return [sorted(g, key=lambda r: r.config.get("seed", 0)) for g in groups
            if len({r.config.get("seed") for r in g}) >= 2]


def probe_seed_groups(runs: list[Run]) -> list[list[Run]]:
    """Groups of probe runs of one probe config (SEED_FREE_KEYS and the checkpoint aside) on at
    least two backbones, e.g. the same probe on every seed of a recipe."""
    groups = _same_config([r for r in runs if r.kind == "probe"], SEED_FREE_KEYS | {"ckpt"})
    return [sorted(g, key=_backbone_label) for g in groups if len({_backbone_label(r) for r in g}) >= 2]


# ------------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg)
# ------------------------------------------------------------------------------------------------
def _pyplot():
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # headless; a caller's pyplot (a notebook) keeps its backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def up_to_entries(entries: list[dict], split: str) -> list[dict]:
    """eval.json entries of ``<=N`` buckets (problems of the training distribution up to op N)."""
    return [dict(e, op=int(e["op"][2:])) for e in entries if isinstance(e.get("op"), str)
            and e["op"].startswith("<=") and e["op"][2:].isdigit() and not e.get("reask") and e.get("split") == split]


# (template split, bucket kind) -> how it is drawn, and what the style legend says
_STYLES = {
    ("test", "forced"): dict(marker="o", ls="-", filled=True, text="forced op = N, test templates"),
    ("train", "forced"): dict(marker="s", ls="--", filled=False, text="forced op = N, training templates"),
    ("test", "up_to"): dict(marker="D", ls="none", filled=True,
                            text="op ≤ N mix (training distribution), test templates"),
    ("train", "up_to"): dict(marker="D", ls="none", filled=False, text="op ≤ N mix, training templates"),
}


def accuracy_vs_op_figure(runs: Sequence[tuple[str, list[dict], Optional[int]]], title: str = ""):
    """Full-solution accuracy (%) against op. ``runs``: (label, eval.json entries, training max_op).

    One colour per run (legend "run"); the marker says the kind of bucket (legend "bucket"):
    circles on solid lines for forced op = N test-template sets, hollow squares on dashed lines for
    training-template ones, diamonds (unconnected) for ``<=N`` buckets drawn at x = N. Reask
    buckets are left out. The background is green up to the training max_op (in distribution)
    and red beyond it (out of distribution). Returns the Figure, or None without any such bucket.
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D

    series = [(label, pick(entries, split), max_op, (split, kind))
              for label, entries, max_op in runs
              for kind, pick in (("forced", forced_op_entries), ("up_to", up_to_entries))
              for split in ("test", "train")]
    series = [s for s in series if s[1]]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour_of = {label: colours[i % len(colours)] for i, (label, _, _) in enumerate(runs)}
    ops = [e["op"] for _, entries, _, _ in series for e in entries]
    max_ops = sorted({m for _, _, m, _ in series if m is not None})
    lo, hi = min(ops + max_ops) - 0.5, max(ops + [m + 1 for m in max_ops]) + 0.5
    if len(max_ops) == 1:
        edge = max_ops[0] + 0.5
        ax.axvspan(lo, edge, color="tab:green", alpha=0.08, lw=0)
        ax.axvspan(edge, hi, color="tab:red", alpha=0.08, lw=0)
        ax.text(edge - 0.1, 101, f"in distribution (op ≤ {max_ops[0]})", ha="right", va="bottom", fontsize=8,
                color="darkgreen")
        ax.text(edge + 0.1, 101, "out of distribution", ha="left", va="bottom", fontsize=8, color="darkred")
    for m in max_ops:  # the training max_op of the runs (one line each when they differ)
        ax.axvline(m + 0.5, color="grey", ls=":", lw=1)
    for label, entries, _, style_key in series:
        style, colour = _STYLES[style_key], colour_of[label]
        ys = [100 * e["accuracy"] if e.get("accuracy") is not None else math.nan for e in entries]
        ax.plot([e["op"] for e in entries], ys, marker=style["marker"], ls=style["ls"], color=colour, ms=7,
                markerfacecolor=colour if style["filled"] else "white")
    ax.set_xlim(lo, hi)
    ax.set_ylim(-2, 108)
    ax.set_xticks(sorted(set(ops)))
    ax.set_xlabel("op = operations in the solution (diamonds: the op ≤ N buckets, at N)")
    ax.set_ylabel("full-solution accuracy (%)")
    ax.set_title(title or "Accuracy against op (greedy decoding, strict verifier)", fontsize=10, pad=16)
    ax.grid(alpha=0.3)
    run_handles = [Line2D([], [], color=colour_of[label], lw=2) for label, _, _ in runs]
    first = ax.legend(run_handles, [label for label, _, _ in runs], fontsize=8, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0), title="run", title_fontsize=8)
    ax.add_artist(first)
    used = [k for k in _STYLES if any(s[3] == k for s in series)]
    style_handles = [Line2D([], [], color="black", marker=_STYLES[k]["marker"], ls=_STYLES[k]["ls"],
                            markerfacecolor="black" if _STYLES[k]["filled"] else "white") for k in used]
    ax.legend(style_handles, [_STYLES[k]["text"] for k in used], fontsize=8, loc="lower left",
              bbox_to_anchor=(1.01, 0.0), title="bucket", title_fontsize=8)
    fig.tight_layout()
    return fig


def probe_bars_figure(probe: dict, title: str = ""):
    """Probe accuracy (%) per task: the trained backbone beside the random-init and majority
    controls (bars), the number of test pairs under each task. None when probe.json has no tasks."""
    plt = _pyplot()
    tasks = [t for t, e in probe.get("tasks", {}).items() if isinstance(e, dict)]
    if not tasks:
        return None
    bars = (("acc", "trained backbone", "tab:blue"), ("random_init_acc", "random-init backbone", "tab:orange"),
            ("majority_acc", "majority (best constant)", "tab:grey"))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(tasks) + 2), 4.2), dpi=100)
    width = 0.27
    for i, (key, label, colour) in enumerate(bars):
        values = [probe["tasks"][t].get(key) for t in tasks]
        if all(v is None for v in values):
            continue
        xs = [k + (i - 1) * width for k in range(len(tasks))]
        heights = [100 * v if v is not None else 0 for v in values]
        drawn = ax.bar(xs, heights, width, label=label, color=colour)
        for rect, v in zip(drawn, values):
            ax.text(rect.get_x() + rect.get_width() / 2, rect.get_height() + 1,
                    "-" if v is None else f"{100 * v:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{t}\n(n={probe['tasks'][t].get('n_test_pairs', '?')})" for t in tasks])
    ax.set_ylim(0, 110)
    ax.set_ylabel("probe accuracy on test pairs (%)")
    ax.set_xlabel("probing task (n = test pairs)")
    ax.set_title(title or "V-probe accuracy: knowledge shows where the trained bar beats both controls",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    fig.tight_layout()
    return fig


def nece_by_distance_figure(grid: dict, title: str = ""):
    """Heatmap of nece accuracy (%): rows = layers (deepest on top), columns = distance t of the
    parameter from the question; white 0% to dark blue 100%, grey = no test pairs; each cell
    printed. ``grid``: probe.json's ``nece_by_distance``."""
    plt = _pyplot()
    import numpy as np

    layers, distances, n = grid.get("layers", []), grid.get("distances", []), grid.get("n", [])
    acc = np.array([[np.nan if a is None else 100 * a for a in row] for row in grid.get("acc", [])], dtype=float)
    if acc.size == 0:
        return None
    cmap = plt.get_cmap("Blues").with_extremes(bad="#bdbdbd")
    fig, ax = plt.subplots(figsize=(max(6.0, 2.5 + 0.8 * len(distances)), max(3.0, 1.8 + 0.5 * len(layers))), dpi=100)
    image = ax.imshow(np.ma.masked_invalid(acc), cmap=cmap, vmin=0, vmax=100, origin="lower", aspect="auto")
    for r in range(acc.shape[0]):
        for c in range(acc.shape[1]):
            if not math.isnan(acc[r, c]):
                ax.text(c, r, f"{acc[r, c]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if acc[r, c] > 60 else "black")
    ax.set_xticks(range(len(distances)))
    ax.set_xticklabels([f"{t}\n(n={k})" for t, k in zip(distances, n)] if len(n) == len(distances) else distances,
                       fontsize=8)
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels(layers)
    ax.set_xlabel("distance t from the question (n = necessary test pairs; grey = none)")
    ax.set_ylabel("layer of the probe head")
    ax.set_title(title or "nece probe accuracy by layer and distance", fontsize=10)
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label("accuracy (%)")
    fig.tight_layout()
    return fig


def depth_width_figure(runs: list[Run], title: str = ""):
    """Grid of layers (rows) × width (columns) coloured by out-of-distribution accuracy (%), each
    cell showing that accuracy and the parameter count; grey = no run or no OOD bucket."""
    plt = _pyplot()
    import numpy as np

    layers = sorted({r.n_layer for r in runs})
    widths = sorted({r.width for r in runs})
    acc = np.full((len(layers), len(widths)), np.nan)
    text = [["no run"] * len(widths) for _ in layers]
    for r in runs:  # several runs per cell (e.g. versions): the last one read wins
        i, j = layers.index(r.n_layer), widths.index(r.width)
        ood = r.ood_accuracy()
        acc[i, j] = np.nan if ood is None else 100 * ood
        params = "? params" if r.parameters is None else f"{_si(r.parameters)} params"
        text[i][j] = f"{'-' if ood is None else f'{100 * ood:.1f}%'}\n{params}"
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    fig, ax = plt.subplots(figsize=(max(5.5, 2.5 + 1.25 * len(widths)), max(3.5, 1.8 + 0.8 * len(layers))), dpi=100)
    image = ax.imshow(np.ma.masked_invalid(acc), cmap=cmap, vmin=0, vmax=100, origin="lower", aspect="auto")
    for i in range(len(layers)):
        for j in range(len(widths)):
            dark = not math.isnan(acc[i, j]) and acc[i, j] < 60
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(widths)))
    ax.set_xticklabels(widths)
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels(layers)
    ax.set_xlabel("width (hidden size)")
    ax.set_ylabel("layers")
    ood_ops = sorted({e["op"] for r in runs for e in r.ood_entries()})
    ax.set_title(title or "Depth vs width: out-of-distribution accuracy\n(mean over op = "
                 + (", ".join(map(str, ood_ops)) or "none") + ")", fontsize=10)
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label("OOD full-solution accuracy (%)")
    fig.tight_layout()
    return fig


def learning_curve_figure(run: Run, title: str = ""):
    """Full-solution accuracy per bucket against training tokens (None: fewer than two evaluations)."""
    steps, curves = run.curve()
    if len(steps) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    tokens = [run.tokens_at(s) or s for s in steps]
    for bucket, accs in curves.items():
        points = [(t, 100 * a) for t, a in zip(tokens, accs) if a is not None]
        ax.plot([t for t, _ in points], [a for _, a in points], marker="o", markersize=3,
                linestyle="--" if bucket.startswith("train_") else "-", label=bucket)
    ax.set_xlabel("training tokens" if run.tokens_at(steps[0]) else "step")
    ax.set_ylabel("full-solution accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or f"Learning curve: {run.label}", fontsize=9)
    fig.tight_layout()
    return fig


def train_loss_figure(run: Run, title: str = ""):
    """The training loss (``train/loss`` as logged, every ``log_every_n_steps``) against training
    tokens; None with fewer than two points."""
    if len(run.loss) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    steps = [s for s, _ in run.loss]
    tokens = [run.tokens_at(s) or s for s in steps]
    ax.plot(tokens, [v for _, v in run.loss], lw=1)
    ax.set_xlabel("training tokens" if run.tokens_at(steps[-1]) else "step")
    ax.set_ylabel("training loss (cross-entropy, nats per token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or f"Training loss: {run.label}", fontsize=9)
    fig.tight_layout()
    return fig



# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
def _si(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _model_cell(r: Run) -> str:
    canon = r.config.get("model", {}).get("canon")
    return f"{r.n_layer} × {r.width}" + (f", Canon {canon}" if canon else "")


def _data_cell(r: Run) -> str:
    data = r.config.get("data", {})
    cell = f"{data.get('preset', '?')} (max_op {data.get('max_op', '?')})"
    if data.get("op_sampling", "min2") != "min2":  # the op mix (GeneratorConfig.op_sampling)
        cell += f", op {data['op_sampling']}"
    if data.get("retry_rate"):  # Part 2.2 retry data (igsm/retry.py)
        cell += f", {data.get('retry_kind', 'retry')} {data['retry_rate']}"
        cell += ", wrong steps masked" if data.get("retry_loss") == "mask" else ""
    return cell


def runs_table(runs: list[Run]) -> list[str]:
    rows = [[r.label, _si(r.parameters), _model_cell(r), _data_cell(r), _si(r.tokens_seen),
             r.step if r.step is not None else "-"] for r in runs if r.kind == "train"]
    return _table(["run", "parameters", "layers × width", "data", "tokens seen", "step"], rows)


def _retractions_cell(e: dict) -> str:
    """Retractions the model wrote (``Define A as BACK.``): mean per problem, in how many
    solutions, and how many retracted an A that was in truth not ready (true) or ready (false)."""
    if e.get("retractions_per_problem") is None:
        return "-"
    return (f"{e['retractions_per_problem']:.2f} ({e.get('solutions_with_retractions', 0)} solutions; "
            f"{e.get('true_regrets', 0)} true / {e.get('false_regrets', 0)} false)")


def _shows_retractions(runs: list[Run]) -> bool:
    return any(r.config.get("data", {}).get("retry_rate") for r in runs) or any(
        (e.get("retractions_per_problem") or 0) > 0 for r in runs for e in r.eval)


def eval_table(runs: list[Run]) -> list[str]:
    retractions = _shows_retractions(runs)
    rows = []
    for r in runs:
        for e in r.eval:
            op = e.get("op")
            where = ("in" if isinstance(op, int) and r.max_op is not None and op <= r.max_op else
                     "out" if isinstance(op, int) and r.max_op is not None else "in")
            unnecessary = e.get("unnecessary_params_per_correct")
            rows.append([r.label, e["bucket"], "train" if e.get("split") == "train" else e.get("split", "?"),
                         where, e.get("n"), _pct(e.get("accuracy")), _pct(e.get("answer_accuracy")),
                         "-" if unnecessary is None else f"{unnecessary:.2f}"]
                        + ([_retractions_cell(e)] if retractions else []))
    return _table(["run", "bucket", "templates", "distribution", "n", "accuracy", "answer accuracy",
                   "unnecessary / correct"] + (["retractions / problem"] if retractions else []), rows)


def curve_table(run: Run) -> list[str]:
    """One row per evaluation: step, tokens, full-solution accuracy per bucket."""
    steps, curves = run.curve()
    rows = [[s, _si(run.tokens_at(s))] + [_pct(accs[i]) for accs in curves.values()] for i, s in enumerate(steps)]
    return _table(["step", "tokens"] + list(curves), rows)


def seeds_table(group: list[Run]) -> list[str]:
    """One row per seed (final full-solution accuracy per bucket), then the worst seed and the mean
    over seeds: a claim "for every seed" is a claim about the worst row."""
    buckets = list(dict.fromkeys(e["bucket"] for r in group for e in r.eval))
    acc = [{e["bucket"]: e.get("accuracy") for e in r.eval} for r in group]
    rows = [[r.config.get("seed"), r.label, r.step if r.step is not None else "-"]
            + [_pct(a.get(b)) for b in buckets] for r, a in zip(group, acc)]
    for name, reduce in (("worst", min), ("mean", lambda xs: sum(xs) / len(xs))):
        cells = []
        for b in buckets:
            values = [a.get(b) for a in acc]
            cells.append(_pct(reduce(values)) if None not in values else "-")
        rows.append([f"**{name}**", "", ""] + cells)
    return _table(["seed", "run", "step"] + buckets, rows)


def provenance_table(runs: list[Run]) -> list[str]:
    """Where and how long each run ran (records, and run folders that say): CPU, wall time, commit,
    command. Empty when no run says."""
    from .record import cpu_summary

    rows = []
    for r in runs:
        if not (r.record or r.run_time or r.cpu):
            continue
        wall = "-" if r.wall_s is None else f"{r.wall_s / 60:.1f} min"
        commit = (r.record.get("git_commit") or r.info.get("igsm_commit") or "-")[:10]
        command = r.record.get("command") or r.info.get("command") or "-"
        rows.append([r.label, r.kind, cpu_summary(r.cpu), wall, r.record.get("step", r.step) or "-", commit,
                     f"`{command}`" if command != "-" else command])
    return _table(["run", "kind", "CPU", "wall time", "step", "commit", "command"], rows) if rows else []


def _backbone_label(r: Run) -> str:
    """The training run a probe run read (probe.json, else run_info.json)."""
    return (r.probe or {}).get("backbone", {}).get("run") or r.info.get("backbone_run", "?")


def probe_table(runs: list[Run]) -> list[str]:
    rows = []
    for r in runs:
        probe = r.probe or {}
        backbone = _backbone_label(r)
        for task, e in probe.get("tasks", {}).items():
            acc, margin = e.get("acc"), _margin(e)
            balanced = ("-" if e.get("balanced_acc") is None and e.get("random_init_balanced_acc") is None
                        else f"{_pct(e.get('balanced_acc'))} / {_pct(e.get('random_init_balanced_acc'))}")
            rows.append([r.label, backbone, task, _pct(acc), _pct(e.get("random_init_acc")),
                         _pct(e.get("majority_acc")), _pct(e.get("necessity_acc")),
                         "-" if margin is None else f"{margin:+.1f}", balanced,
                         e.get("n_test_pairs", "-")])
    return _table(["probe run", "backbone run", "task", "trained", "random init", "majority (best constant)",
                   "necessity only", "margin (points over the best control)",
                   "balanced accuracy (trained / random init)", "test pairs"], rows)


def _margin(e: dict) -> Optional[float]:
    """Points of the trained backbone's probe over its best control (random init, best constant and,
    for regret, necessity alone: probing.labels.necessity_baseline)."""
    controls = [c for c in (e.get("random_init_acc"), e.get("majority_acc"), e.get("necessity_acc")) if c is not None]
    return None if e.get("acc") is None or not controls else 100 * (e["acc"] - max(controls))


def probe_seeds_table(group: list[Run]) -> list[str]:
    """One row per task: on each backbone, trained / random init / best constant (margin), then the
    smallest margin and the spread of the trained accuracy over the backbones."""
    tasks = list(dict.fromkeys(t for r in group for t in (r.probe or {}).get("tasks", {})))
    rows = []
    for task in tasks:
        entries = [(r.probe or {}).get("tasks", {}).get(task) or {} for r in group]
        margins = [_margin(e) for e in entries]
        cells = [f"{_pct(e.get('acc'))} / {_pct(e.get('random_init_acc'))} / {_pct(e.get('majority_acc'))} "
                 f"({'-' if m is None else f'{m:+.1f}'})" for e, m in zip(entries, margins)]
        accs = [e.get("acc") for e in entries]
        worst = "-" if None in margins else f"{min(margins):+.1f}"
        spread = "-" if None in accs else f"{100 * (max(accs) - min(accs)):.1f}"
        rows.append([task] + cells + [worst, spread])
    return _table(["task"] + [_backbone_label(r) for r in group] + ["smallest margin", "spread of trained (points)"],
                  rows)


def regret_table(runs: list[Run]) -> list[str]:
    """The regret probe on the models' own greedy solutions (``probe.analysis=true``): how many of
    the real ``not_ready`` steps it flags, and how many correct steps (false alarms)."""
    rows = []
    for r in runs:
        regret = ((r.probe or {}).get("analysis") or {}).get("regret")
        if regret:
            rows.append([r.label, _backbone_label(r),
                         f"{regret['probe_flagged_not_ready']} / {regret['not_ready_steps']}",
                         _pct(regret.get("rate_flagged_not_ready")),
                         f"{regret['probe_flagged_correct']} / {regret['correct_steps']}",
                         _pct(regret.get("rate_flagged_correct"))])
    return _table(["probe run", "backbone run", "not_ready steps flagged", "rate", "correct steps flagged",
                   "rate (false alarms)"], rows) if rows else []


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------
def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"


def write_report(paths: Sequence[str | Path], out: str | Path = "report") -> dict:
    """Write report.md and the figures for the runs under ``paths`` into ``out``. Returns
    ``{"report": path, "figures": [paths], "runs": [labels], "skipped": [lines]}``."""
    runs, problems = load_runs(paths)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--out {out}: cannot be created ({e.strerror or e})") from None
    train_runs = [r for r in runs if r.kind == "train"]
    probe_runs = [r for r in runs if r.kind == "probe"]
    figures: list[tuple[str, Path]] = []  # (caption, file)

    fig = accuracy_vs_op_figure([(r.label, r.eval, r.max_op) for r in train_runs])
    if fig is not None:
        figures.append(("Full-solution accuracy against op (solid: test templates, dashed: training templates; "
                        "green: op ≤ training max_op, red: beyond it)", save_figure(fig, out / "accuracy_vs_op.png")))
    for r in probe_runs:
        fig = probe_bars_figure(r.probe, title=f"V-probe accuracy of {r.label}")
        if fig is not None:
            figures.append((f"Probe accuracy of {r.label} beside its controls",
                            save_figure(fig, out / f"probe_{slug(r.label)}.png")))
        grid = r.probe.get("nece_by_distance")
        if grid:
            fig = nece_by_distance_figure(grid, title=f"nece accuracy by layer and distance: {r.label}")
            if fig is not None:
                figures.append((f"nece accuracy by layer and distance to the question, {r.label}",
                                save_figure(fig, out / f"nece_by_distance_{slug(r.label)}.png")))
    curve_runs = [r for r in train_runs if len(r.curve()[0]) >= 2]
    for r in curve_runs:
        fig = learning_curve_figure(r)
        figures.append((f"Learning curve of {r.label}", save_figure(fig, out / f"learning_curve_{slug(r.label)}.png")))
    for r in train_runs:
        fig = train_loss_figure(r)
        if fig is not None:
            figures.append((f"Training loss of {r.label}", save_figure(fig, out / f"train_loss_{slug(r.label)}.png")))
    for k, group in enumerate(depth_width_groups(train_runs)):
        figures.append((f"Depth vs width: {', '.join(r.label for r in group)}",
                        save_figure(depth_width_figure(group), out / f"depth_width_{k}.png")))

    lines = ["# igsm report", "", f"Runs read from: {', '.join(map(str, paths))}.", ""]
    if problems:
        lines += ["Left out:", ""] + [f"- {p}" for p in problems] + [""]
    if train_runs:
        lines += ["## Training runs", ""] + runs_table(train_runs) + [""]
        lines += ["## Accuracy per evaluation bucket", "",
                  "Full-solution accuracy (every step verified), answer accuracy, and unnecessary parameters "
                  "computed per correct solution. `distribution`: whether the bucket's op lies within the "
                  "training max_op.", ""] + eval_table(train_runs) + [""]
    groups = seed_groups(train_runs)
    if groups:
        lines += ["## Seeds", "", "Runs of one config that differ only in the seed: final full-solution accuracy "
                  "per bucket, the worst seed and the mean.", ""]
        for group in groups:
            lines += seeds_table(group) + [""]
    if curve_runs:
        lines += ["## Learning curves", "", "Full-solution accuracy per bucket at every evaluation "
                  "(`eval_history.jsonl`; tokens = steps × sequences per step × context).", ""]
        for r in curve_runs:
            lines += [f"**{r.label}**", ""] + curve_table(r) + [""]
    if probe_runs:
        lines += ["## Probes", "",
                  "A probe shows knowledge when `trained` beats both controls (positive margin).", ""] \
            + probe_table(probe_runs) + [""]
        for group in probe_seed_groups(probe_runs):
            lines += ["One probe on several backbones (e.g. every seed of a recipe): trained / random init / best "
                      "constant (margin over the best control), per backbone.", ""] + probe_seeds_table(group) + [""]
        regret = regret_table(probe_runs)
        if regret:
            lines += ["## The regret probe on the models' own solutions", "",
                      "At `Define A as` of each step the verifier marks `not_ready` (the model's real mistakes) "
                      "and of each correct step: how often the regret probe says \"mistake\".", ""] + regret + [""]
    provenance = provenance_table(runs)
    if provenance:
        lines += ["## Where and how long", "", "CPU (its widest vector extensions), wall time summed over the "
                  "run's sessions, git commit and command, from `record.json` or the run folder.", ""] \
            + provenance + [""]
    if figures:
        lines += ["## Figures", ""]
        for caption, path in figures:
            lines += [f"**{caption}**", "", f"![{caption}]({path.name})", ""]
    if not runs:
        lines += ["No run could be read.", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return {"report": report, "figures": [p for _, p in figures], "runs": [r.label for r in runs],
            "skipped": problems}


__all__ = ["Run", "ReportError", "SkippedRun", "find_run_folders", "load_run", "load_runs", "write_report",
           "accuracy_vs_op_figure", "probe_bars_figure", "nece_by_distance_figure", "depth_width_figure",
           "depth_width_groups", "seed_groups", "seeds_table", "probe_seed_groups", "probe_seeds_table",
           "forced_op_entries", "flatten", "learning_curve_figure", "curve_table", "regret_table",
           "train_loss_figure", "provenance_table"]
