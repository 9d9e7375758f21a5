"""World files: the default is valid; broken files are rejected with the path of the problem."""

import copy
import json

import pytest

from igsm import WorldError, generate_problem, generator_preset, load_world
from igsm.generator import problem_rng
from igsm.world import DEFAULT_WORLD, parse_world

BASE = json.loads(DEFAULT_WORLD.read_text(encoding="utf-8"))


def test_default_world_shape():
    w = load_world()
    assert len(w.families) == 4
    assert [layer.category for layer in w.families[2].layers] == ["School", "Classroom", "Backpack", "Stationery"]
    for f in w.families:
        for layer in f.layers:
            assert len(layer.groups) == 5
            assert all(len(names) >= 15 for _, names in layer.groups)


def mutated(fn):
    data = copy.deepcopy(BASE)
    fn(data)
    return data


@pytest.mark.parametrize("mutation,fragment", [
    (lambda d: d.pop("families"), '"families"'),
    (lambda d: d["families"][1]["layers"].pop(), "families[1].layers"),
    (lambda d: d["families"][0]["layers"][2].update(category=""), "families[0].layers[2].category"),
    (lambda d: d["families"][0]["layers"][0]["groups"].update(Tiny=["a", "b"]), "Tiny"),
    (lambda d: next(iter(d["families"][3]["layers"][1]["groups"].values())).append("Dr. Who"), "Dr. Who"),
    (lambda d: next(iter(d["families"][3]["layers"][1]["groups"].values())).append(
        next(iter(d["families"][3]["layers"][1]["groups"].values()))[0]), "twice"),
    (lambda d: d["families"][1]["layers"][0].update(category="District"), "unique"),
    (lambda d: next(iter(d["families"][0]["layers"][0]["groups"].values())).append(7), "7"),
])
def test_bad_world_is_rejected_naming_the_place(mutation, fragment):
    with pytest.raises(WorldError) as e:
        parse_world(mutated(mutation), source="w.json")
    assert fragment in str(e.value) and "w.json" in str(e.value)


def test_unreadable_and_invalid_json(tmp_path):
    with pytest.raises(WorldError, match="cannot be read"):
        load_world(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(WorldError, match="not valid JSON"):
        load_world(bad)


def test_custom_world_is_used(tmp_path):
    data = copy.deepcopy(BASE)
    for f in data["families"]:
        for layer in f["layers"]:
            layer["groups"] = {"only": [f"{layer['category']} item {i}" for i in range(6)]}
    path = tmp_path / "w.json"
    path.write_text(json.dumps(data))
    p = generate_problem(generator_preset("med", world=str(path)), problem_rng(0, 0))
    assert all(name.split(" item ")[0] in p.categories for layer in p.names for name in layer)
