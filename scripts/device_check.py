"""Every GPU-dependent check of igsm in one command, for one short GPU slot (issue 8; the target:
docs/measurements.md#targets).

    python scripts/device_check.py                      # one CUDA GPU, at most 8 minutes, no internet
    python scripts/device_check.py --out $OUT/device_check.json
    python scripts/device_check.py --smoke              # every step on CPU at toy sizes (a few minutes)

Steps, each a child process with its own time cap (a slow step is killed, the others still run):
  a  pytest -m gpu         tests/test_cuda.py and any other gpu-marked test
  b  train throughput      benchmarks/train_throughput.py: GPT2-12-12, context 768, bf16, compile;
                           tokens/s and MFU of a plain loop, of Lightning, of Lightning + IGSMDataModule
  c  decode throughput     benchmarks/decode_throughput.py: new tokens/s, GPT2-12-12, batch 256; then the
                           same with Canon ABCD and RoPE on a quarter of each head, beside it
  d  probe throughput      benchmarks/probe_throughput.py: GPT2-12-12 on med problems, batch 256
  e  small recipe          train.py preset=small (stopped at its time cap if slower than planned),
                           its evaluation, then probe.py preset=probe_small on its checkpoint
  f  new options           tests/test_cuda_levers.py: compile, cached decoding and resume with Canon ABCD,
                           partial RoPE, Muon, retry data and the op mix; a probe run killed with SIGTERM
                           and resumed with ckpt_path=last, trainer.precision null

Writes ``device_check.json`` (``--out``) after every step: one object per step with ``ok``,
``seconds`` and ``figures``, and prints a table at the end. Needs only what igsm needs; a missing
package ends the check at once with one line naming the wheels to provide (pure-Python wheels in
``.whl/``, e.g. omegaconf's, are put on the path without installing: see docs/gpu.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 480  # the whole check: 8 minutes
ALL_STEPS = "abcdef"

# (module that igsm or the check imports, the wheel that provides it): only modules some code of
# igsm, probing, train.py, probe.py, benchmarks/ or this check imports (tests/test_device_check.py
# checks both ways). Not antlr4: omegaconf 2.4 vendors its parser runtime (2.3 installs it itself,
# and an omegaconf that fails to import names the module it lacks, below).
REQUIREMENTS = (
    ("torch", "torch"), ("lightning", "lightning"), ("torchmetrics", "torchmetrics"),
    ("omegaconf", "omegaconf"), ("yaml", "PyYAML"), ("numpy", "numpy"), ("networkx", "networkx"),
    ("tensorboard", "tensorboard"), ("tiktoken", "tiktoken"), ("matplotlib", "matplotlib"),
    ("pytest", "pytest"),
)
# Modules igsm imports that no step of the check needs, and why.
NOT_NEEDED = {
    "scipy": "python -m igsm stats' chi-square test only (the dev extra)",
    "transformers": "Hugging Face export and checkpoints (the hf extra)",
    "pyarrow": "Parquet datasets (the hf extra)",
    "triton": "comes with a CUDA build of torch; igsm.compile_check names it when missing",
}
# The wheel of a module a package imports without declaring it as ours (omegaconf 2.3's parser).
WHEEL_OF = {"antlr4": "antlr4-python3-runtime", "yaml": "PyYAML"}
WHEELS_HINT = ("python3 -m pip download --no-deps --only-binary=:all: -d .whl omegaconf==2.4.0 "
               "(scripts/device_wheels.sh), then carry .whl")


@dataclass
class Step:
    key: str
    title: str
    cap_s: float  # the step's own time limit
    commands: list[list[str]]  # run in order, all within cap_s
    figures: Callable[[str, Step], dict]  # from the combined output
    ok_if: Callable[[list[int], dict], bool] = lambda rcs, figs: all(rc == 0 for rc in rcs)
    takes_slack: bool = False  # may also use the time earlier steps left unused (the small run)


# -- prerequisites ----------------------------------------------------------------------------------

def wheel_paths(folder: Path) -> list[str]:
    """Pure-Python wheels in ``folder``: a wheel is a zip of its packages, so it imports from sys.path."""
    return sorted(str(p) for p in folder.glob("*-py3-none-any.whl")) if folder.is_dir() else []


def missing_requirements(requirements=REQUIREMENTS) -> list[str]:
    """The wheels whose module cannot be imported; omegaconf is imported, so that a dependency
    it lacks (omegaconf 2.3 without antlr4) is named too."""
    missing = []
    for module, wheel in requirements:
        try:
            if importlib.util.find_spec(module) is None:
                missing.append(wheel)
            elif module == "omegaconf":
                import omegaconf  # noqa: F401
        except ModuleNotFoundError as e:
            name = (e.name or module).split(".")[0]
            missing.append(wheel if name == module else WHEEL_OF.get(name, name))
        except ImportError:
            missing.append(wheel)
    return missing


def prerequisite_line(missing: list[str]) -> str:
    return (f"device_check: missing Python packages: {', '.join(missing)}; provide their wheels in .whl/ "
            f"(pure-Python ones are used without installing), e.g. {WHEELS_HINT}")


# -- parsing the benchmarks' output -------------------------------------------------------------------

def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _find(pattern: str, out: str) -> Optional[re.Match]:
    matches = list(re.finditer(pattern, out, re.MULTILINE))
    return matches[-1] if matches else None


def pytest_figures(out: str, step: Step) -> dict:
    figs = {}
    line = _find(r"^=*\s*(.*\b(?:passed|failed|skipped|error|errors|deselected)\b.*?)\s*=*$", out)
    if line:
        for count, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", line.group(1)):
            figs[word.rstrip("s") if word.startswith("error") else word] = int(count)
    return figs


def train_figures(out: str, step: Step) -> dict:
    figs = {}
    names = {"1": "plain", "2": "lightning", "3": "lightning_real_data"}
    for m in re.finditer(r"^\((\d)\) .*?\s([\d,]+) tokens/s(?:, MFU ([\d.]+)%)?", out, re.MULTILINE):
        name = names.get(m.group(1), m.group(1))
        figs[f"{name}_tokens_per_s"] = _number(m.group(2))
        if m.group(3):
            figs[f"{name}_mfu_pct"] = float(m.group(3))
    if m := _find(r"Lightning / plain loop: ([\d.]+); real data / synthetic: ([\d.]+)", out):
        figs["lightning_over_plain"], figs["real_over_synthetic"] = float(m.group(1)), float(m.group(2))
    if m := _find(r"^data pipeline, this run .*?: ([\d,]+) tokens/s = ([\d.]+) workers' worth", out):
        figs["data_tokens_per_s_one_worker"], figs["workers_needed"] = _number(m.group(1)), float(m.group(2))
    if m := _find(r"^model: (.*?);", out):
        figs["model"] = m.group(1)
    return figs


def decode_figures(out: str, step: Step) -> dict:
    """The plain model's new tokens/s, then (a second run, whose model line names canon) the Canon
    model's beside it, and their ratio."""
    figs = {}
    runs = re.split(r"^(?=model GPT2-)", out, flags=re.MULTILINE)
    for run in runs:
        m = _find(r"([\d,]+) new tokens/s", run)
        setting = _find(r"^model (GPT2-\S+) .*$", run)
        if not m or not setting:
            continue
        prefix = "canon_" if ", canon " in setting.group(0) else ""
        figs[f"{prefix}new_tokens_per_s"] = _number(m.group(1))
        figs[f"{prefix}setting"] = setting.group(0)
    if figs.get("new_tokens_per_s") and "canon_new_tokens_per_s" in figs:
        figs["canon_over_plain"] = round(figs["canon_new_tokens_per_s"] / figs["new_tokens_per_s"], 3)
    return figs


def probe_figures(out: str, step: Step) -> dict:
    figs = {}
    if m := _find(r"probe training: ([\d,]+) pairs/s \(([\d,]+) tokens/s, ([\d.]+) ms/step\)", out):
        figs.update(pairs_per_s=_number(m.group(1)), tokens_per_s=_number(m.group(2)), ms_per_step=float(m.group(3)))
    if m := _find(r"probe data \(one process\): ([\d,]+) pairs/s", out):
        figs["data_pairs_per_s_one_process"] = _number(m.group(1))
    return figs


def small_figures(logs: Path) -> Callable[[str, Step], dict]:
    """Steps, tokens/s and MFU of the small run, its eval.json accuracies, probe.json accuracies."""

    def read(out: str, step: Step) -> dict:
        figs: dict = {}
        run = logs / "small" / "version_0"
        info = _read_json(run / "device_check_train.json") or {}
        figs.update(info)
        figs.update(_tensorboard_last(run, ("train/tokens_per_s", "train/mfu", "train/loss")))
        for e in _read_json(run / "eval.json") or []:
            figs[f"eval/{e['bucket']}/accuracy"] = e["accuracy"]
        probe_run = logs / "small_probe" / "version_0"
        for task, e in ((_read_json(probe_run / "probe.json") or {}).get("tasks") or {}).items():
            for key in ("acc", "random_init_acc", "majority_acc"):
                figs[f"probe/{task}/{key}"] = e.get(key)
        return figs
    return read


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tensorboard_last(run: Path, tags) -> dict:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return {}
    last = {}
    for f in sorted(run.glob("events.out.tfevents.*")):
        ea = EventAccumulator(str(f), size_guidance={"scalars": 0})
        ea.Reload()
        for tag in tags:
            if tag in ea.Tags()["scalars"] and ea.Scalars(tag):
                last[tag] = ea.Scalars(tag)[-1].value
    return last


# -- the steps ---------------------------------------------------------------------------------------

def build_steps(smoke: bool, logs: Path) -> list[Step]:
    """Explicit arguments everywhere: the benchmarks' own defaults may change."""
    py = sys.executable
    if smoke:  # CPU, toy sizes: the same commands, so that they cannot rot between GPU slots
        train_bench = ["--steps", "2", "--warmup", "1", "--repeats", "1", "--data-batches", "1", "--no-compile",
                       "--workers", "1"]
        decode = ["--device", "cpu", "--n-layer", "1", "--n-head", "2", "--batch", "4", "--prompt-len", "16",
                  "--new-tokens", "8", "--vocab", "256", "--repeats", "1"]
        probe_bench = ["--device", "cpu", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--batch", "8",
                       "--preset", "tiny", "--tokenizer", "word", "--steps", "2", "--length-chunks", "1"]
        small = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.compile=false", "data.batch_size=2",
                 "data.num_workers=0", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.max_steps=2",
                 "eval.n=2", "eval.batch_size=2", "eval.max_new_tokens=8"]
        probe_small = ["trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.max_steps=2",
                       "probe.batch_size=4", "probe.test_problems=2", "probe.draws=2", "probe.num_workers=0"]
        gpu_tests = ["tests/test_cuda.py"]  # all skip on CPU: collect only the one file
        # f: the CPU twins of the new options' tests (the gpu-marked ones skip); slow ones included
        levers_tests = ["-m", "not gpu", "tests/test_cuda_levers.py"]
        # Generous: what a smoke run must show is that every step still runs, on a CPU that may be shared
        # (at a load of 8 on 2 cores, step a took 120 s of wall time for 9 CPU seconds).
        caps = dict(a=240, b=300, c=180, d=120, e_train=300, e_probe=180, f=600)
    else:
        train_bench = ["--steps", "30", "--warmup", "10", "--batch-size", "64", "--repeats", "1", "--workers", "6",
                       "--data-batches", "8"]  # GPT2-12-12, context 768, bf16-mixed, compile: its CUDA setting
        decode = ["--device", "cuda", "--n-layer", "12", "--n-head", "12", "--batch", "256", "--prompt-len", "256",
                  "--new-tokens", "256", "--vocab", "50257", "--dtype", "bf16-autocast", "--repeats", "3"]
        probe_bench = ["--device", "cuda", "--n-layer", "12", "--n-head", "12", "--n-embd", "768", "--batch", "256",
                       "--preset", "med", "--tokenizer", "gpt2", "--steps", "20", "--length-chunks", "1",
                       "--checkpoint-activations"]
        small, probe_small, gpu_tests = [], [], []
        levers_tests = ["-m", "gpu", "tests/test_cuda_levers.py"]
        # a: compiles the test models; b: three compiles of GPT2-12-12 (the later ones mostly from inductor's
        # cache); c: two models; d: builds its med batches in one process first; f: compiles a Canon model,
        # starts probe.py twice. e gets whatever a-d leave unused too. Estimates: no GPU has run them yet.
        caps = dict(a=75, b=110, c=40, d=35, e_train=40, e_probe=60, f=120)
    quiet = ["trainer.enable_progress_bar=false"]
    canon = ["--canon", "ABCD", "--rope-dim", str(64 // 4)]  # 64 dims per head: RoPE on a quarter
    ckpt = logs / "small" / "version_0" / "checkpoints" / "last.ckpt"
    return [
        Step("a", "pytest -m gpu", caps["a"],
             [[py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *gpu_tests,
               "--ignore=tests/test_cuda_levers.py"]],  # step f runs those
             pytest_figures,
             ok_if=lambda rcs, f: rcs[0] == 0 and f.get("failed", 0) == 0 and (smoke or f.get("passed", 0) > 0)),
        Step("b", "train throughput", caps["b"], [[py, "benchmarks/train_throughput.py", *train_bench]], train_figures),
        Step("c", "decode throughput", caps["c"], [[py, "benchmarks/decode_throughput.py", *decode],
                                                   [py, "benchmarks/decode_throughput.py", *decode, *canon]],
             decode_figures),
        Step("d", "probe throughput", caps["d"], [[py, "benchmarks/probe_throughput.py", *probe_bench]], probe_figures),
        Step("e", "small: train + eval + probe", caps["e_train"] + caps["e_probe"], [
            [py, str(Path(__file__).resolve()), "--child-train", str(caps["e_probe"]), "--",
             "preset=small", f"log_root={logs}", "name=small", *quiet, *small],
            [py, "probe.py", "preset=probe_small", f"ckpt={ckpt}", f"log_root={logs}", "name=small_probe", *quiet,
             *probe_small],
        ], small_figures(logs), takes_slack=True),
        Step("f", "new options", caps["f"],
             [[py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *levers_tests]],
             pytest_figures,
             ok_if=lambda rcs, f: rcs[0] == 0 and f.get("failed", 0) == 0 and f.get("passed", 0) > 0),
    ]


# -- the small run's training, inside a child process ----------------------------------------------

def child_train(deadline: float, argv: list[str]) -> int:
    """train.py with a callback that stops training at ``deadline`` (epoch seconds), leaving time for
    its evaluation; writes how far it got to ``device_check_train.json`` in the run folder."""
    sys.path.insert(0, str(ROOT))
    from lightning.pytorch.callbacks import Callback

    import train

    class StopAtDeadline(Callback):
        def __init__(self) -> None:
            self.stopped_at: Optional[int] = None
            self.train_start = self.train_end = None

        def on_train_start(self, trainer, pl_module) -> None:
            self.train_start = time.time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if time.time() > deadline and not trainer.should_stop:
                trainer.should_stop = True
                self.stopped_at = trainer.global_step

        def on_train_end(self, trainer, pl_module) -> None:
            self.train_end = time.time()
            info = {"steps": trainer.global_step, "max_steps": trainer.max_steps,
                    "stopped_by_time_cap": self.stopped_at is not None,
                    "train_seconds": round(self.train_end - self.train_start, 1),
                    "tokens_seen": trainer.global_step * trainer.accumulate_grad_batches
                    * pl_module.cfg.data.batch_size * pl_module.cfg.data.context * trainer.world_size}
            if trainer.is_global_zero:
                Path(trainer.log_dir, "device_check_train.json").write_text(json.dumps(info, indent=2) + "\n")

    return train.main(argv, extra_callbacks=[StopAtDeadline()])


# -- running ----------------------------------------------------------------------------------------

def run_step(step: Step, cap_s: float, env: dict) -> dict:
    start = time.perf_counter()
    cpu_start = _children_cpu_seconds()
    outputs, rcs, timed_out = [], [], False
    for cmd in step.commands:
        left = cap_s - (time.perf_counter() - start)
        if cmd[2:3] == ["--child-train"]:  # the training stops itself in time for evaluation and probing
            reserve = float(cmd[3]) + EVAL_RESERVE_S
            cmd = cmd[:3] + [str(time.time() + left - reserve)] + cmd[4:]
        if left <= 1:
            timed_out = True
            break
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=left)
            outputs.append(proc.stdout + proc.stderr)
            rcs.append(proc.returncode)
        except subprocess.TimeoutExpired as e:
            outputs.append(_text(e.stdout) + _text(e.stderr))
            rcs.append(124)
            timed_out = True
            break
    out = "\n".join(outputs)
    seconds = time.perf_counter() - start
    figures = {}
    try:
        figures = step.figures(out, step)
    except Exception as e:  # a figure we cannot read must not hide the rest
        figures = {"figure_error": repr(e)}
    ok = not timed_out and len(rcs) == len(step.commands) and step.ok_if(rcs, figures)
    result = {"step": step.key, "title": step.title, "ok": ok, "seconds": round(seconds, 1),
              "cap_seconds": round(cap_s, 1),
              "cpu_seconds": round(_children_cpu_seconds() - cpu_start, 1), "timed_out": timed_out,
              "exit_codes": rcs, "figures": figures,
              "commands": [" ".join(c) for c in step.commands]}
    if not ok:
        result["output_tail"] = out[-3000:]
    return result


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


EVAL_RESERVE_S = 40  # seconds the small run keeps for its final evaluation after training stops


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def summary_table(results: list[dict]) -> str:
    lines = [f"{'step':<32} {'ok':<4} {'seconds':>8}  figures"]
    for r in results:
        figs = ", ".join(f"{k}={_short(v)}" for k, v in r["figures"].items() if k not in ("model", "setting"))
        lines.append(f"{r['step'] + ' ' + r['title']:<32} {'yes' if r['ok'] else 'NO':<4} {r['seconds']:>8.1f}  {figs}")
    return "\n".join(lines)


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def environment() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import lightning
        info["lightning"] = lightning.__version__
    except ImportError:
        pass
    return info


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child-train"]:
        return child_train(float(argv[1]), argv[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="every step on CPU at toy sizes (a few minutes)")
    p.add_argument("--out", default="device_check.json", help="the JSON report (default device_check.json)")
    p.add_argument("--logs", default=None, help="run folders of step e (default logs/device_check_<time>)")
    p.add_argument("--wheels", default=str(ROOT / ".whl"), help="folder of pure-Python wheels put on the path")
    p.add_argument("--steps", default=ALL_STEPS, help=f"which steps to run (default {ALL_STEPS})")
    args = p.parse_args(argv)
    bad = set(args.steps) - set(ALL_STEPS)
    if bad or not args.steps:
        print(f"device_check: --steps={args.steps!r} is not allowed: letters from {ALL_STEPS!r}", file=sys.stderr)
        return 2

    wheels = wheel_paths(Path(args.wheels))
    sys.path[:0] = wheels
    missing = missing_requirements()
    if missing:
        print(prerequisite_line(missing), file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *wheels, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU even on a GPU machine
    else:
        import torch

        if not torch.cuda.is_available():
            print("device_check: no CUDA device: run it on a machine with one GPU, or use --smoke for the CPU "
                  "rehearsal", file=sys.stderr)
            return 2

    logs = Path(args.logs) if args.logs else ROOT / "logs" / time.strftime("device_check_%Y%m%d_%H%M%S")
    out = Path(args.out)
    steps = [s for s in build_steps(args.smoke, logs) if s.key in args.steps]
    report = {"smoke": args.smoke, "budget_seconds": BUDGET_S, "logs": str(logs), **environment(), "steps": []}
    print(f"device_check{' --smoke' if args.smoke else ''}: {report.get('gpu', 'CPU')}, torch {report['torch']}; "
          f"steps {', '.join(s.key + ' ' + s.title for s in steps)}; report {out}", flush=True)
    start = time.perf_counter()
    for i, step in enumerate(steps):
        cap = step.cap_s
        if step.takes_slack:  # what earlier steps left unused, within the whole budget
            later = sum(s.cap_s for s in steps[i + 1:])
            cap = max(cap, BUDGET_S - (time.perf_counter() - start) - later)
        result = run_step(step, cap, env)
        report["steps"].append(result)
        report["total_seconds"] = round(time.perf_counter() - start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"{step.key} {step.title}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']:.1f} s "
              f"(cap {cap:.0f} s)", flush=True)
        if not result["ok"]:
            print(result.get("output_tail", "")[-1500:], flush=True)
    print()
    print(summary_table(report["steps"]))
    ok = all(r["ok"] for r in report["steps"])
    print(f"\ndevice_check: {'all steps ok' if ok else 'FAILED'} in {report['total_seconds']:.0f} s; report {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
