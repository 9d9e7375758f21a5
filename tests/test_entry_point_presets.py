"""Each entry point lists and accepts only its own presets: configs/probe_*.yaml are probe.py's."""

import pytest

import probe
import train
from igsm.cli_config import available_presets, load_config, preset_entry_point
from igsm.config import ConfigError, ProbeConfig, TrainConfig


def test_presets_are_split_between_the_entry_points():
    train_presets = available_presets(entry_point="train.py")
    probe_presets = available_presets(entry_point="probe.py")
    assert {"tiny", "med", "hard", "depth_width/gpt2-12-12"} <= set(train_presets)
    assert {"probe_tiny", "probe_med", "probe_hard"} <= set(probe_presets)
    assert sorted(train_presets + probe_presets) == available_presets()
    assert preset_entry_point("probe_small") == "probe.py" and preset_entry_point("small") == "train.py"


@pytest.mark.parametrize("preset", available_presets(entry_point="probe.py"))
def test_every_probe_preset_loads_in_probe_py(preset):
    assert load_config(ProbeConfig, [f"preset={preset}"]).preset == preset


@pytest.mark.parametrize("schema,preset,owner", [
    (TrainConfig, "probe_med", "probe.py"),
    (TrainConfig, "probe_tiny", "probe.py"),
    (ProbeConfig, "med", "train.py"),
    (ProbeConfig, "depth_width/gpt2-8-15", "train.py"),
])
def test_a_preset_of_the_other_entry_point_says_whose_it_is(schema, preset, owner):
    with pytest.raises(ConfigError) as e:
        load_config(schema, [f"preset={preset}"])
    message = str(e.value)
    assert "\n" not in message
    assert f"preset={preset!r} is not allowed: it is a {owner} preset (python {owner} preset={preset})" in message


@pytest.mark.parametrize("main,own,other", [(train.main, "tiny", "probe_tiny"), (probe.main, "probe_tiny", "'tiny'")])
def test_help_and_errors_list_only_own_presets(capsys, main, own, other):
    assert main(["--help"]) == 0
    presets_line = capsys.readouterr().out.strip().splitlines()[-1]
    names = presets_line.split(": ", 1)[1].split(", ")
    assert presets_line.startswith("Presets of ") and own in names and other.strip("'") not in names
    assert main(["preset=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and own in err[0] and other not in err[0]
