"""scripts/device_check.py: the --smoke rehearsal on CPU (so the GPU check cannot rot between GPU
slots), the one-line prerequisite error, and the parsing of the GPU benchmarks' output."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def device_check(repo_root):
    spec = importlib.util.spec_from_file_location("device_check", repo_root / "scripts" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["device_check"]


@pytest.mark.slow
def test_smoke_runs_every_step_on_cpu(repo_root, subprocess_env, tmp_path) -> None:
    out = tmp_path / "report" / "device_check.json"
    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "scripts/device_check.py", "--smoke", "--out", str(out),
                           "--logs", str(tmp_path / "logs")], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=2400)  # ~100 CPU seconds; wall time as the machine's load allows
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == ["a", "b", "c", "d", "e", "f"] and report["smoke"] is True
    assert all(s["ok"] and s["seconds"] > 0 for s in steps.values())
    figures = {k: s["figures"] for k, s in steps.items()}
    assert figures["a"]["skipped"] >= 1 and figures["a"].get("failed", 0) == 0  # CUDA tests skip cleanly
    assert {"plain_tokens_per_s", "lightning_tokens_per_s", "lightning_real_data_tokens_per_s",
            "lightning_over_plain", "real_over_synthetic"} <= set(figures["b"])
    assert figures["c"]["new_tokens_per_s"] > 0 and figures["d"]["pairs_per_s"] > 0
    assert figures["c"]["canon_new_tokens_per_s"] > 0 and "canon ABCD" in figures["c"]["canon_setting"]
    # the new options' CPU twins ran (compile, cached decoding, resume, probe SIGTERM + resume); none failed
    assert figures["f"]["passed"] >= 4 and figures["f"].get("failed", 0) == 0
    e = figures["e"]
    assert e["steps"] == 2 and not e["stopped_by_time_cap"]
    assert {"eval/op<=6/accuracy", "eval/op=7/accuracy", "eval/op=10/accuracy"} <= set(e)
    assert {"probe/nece/acc", "probe/nece/random_init_acc", "probe/can_next/majority_acc"} <= set(e)
    assert "all steps ok" in proc.stdout and "e small: train + eval + probe" in proc.stdout  # the table


def test_the_new_options_run_on_cuda_and_rehearse_on_cpu(device_check, tmp_path) -> None:
    """Step f runs tests/test_cuda_levers.py: its gpu tests on a GPU (and step a leaves them to it),
    their CPU twins in the smoke; step c decodes a Canon model with partial RoPE beside the plain one."""
    for smoke, marker in ((False, "gpu"), (True, "not gpu")):
        steps = {s.key: s for s in device_check.build_steps(smoke, tmp_path)}
        assert list(steps) == list(device_check.ALL_STEPS)
        (command,) = steps["f"].commands
        assert command[-3:] == ["-m", marker, "tests/test_cuda_levers.py"]
        assert "--ignore=tests/test_cuda_levers.py" in steps["a"].commands[0]
        plain, canon = steps["c"].commands
        assert canon[:len(plain)] == plain and canon[len(plain):] == ["--canon", "ABCD", "--rope-dim", "16"]
    caps = device_check.build_steps(False, tmp_path)
    assert sum(s.cap_s for s in caps) <= device_check.BUDGET_S  # the whole check fits its 8 minutes


def test_a_missing_package_names_its_wheel(device_check) -> None:
    requirements = (("torch", "torch"), ("surely_not_installed_xyz", "xyz-wheel"))
    missing = device_check.missing_requirements(requirements)
    assert missing == ["xyz-wheel"]
    line = device_check.prerequisite_line(["omegaconf", "matplotlib"])
    assert "\n" not in line and "omegaconf" in line and "matplotlib" in line and ".whl" in line
    assert device_check.missing_requirements() == []  # this environment has everything


def _imported_modules(root: Path) -> set[str]:
    """Top-level names of the third-party modules that igsm, probing, the entry points, the
    benchmarks, the tests and the check import anywhere (lazy imports included)."""
    files = [*root.glob("igsm/**/*.py"), *root.glob("probing/**/*.py"), *root.glob("benchmarks/*.py"),
             *root.glob("tests/*.py"), root / "train.py", root / "probe.py", root / "scripts" / "device_check.py"]
    local = {"igsm", "probing", "train", "probe", "conftest"} | {f.stem for f in files}
    names = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - local


def test_required_modules_are_exactly_what_the_code_imports(device_check, repo_root) -> None:
    """The check asks for no package that nothing imports (antlr4: omegaconf 2.4 vendors it), and
    every package the code imports is either asked for or named as not needed, with its reason."""
    required = {module for module, _ in device_check.REQUIREMENTS}
    imported = _imported_modules(repo_root)
    assert required - imported == set(), "asked for, imported by nothing"
    assert imported - required - set(device_check.NOT_NEEDED) == set(), "imported, neither asked for nor excused"
    assert set(device_check.NOT_NEEDED) <= imported and not required & set(device_check.NOT_NEEDED)


def test_without_antlr4_nothing_is_missing(repo_root, subprocess_env) -> None:
    """omegaconf 2.4 imports without antlr4-python3-runtime (it vendors the parser): the check runs."""
    import omegaconf

    if tuple(int(x) for x in omegaconf.__version__.split(".")[:2]) < (2, 4):
        pytest.skip("omegaconf < 2.4 needs antlr4")
    code = ("import sys, importlib.util; sys.modules['antlr4'] = None  # import antlr4 fails from here on\n"
            "spec = importlib.util.spec_from_file_location('device_check', 'scripts/device_check.py')\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['device_check'] = m; spec.loader.exec_module(m)\n"
            "print(m.missing_requirements())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo_root, env=subprocess_env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_a_dependency_omegaconf_lacks_is_named(device_check, monkeypatch) -> None:
    """omegaconf 2.3 without antlr4 fails to import: the line names antlr4's wheel, not omegaconf."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "omegaconf":
            raise ModuleNotFoundError("No module named 'antlr4'", name="antlr4")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert device_check.missing_requirements((("omegaconf", "omegaconf"),)) == ["antlr4-python3-runtime"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_the_full_check_refuses_in_one_line(repo_root, subprocess_env, tmp_path) -> None:
    proc = subprocess.run([sys.executable, "scripts/device_check.py", "--out", str(tmp_path / "x.json")],
                          cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no CUDA device" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_bad_steps_argument_is_one_line(device_check, capsys) -> None:
    assert device_check.main(["--steps", "az"]) == 2
    assert "--steps='az' is not allowed" in capsys.readouterr().err


def test_gpu_output_is_parsed(device_check) -> None:
    """The lines the benchmarks print on a GPU (with MFU), which the CPU smoke never shows."""
    train_out = """model: GPT2-12-12, context 768, bf16-mixed, torch.compile; 124.44M parameters, batch 64 x 768 tokens
(1) plain PyTorch loop                            512,345 tokens/s, MFU 43.2%
(2) Lightning (train.py's Trainer)                505,000 tokens/s, MFU 42.6%
(3) Lightning + IGSMDataModule, workers=6         503,100 tokens/s, MFU 42.4%
Lightning / plain loop: 0.986; real data / synthetic: 0.996
""" + ("data pipeline, this run (med, gpt2 tokenizer, loss on all, one worker): 210,000 tokens/s = 2.40 workers' "
       "worth of the training step (6 configured)\n")
    figs = device_check.train_figures(train_out, None)
    assert figs["plain_tokens_per_s"] == 512345 and figs["plain_mfu_pct"] == 43.2
    assert figs["lightning_real_data_mfu_pct"] == 42.4 and figs["real_over_synthetic"] == 0.996
    assert figs["workers_needed"] == 2.4 and figs["model"].startswith("GPT2-12-12")
    decode_out = ("model GPT2-12-12 (d=768, 124.4M params, vocab 50257) on cuda, bf16-autocast; batch 256\n"
                  "65536 new tokens in 0.512 s (best of 3, prefill included): 128,000 new tokens/s\n"
                  "model GPT2-12-12 (d=768, 124.6M params, vocab 50257, canon ABCD, rope_dim 16) on cuda\n"
                  "65536 new tokens in 0.640 s (best of 3, prefill included): 102,400 new tokens/s\n")
    figs = device_check.decode_figures(decode_out, None)
    assert figs["new_tokens_per_s"] == 128000 and figs["canon_new_tokens_per_s"] == 102400
    assert figs["canon_over_plain"] == 0.8
    probe_out = ("probe training: 4,096 pairs/s (1,300,000 tokens/s, 62.5 ms/step)\n"
                 "probe data (one process): 900 pairs/s\n")
    assert device_check.probe_figures(probe_out, None) == {
        "pairs_per_s": 4096, "tokens_per_s": 1300000, "ms_per_step": 62.5, "data_pairs_per_s_one_process": 900}
    assert device_check.pytest_figures("12 passed, 1 skipped, 280 deselected in 60.1s\n", None) == {
        "passed": 12, "skipped": 1, "deselected": 280}


def test_small_recipes_load() -> None:
    """configs/small.yaml and probe_small.yaml load and validate (lengths, buckets) with their schemas."""
    import probe
    from igsm.cli_config import load_config
    from igsm.config import ProbeConfig, TrainConfig

    small = load_config(TrainConfig, ["preset=small"])
    assert (small.model.n_layer, small.model.d_model, small.data.tokenizer) == (8, 512, "word")
    assert small.data.max_op == 6 and {"7", "8", "10"} <= set(small.eval.buckets)  # out of distribution
    assert small.trainer.max_steps * small.data.batch_size * small.data.context == 196_608_000  # tokens, docs/gpu.md
    probe_small = load_config(ProbeConfig, ["preset=probe_small"])
    assert probe_small.probe.tasks == ["nece", "can_next", "value"] and probe_small.probe.control == "both"
    assert probe.summary_lines  # probe.py is importable next to the configs it reads
