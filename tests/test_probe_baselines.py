"""scripts/probe_baselines.py (the all-false baselines in docs/probing.md) labels exactly the pairs
probe.py tests on."""

from __future__ import annotations

import importlib.util

import pytest

from igsm.cli_config import load_config
from igsm.config import TrainConfig, generator_config
from igsm.data_setup import build_data_tokenizer
from probing.data import ProbeDataset


@pytest.fixture(scope="module")
def baselines(repo_root):
    spec = importlib.util.spec_from_file_location("probe_baselines", repo_root / "scripts" / "probe_baselines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("split", ["test", "train"])
def test_the_labels_are_the_probe_test_sets(baselines, split) -> None:
    data = load_config(TrainConfig, ["preset=tiny"]).data
    tok = build_data_tokenizer(data)
    probe_split, stream = ("test", "probe") if split == "test" else ("train", "probe_heldout")
    for task in ("dep", "nece_next"):
        dataset = ProbeDataset(tok, generator_config(data), task, probe_split, 4, seed=3, draws=10, stream=stream)
        expected = [row["label"] for i in range(len(dataset)) for row in dataset[i]]
        assert baselines.probe_labels("tiny", task, split, n_problems=4, seed=3, draws=10) == expected
        assert 0 in expected and 1 in expected


def test_the_command_prints_one_line_per_preset(baselines, capsys) -> None:
    assert baselines.main(["--presets", "tiny", "--problems", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("tiny") and "dep " in lines[1] and "nece_next " in lines[1]
